#! /usr/bin/env python
"""A socket server that runs one line of Python source per connection.

Each accepted client sends one line: a Python string literal followed by a
newline.  The server evaluates the literal and executes the resulting
source with the globals ``clientsock`` (the accepted socket), ``address``
(the peer address) and ``execmodel`` (the server's execution model).  A
socket gateway sends the worker core this way (doc/socket.md, doc/protocol.md).

Standalone use::

    python socketserver.py [--secret-file PATH] [HOST:PORT]

The default address is 127.0.0.1:8888 (port 0 = any free port); a host part
left empty, as in ":8888", means every interface.  Whoever can connect can
run code as the server's user, so the server warns on stderr when it
listens on an address that is not a loopback one.

With ``--secret-file`` the server first checks that the client knows the
secret in PATH: it sends a fresh random nonce and expects the HMAC-SHA256
of it keyed with the secret (a socket gateway given ``secret_file=PATH``
answers).  The secret itself never crosses the connection, an old answer
does not fit a new nonce, and a client that does not answer correctly is
dropped before the server reads any source.  Without the option the
connection starts as execnet's always did.

Every client is served in a thread of its own, so several gateways can use
one server at the same time.  The server keeps running until it is
interrupted or a client executes ``raise KeyboardInterrupt`` (see
quitserver.py).

When sent with ``remote_exec`` (``__name__ == "__channelexec__"``) the module
receives a bind address over the channel, answers with the bound address
and serves exactly one connection.

Only the standard library is needed, so the file also works when shipped
to a host as plain source.
"""

import binascii
import hashlib
import hmac
import os
import socket
import sys
import threading

TYPE_CHECKING = False  # (typing is not imported at run time)
if TYPE_CHECKING:
    from typing import List

PROGRESS_PREFIX = "socket_readline_exec_server-1.2"

# upper bound for the length of the source line (the worker core is far
# smaller) and for the time a client may take to send it
MAX_LINE_BYTES = 64 * 1024 * 1024
LINE_TIMEOUT = 300.0

DEFAULT_ADDRESS = "127.0.0.1:8888"

# The shared-secret handshake, only when the server has a secret (lines of
# ASCII, each ending in a newline):
#   client: AUTH_HELLO
#   server: AUTH_CHALLENGE + 64 hex digits (a nonce of 32 random bytes)
#   client: 64 hex digits, HMAC-SHA256(secret, AUTH_CONTEXT + nonce)
#   server: AUTH_ACCEPTED, then everything goes on as without a secret;
#           or AUTH_DENIED / AUTH_REQUIRED, and the connection ends.
AUTH_HELLO = b"execnet-auth-1\n"
AUTH_CHALLENGE = b"execnet-auth-1 challenge "
AUTH_ACCEPTED = b"execnet-auth-1 accepted\n"
AUTH_DENIED = b"execnet-auth-1 denied\n"
AUTH_REQUIRED = b"execnet-auth-1 required\n"
AUTH_CONTEXT = b"execnet socket server challenge\n"
AUTH_NONCE_BYTES = 32
AUTH_LINE_MAX = 256
AUTH_TIMEOUT = 30.0
# what a dropped client may still send before the server closes (so that
# it can read why it was dropped instead of getting a connection reset)
DRAIN_BYTES = MAX_LINE_BYTES
DRAIN_TIMEOUT = 5.0

_output_lock = threading.Lock()


def progress(*args):
    """One progress line on stdout, flushed at once (tests read it)."""
    text = " ".join(str(arg) for arg in (PROGRESS_PREFIX,) + args)
    with _output_lock:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass


def complain(text):
    """One short line on stderr about a client that was dropped."""
    with _output_lock:
        try:
            sys.stderr.write(PROGRESS_PREFIX + " " + text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


class ClientError(Exception):
    """The client sent something that cannot be executed."""


def parse_address(text, default_port=8888):
    """``"host:port"`` (either part may be empty) -> ``(host, port)``."""
    if isinstance(text, (tuple, list)):
        host, port = text
        return str(host), int(port)
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = port, ""
    return host, int(port) if port else default_port


def bind_and_listen(hostport, reuse=True):
    """A listening AF_INET stream socket bound to hostport."""
    host, port = parse_address(hostport)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.set_inheritable(False)
        if reuse and os.name == "posix" and sys.platform != "cygwin":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(5)
    except BaseException:
        sock.close()
        raise
    return sock


def read_line(sock):
    """The bytes up to and including the first newline, leaving anything
    after it unread on the socket."""
    received = bytearray()
    while True:
        peeked = sock.recv(65536, socket.MSG_PEEK)
        if not peeked:
            if received:
                raise ClientError(
                    "connection closed after %d bytes of an unfinished line" % len(received)
                )
            raise ClientError("connection closed before a line was sent")
        end = peeked.find(b"\n")
        wanted = len(peeked) if end < 0 else end + 1
        while wanted > 0:
            data = sock.recv(wanted)
            if not data:
                raise ClientError("connection closed while reading the line")
            received += data
            wanted -= len(data)
        if end >= 0:
            return bytes(received)
        if len(received) > MAX_LINE_BYTES:
            raise ClientError("line longer than %d bytes" % MAX_LINE_BYTES)


def read_source(sock):
    """Read the client's line and turn it into the source to execute."""
    sock.settimeout(LINE_TIMEOUT)
    try:
        line = read_line(sock)
    except socket.timeout:
        raise ClientError("no complete line within %s seconds" % LINE_TIMEOUT) from None
    finally:
        sock.settimeout(None)
    progress("reading line")
    try:
        text = line.decode("utf-8").rstrip()
    except UnicodeDecodeError:
        raise ClientError("the line is not UTF-8 text") from None
    if not text:
        return ""
    try:
        source = eval(text, {"__builtins__": {}})
    except Exception as exc:
        raise ClientError("cannot evaluate the line: %s: %s" % (type(exc).__name__, exc)) from None
    if not isinstance(source, str):
        raise ClientError("the line is not a string literal but %s" % type(source).__name__)
    return source


def read_secret(path):
    """The shared secret in the file at path: its bytes without trailing
    whitespace.  ValueError for an empty secret."""
    with open(path, "rb") as f:
        secret = f.read().rstrip()
    if not secret:
        raise ValueError("the secret file %s is empty" % (path,))
    return secret


def challenge_answer(secret, nonce):
    """The answer (ASCII hex digits) to the challenge nonce."""
    digest = hmac.new(secret, AUTH_CONTEXT + nonce, hashlib.sha256).hexdigest()
    return digest.encode("ascii")


def read_short_line(sock, limit=AUTH_LINE_MAX):
    """One line of at most limit bytes, newline included; b"" at EOF before
    the first byte.  Reads byte by byte, so nothing after it is taken."""
    received = bytearray()
    while len(received) < limit:
        data = sock.recv(1)
        if not data:
            break
        received += data
        if data == b"\n":
            break
    return bytes(received)


def _drop(sock, line):
    """Tell the client why it is dropped, then let it go: whatever it
    still sends is read and ignored (bounded), so that closing does not
    reset the connection before the client read the line."""
    try:
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(DRAIN_TIMEOUT)
        left = DRAIN_BYTES
        while left > 0:
            data = sock.recv(min(left, 65536))
            if not data:
                break
            left -= len(data)
    except OSError:
        pass


def check_client(sock, secret):
    """The handshake: return if the client knows the secret, raise
    ClientError (after telling the client) if not."""
    sock.settimeout(AUTH_TIMEOUT)
    try:
        if read_short_line(sock) != AUTH_HELLO:
            _drop(sock, AUTH_REQUIRED)
            raise ClientError("the client offered no answer to a challenge (a secret is required)")
        nonce = os.urandom(AUTH_NONCE_BYTES)
        sock.sendall(AUTH_CHALLENGE + binascii.hexlify(nonce) + b"\n")
        answer = read_short_line(sock)
        if not answer.endswith(b"\n") or not hmac.compare_digest(
            answer[:-1], challenge_answer(secret, nonce)
        ):
            _drop(sock, AUTH_DENIED)
            raise ClientError("wrong answer to the challenge (not the server's secret)")
        sock.sendall(AUTH_ACCEPTED)
    except socket.timeout:
        raise ClientError("no answer to the challenge within %s seconds" % AUTH_TIMEOUT) from None
    except OSError as exc:
        raise ClientError("connection failed during the challenge: %s" % exc) from None
    finally:
        sock.settimeout(None)


def exec_from_one_connection(serversock, execmodel, accepted=None, done=None, secret=None):
    """Accept one connection (unless given) and run what it sends; call
    done() (if given) once the connection is over.  With a secret, the
    client must pass check_client first."""
    if accepted is None:
        clientsock, address = serversock.accept()
    else:
        clientsock, address = accepted
    finished: "List[bool]" = []

    def finish():
        if finished:
            return
        finished.append(True)
        try:
            clientsock.close()
        except OSError:
            pass
        if done is not None:
            done()

    progress("got new connection from %s %s" % tuple(address[:2]))
    try:
        try:
            if secret is not None:
                check_client(clientsock, secret)
            source = read_source(clientsock)
        except ClientError as exc:
            # reported before the client sees the connection close
            progress("got exception", exc)
            complain("dropped client %s %s: %s" % (address[0], address[1], exc))
            return
        if source:
            code = compile(source, "<socket server>", "exec")
            progress("compiled source, executing")
            namespace = {
                "clientsock": clientsock,
                "address": address,
                "execmodel": execmodel,
            }
            try:
                exec(code, namespace)
            finally:
                finish()
                progress("finished executing code")
    finally:
        finish()


class _ThreadExecModel:
    """The ``thread`` execution model, for a server without execnet."""

    backend = "thread"

    def __repr__(self):
        return "<ExecModel 'thread'>"

    @property
    def queue(self):
        import queue

        return queue

    @property
    def subprocess(self):
        import subprocess

        return subprocess

    @property
    def socket(self):
        return socket

    def start(self, func, args=()):
        import _thread

        _thread.start_new_thread(func, tuple(args))

    def get_ident(self):
        return threading.get_ident()

    def sleep(self, delay):
        import time

        time.sleep(delay)

    def fdopen(self, fd, mode, bufsize=1, closefd=True):
        encoding = None if "b" in mode else "utf-8"
        return os.fdopen(fd, mode, bufsize, encoding=encoding, closefd=closefd)

    def Lock(self):
        return threading.RLock()

    def RLock(self):
        return threading.RLock()

    def Event(self):
        return threading.Event()


def get_thread_execmodel():
    """execnet's ``thread`` model where execnet is importable."""
    try:
        from execnet.gateway_base import get_execmodel
    except ImportError:
        return _ThreadExecModel()
    return get_execmodel("thread")


class SocketServer:
    """Accept clients forever, each served by a thread of its own."""

    def __init__(self, serversock, execmodel, secret=None):
        self.serversock = serversock
        self.execmodel = execmodel
        self.secret = secret
        self.startdir = os.getcwd()
        self._lock = threading.Lock()
        self._active = 0
        self._quit = None  # the exception that a client asked us to raise
        self._wake_r, self._wake_w = socket.socketpair()

    def serve_forever(self):
        import selectors

        progress("Entering Accept loop", self.serversock.getsockname())
        selector = selectors.DefaultSelector()
        selector.register(self.serversock, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while self._quit is None:
                ready = [key.fileobj for key, _ in selector.select()]
                if self.serversock in ready and self._quit is None:
                    try:
                        accepted = self.serversock.accept()
                    except OSError as exc:
                        complain("accept failed: %s" % exc)
                        continue
                    self._start_client(accepted)
            raise self._quit
        finally:
            selector.close()
            progress("leaving socketserver execloop")
            try:
                self.serversock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.serversock.close()
            self._wake_r.close()
            self._wake_w.close()

    def _start_client(self, accepted):
        with self._lock:
            self._active += 1
        thread = threading.Thread(
            target=self._serve_client,
            args=(accepted,),
            name="socketserver-client-%s:%s" % tuple(accepted[1][:2]),
            daemon=True,
        )
        try:
            thread.start()
        except BaseException:
            self._client_done()
            accepted[0].close()
            raise

    def _serve_client(self, accepted):
        address = accepted[1]
        done_called = []

        def done():
            done_called.append(True)
            self._client_done()

        try:
            exec_from_one_connection(None, self.execmodel, accepted, done, self.secret)
        except (KeyboardInterrupt, SystemExit) as exc:
            # a client asked the server to stop (quitserver.py)
            self._quit = exc
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        except BaseException as exc:
            progress("got exception", exc)
            complain(
                "dropped client %s %s: %s: %s" % (address[0], address[1], type(exc).__name__, exc)
            )
        finally:
            # (only when the connection ended before it was served)
            if not done_called:
                self._client_done()

    def _client_done(self):
        with self._lock:
            self._active -= 1
            if self._active == 0:
                try:
                    os.chdir(self.startdir)
                except OSError:
                    pass


def serve_channel(channel):
    """The remote_exec mode: serve one connection on the address received."""
    hostport = channel.receive()
    serversock = bind_and_listen(hostport, reuse=False)
    try:
        channel.send(serversock.getsockname())
        exec_from_one_connection(serversock, channel.gateway.execmodel)
    finally:
        serversock.close()


def is_loopback(host):
    """True if host (an address the server is bound to) is a loopback one."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


USAGE = "usage: socketserver.py [--secret-file PATH] [HOST:PORT]  (default %s)" % DEFAULT_ADDRESS


def parse_args(argv):
    """(hostport, secret file or None) from the command line; SystemExit
    with the usage for anything else."""
    hostport = None
    secret_file = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg == "--secret-file" and args:
            secret_file = args.pop(0)
        elif arg.startswith("--secret-file="):
            secret_file = arg[len("--secret-file="):]
        elif arg.startswith("-") or hostport is not None:
            sys.stderr.write(USAGE + "\n")
            raise SystemExit(2)
        else:
            hostport = arg
    return hostport or DEFAULT_ADDRESS, secret_file


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    hostport, secret_file = parse_args(argv)
    secret = None
    if secret_file is not None:
        try:
            secret = read_secret(secret_file)
        except (OSError, ValueError) as exc:
            sys.stderr.write("socketserver.py: cannot use the secret file: %s\n" % (exc,))
            raise SystemExit(2)
    serversock = bind_and_listen(hostport)
    host = serversock.getsockname()[0]
    if not is_loopback(host):
        complain(
            "WARNING: listening on %s, which is not a loopback address: anyone who can "
            "connect runs code as this user%s"
            % (
                host,
                "" if secret is not None else " (no --secret-file given)",
            )
        )
    server = SocketServer(serversock, get_thread_execmodel(), secret)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
elif __name__ == "__channelexec__":
    serve_channel(channel)  # type: ignore[name-defined]  # noqa: F821

#! /usr/bin/env python
"""A socket server that runs one line of Python source per connection.

Each accepted client sends one line: a Python string literal followed by a
newline.  The server evaluates the literal and executes the resulting
source with the globals ``clientsock`` (the accepted socket), ``address``
(the peer address) and ``execmodel`` (the server's execution model).  A
socket gateway sends the worker core this way (XSPEC.md §8, WIRE.md §3.3).

Standalone use::

    python socketserver.py [HOST:PORT]      (default ":8888", port 0 = any)

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

import os
import socket
import sys
import threading

PROGRESS_PREFIX = "socket_readline_exec_server-1.2"

# upper bound for the length of the source line (the worker core is far
# smaller) and for the time a client may take to send it
MAX_LINE_BYTES = 64 * 1024 * 1024
LINE_TIMEOUT = 300.0

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


def exec_from_one_connection(serversock, execmodel, accepted=None, done=None):
    """Accept one connection (unless given) and run what it sends; call
    done() (if given) once the connection is over."""
    if accepted is None:
        clientsock, address = serversock.accept()
    else:
        clientsock, address = accepted
    finished = []

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

    def __init__(self, serversock, execmodel):
        self.serversock = serversock
        self.execmodel = execmodel
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
            exec_from_one_connection(None, self.execmodel, accepted, done)
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    hostport = argv[0] if argv else ":8888"
    serversock = bind_and_listen(hostport)
    server = SocketServer(serversock, get_thread_execmodel())
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
elif __name__ == "__channelexec__":
    serve_channel(channel)  # type: ignore[name-defined]  # noqa: F821

"""Socket gateways: the master's IO over a TCP connection (``socket=host:port``)."""

from __future__ import annotations

import sys

from .gateway_bootstrap import HostNotFound
from .script import socketserver as _server


class SocketSecretError(ConnectionError):
    """The socket server and the gateway disagree about the shared secret
    (``secret_file=``): the server refused the gateway's, asked for one the
    gateway lacks, or checks none while the gateway has one."""


class SocketIO:
    """Byte transport over a connected socket."""

    remoteaddress: str  # "host:port"

    def __init__(self, sock, execmodel) -> None:
        self.sock = sock
        self.execmodel = execmodel
        self._closed: set[str] = set()
        socket = execmodel.socket
        try:
            # IPTOS_LOWDELAY
            sock.setsockopt(socket.SOL_IP, socket.IP_TOS, 0x10)
            sock.setsockopt(socket.SOL_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            sys.stderr.write("WARNING: cannot set socketoption")

    def read(self, numbytes: int) -> bytes:
        """Exactly numbytes bytes from the socket; ``EOFError`` if it ends first."""
        parts = []
        missing = numbytes
        while missing > 0:
            data = self.sock.recv(min(missing, 1 << 20))
            if not data:
                # unlike execnet, EOF carries the usual text (defect D4)
                got = numbytes - missing
                raise EOFError(f"expected {numbytes} bytes, got {got}")
            parts.append(data)
            missing -= len(data)
        return b"".join(parts)

    def write(self, data: bytes) -> None:
        """Send all of data."""
        self.sock.sendall(data)

    def close_read(self) -> None:
        """Shut down the reading direction."""
        try:
            self.sock.shutdown(self.execmodel.socket.SHUT_RD)
        except OSError:
            pass
        self._closed_one("read")

    def close_write(self) -> None:
        """Shut down the writing direction: the peer reads the end."""
        try:
            self.sock.shutdown(self.execmodel.socket.SHUT_WR)
        except OSError:
            pass
        self._closed_one("write")

    def _closed_one(self, side: str) -> None:
        """Release the socket once both directions are closed."""
        self._closed.add(side)
        if len(self._closed) == 2:
            try:
                self.sock.close()
            except OSError:
                pass

    def native_fds(self):
        """Two copies of the socket's descriptor, (read, write), for the C
        core; shutting the socket down (close_write) still ends the stream."""
        try:
            fd = self.sock.fileno()
        except (AttributeError, OSError):
            return None
        if fd < 0:
            return None
        import os

        return os.dup(fd), os.dup(fd)

    def wait(self) -> None:
        """Nothing to wait for: there is no local process."""
        pass

    def kill(self) -> None:
        """Nothing to kill: there is no local process."""
        pass


def start_via(gateway, hostport=None):
    """Start a one-connection socket server on gateway's worker; return the
    (host, port) it listens on."""
    from .script import socketserver

    if hostport is None:
        hostport = ("localhost", 0)
    channel = gateway.remote_exec(socketserver)
    channel.send(hostport)
    host, port = channel.receive()
    if not host or host == "0.0.0.0":
        host = "localhost"
    return host, port


# how long connecting may take before it counts as failed (seconds)
CONNECT_TIMEOUT = 10.0


def _naming_address(exc: OSError, address: str) -> OSError:
    """exc again, of the same class, with a message naming the address."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    text = f"cannot connect to socket server {address}: {reason}"
    try:
        if exc.errno is not None:
            return type(exc)(exc.errno, text)
        return type(exc)(text)
    except Exception:
        return exc


def authenticate(sock, secret: bytes, address: str) -> None:
    """Answer the server's challenge with the shared secret (the handshake
    is described in execnet/script/socketserver.py); SocketSecretError if
    the server does not take it."""
    sock.settimeout(_server.AUTH_TIMEOUT)
    try:
        sock.sendall(_server.AUTH_HELLO)
        line = _server.read_short_line(sock)
        if not line:
            raise SocketSecretError(
                f"socket server {address} closed the connection when offered a shared "
                "secret: it checks none (start it with --secret-file) or is no socket server"
            )
        if line == _server.AUTH_REQUIRED:
            raise SocketSecretError(f"socket server {address} did not take the handshake")
        if not (line.startswith(_server.AUTH_CHALLENGE) and line.endswith(b"\n")):
            raise SocketSecretError(
                f"socket server {address} sent no challenge but {line[:80]!r}"
            )
        import binascii

        try:
            nonce = binascii.unhexlify(line[len(_server.AUTH_CHALLENGE):-1])
        except (binascii.Error, ValueError):
            nonce = b""
        if len(nonce) != _server.AUTH_NONCE_BYTES:
            raise SocketSecretError(f"socket server {address} sent a malformed challenge")
        sock.sendall(_server.challenge_answer(secret, nonce) + b"\n")
        verdict = _server.read_short_line(sock)
        if verdict == _server.AUTH_DENIED:
            raise SocketSecretError(
                f"socket server {address} refused the shared secret (secret_file= "
                "differs from the server's --secret-file)"
            )
        if verdict != _server.AUTH_ACCEPTED:
            raise SocketSecretError(
                f"socket server {address} gave no verdict on the shared secret: {verdict[:80]!r}"
            )
    except OSError as exc:
        if isinstance(exc, SocketSecretError):
            raise
        raise SocketSecretError(
            f"socket server {address}: connection failed during the secret handshake: {exc}"
        ) from exc
    finally:
        try:
            sock.settimeout(None)
        except OSError:
            pass


def refusal_text(sock, first: bytes):
    """When the bootstrap acknowledgement was first (not b"1"): the text of
    the server's refusal line if it is one, else None."""
    if first != _server.AUTH_REQUIRED[:1]:
        return None
    try:
        rest = _server.read_short_line(sock, len(_server.AUTH_REQUIRED) - 1)
    except OSError:
        return None
    if first + rest != _server.AUTH_REQUIRED:
        return None
    return "it requires a shared secret: give the gateway secret_file=PATH"


def create_io(spec, group, execmodel) -> SocketIO:
    """Connect to the socket server named by spec."""
    assert not spec.python, "socket: specifying python executables not yet supported"
    secret = None
    if spec.secret_file:
        if spec.installvia:
            raise ValueError("secret_file= is for socket=HOST:PORT, not installvia=")
        if not isinstance(spec.secret_file, str):
            raise ValueError("secret_file needs a path: secret_file=PATH")
        secret = _server.read_secret(spec.secret_file)
    if spec.installvia:
        host, port = start_via(group[spec.installvia])
    else:
        host, port = spec.socket.split(":")
        port = int(port)
    socket = execmodel.socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    io = SocketIO(sock, execmodel)
    io.remoteaddress = "%s:%d" % (host, port)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect((host, port))
        sock.settimeout(None)
    except socket.gaierror:
        sock.close()
        raise HostNotFound() from None
    except OSError as exc:
        sock.close()
        new = _naming_address(exc, io.remoteaddress)
        if new is exc:
            raise
        raise new from exc
    if secret is not None:
        try:
            authenticate(sock, secret, io.remoteaddress)
        except BaseException:
            sock.close()
            raise
    return io

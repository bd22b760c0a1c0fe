"""Getting a fresh interpreter to run the worker end (the bootstrap lines:
doc/protocol.md)."""

from __future__ import annotations

import binascii
import math
import os
import zlib

import execnet

from . import gateway_base
from .gateway import Gateway

# the directory holding the execnet package, for the import bootstrap
importdir = os.path.dirname(os.path.dirname(execnet.__file__))


class HostNotFound(Exception):
    """The interpreter of a gateway could not be started or reached."""


class UnsupportedPython(HostNotFound):
    """The remote interpreter is too old to run the portable core."""


# the oldest remote interpreter the portable core runs on (it is tested on
# 3.7 to 3.13; execnet 2.1.2 asks for 3.8)
MIN_REMOTE_VERSION = (3, 7)


def sendexec(io, *sources: str) -> None:
    """Send source lines for the remote bootstrap line to execute."""
    source = "\n".join(sources)
    # one line holding a string literal; ASCII because the remote reads it
    # through its locale-dependent text stdin
    io.write((ascii(source) + "\n").encode("ascii"))


def _check_ack(io, spec=None) -> None:
    ack = io.read(1)
    if ack == b"0" and spec is not None:
        # a remote below MIN_REMOTE_VERSION, which wrote its version
        version = b""
        while len(version) < 40 and not version.endswith(b"\n"):
            try:
                version += io.read(1)
            except EOFError:
                break
        _discard(io)
        raise UnsupportedPython(
            "python {} at {} is not supported: execnet needs {}.{} or newer".format(
                version.decode("ascii", "replace").strip(), _where(spec), *MIN_REMOTE_VERSION
            )
        )
    if ack != b"1":
        _discard(io)
        raise AssertionError(f"bad bootstrap acknowledgement {ack!r}")


def _where(spec) -> str:
    """Where spec's interpreter is, for a message."""
    python = spec.python or "python"
    host = spec.ssh or spec.vagrant_ssh
    if host:
        return f"{python} on {host}"
    if spec.via:
        return f"{python} via {spec.via}"
    return python


def _discard(io) -> None:
    """Leave no process or open pipe behind for a failed bootstrap."""
    for name in ("kill", "wait", "close_write", "close_read"):
        try:
            getattr(io, name)()
        except Exception:
            pass


# The first thing a child does with the line: acknowledge it.  The master
# may write once the line is read, and the child's imports then
# overlap with what the master does next (the next gateway, remote_exec).
_ACK = ("import sys", "sys.stdout.write('1')", "sys.stdout.flush()")
# The same for an interpreter of any version, which may be too old for the
# portable core (as old as 2.x): such a one answers 0 and its version, and
# ends before it reads the core, whose syntax it could not parse.
_ACK_CHECKED = (
    "import sys",
    f"if sys.version_info[:2] < {MIN_REMOTE_VERSION!r}:",
    "    sys.stdout.write('0%d.%d.%d\\n' % tuple(sys.version_info[:3]))",
    "    sys.stdout.flush()",
    "    sys.exit(1)",
    *_ACK[1:],
)


GRACE_ENV = "EXECNET_TERMINATE_GRACE"


def terminate_grace(spec):
    """The grace spec's worker gives its running tasks when it is told to
    end: seconds (a float) from the spec's ``grace=`` or else the
    environment's EXECNET_TERMINATE_GRACE, or None for the default of the
    worker (DEFAULT_TERMINATE_GRACE).  A value that is not a finite,
    non-negative number raises ValueError."""
    value = spec.grace
    where = "grace="
    if value is None:
        value = os.environ.get(GRACE_ENV) or None
        where = GRACE_ENV + "="
        if value is None:
            return None
    try:
        seconds = float(value) if isinstance(value, str) else math.nan
    except ValueError:
        seconds = math.nan
    if not (0.0 <= seconds < math.inf):
        raise ValueError(f"{where}{value!r}: the grace must be a number of seconds, 0 or more")
    return seconds


def _serve_line(spec, io=None) -> str:
    grace = terminate_grace(spec)
    more = "" if grace is None else f", grace={grace!r}"
    output_fd = getattr(io, "output_fd", None)
    io_args = "execmodel" if output_fd is None else f"execmodel, output_fd={output_fd!r}"
    return f"serve(init_popen_io({io_args}), id={spec.id + '-worker'!r}{more})"


def bootstrap_import(io, spec) -> None:
    """The child is our own interpreter: let it import the package."""
    sendexec(
        io,
        *_ACK,
        # first, so that an execnet directory in the worker's current
        # directory (sys.path[0] under -c) does not shadow ours
        f"if sys.path[:1] != [{importdir!r}]:",
        f"    sys.path.insert(0, {importdir!r})",
        "from execnet.backend import serve, init_popen_io, get_execmodel",
        f"execmodel = get_execmodel({spec.execmodel!r})",
        _serve_line(spec, io),
    )
    _check_ack(io)


_portable_source = None


def portable_core_source() -> str:
    """The text of the portable core, shipped to interpreters that lack us."""
    global _portable_source
    if _portable_source is None:
        with open(gateway_base.__file__.replace(".pyc", ".py"), encoding="utf-8") as f:
            _portable_source = f.read()
    return _portable_source


# What the remote needs to unpack a packed source: C modules only (base64
# would import re, which costs a fresh interpreter milliseconds).
_UNPACK = "import zlib,binascii;exec(zlib.decompress(binascii.a2b_base64(%r)))"

# packed sources by name, made once per process
_packed: dict[str, str] = {}


def packed_source(name: str, make) -> str:
    """One line of source that executes make()'s text, compressed.

    The text is executed by exec() without explicit namespaces, so it runs
    in the namespace of the code holding the line: the remote's __main__
    module for popen/ssh, the socket server's fresh globals for socket.
    """
    line = _packed.get(name)
    if line is None:
        data = zlib.compress(make().encode("utf-8"), 9)
        line = _UNPACK % binascii.b2a_base64(data, newline=False).decode("ascii")
        _packed[name] = line
    return line


def bootstrap_exec(io, spec) -> None:
    """Ship the portable core itself (python=, ssh, vagrant_ssh, via)."""
    try:
        sendexec(
            io,
            *_ACK_CHECKED,
            packed_source("core", portable_core_source),
            f"execmodel = get_execmodel({spec.execmodel!r})",
            _serve_line(spec, io),
        )
        _check_ack(io, spec)
    except (EOFError, BrokenPipeError):
        # (a broken pipe: the process ended before it read the line, e.g.
        # ssh that could not connect)
        status = io.wait()
        if status == 255 and hasattr(io, "remoteaddress"):
            _discard(io)
            raise HostNotFound(io.remoteaddress) from None
        # otherwise execnet builds a gateway on the dead connection;
        # its receiver ends at once


# seconds a socket server may take to acknowledge the worker source
BOOTSTRAP_TIMEOUT = 60.0


_SOCKET_WORKER = (
    "import socket",
    "class SocketIO:",
    "    def __init__(self, sock, execmodel):",
    "        self.sock = sock",
    "        self.execmodel = execmodel",
    "        try:",
    "            sock.setsockopt(socket.SOL_IP, socket.IP_TOS, 0x10)",
    "            sock.setsockopt(socket.SOL_TCP, socket.TCP_NODELAY, 1)",
    "        except (AttributeError, OSError):",
    "            sys.stderr.write('WARNING: cannot set socketoption')",
    "    def read(self, numbytes):",
    "        parts = []",
    "        missing = numbytes",
    "        while missing > 0:",
    "            data = self.sock.recv(min(missing, 1 << 20))",
    "            if not data:",
    "                raise EOFError('expected %d bytes, got %d'"
    " % (numbytes, numbytes - missing))",
    "            parts.append(data)",
    "            missing -= len(data)",
    "        return b''.join(parts)",
    "    def write(self, data):",
    "        self.sock.sendall(data)",
    "    def close_read(self):",
    "        try:",
    "            self.sock.shutdown(socket.SHUT_RD)",
    "        except OSError:",
    "            pass",
    "    def close_write(self):",
    "        try:",
    "            self.sock.shutdown(socket.SHUT_WR)",
    "        except OSError:",
    "            pass",
    "    def wait(self):",
    "        pass",
    "    def kill(self):",
    "        pass",
    "try:",
    "    execmodel",
    "except NameError:",
    "    execmodel = get_execmodel('thread')",
    # The server process is shared with other clients: a task that does
    # not end is left running instead of interrupting the whole process.
    "class SocketWorkerGateway(WorkerGateway):",
    "    def _terminate_execution(self):",
    "        self._execpool.trigger_shutdown()",
    "        if not self._execpool.waitall(self._grace):",
    "            self._trace('execution ongoing after the grace, left running')",
)


def _socket_worker_source() -> str:
    return portable_core_source() + "\n" + "\n".join(_SOCKET_WORKER)


def _socket_grace_line(spec) -> tuple[str, ...]:
    grace = terminate_grace(spec)
    return () if grace is None else (f"gateway._grace = {grace!r}",)


def bootstrap_socket(io, spec) -> None:
    """Ship the portable core to a socket server (uses its execmodel)."""
    sendexec(
        io,
        packed_source("socket", _socket_worker_source),
        "io = SocketIO(clientsock, execmodel)",
        "io.write(b'1')",
        f"gateway = SocketWorkerGateway(io, {str(spec) + '-worker'!r}, _startcount=2)",
        *_socket_grace_line(spec),
        "gateway.serve()",
    )
    sock = getattr(io, "sock", None)
    if sock is not None:
        # a peer that is no socket server must not keep us waiting forever
        sock.settimeout(BOOTSTRAP_TIMEOUT)
    address = getattr(io, "remoteaddress", "?")
    try:
        ack = io.read(1)
        refusal = None
        if ack != b"1" and sock is not None:
            from .gateway_socket import refusal_text

            refusal = refusal_text(sock, ack)
    except (EOFError, OSError) as exc:
        _discard(io)
        if sock is not None:
            sock.close()
        raise EOFError(f"socket server {address} did not start the worker: {exc!r}") from exc
    if ack != b"1":
        _discard(io)
        if sock is not None:
            sock.close()
        if refusal is not None:
            from .gateway_socket import SocketSecretError

            raise SocketSecretError(f"socket server {address} refused the gateway: {refusal}")
        raise AssertionError(f"bad bootstrap acknowledgement {ack!r}")
    if sock is not None:
        sock.settimeout(None)


def bootstrap(io, spec) -> Gateway:
    """Start the worker on the other end of io; return the gateway."""
    if spec.popen:
        if spec.via or spec.python:
            bootstrap_exec(io, spec)
        else:
            bootstrap_import(io, spec)
    elif spec.ssh or spec.vagrant_ssh:
        bootstrap_exec(io, spec)
    elif spec.socket:
        bootstrap_socket(io, spec)
    else:
        raise ValueError("unknown gateway type, can't bootstrap")
    return Gateway(io, spec)

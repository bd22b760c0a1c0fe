"""execnet's portable core: the serializer, framing, channels and the worker.

This module is self-contained (standard library only) because its source is
what a remote interpreter without our extension executes.  When it is
imported as ``execnet.gateway_base`` and the C extension loads, the hot
paths are replaced by their C twins; ``BACKEND`` says which are active.
"""

from __future__ import annotations

import _thread
import io
import os
import struct
import sys
import threading
import time
import weakref

# For type checkers only: importing typing would slow down every worker start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from typing import Callable

# --------------------------------------------------------------------------
# serializer (WIRE.md §7, doc/serializer.md)
# --------------------------------------------------------------------------

DUMPFORMAT_VERSION = b"\x02"
FOUR_BYTE_INT_MAX = 2147483647
FOUR_BYTE_INT_MIN = -2147483648
# Containers nested deeper than this are refused in both directions.
MAX_NESTING = 1000
# Streams are read in pieces of at most this size, so that a length field
# alone never makes us allocate much.
_READ_CHUNK = 1 << 20


def bchr(n: int) -> bytes:
    return bytes([n])


class DataFormatError(Exception):
    pass


class DumpError(DataFormatError):
    """Error while serializing an object."""


class LoadError(DataFormatError):
    """Error while unserializing an object."""


class opcode:
    """The serializer's opcodes, one byte each."""

    BUILDTUPLE = b"@"
    BYTES = b"A"
    CHANNEL = b"B"
    FALSE = b"C"
    FLOAT = b"D"
    FROZENSET = b"E"
    INT = b"F"
    LONG = b"G"
    LONGINT = b"H"
    LONGLONG = b"I"
    NEWDICT = b"J"
    NEWLIST = b"K"
    NONE = b"L"
    PY2STRING = b"M"
    PY3STRING = b"N"
    SET = b"O"
    SETITEM = b"P"
    STOP = b"Q"
    TRUE = b"R"
    UNICODE = b"S"
    COMPLEX = b"T"


_int32 = struct.Struct("!i")
_pack_int32 = _int32.pack
_unpack_int32 = _int32.unpack
_pack_double = struct.Struct("!d").pack
_pack_complex = struct.Struct("!dd").pack


def _put_sized(out: list, op: bytes, data: bytes, what: str) -> None:
    if len(data) > FOUR_BYTE_INT_MAX:
        raise DumpError(f"{what} is too long")
    # header and data apart: large data is copied once, by the final join
    out += (op + _pack_int32(len(data)), data)


def _put_int(out: list, value: int) -> None:
    if FOUR_BYTE_INT_MIN <= value <= FOUR_BYTE_INT_MAX:
        out.append(b"F" + _pack_int32(value))
    else:
        _put_sized(out, b"H", str(value).encode("ascii"), "string")


def _put_str(out: list, value: str) -> None:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise DumpError("strings must be utf-8 encodable") from None
    _put_sized(out, b"N", data, "string")


# type -> function(out, value) appending the value's encoding to out
_LEAF_ENCODERS = {
    type(None): lambda out, value: out.append(b"L"),
    bool: lambda out, value: out.append(b"R" if value else b"C"),
    int: _put_int,
    float: lambda out, value: out.append(b"D" + _pack_double(value)),
    complex: lambda out, value: out.append(b"T" + _pack_complex(value.real, value.imag)),
    bytes: lambda out, value: _put_sized(out, b"A", value, "string"),
    str: _put_str,
}
_COLLECTIONS = {tuple: (b"@", "tuple"), set: (b"O", "set"), frozenset: (b"E", "set")}
_SETITEM = (b"P", -1)


def _encode(obj: object, prefix: bytes = b"") -> bytes:
    """Encode obj followed by STOP, after prefix.

    An explicit stack holds (value, level) pairs still to encode and
    (raw bytes, -1) pairs to emit as they are.
    """
    out: list[bytes] = [prefix]
    todo: list[tuple[object, int]] = [(obj, 0)]
    while todo:
        value, level = todo.pop()
        if level < 0:
            out.append(value)  # type: ignore[arg-type]
            continue
        tp = type(value)
        leaf = _LEAF_ENCODERS.get(tp)
        if leaf is not None:
            leaf(out, value)
            continue
        if tp in (list, dict, tuple, set, frozenset):
            if level >= MAX_NESTING:
                raise DumpError(
                    f"can't serialize {tp}: nested deeper than {MAX_NESTING} levels"
                )
            inner = level + 1
            if tp is list:
                if len(value) > FOUR_BYTE_INT_MAX:  # type: ignore[arg-type]
                    raise DumpError("list is too long")
                out.append(b"K" + _pack_int32(len(value)))  # type: ignore[arg-type]
                for i in range(len(value) - 1, -1, -1):  # type: ignore[arg-type]
                    todo += (_SETITEM, (value[i], inner), (b"F" + _pack_int32(i), -1))  # type: ignore[index]
            elif tp is dict:
                out.append(b"J")
                for key, item in reversed(list(value.items())):  # type: ignore[attr-defined]
                    todo += (_SETITEM, (item, inner), (key, inner))
            else:
                op, what = _COLLECTIONS[tp]
                items = list(value)  # type: ignore[call-overload]
                if len(items) > FOUR_BYTE_INT_MAX:
                    raise DumpError(f"{what} is too long")
                todo.append((op + _pack_int32(len(items)), -1))
                todo += [(item, inner) for item in reversed(items)]
        elif tp.__name__ == "Channel":
            out.append(b"B" + _pack_int32(value.id))  # type: ignore[attr-defined]
        else:
            raise DumpError(f"can't serialize {tp}")
    out.append(b"Q")
    return b"".join(out)


def dumps(obj: object) -> bytes:
    """Serialize obj to bytes (with the dump format version byte)."""
    return _encode(obj, DUMPFORMAT_VERSION)


def dump(byteio, obj: object) -> None:
    """Write the serialization of obj to byteio."""
    byteio.write(dumps(obj))


def dumps_internal(obj: object) -> bytes:
    """Serialize obj without version byte, as message payloads carry it."""
    return _encode(obj)


class _BufferReader(io.BytesIO):
    """Reads from bytes that are all there; read() may return short."""

    def __init__(self, data) -> None:
        if isinstance(data, str):
            raise TypeError("can't load from str, expected a bytes-like object")
        data = data if type(data) is bytes else bytes(memoryview(data))
        super().__init__(data)  # shares data until written to
        self.size = len(data)

    def consumed(self) -> int:
        """How many bytes were read."""
        return self.tell()

    def require(self, n: int) -> None:
        have = self.size - self.tell()
        if have < n:
            raise EOFError(f"expected {n} bytes, got {have}")


class _StreamReader:
    """Reads from a file-like object, in bounded pieces; read() may return
    short at the end."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.ahead = b""  # bytes read by require() and not yet consumed
        self.taken = 0  # bytes consumed

    def read(self, n: int) -> bytes:
        try:
            self.require(n)
        except EOFError:
            pass  # the caller sees the short read
        data, self.ahead = self.ahead[:n], self.ahead[n:]
        self.taken += len(data)
        return data

    def consumed(self) -> int:
        """How many bytes were read."""
        return self.taken

    def require(self, n: int) -> None:
        parts = [self.ahead]
        have = len(self.ahead)
        while have < n:
            chunk = self.stream.read(min(n - have, _READ_CHUNK))
            if not chunk:
                self.ahead = b"".join(parts)
                raise EOFError(f"expected {n} bytes, got {have}")
            parts.append(bytes(chunk))
            have += len(chunk)
        if len(parts) > 1:
            self.ahead = b"".join(parts)


def _channelfactory_of(channel_or_gateway):
    gateway = getattr(channel_or_gateway, "gateway", channel_or_gateway)
    return gateway._channelfactory


class Unserializer:
    """A stack machine turning the serializer's opcodes back into values."""

    def __init__(self, stream, channel_or_gateway=None, strconfig=None) -> None:
        # a file-like object, or the bytes themselves
        if hasattr(stream, "read"):
            self.reader: _BufferReader | _StreamReader = _StreamReader(stream)
        else:
            self.reader = _BufferReader(stream)
        self.read = self.reader.read
        self.channel_or_gateway = channel_or_gateway
        if strconfig is None:
            strconfig = getattr(channel_or_gateway, "_strconfig", (False, False))
        self.py2str_as_py3str, self.py3str_as_py2str = strconfig
        self.stack: list[object] = []
        self.depths: list[int] = []  # nesting depth of each stack entry
        self.listed = 0  # the sizes of all lists so far, added up
        # leaves (depth 0) are pushed by appending to both lists
        self._push_value = self.stack.append
        self._push_depth = self.depths.append

    def load(self, versioned: bool = False):
        if versioned:
            version = self.read(1)
            if version != DUMPFORMAT_VERSION:
                raise LoadError(f"wrong dumpformat version {version!r}")
        read = self.read
        dispatch = self._dispatch
        while True:
            op = read(1)
            handler = dispatch.get(op)
            if handler is None:
                if not op:
                    raise EOFError("expected 1 bytes, got 0")
                raise LoadError(f"unknown opcode {op!r} - wire protocol corruption?")
            if handler is Unserializer._stop:
                break
            handler(self)
        if len(self.stack) != 1:
            raise LoadError("internal unserialization error")
        return self.stack.pop()

    # helpers

    def _exact(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise EOFError(f"expected {n} bytes, got {len(data)}")
        return data

    def _length(self) -> int:
        data = self.read(4)
        if len(data) != 4:
            raise EOFError(f"expected 4 bytes, got {len(data)}")
        (n,) = _unpack_int32(data)
        if n < 0:
            raise LoadError(f"negative length {n}")
        return n

    def _push(self, value: object, depth: int = 0) -> None:
        if depth > MAX_NESTING:
            raise LoadError(f"data nested deeper than {MAX_NESTING} levels")
        self.stack.append(value)
        self.depths.append(depth)

    def _decode(self, data: bytes, encoding: str) -> str:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as e:
            raise LoadError(f"invalid string data: {e}") from None

    def _pop_items(self, what: str) -> tuple[list[object], int]:
        n = self._length()
        if n > len(self.stack):
            raise LoadError(f"not enough items for {what}")
        if n == 0:
            return [], 1
        items = self.stack[-n:]
        depth = 1 + max(self.depths[-n:])
        del self.stack[-n:], self.depths[-n:]
        return items, depth

    # opcodes

    def _none(self) -> None:
        self._push_value(None)
        self._push_depth(0)

    def _true(self) -> None:
        self._push_value(True)
        self._push_depth(0)

    def _false(self) -> None:
        self._push_value(False)
        self._push_depth(0)

    def _int(self) -> None:
        self._push_value(_int32.unpack(self._exact(4))[0])
        self._push_depth(0)

    def _longint(self) -> None:
        text = self._exact(self._length())
        try:
            self._push_value(int(text))
            self._push_depth(0)
        except ValueError as e:
            raise LoadError(f"invalid integer data: {e}") from None

    def _float(self) -> None:
        self._push_value(struct.unpack("!d", self._exact(8))[0])
        self._push_depth(0)

    def _complex(self) -> None:
        self._push_value(complex(*struct.unpack("!dd", self._exact(16))))
        self._push_depth(0)

    def _bytes(self) -> None:
        self._push_value(self._exact(self._length()))
        self._push_depth(0)

    def _unicode(self) -> None:
        self._push_value(self._decode(self._exact(self._length()), "utf-8"))
        self._push_depth(0)

    def _py2string(self) -> None:
        data = self._exact(self._length())
        self._push_value(self._decode(data, "latin-1") if self.py2str_as_py3str else data)
        self._push_depth(0)

    def _py3string(self) -> None:
        data = self._exact(self._length())
        self._push_value(data if self.py3str_as_py2str else self._decode(data, "utf-8"))
        self._push_depth(0)

    def _newlist(self) -> None:
        n = self._length()
        # A list of n items is followed by at least n bytes of setitems, and
        # the data is as long as all lists so far together (lists nested in
        # a list lie in the bytes after it: else a run of K opcodes would
        # claim them again and again): check before allocating.
        self.listed += n
        self.reader.require(max(n, self.listed - self.reader.consumed()))
        self._push([None] * n, 1)

    def _newdict(self) -> None:
        self._push({}, 1)

    def _setitem(self) -> None:
        if len(self.stack) < 3:
            raise LoadError("not enough items for setitem")
        value = self.stack.pop()
        key = self.stack.pop()
        depth = max(self.depths.pop(), self.depths.pop()) + 1
        target = self.stack[-1]
        if type(target) not in (dict, list):
            raise LoadError(f"can't set an item on {type(target).__name__}")
        try:
            target[key] = value  # type: ignore[index]
        except (TypeError, IndexError) as e:
            raise LoadError(f"bad setitem: {e}") from None
        if depth > self.depths[-1]:
            if depth > MAX_NESTING:
                raise LoadError(f"data nested deeper than {MAX_NESTING} levels")
            self.depths[-1] = depth

    def _buildtuple(self) -> None:
        items, depth = self._pop_items("tuple")
        self._push(tuple(items), depth)

    def _set(self) -> None:
        items, depth = self._pop_items("set")
        try:
            self._push(set(items), depth)
        except TypeError as e:
            raise LoadError(f"bad set item: {e}") from None

    def _frozenset(self) -> None:
        items, depth = self._pop_items("set")
        try:
            self._push(frozenset(items), depth)
        except TypeError as e:
            raise LoadError(f"bad set item: {e}") from None

    def _channel(self) -> None:
        (channelid,) = _int32.unpack(self._exact(4))
        if self.channel_or_gateway is None:
            raise LoadError("can't load a channel reference without a gateway")
        self._push_value(_channelfactory_of(self.channel_or_gateway).new(channelid))
        self._push_depth(0)

    def _stop(self) -> None:  # never called: load() stops on it
        raise AssertionError

    _dispatch = {
        b"@": _buildtuple,
        b"A": _bytes,
        b"B": _channel,
        b"C": _false,
        b"D": _float,
        b"E": _frozenset,
        b"F": _int,
        b"G": _int,
        b"H": _longint,
        b"I": _longint,
        b"J": _newdict,
        b"K": _newlist,
        b"L": _none,
        b"M": _py2string,
        b"N": _py3string,
        b"O": _set,
        b"P": _setitem,
        b"Q": _stop,
        b"R": _true,
        b"S": _unicode,
        b"T": _complex,
    }


def loads(bytestring, py2str_as_py3str: bool = False, py3str_as_py2str: bool = False):
    """Return the value serialized in bytestring by dumps()."""
    strconfig = (py2str_as_py3str, py3str_as_py2str)
    return Unserializer(bytestring, strconfig=strconfig).load(versioned=True)


def load(io, py2str_as_py3str: bool = False, py3str_as_py2str: bool = False):
    """Read one serialized value from io, leaving io positioned after it."""
    strconfig = (py2str_as_py3str, py3str_as_py2str)
    return Unserializer(io, strconfig=strconfig).load(versioned=True)


def loads_internal(data, channel_or_gateway=None, strconfig=None):
    """Return the value of a message payload (serialized without version)."""
    return Unserializer(data, channel_or_gateway, strconfig).load()


# --------------------------------------------------------------------------
# runtime: tracing, exec models, worker pools, framing, channels, gateways
# (WIRE.md §1-6, LIFECYCLE.md)
# --------------------------------------------------------------------------

# tracing (LIFECYCLE.md §9): decided once, when this module is loaded

DEBUG = os.environ.get("EXECNET_DEBUG")
fn = None  # the trace file's path when tracing goes to a file


def notrace(*msg: object) -> None:
    """The trace function when tracing is off."""


def _trace_text(msg) -> str:
    return " ".join(str(part) for part in msg)


if DEBUG == "2":

    def trace(*msg: object) -> None:
        try:
            sys.stderr.write(f"[{os.getpid()}] {_trace_text(msg)}\n")
            sys.stderr.flush()
        except Exception:
            pass

elif DEBUG:
    import tempfile

    fn = os.path.join(tempfile.gettempdir(), "execnet-debug-%d" % os.getpid())
    _debugfile = open(fn, "w")

    def trace(*msg: object) -> None:
        try:
            _debugfile.write(_trace_text(msg) + "\n")
            _debugfile.flush()
        except Exception as exc:
            try:
                sys.stderr.write(f"[{os.getpid()}] exception during tracing: {exc!r}\n")
            except Exception:
                pass

else:
    trace = notrace


# constants and exceptions

INTERRUPT_TEXT = "keyboard-interrupted"
MAIN_THREAD_ONLY_DEADLOCK_TEXT = (
    "concurrent remote_exec would cause deadlock for main_thread_only execmodel"
)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


# "setcallback() was given no endmarker"
NO_ENDMARKER_WANTED = _Marker("NO_ENDMARKER_WANTED")
# queued into a channel's item queue when nothing more will arrive
ENDMARKER = _Marker("ENDMARKER")


class RemoteError(Exception):
    """An exception raised on the other side, carried as formatted text."""

    def __init__(self, formatted: str) -> None:
        super().__init__()
        self.formatted = formatted

    def __str__(self) -> str:
        return self.formatted

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}: {self.formatted}"

    def warn(self) -> None:
        if self.formatted != INTERRUPT_TEXT:
            sys.stderr.write(f"[{os.getpid()}] Warning: unhandled {self!r}\n")


class TimeoutError(IOError):
    """A blocking operation did not finish in time."""


class GatewayReceivedTerminate(Exception):
    """Raised by the GATEWAY_TERMINATE handler to stop the receiver."""


def geterrortext(exc: BaseException) -> str:
    """The formatted traceback of exc (or a one-line summary)."""
    try:
        import traceback

        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return "".join(lines)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        return f"{type(exc).__name__}: {exc}"


# execution models (API.md §9)


class ExecModel:
    """The concurrency primitives one side of a gateway uses.

    Subclasses provide: ``backend`` (the name), the modules ``queue``,
    ``subprocess`` and ``socket``, and ``start``, ``get_ident``, ``sleep``,
    ``fdopen``, ``Lock``, ``RLock`` and ``Event``.
    """

    backend: str = "abstract"

    def __repr__(self) -> str:
        return f"<ExecModel {self.backend!r}>"

    if TYPE_CHECKING:
        # What users of the base type may call.  RLock stays unannotated as
        # in execnet 2.1: pytest-xdist's strict mypy run expects a call to an
        # untyped function there (its "type: ignore" would be unused else).
        def RLock(self):
            ...

        def Event(self) -> threading.Event: ...


class ThreadExecModel(ExecModel):
    backend = "thread"

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
        import socket

        return socket

    def start(self, func, args=()) -> None:
        _thread.start_new_thread(func, tuple(args))

    def get_ident(self) -> int:
        return _thread.get_ident()

    def sleep(self, delay: float) -> None:
        time.sleep(delay)

    def fdopen(self, fd, mode, bufsize=1, closefd=True):
        encoding = None if "b" in mode else "utf-8"
        return os.fdopen(fd, mode, bufsize, encoding=encoding, closefd=closefd)

    def Lock(self):
        return threading.RLock()

    def RLock(self):
        return threading.RLock()

    def Event(self):
        # the C core's: the same interface, cheaper, and waits without the GIL
        return threading.Event() if _core is None else _core.Event()


class MainThreadOnlyExecModel(ThreadExecModel):
    backend = "main_thread_only"


class EventletExecModel(ExecModel):
    backend = "eventlet"

    @property
    def queue(self):
        import eventlet.queue

        return eventlet.queue

    @property
    def subprocess(self):
        import eventlet.green.subprocess

        return eventlet.green.subprocess

    @property
    def socket(self):
        import eventlet.green.socket

        return eventlet.green.socket

    def start(self, func, args=()) -> None:
        import eventlet

        eventlet.spawn_n(func, *args)

    def get_ident(self) -> int:
        import eventlet.green.thread

        return eventlet.green.thread.get_ident()

    def sleep(self, delay: float) -> None:
        import eventlet

        eventlet.sleep(delay)

    def fdopen(self, fd, mode, bufsize=1, closefd=True):
        import eventlet.green.os

        encoding = None if "b" in mode else "utf-8"
        return eventlet.green.os.fdopen(
            fd, mode, bufsize, encoding=encoding, closefd=closefd
        )

    def Lock(self):
        return self.RLock()

    def RLock(self):
        import eventlet.green.threading

        return eventlet.green.threading.RLock()

    def Event(self):
        import eventlet.green.threading

        return eventlet.green.threading.Event()


class GeventExecModel(ExecModel):
    backend = "gevent"

    @property
    def queue(self):
        import gevent.queue

        return gevent.queue

    @property
    def subprocess(self):
        import gevent.subprocess

        return gevent.subprocess

    @property
    def socket(self):
        import gevent.socket

        return gevent.socket

    def start(self, func, args=()) -> None:
        import gevent

        gevent.spawn(func, *args)

    def get_ident(self) -> int:
        import gevent.thread

        return gevent.thread.get_ident()

    def sleep(self, delay: float) -> None:
        import gevent

        gevent.sleep(delay)

    def fdopen(self, fd, mode, bufsize=1, closefd=True):
        import gevent.fileobject

        return gevent.fileobject.FileObjectThread(fd, mode, bufsize, closefd=closefd)

    def Lock(self):
        return self.RLock()

    def RLock(self):
        import gevent.lock

        return gevent.lock.RLock()

    def Event(self):
        import gevent.event

        return gevent.event.Event()


_EXECMODELS = {
    "thread": ThreadExecModel,
    "main_thread_only": MainThreadOnlyExecModel,
    "eventlet": EventletExecModel,
    "gevent": GeventExecModel,
}
_THREAD_BACKENDS = ("thread", "main_thread_only")


def get_execmodel(backend):
    """A new ExecModel for a backend name; an ExecModel is returned as is."""
    if isinstance(backend, ExecModel):
        return backend
    try:
        return _EXECMODELS[backend]()
    except (KeyError, TypeError):
        raise ValueError(f"unknown execmodel {backend!r}") from None


# worker pool (API.md §10)


class Reply:
    """The outcome of one call run by a WorkerPool."""

    def __init__(self, task, execmodel) -> None:
        self.task = task  # (function, args, kwargs)
        self.running = True
        self._done = execmodel.Event()
        self._result = None
        self._exception: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Reply {self.task!r}>"

    def run(self) -> None:
        func, args, kwargs = self.task
        try:
            self._result = func(*args, **kwargs)
        except BaseException as exc:
            self._exception = exc
        finally:
            self.running = False
            self._done.set()

    def waitfinish(self, timeout=None) -> None:
        """Wait for the call to finish (its exception is not raised)."""
        if not self._done.wait(timeout):
            raise OSError(f"timeout waiting for {self.task!r}")

    def get(self, timeout=None):
        """The call's result; its exception is raised again on every get()."""
        self.waitfinish(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result


class WorkerPool:
    """Runs calls asynchronously, each in a new thread (or greenlet).

    With ``hasprimary`` one thread can volunteer as the primary thread
    (integrate_as_primary_thread): a call is handed to it whenever it is
    idle.  The main_thread_only model only ever uses the primary.
    """

    def __init__(self, execmodel, hasprimary: bool = False) -> None:
        if hasprimary and execmodel.backend not in _THREAD_BACKENDS:
            raise ValueError("hasprimary=True requires thread model")
        self.execmodel = execmodel
        self._lock = execmodel.Lock()
        self._running: set[Reply] = set()
        self._shuttingdown = False
        self._waiters: list = []  # events set when nothing is running
        self._hasprimary = hasprimary
        self._primary_only = hasprimary and execmodel.backend == "main_thread_only"
        self._primary_busy = False
        self._primary_task: Reply | None = None
        self._primary_wakeup = execmodel.Event()
        self._primary_idle = execmodel.Event()
        self._primary_idle.set()

    def active_count(self) -> int:
        return len(self._running)

    def spawn(self, func, *args, **kwargs) -> Reply:
        reply = Reply((func, args, kwargs), self.execmodel)
        while True:
            with self._lock:
                if self._shuttingdown:
                    raise ValueError("pool is shutting down")
                if self._hasprimary and not self._primary_busy:
                    self._running.add(reply)
                    self._primary_busy = True
                    self._primary_idle.clear()
                    self._primary_task = reply
                    self._primary_wakeup.set()
                    return reply
                if not self._primary_only:
                    self._running.add(reply)
                    self.execmodel.start(self._perform, (reply,))
                    return reply
            # main_thread_only: wait until the primary finished its task
            self._primary_idle.wait()

    def _perform(self, reply: Reply) -> None:
        try:
            reply.run()
        finally:
            with self._lock:
                self._running.discard(reply)
                if not self._running:
                    for event in self._waiters:
                        event.set()
                    del self._waiters[:]

    def integrate_as_primary_thread(self, reader=None) -> None:
        """Run the calls handed to the primary until the pool shuts down.

        reader, the C core's connection: while idle, this thread reads it
        itself (Connection.pump), so that a task needs no other thread to
        wake this one.
        """
        if not self._hasprimary:
            raise ValueError("pool has no primary thread")
        wakeup = self._primary_wakeup
        while True:
            while reader is not None and not wakeup.is_set():
                mark = reader.dispatched  # before looking: nothing is missed
                if not wakeup.is_set() and not reader.pump(mark):
                    reader = None  # reading ended
            wakeup.wait()
            with self._lock:
                reply = self._primary_task
                self._primary_task = None
                self._primary_wakeup.clear()
                if reply is None and self._shuttingdown:
                    return
            if reply is None:
                continue
            try:
                self._perform(reply)
            finally:
                with self._lock:
                    self._primary_busy = False
                    self._primary_idle.set()
                    if self._shuttingdown:
                        self._primary_wakeup.set()
            if isinstance(reply._exception, KeyboardInterrupt):
                raise reply._exception

    def waitall(self, timeout=None) -> bool:
        """True once nothing is running, False if timeout passed first."""
        with self._lock:
            if not self._running:
                return True
            event = self.execmodel.Event()
            self._waiters.append(event)
        return bool(event.wait(timeout))

    def trigger_shutdown(self) -> None:
        """Refuse new calls and let the primary thread go when it is idle."""
        with self._lock:
            self._shuttingdown = True
            self._primary_wakeup.set()
            self._primary_idle.set()

    def terminate(self, timeout=None) -> bool:
        self.trigger_shutdown()
        return self.waitall(timeout=timeout)


# IO and message framing (WIRE.md §1, §4)

_header = struct.Struct("!bii")
HEADER_SIZE = _header.size


class Popen2IO:
    """Byte transport over a pair of files (write side first)."""

    error = (IOError, OSError, EOFError)

    def __init__(self, outfile, infile, execmodel) -> None:
        self.outfile = outfile
        self.infile = infile
        self.execmodel = execmodel
        # text files are used through their binary buffers
        self._read = getattr(infile, "buffer", infile).read
        self._out = getattr(outfile, "buffer", outfile)

    def read(self, numbytes: int) -> bytes:
        """Exactly numbytes bytes; EOFError if the stream ends first."""
        parts = []
        missing = numbytes
        while missing > 0:
            # bounded pieces: a bogus length must not allocate much
            data = self._read(min(missing, _READ_CHUNK))
            if not data:
                got = numbytes - missing
                raise EOFError(f"expected {numbytes} bytes, got {got}")
            parts.append(data)
            missing -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        self._out.write(data)
        self._out.flush()

    def close_read(self) -> None:
        self.infile.close()

    def close_write(self) -> None:
        self.outfile.close()

    def native_fds(self):
        """Copies of the (read, write) descriptors for the C core, or None
        when this IO does not simply read and write two files."""
        if self._read != getattr(self.infile, "buffer", self.infile).read:
            return None  # reading was replaced (tests inject faults so)
        try:
            rfd, wfd = self.infile.fileno(), self.outfile.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        return os.dup(rfd), os.dup(wfd)


def _frame(msgcode: int, channelid: int, data: bytes) -> bytes:
    """One message as it travels: header and payload."""
    return _header.pack(msgcode, channelid, len(data)) + data


def _read_frame(io) -> tuple[int, int, bytes]:
    """Read one message from io: (code, channel id, payload).

    Raises EOFError when the stream ends and DataFormatError for a frame
    that cannot be valid.
    """
    try:
        header = io.read(HEADER_SIZE)
    except EOFError as exc:
        raise EOFError("couldn't load message header, " + " ".join(map(str, exc.args)))
    msgcode, channelid, length = _header.unpack(header)
    if length < 0:
        raise LoadError(f"invalid message: negative length {length} (channel {channelid})")
    if msgcode not in Message._types:
        raise LoadError(
            f"invalid message: unknown message code {msgcode} (channel {channelid})"
        )
    return msgcode, channelid, io.read(length) if length else b""


class Message:
    """One framed message: a code, a channel id and a payload."""

    STATUS = 0
    RECONFIGURE = 1
    GATEWAY_TERMINATE = 2
    CHANNEL_EXEC = 3
    CHANNEL_DATA = 4
    CHANNEL_CLOSE = 5
    CHANNEL_CLOSE_ERROR = 6
    CHANNEL_LAST_MESSAGE = 7

    # code -> (name, handler(message, gateway)); filled in below
    _types: dict = {}

    def __init__(self, msgcode: int, channelid: int = 0, data: bytes = b"") -> None:
        self.msgcode = msgcode
        self.channelid = channelid
        self.data = data

    @staticmethod
    def from_io(io) -> Message:
        return Message(*_read_frame(io))

    def to_io(self, io) -> None:
        io.write(_frame(self.msgcode, self.channelid, self.data))

    def received(self, gateway) -> None:
        self._types[self.msgcode][1](self, gateway)

    def __repr__(self) -> str:
        name = self._types[self.msgcode][0] if self.msgcode in self._types else "?"
        return f"<Message {name} channel={self.channelid} lendata={len(self.data)}>"


def _status(message, gateway) -> None:
    # answered here, in the receiver; no channel object is created
    execpool = getattr(gateway, "_execpool", None)
    status = {
        "numchannels": len(gateway._channelfactory._channels),
        "numexecuting": execpool.active_count() if execpool else 0,
        "execmodel": gateway.execmodel.backend,
    }
    gateway._send(Message.CHANNEL_DATA, message.channelid, dumps_internal(status))
    gateway._send(Message.CHANNEL_CLOSE, message.channelid)


def _reconfigure(message, gateway) -> None:
    strconfig = tuple(loads_internal(message.data, gateway))
    if message.channelid == 0:
        gateway._strconfig = strconfig
    else:
        # only channels we hold (execnet would create one, defect D6)
        channel = gateway._channelfactory._channels.get(message.channelid)
        if channel is not None:
            channel._strconfig = strconfig


def _gateway_terminate(message, gateway) -> None:
    raise GatewayReceivedTerminate(gateway)


def _channel_exec(message, gateway) -> None:
    channel = gateway._channelfactory.new(message.channelid)
    # the task's strings are str whatever the gateway's string coercion
    task = loads_internal(message.data, gateway, (True, False))
    gateway._local_schedulexec(channel, task)


def _channel_data(message, gateway) -> None:
    gateway._channelfactory._local_receive(message.channelid, message.data)


def _channel_close(message, gateway) -> None:
    gateway._channelfactory._local_close(message.channelid)


def _channel_close_error(message, gateway) -> None:
    text = loads_internal(message.data)
    if not isinstance(text, str):
        raise DataFormatError(
            f"invalid message: CHANNEL_CLOSE_ERROR carries {type(text).__name__}"
        )
    gateway._channelfactory._local_close(message.channelid, RemoteError(text))


def _channel_last_message(message, gateway) -> None:
    gateway._channelfactory._local_close(message.channelid, sendonly=True)


Message._types = {
    Message.STATUS: ("STATUS", _status),
    Message.RECONFIGURE: ("RECONFIGURE", _reconfigure),
    Message.GATEWAY_TERMINATE: ("GATEWAY_TERMINATE", _gateway_terminate),
    Message.CHANNEL_EXEC: ("CHANNEL_EXEC", _channel_exec),
    Message.CHANNEL_DATA: ("CHANNEL_DATA", _channel_data),
    Message.CHANNEL_CLOSE: ("CHANNEL_CLOSE", _channel_close),
    Message.CHANNEL_CLOSE_ERROR: ("CHANNEL_CLOSE_ERROR", _channel_close_error),
    Message.CHANNEL_LAST_MESSAGE: ("CHANNEL_LAST_MESSAGE", _channel_last_message),
}


# channels (API.md §6, WIRE.md §6)


def _new_item_queue(execmodel):
    """The queue holding a channel's received items."""
    if execmodel.backend in _THREAD_BACKENDS:
        # queue.SimpleQueue itself, without importing queue (worker start)
        from _queue import SimpleQueue

        return SimpleQueue()
    return execmodel.queue.Queue()


class Channel:
    """One end of a bidirectional, ordered stream of items."""

    RemoteError = RemoteError
    TimeoutError = TimeoutError
    _INTERNALWAKEUP = 1000
    _executing = False  # True while the remote_exec task owning it runs
    # A task may leave its channel open when it ends (_detached), for a
    # thread of its own to close: the via proxy's forwarder does.
    _detachable = True
    _detached = False

    _native = False  # items are queued by the C core's IO thread

    def __init__(self, gateway, id: int) -> None:
        self.gateway = gateway
        self.id = id
        conn = getattr(gateway, "_conn", None)
        if conn is None:
            self._items = _new_item_queue(gateway.execmodel)  # None with a callback
        else:
            self._items = conn.queue(id, ENDMARKER)
            self._native = True
        self._closed = False
        self._receiveclosed = gateway.execmodel.Event()
        self._remoteerrors: list = []
        self._strconfig = getattr(gateway, "_strconfig", (True, False))

    def __repr__(self) -> str:
        state = "closed" if self.isclosed() else "open"
        return f"<Channel id={self.id} {state}>"

    def __del__(self) -> None:
        if sys is None or sys.is_finalizing():
            return
        gateway = self.gateway
        trace(self.id, "channel.__del__")
        if self._closed:
            # errors nobody asked for
            for error in self._remoteerrors:
                error.warn()
        elif not self._receiveclosed.is_set():
            # the peer may still send; with a callback it goes on receiving
            if self._items is None:
                msgcode = Message.CHANNEL_LAST_MESSAGE
            else:
                msgcode = Message.CHANNEL_CLOSE
            try:
                gateway._send(msgcode, self.id)
            except (OSError, ValueError, AttributeError):
                pass  # also for gateways that can't send (tests use such)

    def isclosed(self) -> bool:
        return self._closed

    def _getremoteerror(self):
        if self._remoteerrors:
            return self._remoteerrors.pop(0)
        return getattr(self.gateway, "_error", None)

    def makefile(self, mode: str = "w", proxyclose: bool = False):
        if mode == "w":
            return ChannelFileWrite(channel=self, proxyclose=proxyclose)
        if mode == "r":
            return ChannelFileRead(channel=self, proxyclose=proxyclose)
        raise ValueError(f"mode {mode!r} not available")

    def setcallback(
        self, callback: Callable[[Any], object], endmarker: object = NO_ENDMARKER_WANTED
    ) -> None:
        """Pass every item, from now on, to callback instead of the queue."""
        with self.gateway._receivelock:
            items = self._items
            if items is None:
                raise OSError(f"{self!r} has callback already registered")
            self._items = None
            if self._native:
                payloads, ended = items.pass_on()
                for data in payloads:
                    callback(loads_internal(data, self))
                if ended:
                    if endmarker is not NO_ENDMARKER_WANTED:
                        callback(endmarker)
                    return
            empty = self.gateway.execmodel.queue.Empty
            while not self._native:
                try:
                    item = items.get(block=False)
                except empty:
                    break
                if item is ENDMARKER:
                    items.put(item)  # other receivers see the end too
                    if endmarker is not NO_ENDMARKER_WANTED:
                        callback(endmarker)
                    return
                callback(item)
            if not (self._closed or self._receiveclosed.is_set()):
                self.gateway._channelfactory._callbacks[self.id] = (
                    callback,
                    endmarker,
                    self._strconfig,
                )

    def close(self, error: object = None) -> None:
        """Close this end; with an error text the peer gets a RemoteError."""
        if self._executing:
            raise OSError("cannot explicitly close channel within remote_exec")
        if self._closed:
            self.gateway._trace(self, "ignoring redundant call to close()")
            return
        data = None if error is None else dumps_internal(error)
        tell_peer = not self._receiveclosed.is_set()
        if isinstance(error, RemoteError):
            self._remoteerrors.append(error)
        self._closed = True
        self._receiveclosed.set()
        if self._items is not None:
            self._items.put(ENDMARKER)
        self.gateway._channelfactory._no_longer_opened(self.id)
        if tell_peer:
            if data is None:
                self.gateway._send(Message.CHANNEL_CLOSE, self.id)
            else:
                self.gateway._send(Message.CHANNEL_CLOSE_ERROR, self.id, data)
            self.gateway._trace(self.id, "sent channel close message")

    def waitclose(self, timeout: float | None = None) -> None:
        """Wait until the peer closed; raise its error if there is one."""
        if not self._wait_closed(timeout):
            raise self.TimeoutError(f"Timeout after {timeout!r} seconds")
        error = self._getremoteerror()
        if error:
            raise error

    def _wait_closed(self, timeout: float | None) -> bool:
        """True once the peer closed, False after timeout seconds. On the C
        core the waiting thread reads the connection itself meanwhile (as
        receive() does), so that the close is handled as it arrives, with no
        other thread to wake; not in the thread that dispatches frames."""
        closed = self._receiveclosed
        conn = self.gateway._conn if self._native else None
        if conn is None or self.gateway._receiver_ident == self.gateway.execmodel.get_ident():
            return closed.wait(timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not closed.is_set():
            mark = conn.dispatched  # before looking: nothing is missed
            if closed.is_set():
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                if not conn.pump(mark, left):  # reading ended
                    return closed.wait(timeout=left)
            except TimeoutError:
                return closed.is_set()
        return True

    def send(self, item: object) -> None:
        if self._closed:
            raise OSError(f"cannot send to {self!r}")
        gateway = self.gateway
        if self._native and gateway._error is None:
            try:
                gateway._conn.send(Message.CHANNEL_DATA, self.id, item)
            except OSError as exc:
                if type(exc) is not OSError:
                    raise
                raise gateway._cannot_send() from exc
        else:
            gateway._send(Message.CHANNEL_DATA, self.id, dumps_internal(item))

    def receive(self, timeout: float | None = None) -> Any:
        """The next item; blocks (at most timeout seconds) until one is there."""
        items = self._items
        if items is None:
            raise OSError("cannot receive(), channel has receiver callback")
        if self._native:
            # decoded here; the end stays in the queue for every receiver
            try:
                item = items.get(timeout, self)
            except DataFormatError as exc:
                self.gateway._fail(exc)
                raise
        else:
            try:
                item = items.get(timeout=timeout)
            except self.gateway.execmodel.queue.Empty:
                raise self.TimeoutError(f"no item after {timeout!r} seconds") from None
            if item is ENDMARKER:
                items.put(item)  # for the next receive() and other receivers
        if item is ENDMARKER:
            raise self._getremoteerror() or EOFError()
        return item

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.receive()
        except EOFError:
            raise StopIteration from None

    next = __next__

    def reconfigure(self, py2str_as_py3str: bool = True, py3str_as_py2str: bool = False) -> None:
        """Set how strings from Python 2 peers arrive, here and remotely."""
        self._strconfig = (py2str_as_py3str, py3str_as_py2str)
        data = dumps_internal(self._strconfig)
        self.gateway._send(Message.RECONFIGURE, self.id, data)


class ChannelFactory:
    """Allocates channel ids and knows the live channels of a gateway."""

    def __init__(self, gateway, startcount: int = 1) -> None:
        self._channels = weakref.WeakValueDictionary()  # id -> live Channel
        self._callbacks: dict = {}  # id -> (callback, endmarker, strconfig)
        # With the C core, items are decoded when received, so the peer's
        # data for a channel may come before the item that refers to it is
        # decoded: such channels are made on arrival and kept here until a
        # reference claims them.
        # For the same reason a reference decoded after its channel closed
        # must find that channel: every channel object, closed ones too.
        self._known_ids: set = set()
        self._unclaimed: dict = {}
        self._all = weakref.WeakValueDictionary()
        self._writelock = gateway.execmodel.Lock()
        self.gateway = gateway
        self.count = startcount
        self.finished = False

    def new(self, id=None) -> Channel:
        """The live channel with this id, created if needed (new id if None)."""
        with self._writelock:
            if self.finished:
                raise OSError(f"connection already closed: {self.gateway!r}")
            if id is None:
                id = self.count
                self.count += 2
            else:
                self._known_ids.add(id)
                channel = self._unclaimed.pop(id, None) or self._all.get(id)
                if channel is not None:
                    return channel
            channel = self._channels.get(id)
            if channel is None:
                channel = self._channels[id] = Channel(self.gateway, id)
                if getattr(self.gateway, "_conn", None) is not None:
                    self._all[id] = channel
            return channel

    def channels(self) -> list:
        return list(self._channels.values())

    def _no_longer_opened(self, id: int) -> None:
        self._channels.pop(id, None)
        registration = self._callbacks.pop(id, None)
        if registration is not None:
            callback, endmarker, _ = registration
            if endmarker is not NO_ENDMARKER_WANTED:
                callback(endmarker)

    def _adopt(self, id: int):
        """A channel of the peer not referred to yet (see _unclaimed), or None."""
        if (
            getattr(self.gateway, "_conn", None) is None
            or id in self._known_ids
            or id % 2 == self.count % 2
            or self.finished
        ):
            return None
        channel = self.new(id)
        self._unclaimed[id] = channel
        return channel

    def _local_close(self, id: int, remoteerror=None, sendonly: bool = False) -> None:
        """The peer closed id (or will send nothing more, with sendonly)."""
        channel = self._channels.get(id) or self._adopt(id)
        if channel is None:
            # the channel object is gone; its callback may still be there
            if remoteerror:
                remoteerror.warn()
            self._no_longer_opened(id)
            return
        if remoteerror:
            channel._remoteerrors.append(remoteerror)
        if channel._items is not None:
            channel._items.put(ENDMARKER)
        self._no_longer_opened(id)
        if not sendonly:
            channel._closed = True
        channel._receiveclosed.set()

    def _local_receive(self, id: int, data: bytes) -> None:
        """Deliver a CHANNEL_DATA payload (called in the receiver thread)."""
        registration = self._callbacks.get(id)
        channel = self._channels.get(id)
        if registration is None:
            if channel is None:
                channel = self._adopt(id)
            items = channel._items if channel is not None else None
            if items is not None:  # else: nobody is listening, drop it
                item = loads_internal(data, channel)  # corrupt data ends here
                items.put(data if channel._native else item)
            return
        callback, _, strconfig = registration
        try:
            # without the channel object, channel references can't load
            callback(loads_internal(data, channel, strconfig))
        except Exception as exc:
            self.gateway._trace("exception during callback:", exc)
            errortext = self.gateway._geterrortext(exc)
            try:
                self.gateway._send(
                    Message.CHANNEL_CLOSE_ERROR, id, dumps_internal(errortext)
                )
            except OSError:
                pass
            self._local_close(id, RemoteError(errortext))

    def _finished_receiving(self) -> None:
        with self._writelock:
            self.finished = True
        for id in list(self._channels):
            self._local_close(id, sendonly=True)
        for id in list(self._callbacks):
            self._no_longer_opened(id)


class ChannelFile:
    def __init__(self, channel, proxyclose: bool = True) -> None:
        self.channel = channel
        self._proxyclose = proxyclose

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self._proxyclose:
            self.channel.close()

    def __repr__(self) -> str:
        state = "closed" if self.channel.isclosed() else "open"
        return f"<ChannelFile {self.channel.id} {state}>"


class ChannelFileWrite(ChannelFile):
    def write(self, out) -> None:
        self.channel.send(out)

    def flush(self) -> None:
        pass


class ChannelFileRead(ChannelFile):
    def __init__(self, channel, proxyclose: bool = True) -> None:
        super().__init__(channel, proxyclose)
        self._buffer = None  # received and not yet read: str or bytes
        self._ended = False

    def _fill(self, enough) -> None:
        # receive until enough(buffer) or the end of the channel
        while not self._ended and (self._buffer is None or not enough(self._buffer)):
            try:
                item = self.channel.receive()
            except EOFError:
                self._ended = True
                self.close()
                return
            self._buffer = item if self._buffer is None else self._buffer + item

    def _take(self, n: int):
        if self._buffer is None:
            return ""
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def read(self, n: int):
        self._fill(lambda buffer: len(buffer) >= n)
        return self._take(n)

    def readline(self):
        def has_newline(buffer) -> bool:
            return (b"\n" if isinstance(buffer, bytes) else "\n") in buffer

        self._fill(has_newline)
        buffer = self._buffer
        if buffer is None:
            return ""
        end = buffer.find(b"\n" if isinstance(buffer, bytes) else "\n")
        return self._take(end + 1 if end >= 0 else len(buffer))


# gateways (LIFECYCLE.md §1, §5)


class BaseGateway:
    """What both ends of a connection share: sending, the receiver loop."""

    _error = None  # why the connection ended, if it did not end cleanly
    _receiver_ident = None
    _conn = None  # the C core's connection, when it serves this gateway

    def __init__(self, io, id, _startcount: int = 2) -> None:
        self.execmodel = io.execmodel
        self._io = io
        self.id = id
        self._strconfig = (True, False)
        self._channelfactory = ChannelFactory(self, _startcount)
        self._receivelock = self.execmodel.RLock()
        self._sendlock = self.execmodel.RLock()
        # a pool of (at most) one: the receiver
        self._receivepool = WorkerPool(self.execmodel)

    def _trace(self, *msg: object) -> None:
        trace(self.id, *msg)

    def _named(self, exc: BaseException) -> BaseException:
        """exc, the error that ended the connection or a send, with this
        gateway's id in its text (same type; an OSError keeps its errno and
        so its subclass). Other errors are returned as they are."""
        where = f"[gateway {self.id}]"
        if type(exc) is EOFError or (type(exc) is OSError and exc.errno is None):
            text = " ".join(map(str, exc.args))
            named = type(exc)(f"{text} {where}" if text else where)
        elif isinstance(exc, OSError) and exc.errno is not None:
            named = OSError(exc.errno, f"{exc.strerror} {where}")
        else:
            return exc
        named.__cause__ = exc.__cause__
        named.__traceback__ = exc.__traceback__
        return named

    def _cannot_send(self) -> OSError:
        return OSError(f"cannot send (already closed?) [gateway {self.id}]")

    _geterrortext = staticmethod(geterrortext)

    def _initreceive(self) -> None:
        self._conn = self._native_connection()
        if self._conn is None:
            self._receivepool.spawn(self._thread_receiver)
        else:
            self._receiver_done = self.execmodel.Event()
            self._conn.start()

    def _native_connection(self):
        """A C core connection for our IO, if the C core can serve it."""
        if _core is None or trace is not notrace:
            return None
        if self.execmodel.backend not in _THREAD_BACKENDS:
            return None  # green threads would not run while C blocks
        native_fds = getattr(self._io, "native_fds", None)
        fds = native_fds() if native_fds is not None else None
        if fds is None:
            return None
        return _core.Connection(fds[0], fds[1], self._dispatch, self._dispatch_inline)

    def _dispatch(self, code: int, channelid: int, data) -> None:
        """Handle a message from the C core's IO thread (code -1: the end,
        data is the exception that ended the connection)."""
        self._receiver_ident = self.execmodel.get_ident()
        if code < 0:
            ended_cleanly = isinstance(data, (GatewayReceivedTerminate, KeyboardInterrupt))
            if not ended_cleanly and self._error is None:
                self._error = self._named(data)
            try:
                self._stop_receiving()
            finally:
                self._receiver_done.set()
            return
        self._handle(Message(code, channelid, data))

    def _dispatch_inline(self, code: int, channelid: int, data) -> bool:
        """Handle a message in the thread that read it (one waiting for items,
        or the worker's idle primary thread) rather than the C core's IO
        thread; False leaves it to the IO thread. User callbacks and the end
        of the connection stay with the IO thread."""
        if code == Message.CHANNEL_DATA or code == Message.GATEWAY_TERMINATE:
            return False
        if channelid in self._channelfactory._callbacks:
            return False  # a close calls the endmarker callback
        self._handle(Message(code, channelid, data))
        return True

    def _handle(self, message: Message) -> None:
        """Act on one received message (in the receiving thread)."""
        with self._receivelock:
            try:
                message.received(self)
            except EOFError as exc:
                # the frame was complete: its payload is corrupt
                raise DataFormatError(f"invalid message payload: {exc}") from exc

    def _fail(self, exc: Exception) -> None:
        """Received data was corrupt: end the connection (the C core decodes
        items when they are received, not when they arrive)."""
        if self._error is None:
            self._error = exc
        try:
            self._close_write()
        except OSError:
            pass

    def _receiving(self) -> bool:
        """True while messages are being received."""
        if self._conn is not None:
            return not self._receiver_done.is_set()
        return self._receivepool.active_count() > 0

    def _close_write(self) -> None:
        if self._conn is not None:
            self._conn.close_write()
        self._io.close_write()

    def _receive_messages(self) -> None:
        """Read and dispatch messages until GATEWAY_TERMINATE arrives."""
        io = self._io
        while True:
            message = Message.from_io(io)
            self._trace("[receiver-thread] received", message)
            self._handle(message)

    def _thread_receiver(self) -> None:
        self._receiver_ident = self.execmodel.get_ident()
        self._trace("[receiver-thread] RECEIVERTHREAD: starting to run")
        try:
            self._receive_messages()
        except (GatewayReceivedTerminate, KeyboardInterrupt):
            pass
        except EOFError as exc:
            self._trace("[receiver-thread] EOF without prior gateway termination message")
            self._error = self._named(exc)
        except Exception as exc:
            self._trace("[receiver-thread]", geterrortext(exc))
            self._error = self._named(exc)
        finally:
            self._stop_receiving()

    def _stop_receiving(self) -> None:
        steps = (
            ("finishing receiving thread", self._channelfactory._finished_receiving),
            ("terminating execution", self._terminate_execution),
            ("closing read", self._io.close_read),
            ("closing write", self._close_write),
            ("terminating our receive pseudo pool", self._receivepool.trigger_shutdown),
        )
        for text, step in steps:
            self._trace("[receiver-thread]", text)
            try:
                step()
            except Exception as exc:
                self._trace("[receiver-thread]", text, "failed:", repr(exc))

    def _terminate_execution(self) -> None:
        pass

    def _send(self, msgcode: int, channelid: int = 0, data: bytes = b"") -> None:
        """Write one message (atomically with respect to other senders)."""
        if self._conn is not None:
            if self._error is not None:
                raise self._cannot_send()
            try:
                self._conn.send_raw(msgcode, channelid, data)
            except OSError as exc:
                raise self._cannot_send() from exc
            return
        frame = _frame(msgcode, channelid, data)
        try:
            if self._error is not None:
                # the peer is gone; a write might still find its pipe open
                raise EOFError("connection lost")
            with self._sendlock:
                self._io.write(frame)
        except (OSError, ValueError, EOFError) as exc:
            self._trace("failed to send", Message(msgcode, channelid, data), exc)
            raise self._cannot_send() from exc
        if trace is not notrace:
            self._trace("sent", Message(msgcode, channelid, data))

    def _local_schedulexec(self, channel, sourcetask) -> None:
        channel.close("execution disallowed")

    # the public part

    def newchannel(self) -> Channel:
        """A new channel with a fresh id."""
        return self._channelfactory.new()

    def join(self, timeout: float | None = None) -> None:
        """Wait (at most timeout seconds) for the receiver to finish."""
        if self._receiver_ident == self.execmodel.get_ident():
            return  # called from the receiver itself
        self._trace("waiting for receiver thread to finish")
        if self._conn is not None:
            self._receiver_done.wait(timeout)
        else:
            self._receivepool.waitall(timeout)


_compiled: dict = {}  # (source, filename) -> code, for repeated remote_execs


def _compile_task(source: str, filename) -> object:
    key = (source, filename)
    code = _compiled.get(key)
    if code is None:
        code = compile(source + "\n", filename or "<remote exec>", "exec")
        if len(_compiled) >= 256:
            _compiled.clear()
        _compiled[key] = code
    return code


class WorkerGateway(BaseGateway):
    """The serving end of a connection: it runs remote_exec tasks."""

    def __init__(self, io, id, _startcount: int = 2) -> None:
        super().__init__(io, id, _startcount)
        hasprimary = self.execmodel.backend in _THREAD_BACKENDS
        self._execpool = WorkerPool(self.execmodel, hasprimary=hasprimary)
        # main_thread_only: set while no task runs
        self._previous_task_done = self.execmodel.Event()
        self._previous_task_done.set()

    def _local_schedulexec(self, channel, sourcetask) -> None:
        if self.execmodel.backend == "main_thread_only":
            if not self._previous_task_done.wait(1.0):
                channel.close(MAIN_THREAD_ONLY_DEADLOCK_TEXT)
                return
            self._previous_task_done.clear()
        try:
            self._execpool.spawn(self.executetask, (channel, sourcetask))
        except ValueError:  # shutting down
            self._previous_task_done.set()
            channel.close("execution refused: the gateway is shutting down")

    def _terminate_execution(self) -> None:
        self._trace("shutting down execution pool")
        self._execpool.trigger_shutdown()
        if self._execpool.waitall(5.0):
            return
        self._trace("execution ongoing after 5 secs, trying interrupt_main")
        if sys.platform != "win32":
            import signal

            self._trace("sending ourselves a SIGINT")
            os.kill(os.getpid(), signal.SIGINT)
        else:
            self._trace("calling interrupt_main()")
            _thread.interrupt_main()
        if not self._execpool.waitall(10.0):
            self._trace("execution did not finish in another 10 secs, calling os._exit()")
            os._exit(1)

    def executetask(self, item) -> None:
        """Run one remote_exec task: item is (channel, task tuple)."""
        channel, task = item
        try:
            try:
                source, filename, call_name, kwargs = task
                if trace is not notrace:
                    self._trace(f"execution starts[{channel.id}]: {repr(source)[:50]}")
                namespace = {"channel": channel, "__name__": "__channelexec__"}
                channel._executing = True
                try:
                    code = _compile_task(source, filename)
                    exec(code, namespace)
                    if call_name:
                        self._trace(f"calling {call_name}(**{kwargs!r:.60})")
                        namespace[call_name](channel, **kwargs)
                finally:
                    channel._executing = False
                    if trace is not notrace:
                        self._trace("execution finished")
            except KeyboardInterrupt:
                channel.close(INTERRUPT_TEXT)
                raise
            except EOFError:
                # a receive() that saw the end: a normal end of the task
                self._trace("ignoring EOFError because receiving finished")
                channel.close()
            except BaseException as exc:
                self._trace(f"got exception: {exc!r}")
                if channel.gateway._channelfactory.finished:
                    channel.close()
                else:
                    channel.close(geterrortext(exc))
            else:
                if not getattr(channel, "_detached", False):
                    channel.close()
        finally:
            # on every exit path (defect D1)
            self._previous_task_done.set()

    def serve(self) -> None:
        try:
            self._trace("[serve] spawning receiver thread")
            self._initreceive()
            if self._execpool._hasprimary:
                self._trace("[serve] integrating as primary thread")
                self._execpool.integrate_as_primary_thread(self._conn)
            self._trace("[serve] joining receiver thread")
            self.join()
        except KeyboardInterrupt:
            self._trace("swallowing keyboardinterrupt, serve finished")


def serve(io, id) -> None:
    """Be the worker end of the connection io until it ends."""
    trace(f"creating workergateway on {io!r}")
    WorkerGateway(io, id, _startcount=2).serve()


def init_popen_io(execmodel) -> Popen2IO:
    """Take fds 0 and 1 for the protocol; leave the null device in their place."""
    if not hasattr(os, "dup"):
        io = Popen2IO(sys.stdout, sys.stdin, execmodel)
        import tempfile

        sys.stdin = tempfile.TemporaryFile("r")
        sys.stdout = tempfile.TemporaryFile("w")
        return io
    # Green models read and write through their cooperative file objects:
    # binary ones, whose read() is the cooperative one (a text file's
    # .buffer would block every greenlet).
    binary = execmodel.backend not in _THREAD_BACKENDS
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        infile = execmodel.fdopen(os.dup(0), "rb" if binary else "r", -1 if binary else 1)
        os.dup2(devnull, 0)
        outfile = execmodel.fdopen(os.dup(1), "wb" if binary else "w", -1 if binary else 1)
        os.dup2(devnull, 1)
        if sys.platform == "win32":
            sys.stderr = execmodel.fdopen(os.dup(2), "w", 1)
            os.dup2(devnull, 2)
    finally:
        os.close(devnull)
    if sys.platform == "win32":
        import msvcrt

        for fd in (infile.fileno(), outfile.fileno()):
            try:
                msvcrt.setmode(fd, os.O_BINARY)
            except (OSError, ValueError):
                pass
    # (plain files: they only reach the null device, and a green model's
    # would complain at exit)
    sys.stdin = os.fdopen(0, "r", 1, encoding="utf-8", closefd=False)
    sys.stdout = os.fdopen(1, "w", 1, encoding="utf-8", closefd=False)
    return Popen2IO(outfile, infile, execmodel)


# --------------------------------------------------------------------------
# backend selection: the C twins of the functions above, where they load
# --------------------------------------------------------------------------

# The pure-Python functions stay reachable here whatever backend is active;
# the test suite runs against both.
PURE_PYTHON_SERIALIZER = {
    "dumps": dumps,
    "loads": loads,
    "dumps_internal": dumps_internal,
    "loads_internal": loads_internal,
}
BACKEND = "python"
BACKEND_REASON = ""  # why BACKEND is "python" (empty on the C backend)
_core = None  # the C extension module, when the C backend is active


def _extension_not_built() -> str:
    """The reason for a missing extension, with the build's own if it left
    one (setup.py writes it next to this file)."""
    try:
        with open(os.path.join(os.path.dirname(__file__), "_build_info")) as f:
            recorded = "; ".join(line.strip() for line in f if line.strip())
    except OSError:
        recorded = ""
    if recorded:
        return f"the C extension was not built ({recorded})"
    return "the C extension execnet._execnet is not installed"


def _extension_file_exists() -> bool:
    from importlib.machinery import EXTENSION_SUFFIXES

    here = os.path.dirname(__file__)
    return any(os.path.exists(os.path.join(here, "_execnet" + suffix)) for suffix in EXTENSION_SUFFIXES)


def _load_c_backend():
    global BACKEND_REASON
    if __name__ != "execnet.gateway_base":
        BACKEND_REASON = "this is the portable core sent as source to a remote interpreter"
        return None
    if os.environ.get("EXECNET_PUREPYTHON"):
        BACKEND_REASON = "EXECNET_PUREPYTHON is set"
        return None
    try:
        from execnet import _execnet
    except ImportError as exc:
        if not _extension_file_exists():
            BACKEND_REASON = _extension_not_built()
        else:
            BACKEND_REASON = f"the C extension failed to import: {exc}"
        return None
    _execnet._install(globals())
    return _execnet


_c = _load_c_backend()
if _c is not None:
    BACKEND = "c"
    _core = _c
    dumps = _c.dumps  # noqa: F811
    loads = _c.loads  # noqa: F811
    dumps_internal = _c.dumps_internal  # noqa: F811
    loads_internal = _c.loads_internal  # noqa: F811
del _c

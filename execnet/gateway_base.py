"""execnet's portable core: the serializer, framing, channels and the worker.

This module is self-contained (standard library only) because its source is
what a remote interpreter without our extension executes.  It knows nothing
of the C core: ``execnet/_native.py`` subclasses what the C core serves, and
``execnet/backend.py`` chooses, once, which of the two the package uses.
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
    from types import CodeType
    from typing import Any
    from typing import Callable

# --------------------------------------------------------------------------
# serializer (the format: doc/protocol.md, doc/serializer.md)
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
    """The single byte with value n."""
    return bytes([n])


class DataFormatError(Exception):
    """Serialized data that does not follow the format (base of DumpError
    and LoadError)."""


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


def _put_sized(out: list[bytes], op: bytes, data: bytes, what: str) -> None:
    if len(data) > FOUR_BYTE_INT_MAX:
        raise DumpError(f"{what} is too long")
    # header and data apart: large data is copied once, by the final join
    out += (op + _pack_int32(len(data)), data)


def _put_int(out: list[bytes], value: int) -> None:
    if FOUR_BYTE_INT_MIN <= value <= FOUR_BYTE_INT_MAX:
        out.append(b"F" + _pack_int32(value))
    else:
        _put_sized(out, b"H", str(value).encode("ascii"), "string")


def _put_str(out: list[bytes], value: str) -> None:
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
_COLLECTIONS: dict[type, tuple[bytes, str]] = {
    tuple: (b"@", "tuple"),
    set: (b"O", "set"),
    frozenset: (b"E", "set"),
}
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
        """Decode one value; with ``versioned`` first check the dump format's
        version byte (``loads()``'s data has it, message payloads do not)."""
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
        n: int = _unpack_int32(data)[0]
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
# (frames and messages: doc/protocol.md; threads: doc/architecture.md)
# --------------------------------------------------------------------------

# tracing (EXECNET_DEBUG): decided once, when this module is loaded

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
        """Write this error to stderr as a warning: nobody received it."""
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


# execution models: how gateways make threads, locks, queues and files


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
    """Native threads: the model pytest-xdist and most users run."""

    backend = "thread"

    @property
    def queue(self):
        """The ``queue`` module of this model."""
        import queue

        return queue

    @property
    def subprocess(self):
        """The ``subprocess`` module of this model."""
        import subprocess

        return subprocess

    @property
    def socket(self):
        """The ``socket`` module of this model."""
        import socket

        return socket

    def start(self, func, args=()) -> None:
        """Run ``func(*args)`` in a new thread."""
        _thread.start_new_thread(func, tuple(args))

    def get_ident(self) -> int:
        """An id of the calling thread."""
        return _thread.get_ident()

    def sleep(self, delay: float) -> None:
        """Pause the calling thread for delay seconds."""
        time.sleep(delay)

    def fdopen(self, fd, mode, bufsize=1, closefd=True):
        """A file object for descriptor fd (text files are UTF-8)."""
        encoding = None if "b" in mode else "utf-8"
        return os.fdopen(fd, mode, bufsize, encoding=encoding, closefd=closefd)

    def Lock(self):
        """A new lock (reentrant, as execnet's is)."""
        return threading.RLock()

    def RLock(self):
        """A new reentrant lock."""
        return threading.RLock()

    def Event(self):
        """A new ``threading.Event``."""
        return threading.Event()


class MainThreadOnlyExecModel(ThreadExecModel):
    """Native threads, but a worker runs every remote_exec task in its main
    thread, one at a time."""

    backend = "main_thread_only"


class EventletExecModel(ExecModel):
    """Green threads of eventlet; gateways of this model run on the portable
    core."""

    backend = "eventlet"

    @property
    def queue(self):
        """eventlet's ``queue`` module."""
        import eventlet.queue

        return eventlet.queue

    @property
    def subprocess(self):
        """eventlet's green ``subprocess`` module."""
        import eventlet.green.subprocess

        return eventlet.green.subprocess

    @property
    def socket(self):
        """eventlet's green ``socket`` module."""
        import eventlet.green.socket

        return eventlet.green.socket

    def start(self, func, args=()) -> None:
        """Run ``func(*args)`` in a new greenlet."""
        import eventlet

        eventlet.spawn_n(func, *args)

    def get_ident(self) -> int:
        """An id of the calling greenlet."""
        import eventlet.green.thread

        ident: int = eventlet.green.thread.get_ident()
        return ident

    def sleep(self, delay: float) -> None:
        """Pause the calling greenlet for delay seconds."""
        import eventlet

        eventlet.sleep(delay)

    def fdopen(self, fd, mode, bufsize=1, closefd=True):
        """A cooperative file object for descriptor fd."""
        import eventlet.green.os

        encoding = None if "b" in mode else "utf-8"
        return eventlet.green.os.fdopen(
            fd, mode, bufsize, encoding=encoding, closefd=closefd
        )

    def Lock(self):
        """A new green lock."""
        return self.RLock()

    def RLock(self):
        """A new green reentrant lock."""
        import eventlet.green.threading

        return eventlet.green.threading.RLock()

    def Event(self):
        """A new green event."""
        import eventlet.green.threading

        return eventlet.green.threading.Event()


class GeventExecModel(ExecModel):
    """Green threads of gevent; gateways of this model run on the portable
    core."""

    backend = "gevent"

    @property
    def queue(self):
        """gevent's ``queue`` module."""
        import gevent.queue

        return gevent.queue

    @property
    def subprocess(self):
        """gevent's ``subprocess`` module."""
        import gevent.subprocess

        return gevent.subprocess

    @property
    def socket(self):
        """gevent's ``socket`` module."""
        import gevent.socket

        return gevent.socket

    def start(self, func, args=()) -> None:
        """Run ``func(*args)`` in a new greenlet."""
        import gevent

        gevent.spawn(func, *args)

    def get_ident(self) -> int:
        """An id of the calling greenlet."""
        import gevent.thread

        ident: int = gevent.thread.get_ident()
        return ident

    def sleep(self, delay: float) -> None:
        """Pause the calling greenlet for delay seconds."""
        import gevent

        gevent.sleep(delay)

    def fdopen(self, fd, mode, bufsize=1, closefd=True):
        """A cooperative file object for descriptor fd."""
        import gevent.fileobject

        return gevent.fileobject.FileObjectThread(fd, mode, bufsize, closefd=closefd)

    def Lock(self):
        """A new gevent lock."""
        return self.RLock()

    def RLock(self):
        """A new gevent reentrant lock."""
        import gevent.lock

        return gevent.lock.RLock()

    def Event(self):
        """A new gevent event."""
        import gevent.event

        return gevent.event.Event()


_EXECMODELS = {
    "thread": ThreadExecModel,
    "main_thread_only": MainThreadOnlyExecModel,
    "eventlet": EventletExecModel,
    "gevent": GeventExecModel,
}
_THREAD_BACKENDS = ("thread", "main_thread_only")


def get_execmodel(backend: str | ExecModel) -> ExecModel:
    """A new ExecModel for a backend name; an ExecModel is returned as is."""
    if isinstance(backend, ExecModel):
        return backend
    try:
        return _EXECMODELS[backend]()
    except (KeyError, TypeError):
        raise ValueError(f"unknown execmodel {backend!r}") from None


# worker pool: the threads that run remote_exec tasks


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
        """Call the function (in the calling thread); keep its result or
        exception for ``get()``."""
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
        self._waiters: list[Any] = []  # events set when nothing is running
        self._hasprimary = hasprimary
        self._primary_only = hasprimary and execmodel.backend == "main_thread_only"
        self._primary_busy = False
        self._primary_task: Reply | None = None
        self._primary_wakeup = execmodel.Event()
        self._primary_idle = execmodel.Event()
        self._primary_idle.set()

    def active_count(self) -> int:
        """How many calls are running now."""
        return len(self._running)

    def spawn(self, func, *args, **kwargs) -> Reply:
        """Start ``func(*args, **kwargs)`` (in the primary thread if it is idle,
        else in a new thread); return its Reply.  ``ValueError`` once the pool
        shuts down."""
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

    def integrate_as_primary_thread(self, idle=None) -> None:
        """Run the calls handed to the primary until the pool shuts down.

        :param idle: called as ``idle(wakeup)`` whenever this thread has no
            task, before it waits for one; it may do other work until the
            event ``wakeup`` is set (a task came) and then return.
        """
        if not self._hasprimary:
            raise ValueError("pool has no primary thread")
        wakeup = self._primary_wakeup
        while True:
            if idle is not None and not wakeup.is_set():
                idle(wakeup)
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
        """Shut down and wait (at most timeout seconds) for the running calls;
        True if none is left."""
        self.trigger_shutdown()
        return self.waitall(timeout=timeout)


# IO and message framing: a 9-byte header (msgcode, channel id, length; doc/protocol.md)

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
        """Write all of data (bytes) and flush."""
        if not isinstance(data, bytes):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        self._out.write(data)
        self._out.flush()

    def close_read(self) -> None:
        """Close the file we read from."""
        self.infile.close()

    def close_write(self) -> None:
        """Close the file we write to: the peer reads the end."""
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
    _types: dict[int, tuple[str, Callable[[Message, Any], None]]] = {}

    def __init__(self, msgcode: int, channelid: int = 0, data: bytes = b"") -> None:
        self.msgcode = msgcode
        self.channelid = channelid
        self.data = data

    @staticmethod
    def from_io(io) -> Message:
        """Read one message (its frame) from io."""
        return Message(*_read_frame(io))

    def to_io(self, io) -> None:
        """Write this message to io as one frame."""
        io.write(_frame(self.msgcode, self.channelid, self.data))

    def received(self, gateway) -> None:
        """Act on this message for gateway (in its receiving thread)."""
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
    gateway._send(Message.CHANNEL_DATA, message.channelid, gateway._dumps(status))
    gateway._send(Message.CHANNEL_CLOSE, message.channelid)


def _reconfigure(message, gateway) -> None:
    strconfig = tuple(gateway._loads(message.data, gateway))
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
    task = gateway._loads(message.data, gateway, (True, False))
    gateway._local_schedulexec(channel, task)


def _channel_data(message, gateway) -> None:
    gateway._channelfactory._local_receive(message.channelid, message.data)


def _channel_close(message, gateway) -> None:
    gateway._channelfactory._local_close(message.channelid)


def _channel_close_error(message, gateway) -> None:
    text = gateway._loads(message.data)
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


# channels (their messages: doc/protocol.md)


def _new_item_queue(execmodel):
    """The queue holding a channel's received items."""
    if execmodel.backend in _THREAD_BACKENDS:
        # queue.SimpleQueue itself, without importing queue (worker start)
        from _queue import SimpleQueue

        return SimpleQueue()
    return execmodel.queue.Queue()


class Channel:
    """One end of a bidirectional, ordered stream of items between two
    gateways; made by ``Gateway.newchannel()`` or ``remote_exec()``."""

    RemoteError = RemoteError
    TimeoutError = TimeoutError
    _INTERNALWAKEUP = 1000
    _executing = False  # True while the remote_exec task owning it runs
    # A task may leave its channel open when it ends (_detached), for a
    # thread of its own to close: the via proxy's forwarder does.
    _detachable = True
    _detached = False

    def __init__(self, gateway, id: int) -> None:
        self.gateway = gateway
        self.id = id
        self._items = self._new_items()  # None once a callback is set
        self._closed = False
        self._receiveclosed = gateway.execmodel.Event()
        self._remoteerrors: list[RemoteError] = []
        self._strconfig = getattr(gateway, "_strconfig", (True, False))
        self._dumps = getattr(gateway, "_dumps", dumps_internal)

    def _new_items(self):
        """The queue that received items wait in until receive() takes them."""
        return _new_item_queue(self.gateway.execmodel)

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
        """True once this end is closed: by ``close()``, or because the peer
        closed it (an end that only stopped receiving is not closed)."""
        return self._closed

    def _getremoteerror(self):
        if self._remoteerrors:
            return self._remoteerrors.pop(0)
        return getattr(self.gateway, "_error", None)

    def makefile(self, mode: str = "w", proxyclose: bool = False):
        """A file-like object over this channel.

        :param mode: ``"w"``: ``write(data)`` sends data as one item;
            ``"r"``: ``read(n)`` and ``readline()`` over the received items
            (``str`` or ``bytes``), ``""`` once the channel ended.
        :param proxyclose: whether closing the file closes the channel.
        """
        if mode == "w":
            return ChannelFileWrite(channel=self, proxyclose=proxyclose)
        if mode == "r":
            return ChannelFileRead(channel=self, proxyclose=proxyclose)
        raise ValueError(f"mode {mode!r} not available")

    def setcallback(
        self, callback: Callable[[Any], object], endmarker: object = NO_ENDMARKER_WANTED
    ) -> None:
        """Pass every received item to ``callback(item)`` from now on, in the
        thread that receives, instead of queueing it for ``receive()``.

        Items that were already queued go to the callback first, in order.
        If ``endmarker`` is given, ``callback(endmarker)`` is called once
        when the channel ends.  A second callback raises ``OSError``.
        """
        with self.gateway._receivelock:
            items = self._items
            if items is None:
                raise OSError(f"{self!r} has callback already registered")
            self._items = None
            if self._pass_on_queued(items, callback, endmarker):
                return
            if not (self._closed or self._receiveclosed.is_set()):
                self.gateway._channelfactory._callbacks[self.id] = (
                    callback,
                    endmarker,
                    self._strconfig,
                )

    def _pass_on_queued(self, items, callback, endmarker) -> bool:
        """Give the items queued so far to callback; True if the end was
        among them (then the callback had the endmarker, if one is wanted)."""
        empty = self.gateway.execmodel.queue.Empty
        while True:
            try:
                item = items.get(block=False)
            except empty:
                return False
            if item is ENDMARKER:
                items.put(item)  # other receivers see the end too
                if endmarker is not NO_ENDMARKER_WANTED:
                    callback(endmarker)
                return True
            callback(item)

    def close(self, error: object = None) -> None:
        """Close this end; nothing can be sent on it afterwards.

        :param error: if given (a text), the peer's ``receive()`` and
            ``waitclose()`` raise a ``RemoteError`` carrying it.

        Closing twice does nothing; closing the channel of a running
        ``remote_exec`` task from within that task raises ``OSError``.
        """
        if self._executing:
            raise OSError("cannot explicitly close channel within remote_exec")
        if self._closed:
            self.gateway._trace(self, "ignoring redundant call to close()")
            return
        data = None if error is None else self._dumps(error)
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
        """Wait until the peer closed its end (at most ``timeout`` seconds,
        else ``TimeoutError``); then raise the ``RemoteError`` it closed
        with, or the error that ended the connection, if there is one."""
        if not self._wait_closed(timeout):
            raise self.TimeoutError(f"Timeout after {timeout!r} seconds")
        error = self._getremoteerror()
        if error:
            raise error

    def _wait_closed(self, timeout: float | None) -> bool:
        """True once the peer closed, False after timeout seconds."""
        return bool(self._receiveclosed.wait(timeout=timeout))

    def send(self, item: object) -> None:
        """Send item (any value ``dumps()`` accepts, channels included) to
        the peer; ``OSError`` if this end or the connection is closed."""
        if self._closed:
            raise OSError(f"cannot send to {self!r}")
        self.gateway._send(Message.CHANNEL_DATA, self.id, self._dumps(item))

    def receive(self, timeout: float | None = None) -> Any:
        """The next item the peer sent, waiting for it if needed.

        :param timeout: seconds to wait at most (``None``: no limit); then
            ``TimeoutError``.

        Once the channel ended, raises the ``RemoteError`` the peer closed
        it with (or the error that ended the connection), else
        ``EOFError``.  Not available while a callback is set (``OSError``).
        """
        items = self._items
        if items is None:
            raise OSError("cannot receive(), channel has receiver callback")
        try:
            item = items.get(timeout=timeout)
        except self.gateway.execmodel.queue.Empty:
            raise self.TimeoutError(f"no item after {timeout!r} seconds") from None
        if item is ENDMARKER:
            items.put(item)  # for the next receive() and other receivers
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
        """Set how strings cross this channel to and from Python 2 peers,
        here and at the peer: ``py2str_as_py3str`` loads a Python 2 ``str``
        as ``str`` (else ``bytes``); ``py3str_as_py2str`` sends ``str`` as a
        Python 2 ``str``."""
        self._strconfig = (py2str_as_py3str, py3str_as_py2str)
        data = self._dumps(self._strconfig)
        self.gateway._send(Message.RECONFIGURE, self.id, data)


class ChannelFactory:
    """Allocates channel ids and knows the live channels of a gateway."""

    def __init__(self, gateway, startcount: int = 1) -> None:
        # id -> live Channel
        self._channels: weakref.WeakValueDictionary[int, Channel] = weakref.WeakValueDictionary()
        self._callbacks: dict[int, tuple[Any, Any, Any]] = {}  # id -> (callback, endmarker, strconfig)
        self._writelock = gateway.execmodel.Lock()
        self.gateway = gateway
        self.count = startcount
        self.finished = False
        # the gateway's serializer
        self._dumps = getattr(gateway, "_dumps", dumps_internal)
        self._loads = getattr(gateway, "_loads", loads_internal)

    def new(self, id=None) -> Channel:
        """The live channel with this id, created if needed (new id if None)."""
        with self._writelock:
            if self.finished:
                raise OSError(f"connection already closed: {self.gateway!r}")
            if id is None:
                id = self.count
                self.count += 2
            channel = self._channels.get(id)
            if channel is None:
                channel = self._channels[id] = Channel(self.gateway, id)
            return channel

    def channels(self) -> list[Channel]:
        """The channels of this gateway that are still open."""
        return list(self._channels.values())

    def _no_longer_opened(self, id: int) -> None:
        self._channels.pop(id, None)
        registration = self._callbacks.pop(id, None)
        if registration is not None:
            callback, endmarker, _ = registration
            if endmarker is not NO_ENDMARKER_WANTED:
                callback(endmarker)

    def _unknown(self, id: int):
        """The channel for a message to an id with no live channel object:
        None, the message is dropped (a subclass may make one)."""
        return None

    def _local_close(self, id: int, remoteerror=None, sendonly: bool = False) -> None:
        """The peer closed id (or will send nothing more, with sendonly)."""
        channel = self._channels.get(id) or self._unknown(id)
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

    def _queue_item(self, channel, data: bytes) -> None:
        """Queue a CHANNEL_DATA payload for channel's receive(), decoded."""
        channel._items.put(self._loads(data, channel))

    def _local_receive(self, id: int, data: bytes) -> None:
        """Deliver a CHANNEL_DATA payload (called in the receiver thread)."""
        registration = self._callbacks.get(id)
        channel = self._channels.get(id)
        if registration is None:
            if channel is None:
                channel = self._unknown(id)
            if channel is not None and channel._items is not None:
                self._queue_item(channel, data)  # corrupt data ends here
            # else: nobody is listening, drop it
            return
        callback, _, strconfig = registration
        try:
            # without the channel object, channel references can't load
            callback(self._loads(data, channel, strconfig))
        except Exception as exc:
            self.gateway._trace("exception during callback:", exc)
            errortext = self.gateway._geterrortext(exc)
            try:
                self.gateway._send(Message.CHANNEL_CLOSE_ERROR, id, self._dumps(errortext))
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
    """What the file objects of ``Channel.makefile()`` share."""

    def __init__(self, channel, proxyclose: bool = True) -> None:
        self.channel = channel
        self._proxyclose = proxyclose

    def isatty(self) -> bool:
        """False: a channel is no terminal."""
        return False

    def close(self) -> None:
        """Close the channel too, if the file was made with ``proxyclose``."""
        if self._proxyclose:
            self.channel.close()

    def __repr__(self) -> str:
        state = "closed" if self.channel.isclosed() else "open"
        return f"<ChannelFile {self.channel.id} {state}>"


class ChannelFileWrite(ChannelFile):
    """A write-only file whose writes are items sent on the channel."""

    def write(self, out) -> None:
        """Send out (``str`` or ``bytes``) as one item."""
        self.channel.send(out)

    def flush(self) -> None:
        """Nothing to do: every write is sent at once."""
        pass


class ChannelFileRead(ChannelFile):
    """A read-only file over the items received on the channel."""

    def __init__(self, channel, proxyclose: bool = True) -> None:
        super().__init__(channel, proxyclose)
        self._buffer: Any = None  # received and not yet read: str or bytes
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
        """The next n characters (or bytes), fewer at the channel's end."""
        self._fill(lambda buffer: len(buffer) >= n)
        return self._take(n)

    def readline(self):
        """The next line with its newline; at the end what is left
        (``""`` when nothing is)."""
        def has_newline(buffer) -> bool:
            return (b"\n" if isinstance(buffer, bytes) else "\n") in buffer

        self._fill(has_newline)
        buffer = self._buffer
        if buffer is None:
            return ""
        end = buffer.find(b"\n" if isinstance(buffer, bytes) else "\n")
        return self._take(end + 1 if end >= 0 else len(buffer))


# gateways (their threads and how they end: doc/architecture.md)


class BaseGateway:
    """What both ends of a connection share: sending, the receiver loop."""

    _error = None  # why the connection ended, if it did not end cleanly
    _receiver_ident = None
    _ChannelFactory = ChannelFactory
    # the serializer of message payloads (a subclass may bring its own)
    _dumps = staticmethod(dumps_internal)
    _loads = staticmethod(loads_internal)

    def __init__(self, io, id, _startcount: int = 2) -> None:
        self.execmodel = io.execmodel
        self._io = io
        self.id = id
        self._strconfig = (True, False)
        self._channelfactory = self._ChannelFactory(self, _startcount)
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
        self._receivepool.spawn(self._thread_receiver)

    def _handle(self, message: Message) -> None:
        """Act on one received message (in the receiving thread)."""
        with self._receivelock:
            try:
                message.received(self)
            except EOFError as exc:
                # the frame was complete: its payload is corrupt
                raise DataFormatError(f"invalid message payload: {exc}") from exc

    def _receiving(self) -> bool:
        """True while messages are being received."""
        return self._receivepool.active_count() > 0

    def _close_write(self) -> None:
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
        """A new channel with a fresh id, known to the peer once something
        is sent on it (or once it is sent to the peer inside an item)."""
        return self._channelfactory.new()

    def join(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) until this gateway stopped
        receiving; returns at once when called from the receiver itself."""
        if self._receiver_ident == self.execmodel.get_ident():
            return  # called from the receiver itself
        self._trace("waiting for receiver thread to finish")
        self._wait_received(timeout)

    def _wait_received(self, timeout: float | None) -> None:
        self._receivepool.waitall(timeout)


_compiled: dict[tuple[str, Any], CodeType] = {}  # (source, filename) -> code, for repeated remote_execs


def _compile_task(source: str, filename) -> CodeType:
    key = (source, filename)
    code = _compiled.get(key)
    if code is None:
        code = compile(source + "\n", filename or "<remote exec>", "exec")
        if len(_compiled) >= 256:
            _compiled.clear()
        _compiled[key] = code
    return code


# Seconds a worker told to end gives its running tasks before it interrupts
# them (SIGINT), unless the master set another grace; and seconds it gives
# the interrupted tasks before it exits hard (os._exit).
DEFAULT_TERMINATE_GRACE = 5.0
INTERRUPTED_GRACE = 10.0


class WorkerGateway(BaseGateway):
    """The serving end of a connection: it runs remote_exec tasks."""

    _grace = DEFAULT_TERMINATE_GRACE

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
        grace = self._grace
        self._trace("shutting down execution pool")
        self._execpool.trigger_shutdown()
        if self._execpool.waitall(grace):
            return
        self._trace(f"execution ongoing after {grace} secs, trying interrupt_main")
        if sys.platform != "win32":
            import signal

            self._trace("sending ourselves a SIGINT")
            os.kill(os.getpid(), signal.SIGINT)
        else:
            self._trace("calling interrupt_main()")
            _thread.interrupt_main()
        if not self._execpool.waitall(INTERRUPTED_GRACE):
            self._trace("interrupted execution did not finish, calling os._exit()")
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

    def _while_idle(self):
        """What the primary thread does while it has no task (see
        WorkerPool.integrate_as_primary_thread): nothing here."""
        return None

    def serve(self) -> None:
        """Serve the connection until it ends: receive messages, run tasks
        (in this thread too, with a thread execmodel)."""
        try:
            self._trace("[serve] spawning receiver thread")
            self._initreceive()
            if self._execpool._hasprimary:
                self._trace("[serve] integrating as primary thread")
                self._execpool.integrate_as_primary_thread(self._while_idle())
            self._trace("[serve] joining receiver thread")
            self.join()
        except KeyboardInterrupt:
            self._trace("swallowing keyboardinterrupt, serve finished")


def serve(io, id, grace=None) -> None:
    """Be the worker end of the connection io until it ends; grace: the
    seconds running tasks get at the end before they are interrupted
    (None: DEFAULT_TERMINATE_GRACE)."""
    trace(f"creating workergateway on {io!r}")
    gateway = WorkerGateway(io, id, _startcount=2)
    if grace is not None:
        gateway._grace = float(grace)
    gateway.serve()


def init_popen_io(execmodel, output_fd=None) -> Popen2IO:
    """Take fds 0 and 1 for the protocol; leave the null device in their
    place, or at fd 1 output_fd, the pipe of a master forwarding output."""
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
        if output_fd is None:
            os.dup2(devnull, 1)
        else:
            os.dup2(output_fd, 1)
            os.close(output_fd)
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
# compatibility names
# --------------------------------------------------------------------------

# This module alone is the portable core.  Imported as part of the package,
# execnet/backend.py sets these two to the core the package chose.
BACKEND = "python"
BACKEND_REASON = "this is the portable core sent as source to a remote interpreter"

# The portable serializer by name (the fuzz harnesses and tests read it).
PURE_PYTHON_SERIALIZER = {
    "dumps": dumps,
    "loads": loads,
    "dumps_internal": dumps_internal,
    "loads_internal": loads_internal,
}

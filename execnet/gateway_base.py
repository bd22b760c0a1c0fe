"""execnet's portable core: the serializer, framing, channels and the worker.

This module is self-contained (standard library only) because its source is
what a remote interpreter without our extension executes.  When it is
imported as ``execnet.gateway_base`` and the C extension loads, the hot
paths are replaced by their C twins; ``BACKEND`` says which are active.
"""

from __future__ import annotations

import os
import struct
import sys

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
_pack_double = struct.Struct("!d").pack
_pack_complex = struct.Struct("!dd").pack


def _sized(op: bytes, data: bytes, what: str) -> bytes:
    if len(data) > FOUR_BYTE_INT_MAX:
        raise DumpError(f"{what} is too long")
    return op + _pack_int32(len(data)) + data


def _encode_int(value: int) -> bytes:
    if FOUR_BYTE_INT_MIN <= value <= FOUR_BYTE_INT_MAX:
        return b"F" + _pack_int32(value)
    return _sized(b"H", str(value).encode("ascii"), "string")


def _encode_str(value: str) -> bytes:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise DumpError("strings must be utf-8 encodable") from None
    return _sized(b"N", data, "string")


_LEAF_ENCODERS = {
    type(None): lambda value: b"L",
    bool: lambda value: b"R" if value else b"C",
    int: _encode_int,
    float: lambda value: b"D" + _pack_double(value),
    complex: lambda value: b"T" + _pack_complex(value.real, value.imag),
    bytes: lambda value: _sized(b"A", value, "string"),
    str: _encode_str,
}
_COLLECTIONS = {tuple: (b"@", "tuple"), set: (b"O", "set"), frozenset: (b"E", "set")}
_SETITEM = (b"P", -1)


def _encode(obj: object) -> bytes:
    """Encode obj followed by STOP, without version byte.

    An explicit stack holds (value, level) pairs still to encode and
    (raw bytes, -1) pairs to emit as they are.
    """
    out: list[bytes] = []
    todo: list[tuple[object, int]] = [(obj, 0)]
    while todo:
        value, level = todo.pop()
        if level < 0:
            out.append(value)  # type: ignore[arg-type]
            continue
        tp = type(value)
        leaf = _LEAF_ENCODERS.get(tp)
        if leaf is not None:
            out.append(leaf(value))
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
    return DUMPFORMAT_VERSION + _encode(obj)


def dump(byteio, obj: object) -> None:
    """Write the serialization of obj to byteio."""
    byteio.write(dumps(obj))


def dumps_internal(obj: object) -> bytes:
    """Serialize obj without version byte, as message payloads carry it."""
    return _encode(obj)


class _BufferReader:
    """Reads from bytes that are all there."""

    def __init__(self, data) -> None:
        if isinstance(data, str):
            raise TypeError("can't load from str, expected a bytes-like object")
        self.data = bytes(memoryview(data))
        self.pos = 0

    def read(self, n: int) -> bytes:
        self.require(n)
        start = self.pos
        self.pos = start + n
        return self.data[start : self.pos]

    def require(self, n: int) -> None:
        have = len(self.data) - self.pos
        if have < n:
            raise EOFError(f"expected {n} bytes, got {have}")


class _StreamReader:
    """Reads from a file-like object, in bounded pieces."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.ahead = b""  # bytes read by require() and not yet consumed

    def read(self, n: int) -> bytes:
        self.require(n)
        data, self.ahead = self.ahead[:n], self.ahead[n:]
        return data

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
        self.channel_or_gateway = channel_or_gateway
        if strconfig is None:
            strconfig = getattr(channel_or_gateway, "_strconfig", (False, False))
        self.py2str_as_py3str, self.py3str_as_py2str = strconfig
        self.stack: list[object] = []
        self.depths: list[int] = []  # nesting depth of each stack entry

    def load(self, versioned: bool = False):
        if versioned:
            try:
                version = self.reader.read(1)
            except EOFError:
                version = b""
            if version != DUMPFORMAT_VERSION:
                raise LoadError(f"wrong dumpformat version {version!r}")
        read = self.reader.read
        dispatch = self._dispatch
        while True:
            op = read(1)
            handler = dispatch.get(op)
            if handler is None:
                raise LoadError(f"unknown opcode {op!r} - wire protocol corruption?")
            if handler is Unserializer._stop:
                break
            handler(self)
        if len(self.stack) != 1:
            raise LoadError("internal unserialization error")
        return self.stack.pop()

    # helpers

    def _length(self) -> int:
        (n,) = _int32.unpack(self.reader.read(4))
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
        self._push(None)

    def _true(self) -> None:
        self._push(True)

    def _false(self) -> None:
        self._push(False)

    def _int(self) -> None:
        self._push(_int32.unpack(self.reader.read(4))[0])

    def _longint(self) -> None:
        text = self.reader.read(self._length())
        try:
            self._push(int(text))
        except ValueError as e:
            raise LoadError(f"invalid integer data: {e}") from None

    def _float(self) -> None:
        self._push(struct.unpack("!d", self.reader.read(8))[0])

    def _complex(self) -> None:
        self._push(complex(*struct.unpack("!dd", self.reader.read(16))))

    def _bytes(self) -> None:
        self._push(self.reader.read(self._length()))

    def _unicode(self) -> None:
        self._push(self._decode(self.reader.read(self._length()), "utf-8"))

    def _py2string(self) -> None:
        data = self.reader.read(self._length())
        self._push(self._decode(data, "latin-1") if self.py2str_as_py3str else data)

    def _py3string(self) -> None:
        data = self.reader.read(self._length())
        self._push(data if self.py3str_as_py2str else self._decode(data, "utf-8"))

    def _newlist(self) -> None:
        n = self._length()
        # A list of n items is followed by at least n bytes of setitems:
        # check they are there before allocating.
        self.reader.require(n)
        self._push([None] * n, 1)

    def _newdict(self) -> None:
        self._push({}, 1)

    def _setitem(self) -> None:
        if len(self.stack) < 3:
            raise LoadError("not enough items for setitem")
        value = self.stack.pop()
        depth = self.depths.pop() + 1
        key = self.stack.pop()
        self.depths.pop()
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
        (channelid,) = _int32.unpack(self.reader.read(4))
        if self.channel_or_gateway is None:
            raise LoadError("can't load a channel reference without a gateway")
        self._push(_channelfactory_of(self.channel_or_gateway).new(channelid))

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


def _load_c_backend():
    if __name__ != "execnet.gateway_base" or os.environ.get("EXECNET_PUREPYTHON"):
        return None
    try:
        from execnet import _execnet
    except ImportError:
        return None
    _execnet._install(globals())
    return _execnet


_c = _load_c_backend()
if _c is not None:
    BACKEND = "c"
    dumps = _c.dumps  # noqa: F811
    loads = _c.loads  # noqa: F811
    dumps_internal = _c.dumps_internal  # noqa: F811
    loads_internal = _c.loads_internal  # noqa: F811
del _c

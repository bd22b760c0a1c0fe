"""The serializer (doc/serializer.md) on both backends.

Every test taking the ``serializer`` fixture runs once on the pure-Python
twin and once on the C backend.
"""

from __future__ import annotations

import collections
import enum
import io
import mmap
import random
import struct

import pytest
from values import random_value

import execnet
from execnet import gateway_base
from execnet.gateway_base import DataFormatError
from execnet.gateway_base import DumpError
from execnet.gateway_base import LoadError

# (value, hex of dumps(value)), checked against execnet 2.1.2
GOLDEN = [
    (None, "02 4c 51"),
    (True, "02 52 51"),
    (False, "02 43 51"),
    (0, "02 46 00 00 00 00 51"),
    (-1, "02 46 ff ff ff ff 51"),
    (-5, "02 46 ff ff ff fb 51"),
    (2147483647, "02 46 7f ff ff ff 51"),
    (-2147483648, "02 46 80 00 00 00 51"),
    (2147483648, "02 48 00 00 00 0a 32 31 34 37 34 38 33 36 34 38 51"),
    (1.5, "02 44 3f f8 00 00 00 00 00 00 51"),
    (-0.0, "02 44 80 00 00 00 00 00 00 00 51"),
    (float("inf"), "02 44 7f f0 00 00 00 00 00 00 51"),
    (1 + 2j, "02 54 3f f0 00 00 00 00 00 00 40 00 00 00 00 00 00 00 51"),
    (b"ab", "02 41 00 00 00 02 61 62 51"),
    ("ab", "02 4e 00 00 00 02 61 62 51"),
    ("é", "02 4e 00 00 00 02 c3 a9 51"),
    ("", "02 4e 00 00 00 00 51"),
    ((), "02 40 00 00 00 00 51"),
    ((1,), "02 46 00 00 00 01 40 00 00 00 01 51"),
    (((),), "02 40 00 00 00 00 40 00 00 00 01 51"),
    ((1, (), 3), "02 46 00 00 00 01 40 00 00 00 00 46 00 00 00 03 40 00 00 00 03 51"),
    ([], "02 4b 00 00 00 00 51"),
    (
        [1, "a"],
        "02 4b 00 00 00 02 46 00 00 00 00 46 00 00 00 01 50 46 00 00 00 01 4e 00 00 00 01 61 50 51",
    ),
    (
        [[1]],
        "02 4b 00 00 00 01 46 00 00 00 00 4b 00 00 00 01 46 00 00 00 00 46 00 00 00 01 50 50 51",
    ),
    ({}, "02 4a 51"),
    ({"a": 1}, "02 4a 4e 00 00 00 01 61 46 00 00 00 01 50 51"),
    (
        {2: "b", 1: "a"},
        "02 4a 46 00 00 00 02 4e 00 00 00 01 62 50 46 00 00 00 01 4e 00 00 00 01 61 50 51",
    ),
    (set(), "02 4f 00 00 00 00 51"),
    ({1}, "02 46 00 00 00 01 4f 00 00 00 01 51"),
    (frozenset({1}), "02 46 00 00 00 01 45 00 00 00 01 51"),
    ({frozenset({1})}, "02 46 00 00 00 01 45 00 00 00 01 4f 00 00 00 01 51"),
    (
        [True, False, None],
        "02 4b 00 00 00 03 46 00 00 00 00 52 50 46 00 00 00 01 43 50 46 00 00 00 02 4c 50 51",
    ),
]


@pytest.mark.parametrize("value, expected", GOLDEN, ids=[repr(v) for v, _ in GOLDEN])
def test_golden_bytes(serializer, value, expected):
    data = serializer.dumps(value)
    assert data.hex(" ") == expected
    assert serializer.dumps_internal(value) == data[1:]
    back = serializer.loads(data)
    assert back == value and type(back) is type(value)


def test_exec_message_payload(serializer):
    # the payload of remote_exec("channel.send(42)"): (source, filename, call_name, kwargs)
    payload = serializer.dumps_internal(("channel.send(42)", None, None, {}))
    assert payload == b"N\x00\x00\x00\x10channel.send(42)LLJ@\x00\x00\x00\x04Q"


def test_active_backend_is_visible():
    assert gateway_base.BACKEND in ("c", "python")
    assert execnet.BACKEND == gateway_base.BACKEND


def test_public_functions_are_the_chosen_cores():
    # what execnet exports is the serializer of the core backend.py chose;
    # gateway_base's own stay the portable ones
    from execnet import backend

    if backend.BACKEND == "c":
        from execnet import _execnet

        expected = (_execnet.dumps, _execnet.loads)
    else:
        expected = (gateway_base.dumps, gateway_base.loads)
    assert (execnet.dumps, execnet.loads) == (backend.dumps, backend.loads) == expected
    assert gateway_base.dumps is gateway_base.PURE_PYTHON_SERIALIZER["dumps"]
    assert execnet.DumpError is gateway_base.DumpError


def test_opcode_table():
    names = {k: v for k, v in vars(gateway_base.opcode).items() if k.isupper()}
    assert len(names) == 21
    expected = "@ABCDEFGHIJKLMNOPQRST"
    assert sorted(names.values()) == [c.encode() for c in expected]
    assert gateway_base.opcode.COMPLEX == b"T"
    assert gateway_base.opcode.BUILDTUPLE == b"@"
    assert gateway_base.opcode.SETITEM == b"P"
    assert gateway_base.bchr(2) == gateway_base.DUMPFORMAT_VERSION == b"\x02"


def test_error_classes():
    assert issubclass(DumpError, DataFormatError)
    assert issubclass(LoadError, DataFormatError)
    assert execnet.DataFormatError is DataFormatError


ROUND_TRIPS = [
    "123",
    42,
    [1, 2, 3],
    ["23", 25],
    ((), ((),), (1, ((2,), ()))),
    {(1, 2): "a", ("b",): (3,)},
    {1, "x", (2, 3)},
    frozenset({frozenset(), 1.25}),
    3.5 - 7j,
    9223372036854775807324234,
    -9223372036854775807324234,
    -2147483649,
    -(2**31) - 1,
    b"\x00\xff" * 100,
    True,
    None,
    {"nested": [{"a": [1, (2, {3})]}]},
    "x" * 100000,
    "\U0001f600 snowman \u2603",
    float("-inf"),
    list(range(1000)),
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=lambda v: repr(v)[:40])
def test_round_trip(serializer, value):
    data = serializer.dumps(value)
    assert serializer.loads(data) == value
    assert serializer.loads_internal(serializer.dumps_internal(value)) == value


def test_round_trip_nan(serializer):
    back = serializer.loads(serializer.dumps(float("nan")))
    assert back != back


def test_large_negative_int_is_long_opcode(serializer):
    # the reference raises struct.error; we use H, which it decodes
    assert serializer.dumps(-(2**31) - 1) == b"\x02H\x00\x00\x00\x0b-2147483649Q"


def test_never_emits_python2_opcodes(serializer):
    data = serializer.dumps_internal(["s", b"b", 10**30, (1, {2: 3})])
    for op in (b"M", b"S", b"G", b"I"):
        assert op not in data


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


@pytest.mark.parametrize(
    "value",
    [object(), ValueError("x"), Color.RED, collections.OrderedDict(), MyStr("a"),
     bytearray(b"x"), [1, object()], {"k": {1: range(3)}}, (1.5, type)],
    ids=lambda v: type(v).__name__,
)
def test_dump_unsupported(serializer, value):
    with pytest.raises(DumpError, match="can't serialize <"):
        serializer.dumps(value)


def test_dump_error_names_type(serializer):
    with pytest.raises(DumpError) as excinfo:
        serializer.dumps({"a": [ValueError()]})
    assert str(excinfo.value) == "can't serialize <class 'ValueError'>"


def test_dump_surrogates(serializer):
    with pytest.raises(DumpError, match="strings must be utf-8 encodable"):
        serializer.dumps("\ud800")


def test_dump_self_reference(serializer):
    lst: list = []
    lst.append(lst)
    with pytest.raises(DumpError, match="nested deeper than 1000"):
        serializer.dumps(lst)


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else (value,)
    return value


def test_nesting_limit(serializer):
    limit = gateway_base.MAX_NESTING
    data = serializer.dumps(nested(limit))
    # (== on such depths would exceed the recursion limit: compare bytes)
    assert serializer.dumps(serializer.loads(data)) == data
    with pytest.raises(DumpError):
        serializer.dumps(nested(limit + 1))


def test_load_nesting_limit(serializer):
    limit = gateway_base.MAX_NESTING
    ok = b"\x02" + b"L" + b"@\x00\x00\x00\x01" * limit + b"Q"
    depth, value = 0, serializer.loads(ok)
    while isinstance(value, tuple):
        depth, value = depth + 1, value[0]
    assert depth == limit
    with pytest.raises(LoadError, match="nested deeper"):
        serializer.loads(b"\x02" + b"L" + b"@\x00\x00\x00\x01" * (limit + 1) + b"Q")
    # lists filled by setitem count too
    deep_lists = b"\x02" + b"K\x00\x00\x00\x01F\x00\x00\x00\x00" * (limit + 1) + b"L" + b"P" * (limit + 1) + b"Q"
    with pytest.raises(LoadError, match="nested deeper"):
        serializer.loads(deep_lists)


def test_dump_to_file():
    f = io.BytesIO()
    assert execnet.dump(f, {"a": [1, 2]}) is None
    assert f.getvalue() == execnet.dumps({"a": [1, 2]})


@pytest.mark.parametrize("value", ["123", 42, [1, 2, 3], ["23", 25]])
def test_load_from_bytesio_and_mmap(value, tmp_path):
    f = io.BytesIO()
    execnet.dump(f, value)
    f.seek(0)
    assert execnet.load(f) == value
    path = tmp_path / "dump"
    path.write_bytes(execnet.dumps(value))
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert execnet.load(m) == value


def test_consecutive_loads():
    f = io.BytesIO()
    execnet.dump(f, "first")
    execnet.dump(f, [2])
    f.seek(0)
    assert execnet.load(f) == "first"
    assert execnet.load(f) == [2]
    with pytest.raises(LoadError, match="wrong dumpformat version b''"):
        execnet.load(f)


def test_load_stream_reads_in_bounded_pieces():
    class Stream:
        def __init__(self, data):
            self.data, self.asked = data, []

        def read(self, n):
            self.asked.append(n)
            chunk, self.data = self.data[:n], self.data[n:]
            return chunk

    # claims 2 GiB of bytes, has ten: never asks for more than a chunk
    stream = Stream(b"\x02A\x7f\xff\xff\xff" + b"x" * 10)
    with pytest.raises(EOFError):
        execnet.load(stream)
    assert max(stream.asked) <= gateway_base._READ_CHUNK


def test_version_is_read_at_call_time(serializer, monkeypatch):
    monkeypatch.setattr(gateway_base, "DUMPFORMAT_VERSION", b"\x01")
    data = serializer.dumps(42)
    assert data[:1] == b"\x01"
    monkeypatch.undo()
    with pytest.raises(DataFormatError):
        serializer.loads(data)


@pytest.mark.parametrize(
    "data, exc, message",
    [
        (b"", LoadError, "wrong dumpformat version b''"),
        (b"\x01LQ", LoadError, "wrong dumpformat version b'\\x01'"),
        (b"\x02ZQ", LoadError, "unknown opcode b'Z' - wire protocol corruption?"),
        (b"\x02", EOFError, ""),
        (b"\x02L", EOFError, ""),
        (b"\x02LLQ", LoadError, "internal unserialization error"),
        (b"\x02Q", LoadError, "internal unserialization error"),
        (b"\x02PQ", LoadError, "not enough items for setitem"),
        (b"\x02F\x00\x00", EOFError, ""),
        (b"\x02A\x00\x00\x00\x05abQ", EOFError, ""),
        (b"\x02A\xff\xff\xff\xffQ", LoadError, "negative length"),
        (b"\x02N\x00\x00\x00\x01\xffQ", LoadError, "invalid string"),
        (b"\x02H\x00\x00\x00\x02x1Q", LoadError, "invalid integer"),
        (b"\x02F\x00\x00\x00\x01@\x00\x00\x00\x02Q", LoadError, "not enough items for tuple"),
        (b"\x02K\x00\x00\x00\x00O\x00\x00\x00\x01Q", LoadError, "set item"),
        (b"\x02LLLPQ", LoadError, "can't set an item on NoneType"),
        (b"\x02K\x00\x00\x00\x01F\x00\x00\x00\x05LPQ", LoadError, "bad setitem"),
        (b"\x02JK\x00\x00\x00\x00LPQ", LoadError, "bad setitem"),
        (b"\x02B\x00\x00\x00\x01Q", LoadError, "channel reference"),
    ],
)
def test_load_errors(serializer, data, exc, message):
    with pytest.raises(exc) as excinfo:
        serializer.loads(data)
    assert type(excinfo.value) is exc
    assert message in str(excinfo.value)


def test_oversized_length_allocates_nothing(serializer):
    # 2 GiB claimed, ten bytes present: fails at once, without allocating
    for op in b"ANSMH":
        with pytest.raises(EOFError):
            serializer.loads(b"\x02" + bytes([op]) + b"\x7f\xff\xff\xff" + b"0" * 10)
    with pytest.raises(EOFError):
        serializer.loads(b"\x02K\x7f\xff\xff\xff" + b"L" * 10)


def test_lists_together_fit_in_the_data(serializer):
    # a list of 12 items in one of n: the bytes after the inner K are the
    # outer list's too, and both lists must fit in the 28 bytes of data
    def data(n):
        return b"\x02K" + n.to_bytes(4, "big") + b"F\x00\x00\x00\x00K\x00\x00\x00\x0cPQ" + b"x" * 10

    assert serializer.loads(data(12)) == [[None] * 12] + [None] * 11
    assert serializer.loads(data(16)) == [[None] * 12] + [None] * 15
    with pytest.raises(EOFError, match="expected 13 bytes, got 12"):
        serializer.loads(data(17))
    with pytest.raises(EOFError, match="expected 18 bytes, got 12"):
        serializer.loads(data(22))


def test_python2_strings(serializer):
    assert serializer.loads(b"\x02M\x00\x00\x00\x01aQ") == b"a"
    assert serializer.loads(b"\x02M\x00\x00\x00\x01\xe9Q", py2str_as_py3str=True) == "é"
    assert (
        serializer.loads(b"\x02N\x00\x00\x00\x02\xc3\xa9Q", py3str_as_py2str=True)
        == b"\xc3\xa9"
    )
    for flags in [(False, False), (True, True)]:
        assert serializer.loads(b"\x02S\x00\x00\x00\x02\xc3\xa9Q", *flags) == "é"
        assert serializer.loads(b"\x02A\x00\x00\x00\x01aQ", *flags) == b"a"


def test_python2_int_opcodes(serializer):
    assert serializer.loads(b"\x02G\x00\x00\x00\x07Q") == 7
    assert serializer.loads(b"\x02I\x00\x00\x00\x03-12Q") == -12
    assert serializer.loads(b"\x02H\x00\x00\x00\x03-12Q") == -12


def test_trailing_bytes_ignored(serializer):
    assert serializer.loads(b"\x02LQgarbage") is None


def test_loads_buffer_types(serializer):
    data = serializer.dumps([1, "a"])
    assert serializer.loads(bytearray(data)) == [1, "a"]
    assert serializer.loads(memoryview(data)) == [1, "a"]
    with pytest.raises(TypeError):
        serializer.loads(data.decode("latin-1"))


class FakeFactory:
    def __init__(self):
        self.made = []

    def new(self, id):
        self.made.append(id)
        return ("channel", id)


class FakeGateway:
    def __init__(self, strconfig=(True, False)):
        self._channelfactory = FakeFactory()
        self._strconfig = strconfig


class Channel:
    """Encoded by the name of its class, as execnet does."""

    def __init__(self, id):
        self.id = id
        self.gateway = FakeGateway()


def test_channel_reference(serializer):
    data = serializer.dumps_internal([Channel(7)])
    assert data == b"K\x00\x00\x00\x01F\x00\x00\x00\x00B\x00\x00\x00\x07PQ"
    gw = FakeGateway()
    assert serializer.loads_internal(data, gw) == [("channel", 7)]
    # a channel stands for its gateway
    ch = Channel(3)
    assert serializer.loads_internal(data, ch) == [("channel", 7)]
    assert ch.gateway._channelfactory.made == [7]


def test_loads_internal_strconfig(serializer):
    data = b"M\x00\x00\x00\x01\xe9Q"
    assert serializer.loads_internal(data) == b"\xe9"
    assert serializer.loads_internal(data, FakeGateway((True, False))) == "é"
    assert serializer.loads_internal(data, FakeGateway(), (False, False)) == b"\xe9"
    assert serializer.loads_internal(b"N\x00\x00\x00\x01aQ", None, (False, True)) == b"a"


# -- randomized: both backends produce and refuse the same -------------------


def outcome(func, data):
    try:
        return "ok", repr(func(data))
    except (DataFormatError, EOFError) as e:
        return type(e).__name__, str(e)


def test_random_values_same_bytes(both_serializers):
    pure, c = both_serializers
    rng = random.Random(1234)
    for _ in range(2000):
        value = random_value(rng)
        data = pure.dumps(value)
        assert c.dumps(value) == data
        assert c.loads(data) == pure.loads(data) == value


def test_random_corruption_fails_the_same_way(both_serializers):
    pure, c = both_serializers
    rng = random.Random(4321)
    seen = collections.Counter()
    for _ in range(600):
        data = pure.dumps(random_value(rng))
        cases = [data[:cut] for cut in range(len(data))]
        for _ in range(10):
            mutated = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                pos = rng.randrange(len(mutated))
                mutated[pos] = rng.choice([rng.randrange(256), rng.randrange(0x40, 0x55)])
            cases.append(bytes(mutated))
        cases.append(b"\x02" + bytes(rng.randrange(0x40, 0x55) for _ in range(12)))
        cases.append(bytes(rng.randrange(256) for _ in range(rng.randrange(30))))
        for case in cases:
            expected = outcome(pure.loads, case)
            assert outcome(c.loads, case) == expected, case
            seen[expected[0]] += 1
    # the corpus exercised every kind of outcome
    assert seen["ok"] and seen["LoadError"] and seen["EOFError"]


def test_int32_boundaries(serializer):
    for value in (2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**63, -(2**63) - 1):
        data = serializer.dumps(value)
        assert data[1:2] == (b"F" if -(2**31) <= value < 2**31 else b"H")
        assert serializer.loads(data) == value
    assert struct.unpack("!i", serializer.dumps(-7)[2:6]) == (-7,)

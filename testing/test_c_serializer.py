"""The C serializer alone: binding, limits, argument handling and leaks.

What both backends must share is in test_serializer.py; these tests look at
what only the C module has (its state, its buffers, its reference counts).
"""

from __future__ import annotations

import gc
import inspect
import io
import random
import sys
import tracemalloc

import pytest
from values import random_value

from execnet import gateway_base
from execnet.gateway_base import DumpError
from execnet.gateway_base import LoadError

_execnet = pytest.importorskip("execnet._execnet")
PURE = gateway_base.PURE_PYTHON_SERIALIZER


@pytest.fixture(autouse=True)
def installed():
    _execnet._install(gateway_base.__dict__)
    yield
    # as execnet._native bound it: tests here bind other namespaces
    _execnet._install(gateway_base.__dict__)


# -- binding ------------------------------------------------------------------


def test_max_nesting_agrees_with_pure_code():
    assert _execnet.MAX_NESTING == gateway_base.MAX_NESTING


def test_install_requires_a_dict_with_the_exceptions():
    with pytest.raises(TypeError):
        _execnet._install([])
    with pytest.raises(KeyError):
        _execnet._install({"DumpError": DumpError})
    with pytest.raises(TypeError):
        _execnet._install({"DumpError": DumpError, "LoadError": 42})


def test_install_binds_a_namespace():
    class MyDump(Exception):
        pass

    class MyLoad(Exception):
        pass

    ns = {
        "DUMPFORMAT_VERSION": b"\x07",
        "DumpError": MyDump,
        "LoadError": MyLoad,
        "TimeoutError": TimeoutError,
    }
    _execnet._install(ns)
    assert _execnet.dumps(1) == b"\x07F\x00\x00\x00\x01Q"
    assert _execnet.loads(b"\x07LQ") is None
    with pytest.raises(MyDump):
        _execnet.dumps(object())
    with pytest.raises(MyLoad):
        _execnet.loads(b"\x02LQ")
    ns["DUMPFORMAT_VERSION"] = b"\x08"  # read at every call
    assert _execnet.dumps(None) == b"\x08LQ"
    del ns["DUMPFORMAT_VERSION"]
    with pytest.raises(NameError):
        _execnet.dumps(None)
    with pytest.raises(NameError):
        _execnet.loads(b"\x08LQ")


def test_unusual_version_object_is_concatenated(monkeypatch):
    monkeypatch.setattr(gateway_base, "DUMPFORMAT_VERSION", bytearray(b"\x02"))
    assert _execnet.dumps(None) == bytearray(b"\x02LQ")
    assert type(_execnet.dumps(None)) is bytearray
    assert _execnet.loads(b"\x02LQ") is None
    monkeypatch.setattr(gateway_base, "DUMPFORMAT_VERSION", "x")
    with pytest.raises(TypeError):
        _execnet.dumps(None)


def test_signatures_match_the_pure_code():
    def shape(func):
        params = inspect.signature(func).parameters.values()
        return [(p.name, p.kind, p.default) for p in params]

    for name, func in PURE.items():
        assert shape(getattr(_execnet, name)) == shape(func)


@pytest.mark.parametrize(
    "call",
    [
        lambda: _execnet.dumps(),
        lambda: _execnet.dumps(1, 2),
        lambda: _execnet.dumps(1, obj=1),
        lambda: _execnet.dumps(value=1),
        lambda: _execnet.loads(),
        lambda: _execnet.loads(b"\x02LQ", 1, 2, 3),
        lambda: _execnet.loads(b"\x02LQ", bytestring=b""),
        lambda: _execnet.loads_internal(b"LQ", None, None, None),
        lambda: _execnet.loads_internal(b"LQ", gateway=None),
        lambda: _execnet.loads_internal(channel_or_gateway=None),
        lambda: _execnet.dumps_internal(**{"obj": 1, "x": 2}),
    ],
)
def test_argument_errors_are_type_errors(call):
    with pytest.raises(TypeError):
        call()


def test_keyword_arguments():
    assert _execnet.dumps(obj=1) == b"\x02F\x00\x00\x00\x01Q"
    assert _execnet.dumps_internal(obj=None) == b"LQ"
    data = b"\x02M\x00\x00\x00\x01\xe9Q"
    assert _execnet.loads(bytestring=data, py2str_as_py3str=True) == "é"
    assert _execnet.loads_internal(data=b"M\x00\x00\x00\x01\xe9Q", strconfig=(1, 0)) == "é"


# -- inputs and limits ----------------------------------------------------------


def test_streams_are_read_like_the_pure_code():
    f = io.BytesIO(_execnet.dumps([1, 2]) + _execnet.dumps("x"))
    assert _execnet.loads(f) == [1, 2]
    assert _execnet.loads(f) == "x"
    assert _execnet.loads_internal(io.BytesIO(b"LQ")) is None


def test_non_contiguous_buffers_are_copied():
    data = _execnet.dumps(["a", 1.5])
    spread = bytearray(len(data) * 2)
    spread[::2] = data
    view = memoryview(spread)[::2]
    assert not view.contiguous
    assert _execnet.loads(view) == ["a", 1.5]
    with pytest.raises(TypeError, match="bytes-like"):
        _execnet.loads(5)


def test_bytearray_is_not_resized_while_decoding():
    data = bytearray(b"B\x00\x00\x00\x01Q")

    class Factory:
        def new(self, id):
            with pytest.raises(BufferError):
                data.extend(b"xx")
            return id

    class Gateway:
        _channelfactory = Factory()

    assert _execnet.loads_internal(data, Gateway()) == 1


@pytest.mark.parametrize("size", [32 * 1024 - 1, 32 * 1024, 100_000, 1 << 20])
def test_large_strings_and_bytes(size):
    value = [b"b" * size, "s" * size, "é" * (size // 2), 7, (b"\x00" * size,)]
    data = _execnet.dumps(value)
    assert data == PURE["dumps"](value)
    assert _execnet.loads(data) == value


def test_many_items():
    value = {i: [str(i)] * 3 for i in range(20000)}
    data = _execnet.dumps(value)
    assert data == PURE["dumps"](value)
    assert _execnet.loads(data) == value


def test_deep_stack_of_values():
    # a long flat tuple makes a tall value stack
    data = b"\x02" + b"L" * 100_000 + b"@\x00\x01\x86\xa0Q"
    assert _execnet.loads(data) == (None,) * 100_000


def test_huge_claimed_list_fails_before_allocating():
    tracemalloc.start()
    try:
        with pytest.raises(EOFError, match="expected 2147483647 bytes, got 1"):
            _execnet.loads(b"\x02K\x7f\xff\xff\xffL")
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_lists_claiming_the_same_bytes_fail_before_allocating():
    # each K claims the bytes after it, which hold the next K and so on: the
    # lists together may not claim more than the data holds, else 20 kB of
    # data would take 300 MB of lists
    data = b"".join(b"K" + (20_000 - 5 * i).to_bytes(4, "big") for i in range(1, 4001))
    tracemalloc.start()
    try:
        with pytest.raises(EOFError, match="expected 39975 bytes, got 19990"):
            _execnet.loads_internal(data)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_nesting_limits_exactly():
    limit = _execnet.MAX_NESTING
    value: object = None
    for _ in range(limit):
        value = [value]
    assert _execnet.dumps(value) == PURE["dumps"](value)
    with pytest.raises(DumpError, match=r"can't serialize <class 'list'>: nested deeper"):
        _execnet.dumps({"k": value})
    frozensets = b"\x02" + b"L" + b"E\x00\x00\x00\x01" * limit + b"Q"
    assert _execnet.dumps(_execnet.loads(frozensets)) == frozensets
    with pytest.raises(LoadError, match="nested deeper"):
        _execnet.loads(b"\x02" + b"L" + b"E\x00\x00\x00\x01" * (limit + 1) + b"Q")
    # the key and the value of a setitem both count, as when dumping
    deep = b"L" + b"@\x00\x00\x00\x01" * (limit - 1)
    assert len(_execnet.loads(b"\x02J" + deep + b"LPQ")) == 1
    for data in (b"\x02J" + deep + b"@\x00\x00\x00\x01LPQ", b"\x02JL" + deep + b"@\x00\x00\x00\x01PQ"):
        with pytest.raises(LoadError, match="nested deeper"):
            _execnet.loads(data)
        with pytest.raises(LoadError, match="nested deeper"):
            PURE["loads"](data)


def test_int_text_like_int_of_bytes():
    for text in [b" 12 ", b"1_000", b"-0", b"+7", b"\t-3\n"]:
        data = b"H" + len(text).to_bytes(4, "big") + text + b"Q"
        assert _execnet.loads_internal(data) == int(text)
    for text in [b"", b"1__0", b"0x10", b"1\x00", b"\xd9\xa1", b"9" * 5000]:
        data = b"I" + len(text).to_bytes(4, "big") + text + b"Q"
        with pytest.raises(LoadError) as c_error:
            _execnet.loads_internal(data)
        with pytest.raises(LoadError) as pure_error:
            PURE["loads_internal"](data)
        assert str(c_error.value) == str(pure_error.value)


# -- channels and Python code running during a call -------------------------------


class Channel:
    def __init__(self, id):
        self._id = id
        self.hook = None

    @property
    def id(self):
        if self.hook is not None:
            self.hook()
        return self._id


@pytest.mark.parametrize("bad_id", [2**31, -(2**31) - 1, "1", 1.0, None])
def test_channel_id_errors_are_struct_errors(bad_id):
    import struct

    for dumps in (_execnet.dumps, PURE["dumps"]):
        with pytest.raises(struct.error):
            dumps([Channel(bad_id)])


def test_channel_id_with_index():
    class Index:
        def __index__(self):
            return 9

    assert _execnet.dumps_internal(Channel(Index())) == b"B\x00\x00\x00\x09Q"
    assert _execnet.dumps_internal(Channel(True)) == b"B\x00\x00\x00\x01Q"


def test_containers_mutated_while_encoding():
    # Python code runs while encoding (the id of a Channel): like the pure
    # code, we encode what the containers held when we met them.
    def build():
        lst = [1, 2, 3]
        dct = {"a": 1, "b": 2}
        st = {10, 20}
        ch = Channel(5)
        value = [lst, dct, st, ch, lst, dct, st]

        def hook():
            lst.clear()
            dct.clear()
            dct.update(z=9)
            st.clear()

        ch.hook = hook
        return value, ch

    value, ch = build()
    expected = PURE["dumps"](value)
    value, ch = build()
    assert _execnet.dumps(value) == expected


def test_reentrant_calls():
    ch = Channel(3)
    inner = []
    ch.hook = lambda: inner.append(_execnet.loads(_execnet.dumps({"x": [1, (2,)]})))
    assert _execnet.dumps([ch, ch]) == PURE["dumps"]([Channel(3), Channel(3)])
    assert inner == [{"x": [1, (2,)]}] * 2


def test_channel_factory_results_on_the_stack():
    class Factory:
        def new(self, id):
            return [id] if id == 1 else {"id": id}

    class Gateway:
        _channelfactory = Factory()
        _strconfig = (False, False)

    gw = Gateway()
    assert _execnet.loads_internal(b"B\x00\x00\x00\x01F\x00\x00\x00\x00LPQ", gw) == [None]
    with pytest.raises(LoadError, match="bad set item: unhashable type: 'dict'"):
        _execnet.loads_internal(b"B\x00\x00\x00\x02O\x00\x00\x00\x01Q", gw)
    with pytest.raises(LoadError, match="not enough items for setitem"):
        _execnet.loads_internal(b"B\x00\x00\x00\x02LPQ", gw)


def test_strconfig_unpacking():
    data = b"M\x00\x00\x00\x01\xe9Q"
    assert _execnet.loads_internal(data, None, [True, False]) == "é"
    assert _execnet.loads_internal(data, None, iter((0, 0))) == b"\xe9"
    with pytest.raises(ValueError, match="too many values to unpack"):
        _execnet.loads_internal(data, None, (1, 2, 3))
    with pytest.raises(ValueError, match=r"not enough values to unpack \(expected 2, got 1\)"):
        _execnet.loads_internal(data, None, (1,))
    with pytest.raises(TypeError, match="cannot unpack non-iterable int object"):
        _execnet.loads_internal(data, None, 5)


# -- leaks ----------------------------------------------------------------------


class FakeFactory:
    def new(self, id):
        return ("channel", id)


class FakeGateway:
    _channelfactory = FakeFactory()
    _strconfig = (True, False)


def _report() -> dict:
    return {
        "nodeid": "testing/test_foo.py::TestBar::test_baz[param-3]",
        "location": ("testing/test_foo.py", 40, "TestBar.test_baz[param-3]"),
        "keywords": {"test_baz[param-3]": 1, "parametrize": 1, "TestBar": 1},
        "outcome": "failed",
        "longrepr": "E   assert 1 == 2\n" * 100,
        "sections": [("Captured stdout call", "x\n"), ("Captured log", "é\n")],
        "duration": 0.0138,
        "user_properties": [],
        "item_index": 1234,
        "when": "call",
    }


def _good_values() -> list:
    rng = random.Random(5)
    values = [random_value(rng) for _ in range(60)]
    values += [
        _report(),
        [b"x" * 40_000, "y" * 40_000],
        10**50,
        -(2**31) - 1,
        {frozenset({1, 2}): {3.5, 2j}},
        [Channel(7), {"c": Channel(8)}],
    ]
    return values


def _bad_dumps() -> list:
    deep: object = 1
    for _ in range(1001):
        deep = [deep]
    return [
        [1, "a", object()],
        {"k": [2, {3: "\ud800"}]},
        ({1, 2}, frozenset({3}), type),
        deep,
        [Channel(2**40)],
        [b"y" * 40_000, object()],
    ]


def _bad_loads() -> list:
    good = _execnet.dumps(_report())
    cases = [good[:cut] for cut in range(0, len(good), 7)]
    cases += [
        b"\x02K\x00\x00\x00\x02F\x00\x00\x00\x00N\x00\x00\x00\x01\xffPQ",
        b"\x02JK\x00\x00\x00\x00LPQ",
        b"\x02LLLPQ",
        b"\x02K\x00\x00\x00\x00K\x00\x00\x00\x00O\x00\x00\x00\x02Q",
        b"\x02H\x00\x00\x00\x02x1Q",
        b"\x02" + b"L@\x00\x00\x00\x01" * 1001 + b"Q",
        b"\x02LLQ",
        b"\x02B\x00\x00\x00\x01Q",
        b"\x02ZQ",
        b"\x03LQ",
        "\x02LQ",
    ]
    return cases


def _exercise() -> None:
    for value in _good_values():
        data = _execnet.dumps(value)
        _execnet.loads_internal(_execnet.dumps_internal(value), FakeGateway())
        if not (isinstance(value, list) and value and isinstance(value[0], Channel)):
            _execnet.loads(data)
            _execnet.loads(memoryview(data))
            _execnet.loads(bytearray(data), True, True)
    for value in _bad_dumps():
        try:
            _execnet.dumps(value)
        except Exception:
            pass
    for data in _bad_loads():
        for call in (
            lambda: _execnet.loads(data),
            lambda: _execnet.loads_internal(data[1:], FakeGateway()),
            lambda: _execnet.loads_internal(data[1:], None, (1, 2, 3)),
        ):
            try:
                call()
            except Exception:
                pass


def test_no_reference_leaks():
    watched = [None, True, False, 0, 1, 1234, "nodeid", FakeGateway._strconfig, Channel]
    _exercise()  # warm up caches
    gc.collect()
    counts = [sys.getrefcount(obj) for obj in watched]
    for _ in range(3):
        _exercise()
    gc.collect()
    # (Python 3.12 made some of these immortal: their counts stay put too)
    assert [sys.getrefcount(obj) for obj in watched] == counts


def test_no_memory_leaks():
    _exercise()  # warm up caches
    gc.collect()
    tracemalloc.start()
    try:
        _exercise()
        gc.collect()
        first = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            _exercise()
        gc.collect()
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # a round allocates megabytes: five rounds leaking anything per call
    # would show
    assert second - first < 4096, (first, second)


def test_containers_under_construction_changed_by_python_code():
    # The channel factory runs while a list is being filled; even if it
    # finds the list (gc.get_objects) and shortens or empties it, decoding
    # goes on safely, failing as the pure code does.
    marker = 424242

    class Factory:
        def new(self, id):
            for obj in gc.get_objects():
                if type(obj) is list and len(obj) == 4 and obj[0] == marker:
                    obj.pop() if id == 1 else obj.clear()
            return id

    class Gateway:
        _channelfactory = Factory()

    data = (
        b"K\x00\x00\x00\x04"
        b"F\x00\x00\x00\x00F\x00\x06\x79\x32P"
        b"F\x00\x00\x00\x01B\x00\x00\x00\x01P"
        b"F\x00\x00\x00\x02LP"
        b"F\x00\x00\x00\x03LPQ"
    )
    emptied = data.replace(b"B\x00\x00\x00\x01", b"B\x00\x00\x00\x02")
    for loads_internal in (PURE["loads_internal"], _execnet.loads_internal):
        for case in (data, emptied):
            with pytest.raises(LoadError, match="bad setitem: list assignment index"):
                loads_internal(case, Gateway())

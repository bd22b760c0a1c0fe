"""The C core's positional-only methods refuse a wrong number of arguments
with TypeError worded as Python's own."""

from __future__ import annotations

import os

import pytest

from execnet import _execnet
from execnet import gateway_base


@pytest.fixture
def conn():
    _execnet._install(gateway_base.__dict__)
    to_conn_r, to_conn_w = os.pipe()
    from_conn_r, from_conn_w = os.pipe()
    conn = _execnet.Connection(to_conn_r, from_conn_w, lambda *args: None)
    yield conn
    del conn  # closes the two descriptors it owns
    os.close(to_conn_w)
    os.close(from_conn_r)


@pytest.mark.parametrize(
    ("method", "args", "message"),
    [
        ("send", (4, 1), "send() takes 3 positional arguments but 2 were given"),
        ("send_raw", (4,), "send_raw() takes 3 positional arguments but 1 was given"),
        ("queue", (1, None, 2), "queue() takes 2 positional arguments but 3 were given"),
    ],
)
def test_connection_methods_count_their_arguments(conn, method, args, message):
    with pytest.raises(TypeError) as excinfo:
        getattr(conn, method)(*args)
    assert str(excinfo.value) == message


def test_queue_get_counts_its_arguments():
    q = _execnet.ItemQueue(None)
    with pytest.raises(TypeError) as excinfo:
        q.get(1.0)
    assert str(excinfo.value) == "get() takes 2 positional arguments but 1 was given"


@pytest.mark.parametrize("name", ["rsync_write_file", "rsync_copy_file"])
def test_rsync_helpers_count_their_arguments(name):
    with pytest.raises(TypeError) as excinfo:
        getattr(_execnet, name)("a", "b")
    assert str(excinfo.value) == f"{name}() takes 4 positional arguments but 2 were given"

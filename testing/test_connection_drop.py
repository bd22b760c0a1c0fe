"""The C core's Connection dropped without close_write() gives back what it
holds: both descriptors and its flusher thread."""

from __future__ import annotations

import contextlib
import gc
import os

import pytest
from runtime_util import wait_for

from execnet import _execnet
from execnet import gateway_base


def test_dropped_unstarted_connection_closes_both_descriptors():
    _execnet._install(gateway_base.__dict__)
    to_conn_r, to_conn_w = os.pipe()
    from_conn_r, from_conn_w = os.pipe()
    conn = _execnet.Connection(to_conn_r, from_conn_w, lambda *args: None)
    conn.send(gateway_base.Message.CHANNEL_DATA, 1, "x")
    del conn
    gc.collect()
    try:
        # what was sent came out, then the end: the write side is closed
        frame = gateway_base._frame(4, 1, gateway_base.dumps_internal("x"))
        got = b""
        while True:
            chunk = os.read(from_conn_r, 4096)
            if not chunk:
                break
            got += chunk
        assert got == frame
        # and nobody reads the read side any more
        with pytest.raises(BrokenPipeError):
            os.write(to_conn_w, b"x")
    finally:
        os.close(to_conn_w)
        os.close(from_conn_r)


def tasks() -> set:
    return set(os.listdir("/proc/self/task"))


def test_dropped_connection_with_a_flusher_gives_everything_back():
    # the flusher thread starts at a burst of closely following data sends
    # (a thread more in /proc/self/task); the connection is dropped unclosed
    _execnet._install(gateway_base.__dict__)
    to_conn_r, to_conn_w = os.pipe()
    from_conn_r, from_conn_w = os.pipe()
    os.set_blocking(from_conn_r, False)
    conn = _execnet.Connection(to_conn_r, from_conn_w, lambda *args: None)
    payload = b"x" * 40
    before = tasks()
    try:
        for attempt in range(10000):
            for i in range(8):  # a burst: nothing slow between these sends
                conn.send_raw(4, 1, payload)
            with contextlib.suppress(BlockingIOError):
                while os.read(from_conn_r, 1 << 20):
                    pass
            if tasks() - before:
                break
        else:
            pytest.fail("the flusher did not start")
        (flusher,) = tasks() - before
        del conn
        gc.collect()
        # the write side ends (what the flusher had is written first)
        os.set_blocking(from_conn_r, True)
        while os.read(from_conn_r, 1 << 20):
            pass
        with pytest.raises(BrokenPipeError):
            os.write(to_conn_w, b"x")
        wait_for(lambda: flusher not in tasks())
    finally:
        os.close(to_conn_w)
        os.close(from_conn_r)

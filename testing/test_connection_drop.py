"""The C core's Connection dropped without close_write() gives back what it
holds, both descriptors and its flusher thread, and waits for neither."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import subprocess
import sys

import pytest
from runtime_util import TIMEOUT
from runtime_util import wait_for

from execnet import _execnet
from execnet import gateway_base

# Linux's fcntl command; the fcntl module has the name from Python 3.10 on
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


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


# A connection whose flusher thread is blocked writing to a full pipe is
# dropped: its deallocation must not wait for the flusher ("dropped" comes
# while the flusher is still blocked). Drained then, the flusher finishes,
# closes the descriptor (the pipe ends) and its thread ends.
#
# The flusher starts at a burst of closely following data sends (a thread
# more in /proc/self/task). A sender thread then sends more than the pipe
# holds: the flusher blocks, or, should a pause between the sends make one
# of them write at once, the sender does; then the pipe is drained and the
# round repeated, until the sender is done and the flusher blocked.
BLOCKED_FLUSHER = """
import fcntl, gc, os, sys, threading, time
from execnet import _execnet, gateway_base
_execnet._install(gateway_base.__dict__)

def tasks():
    return set(os.listdir("/proc/self/task"))

def drain():
    try:
        while os.read(from_conn_r, 1 << 20):
            pass
    except BlockingIOError:
        pass

def burst():
    for i in range(200):
        conn.send_raw(4, 1, payload)

def blocked_writing(tid):
    with open(f"/proc/self/task/{tid}/wchan") as f:
        return "pipe_write" in f.read()

to_conn_r, to_conn_w = os.pipe()
from_conn_r, from_conn_w = os.pipe()
os.set_blocking(from_conn_r, False)
conn = _execnet.Connection(to_conn_r, from_conn_w, lambda *args: None)
fcntl.fcntl(from_conn_r, %(F_SETPIPE_SZ)d, 4096)  # the smallest pipe there is
payload = b"x" * 40
before = tasks()
for attempt in range(10000):
    for i in range(8):  # a burst: nothing slow between these sends
        conn.send_raw(4, 1, payload)
    drain()
    if tasks() - before:
        break
else:
    sys.exit("the flusher did not start")
(flusher,) = tasks() - before
for attempt in range(1000):
    sender = threading.Thread(target=burst)
    sender.start()
    sender.join(0.5)
    if not sender.is_alive():
        deadline = time.monotonic() + %(TIMEOUT)f
        while not blocked_writing(flusher) and time.monotonic() < deadline:
            time.sleep(0.01)
        if blocked_writing(flusher):
            break
    while sender.is_alive():
        drain()
        sender.join(0.1)
    drain()
else:
    sys.exit("the flusher never blocked")
del conn, sender
gc.collect()
print("dropped", flush=True)
os.set_blocking(from_conn_r, True)
while os.read(from_conn_r, 1 << 20):
    pass
deadline = time.monotonic() + %(TIMEOUT)f
while flusher in tasks() and time.monotonic() < deadline:
    time.sleep(0.01)
print("a thread is left" if flusher in tasks() else "flusher ended", flush=True)
"""


def test_dropped_connection_does_not_wait_for_a_blocked_flusher(tmp_path):
    source = BLOCKED_FLUSHER % {"F_SETPIPE_SZ": F_SETPIPE_SZ, "TIMEOUT": TIMEOUT}
    proc = subprocess.Popen(
        [sys.executable, "-c", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # not our checkout, whose sources would shadow the installed package
    )
    try:
        out, err = proc.communicate(timeout=3 * TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["dropped", "flusher ended"], (out, err)

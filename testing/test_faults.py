"""Faults: a worker killed at awkward moments, a peer that cuts a frame.

Every thread waiting on the gateway must raise, with an error of the type
execnet raises (EOFError for what cannot be received, OSError for what
cannot be sent) whose text names the gateway.  The waits are bounded
generously (WAIT) only so that a hang fails the test instead of the run;
bench/bench_faults.py measures how soon the waiters actually raise.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import execnet

pytest_plugins = ["conftest_runtime"]

WAIT = 10.0
BIG = 100 * 1024 * 1024


class Waiter:
    """Runs call() in a thread and keeps what it returned or raised."""

    def __init__(self, call):
        self.call = call
        self.error: BaseException | None = None
        self.result = None
        self.native_id = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(WAIT)

    def _run(self):
        self.native_id = threading.get_native_id()
        self.started.set()
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc

    def wait_blocked(self):
        """Until the thread sleeps in the kernel (it waits for the peer)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with open(f"/proc/self/task/{self.native_id}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("S", "D"):
                return
            time.sleep(0.001)
        raise AssertionError("the waiter never blocked")

    def raised(self, types) -> BaseException:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the waiter still waits"
        assert isinstance(self.error, types), repr(self.error)
        return self.error


def worker_pid(gw) -> int:
    return gw.remote_exec("import os; channel.send(os.getpid())").receive(timeout=WAIT)


def names(gw, error: BaseException) -> None:
    assert f"[gateway {gw.id}]" in str(error), str(error)


def test_kill_while_receiving(gw):
    channel = gw.remote_exec("import os; channel.send(os.getpid()); channel.receive()")
    pid = channel.receive(timeout=WAIT)
    waiters = [Waiter(channel.receive) for _ in range(3)]
    for waiter in waiters:
        waiter.wait_blocked()
    os.kill(pid, signal.SIGKILL)
    for waiter in waiters:
        names(gw, waiter.raised(EOFError))
    # and later calls too
    with pytest.raises(EOFError) as excinfo:
        channel.receive(timeout=WAIT)
    names(gw, excinfo.value)
    with pytest.raises(OSError) as excinfo:
        channel.send(1)
    names(gw, excinfo.value)
    with pytest.raises(EOFError) as excinfo:
        channel.waitclose(timeout=WAIT)
    names(gw, excinfo.value)


def test_kill_while_receiving_a_big_item(makegateway):
    """The worker writes the header of a 100 MB item and half of it, which
    the master has read when the write returns, and is killed then."""
    gw = makegateway()
    channel = gw.remote_exec(
        """
import os, signal, struct
size = channel.receive()
fd = channel.gateway._io.outfile.fileno()
os.write(fd, struct.pack("!bii", 4, channel.id, size) + b"x" * (size // 2))
os.kill(os.getpid(), signal.SIGKILL)
"""
    )
    waiter = Waiter(channel.receive)
    waiter.wait_blocked()
    channel.send(BIG)
    error = waiter.raised(EOFError)
    assert f"expected {BIG} bytes, got " in str(error)
    names(gw, error)


def test_kill_while_sending_a_big_item(makegateway):
    """The master's send blocks writing into the pipe of a stopped worker;
    killing the worker makes it raise."""
    gw = makegateway()
    pid = worker_pid(gw)
    channel = gw.remote_exec("channel.receive()")
    os.kill(pid, signal.SIGSTOP)
    try:
        sender = Waiter(lambda: channel.send(b"y" * BIG))
        sender.wait_blocked()
        receiver = Waiter(channel.receive)
        receiver.wait_blocked()
    finally:
        os.kill(pid, signal.SIGKILL)
    names(gw, sender.raised(OSError))
    names(gw, receiver.raised(EOFError))


def test_kill_during_rsync(makegateway, tmp_path):
    gw = makegateway()
    pid = worker_pid(gw)
    source = tmp_path / "source"
    source.mkdir()
    for i in range(50):
        (source / f"file{i}").write_bytes(os.urandom(1000) * (i + 1))
    killed = []

    def callback(kind, size, channel):
        if not killed:  # the first event: the sync is under way
            killed.append(kind)
            os.kill(pid, signal.SIGKILL)

    rsync = execnet.RSync(str(source), callback=callback, verbose=False)
    rsync.add_target(gw, str(tmp_path / "dest"))
    sync = Waiter(rsync.send)
    error = sync.raised((EOFError, OSError))
    assert killed
    names(gw, error)


def test_truncated_frame(gw):
    """A worker writes the header of a 1000-byte item and 10 bytes of it to
    the master, then exits."""
    channel = gw.remote_exec(
        """
import os, struct
channel.receive()
fd = channel.gateway._io.outfile.fileno()
os.write(fd, struct.pack("!bii", 4, channel.id, 1000) + b"0123456789")
os._exit(0)
"""
    )
    waiter = Waiter(channel.receive)
    waiter.wait_blocked()
    channel.send(None)
    error = waiter.raised(EOFError)
    assert "expected 1000 bytes, got 10" in str(error)
    names(gw, error)

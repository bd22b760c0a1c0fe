"""Group, MultiChannel and safe_terminate."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import textwrap
import time

import pytest
from runtime_util import SUPPORTED_PYTHONS
from runtime_util import TIMEOUT
from runtime_util import require_interpreter
from runtime_util import wait_for

import execnet
from execnet import gateway_base
from execnet.multi import MultiChannel
from execnet.multi import safe_terminate

pytest_plugins = ["conftest_runtime"]


class FakeChannel:
    def __init__(self, id):
        self.id = id
        self.calls = []

    def receive(self):
        self.calls.append("receive")
        return self.id

    def waitclose(self):
        self.calls.append("waitclose")
        if self.id == 1:
            raise execnet.RemoteError("one")


def test_multichannel_sequence():
    gw = type("Gw", (), {"execmodel": gateway_base.get_execmodel("thread")})()
    channels = [gateway_base.Channel(gw, i) for i in range(3)]
    mch = MultiChannel(channels)
    assert len(mch) == 3
    assert list(mch) == channels
    assert all(mch[i] is channels[i] for i in range(3))
    assert channels[1] in mch and gateway_base.Channel(gw, 1) not in mch


def test_multichannel_duck_typed():
    channels = [FakeChannel(i) for i in range(3)]
    mch = MultiChannel(channels)
    assert mch.receive_each() == [0, 1, 2]
    assert mch.receive_each(withchannel=True) == list(zip(channels, [0, 1, 2]))
    with pytest.raises(execnet.RemoteError, match="one"):
        mch.waitclose()
    assert all(channel.calls[-1] == "waitclose" for channel in channels)
    assert MultiChannel([]).make_receive_queue() is None


def test_group_remote_exec(group):
    group.makegateway()
    group.makegateway()
    mch = group.remote_exec("channel.send(channel.receive() + 1)")
    mch.send_each(41)
    assert mch.receive_each() == [42, 42]
    mch.waitclose()


def remote_echo(channel, arg):
    channel.send(arg)


def test_group_remote_exec_function(group):
    group.makegateway()
    assert group.remote_exec(remote_echo, arg=1).receive_each() == [1]


def test_make_receive_queue(group):
    group.makegateway()
    group.makegateway()
    mch = group.remote_exec("channel.send(channel.receive())")
    queue = mch.make_receive_queue()
    assert mch.make_receive_queue(endmarker=1) is queue
    mch.send_each(5)
    received = {queue.get(timeout=TIMEOUT) for _ in range(2)}
    assert received == {(mch[0], 5), (mch[1], 5)}
    mch.waitclose()
    with pytest.raises(AssertionError):
        mch.receive_each()


def test_make_receive_queue_endmarker_on_terminate(group):
    group.makegateway()
    group.makegateway()
    mch = group.remote_exec("import time; time.sleep(100)")
    queue = mch.make_receive_queue(endmarker=42)
    group.terminate(timeout=1)
    received = {queue.get(timeout=TIMEOUT) for _ in range(2)}
    assert received == {(mch[0], 42), (mch[1], 42)}


def test_set_execmodel(group):
    group.set_execmodel("main_thread_only")
    assert group.execmodel.backend == group.remote_execmodel.backend == "main_thread_only"
    group.set_execmodel("thread", "main_thread_only")
    assert (group.execmodel.backend, group.remote_execmodel.backend) == ("thread", "main_thread_only")
    group.makegateway()
    with pytest.raises(ValueError, match="can not set execution models"):
        group.set_execmodel("eventlet")
    assert group.execmodel.backend == "thread"
    with pytest.raises(ValueError, match="unknown execmodel 'nope'"):
        execnet.Group(execmodel="nope")


def test_group_atexit(monkeypatch):
    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    group = execnet.Group()
    assert registered == [group._cleanup_atexit]
    calls = []

    class PseudoIO:
        def wait(self):
            calls.append("wait")

    class PseudoSpec:
        via = None

    class PseudoGateway:
        id = "9999"
        _io = PseudoIO()
        spec = PseudoSpec()

        def exit(self):
            calls.append("exit")
            group._unregister(self)

        def join(self, timeout=None):
            calls.append("join")

        def _receiving(self):
            return False

    group._register(PseudoGateway())
    group._cleanup_atexit()
    assert calls == ["exit", "join", "wait"]
    assert group._gateways == []
    group._cleanup_atexit()
    assert calls == ["exit", "join", "wait"]


# a session that leaves its gateways to the atexit handler: one worker
# blocked in a receive, one sleeping in its remote_exec (killed at the end
# of the handler's timeout), one that ran something, one idle
_LEFT_AT_EXIT = """
import sys
import execnet
gws = [execnet.makegateway() for _ in range(4)]
pids = [gw._io.popen.pid for gw in gws]
receiving = gws[0].remote_exec("channel.send(1); channel.receive()")
sleeping = gws[1].remote_exec("import time; channel.send(1); time.sleep(600)")
assert receiving.receive() == 1 and sleeping.receive() == 1
assert gws[2].remote_exec("channel.send(6 * 7)").receive() == 42
with open(sys.argv[1], "w") as f:
    f.write(" ".join(map(str, pids)))
"""


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("python", SUPPORTED_PYTHONS)
def test_exit_with_gateways_open_is_quiet(python, tmp_path):
    """An interpreter that exits with its gateways open prints nothing,
    exits with 0 and leaves no worker behind (3.12 refuses threads there)."""
    require_interpreter(python)
    # the installed package alone on the path: another interpreter runs its
    # portable core (the extension is built for ours)
    (tmp_path / "path").mkdir()
    os.symlink(os.path.dirname(execnet.__file__), tmp_path / "path" / "execnet")
    pidfile = tmp_path / "pids"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(tmp_path / "path")
    result = subprocess.run(
        [python, "-c", _LEFT_AT_EXIT, str(pidfile)],
        capture_output=True,
        timeout=TIMEOUT,
        env=env,
        cwd=str(tmp_path),
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 4
    for pid in pids:
        wait_for(lambda: _process_gone(pid))


def test_group_members(group):
    gw = group.makegateway()
    assert list(group) == [gw] and group[0] is gw and len(group) == 1
    assert group["gw0"] is gw and group[gw] is gw
    assert gw in group and "gw0" in group and "nope" not in group
    with pytest.raises(IndexError):
        group[1]
    with pytest.raises(KeyError):
        group["nope"]
    with pytest.raises((TypeError, AttributeError)):
        del group["gw0"]
    with pytest.raises((TypeError, AttributeError)):
        group["gw0"] = 5
    group._cleanup_atexit()
    assert group._gateways == []


def test_group_order_and_repr(group):
    for id in ("3", "2", "5"):
        group.makegateway(f"popen//id={id}")
    assert [gw.id for gw in group] == ["3", "2", "5"]
    assert repr(group) == "<Group ['3', '2', '5']>"
    group.terminate(TIMEOUT)
    assert not group and repr(group) == "<Group []>"


def test_allocate_id(group):
    spec = execnet.XSpec("popen")
    group.allocate_id(spec)
    assert spec.id == "gw0"
    group.allocate_id(spec)  # kept
    assert group.makegateway(spec).id == "gw0"
    assert group.makegateway("popen//id=hello").id == "hello"
    assert group["hello"] is group[1]
    assert group.makegateway().id == "gw1"


def test_group_auto_ids(group):
    group.makegateway()
    group.makegateway()
    assert repr(group) == "<Group ['gw0', 'gw1']>"
    assert group["gw0"] is group[0]


def test_default_group_makegateway():
    before = len(execnet.default_group)
    gw = execnet.makegateway("popen")
    try:
        assert len(execnet.default_group) == before + 1 and gw in execnet.default_group
    finally:
        gw.exit()
        gw.join(TIMEOUT)


def test_terminate_with_via(group):
    group.makegateway("popen//id=master")
    worker = group.makegateway("popen//via=master//id=worker")
    assert worker.remote_exec("channel.send(1)").receive(TIMEOUT) == 1
    group.terminate(1.0)
    assert not group


def test_terminate_with_sleeping_remote(group):
    # the remote would sleep far longer than terminate may take
    group.makegateway().remote_exec("import time; time.sleep(100)")
    start = time.monotonic()
    group.terminate(timeout=1.0)
    assert time.monotonic() - start < 10
    assert not group


def test_safe_terminate_bounded():
    model = gateway_base.get_execmodel("thread")
    release = model.Event()
    ran = []

    def slow():
        release.wait(TIMEOUT)

    def hanging_kill():
        ran.append("hanging")
        release.wait(TIMEOUT)

    def kill():
        ran.append("kill")

    start = time.monotonic()
    safe_terminate(model, 0.2, [(slow, hanging_kill), (slow, kill)])
    assert time.monotonic() - start < 2
    assert sorted(ran) == ["hanging", "kill"]
    release.set()


def test_safe_terminate_reraises():
    model = gateway_base.get_execmodel("thread")

    def fails():
        raise ValueError("term")

    with pytest.raises(ValueError, match="term"):
        safe_terminate(model, 1.0, [(fails, lambda: None)])

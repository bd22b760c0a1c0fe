"""The grace a worker gives its running tasks when it is told to end
(``grace=`` and EXECNET_TERMINATE_GRACE), and Group.terminate() with it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

import execnet
from execnet import gateway_bootstrap
from execnet.xspec import XSpec

# A task that reports that it runs, works for `seconds` (sleeping), then
# leaves a file: the stand-in for a session teardown that takes a while.
SLOW_TEARDOWN = """
import time
def teardown(channel, path, seconds):
    channel.send("running")
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        open(path + ".interrupted", "w").close()
        raise
    with open(path, "w") as f:
        f.write("done")
"""

# A task that cannot be interrupted and never ends.
STUBBORN = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
channel.send("running")
while True:
    time.sleep(0.05)
"""


@pytest.fixture(autouse=True)
def _no_grace_from_outside(monkeypatch):
    monkeypatch.delenv("EXECNET_TERMINATE_GRACE", raising=False)


def _start_slow_teardown(group, spec, path: Path, seconds: float):
    gw = group.makegateway(spec)
    channel = gw.remote_exec(SLOW_TEARDOWN + "teardown(channel, %r, %r)" % (str(path), seconds))
    assert channel.receive(timeout=30) == "running"
    return gw


def test_default_grace_interrupts_a_task_longer_than_five_seconds(tmp_path: Path) -> None:
    group = execnet.Group()
    path = tmp_path / "teardown"
    try:
        gw = _start_slow_teardown(group, "popen", path, 8.0)
        group.terminate(timeout=30)
    finally:
        group.terminate(timeout=1)
    assert gw._io.popen.poll() is not None
    assert not path.exists()
    assert (tmp_path / "teardown.interrupted").exists()


@pytest.mark.parametrize("how", ["spec", "env"])
def test_raised_grace_lets_the_task_finish(tmp_path: Path, monkeypatch, how) -> None:
    group = execnet.Group()
    path = tmp_path / "teardown"
    spec = "popen"
    if how == "spec":
        spec = "popen//grace=20"
    else:
        monkeypatch.setenv("EXECNET_TERMINATE_GRACE", "20")
    try:
        gw = _start_slow_teardown(group, spec, path, 8.0)
        group.terminate(timeout=10)
    finally:
        group.terminate(timeout=1)
    assert gw._io.popen.returncode == 0
    assert path.read_text() == "done"
    assert not (tmp_path / "teardown.interrupted").exists()


def test_small_grace_interrupts_sooner(tmp_path: Path) -> None:
    group = execnet.Group()
    path = tmp_path / "teardown"
    try:
        _start_slow_teardown(group, "popen//grace=0.5", path, 8.0)
        group.terminate(timeout=30)
    finally:
        group.terminate(timeout=1)
    assert (tmp_path / "teardown.interrupted").exists()
    assert not path.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_terminate_kills_after_grace_plus_timeout() -> None:
    # The task ignores SIGINT and never ends: the worker would exit by
    # itself only 10 s after its grace; terminate kills it at grace +
    # timeout, so it dies of SIGKILL, not with the worker's exit status 1.
    group = execnet.Group()
    try:
        gw = group.makegateway("popen//grace=1")
        channel = gw.remote_exec(STUBBORN)
        assert channel.receive(timeout=30) == "running"
        assert gw._terminate_grace == 1.0
        group.terminate(timeout=0.5)
    finally:
        group.terminate(timeout=1)
    assert gw._io.popen.wait(timeout=30) == -signal.SIGKILL


def test_grace_of_the_spec_wins_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("EXECNET_TERMINATE_GRACE", "7")
    assert gateway_bootstrap.terminate_grace(XSpec("popen//grace=3")) == 3.0
    assert gateway_bootstrap.terminate_grace(XSpec("popen")) == 7.0
    monkeypatch.setenv("EXECNET_TERMINATE_GRACE", "")
    assert gateway_bootstrap.terminate_grace(XSpec("popen")) is None
    monkeypatch.delenv("EXECNET_TERMINATE_GRACE")
    assert gateway_bootstrap.terminate_grace(XSpec("popen")) is None


def test_no_grace_leaves_the_bootstrap_line_as_it_was(monkeypatch) -> None:
    monkeypatch.delenv("EXECNET_TERMINATE_GRACE", raising=False)
    spec = XSpec("popen//id=gw3")
    assert gateway_bootstrap._serve_line(spec) == "serve(init_popen_io(execmodel), id='gw3-worker')"
    spec = XSpec("popen//id=gw3//grace=2.5")
    assert gateway_bootstrap._serve_line(spec) == (
        "serve(init_popen_io(execmodel), id='gw3-worker', grace=2.5)"
    )


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "1e400"])
def test_bad_grace_is_refused_before_a_process_starts(monkeypatch, value) -> None:
    group = execnet.Group()
    started = []
    monkeypatch.setattr(execnet.gateway_io, "create_io", lambda *a, **k: started.append(a))
    with pytest.raises(ValueError, match="grace"):
        group.makegateway("popen//grace=" + value)
    monkeypatch.setenv("EXECNET_TERMINATE_GRACE", value)
    with pytest.raises(ValueError, match="EXECNET_TERMINATE_GRACE"):
        group.makegateway("popen")
    assert started == []
    assert len(group) == 0


def test_bare_grace_key_is_refused() -> None:
    with pytest.raises(ValueError, match="grace"):
        gateway_bootstrap.terminate_grace(XSpec("popen//grace"))


@pytest.mark.parametrize("spec", ["popen//python={python}", "popen//grace=20//python={python}"])
def test_shipped_core_honours_the_grace(tmp_path: Path, spec: str) -> None:
    # python= ships the portable core as source: the grace travels in its
    # bootstrap line
    group = execnet.Group()
    path = tmp_path / "teardown"
    try:
        _start_slow_teardown(group, spec.format(python=sys.executable), path, 8.0)
        group.terminate(timeout=10)
    finally:
        group.terminate(timeout=1)
    assert path.exists() == ("grace=20" in spec)

"""Forwarded worker output (``output=`` and EXECNET_FORWARD_OUTPUT): what
a popen worker writes to its fds 1 and 2 reaches ours, line by line."""

from __future__ import annotations

import sys
from collections import Counter

import pytest

import execnet
from execnet import gateway_bootstrap
from execnet import gateway_output
from execnet.xspec import XSpec

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")

WRITES = r"""
import os, subprocess, sys
print("print-text")
os.write(1, b"fd1-text\n")
sys.stderr.write("stderr-text\n")
os.write(2, b"fd2-text\n")
subprocess.run([sys.executable, "-c", "print('child-text')"], check=True)
sys.stdout.write("unfinished-text")
sys.stdout.flush()
channel.send(channel.receive() * 2)
"""


@pytest.fixture
def group(monkeypatch):
    monkeypatch.delenv("EXECNET_FORWARD_OUTPUT", raising=False)
    group = execnet.Group()
    yield group
    group.terminate(timeout=10)


def run_writes(group, spec):
    gw = group.makegateway(spec)
    channel = gw.remote_exec(WRITES)
    channel.send(21)
    assert channel.receive(timeout=30) == 42
    group.terminate(timeout=10)
    assert gw._io.popen.poll() is not None
    return gw


def test_without_forwarding_fd1_goes_nowhere(group, capfd) -> None:
    gw = run_writes(group, "popen")
    out, err = capfd.readouterr()
    assert out == ""
    assert "print-text" not in err and "fd1-text" not in err and "child-text" not in err
    # fd 2 is the master's own, as in execnet 2.1.2
    assert "stderr-text\n" in err and "fd2-text\n" in err
    assert gw._io.output_fd is None


def test_forwarded_output_arrives_once_on_its_stream(group, capfd) -> None:
    gw = run_writes(group, "popen//output=forward")
    out, err = capfd.readouterr()
    assert Counter(out.splitlines(keepends=True)) == Counter(
        ["print-text\n", "fd1-text\n", "child-text\n", "unfinished-text\n"]
    )
    assert out.endswith("unfinished-text\n")  # the end of the stream ends the line
    assert Counter(err.splitlines(keepends=True)) == Counter(["stderr-text\n", "fd2-text\n"])
    assert gw._io._output_done.is_set()  # both pipes ended and were closed


def test_environment_variable_with_prefix(group, capfd, monkeypatch) -> None:
    monkeypatch.setenv("EXECNET_FORWARD_OUTPUT", "prefix")
    run_writes(group, "popen//id=left")
    out, err = capfd.readouterr()
    assert sorted(out.splitlines()) == [
        "[left] child-text", "[left] fd1-text", "[left] print-text", "[left] unfinished-text",
    ]
    assert sorted(err.splitlines()) == ["[left] fd2-text", "[left] stderr-text"]


def test_environment_variable_one_forwards_without_prefix(group, capfd, monkeypatch) -> None:
    monkeypatch.setenv("EXECNET_FORWARD_OUTPUT", "1")
    run_writes(group, "popen")
    out, _ = capfd.readouterr()
    assert "print-text\n" in out.splitlines(keepends=True)


def test_spec_discard_wins_over_the_environment(group, capfd, monkeypatch) -> None:
    monkeypatch.setenv("EXECNET_FORWARD_OUTPUT", "1")
    gw = run_writes(group, "popen//output=discard")
    out, _ = capfd.readouterr()
    assert out == ""
    assert gw._io.output_fd is None


def test_main_thread_only_and_shipped_core_forward(group, capfd) -> None:
    run_writes(group, "popen//output=prefix//id=a//execmodel=main_thread_only")
    run_writes(group, "popen//output=prefix//id=b//python=" + sys.executable)
    out, _ = capfd.readouterr()
    lines = out.splitlines()
    for gid in "ab":
        assert f"[{gid}] print-text" in lines
        assert f"[{gid}] child-text" in lines


# Two workers write many lines at once, each line in three pieces with
# their own write() calls, to fd 1 and fd 2.
PIECES = r"""
import os
name = channel.receive()
for i in range(2000):
    for fd in (1, 2):
        os.write(fd, name + b"-")
        os.write(fd, b"%d-" % i)
        os.write(fd, b"x" * (i % 300) + b"\n")
channel.send("done")
"""


def test_lines_of_two_workers_stay_whole(group, capfd) -> None:
    channels = []
    for name in ("one", "two"):
        gw = group.makegateway("popen//output=forward")
        channel = gw.remote_exec(PIECES)
        channel.send(name.encode())
        channels.append(channel)
    for channel in channels:
        assert channel.receive(timeout=60) == "done"
    group.terminate(timeout=10)
    out, err = capfd.readouterr()
    expected = Counter(
        "%s-%d-%s" % (name, i, "x" * (i % 300)) for name in ("one", "two") for i in range(2000)
    )
    assert Counter(out.splitlines()) == expected
    assert Counter(err.splitlines()) == expected


def test_a_line_longer_than_the_limit_goes_out_in_pieces(group, capfd, monkeypatch) -> None:
    gw = group.makegateway("popen//output=forward")
    size = gateway_output.MAX_LINE * 2 + 10
    channel = gw.remote_exec(
        "import os, sys\nos.write(1, b'y' * %d + b'\\n')\nchannel.send(1)" % size
    )
    assert channel.receive(timeout=30) == 1
    group.terminate(timeout=10)
    out, _ = capfd.readouterr()
    assert out == "y" * size + "\n"  # nothing lost


def test_the_channel_bytes_are_those_without_forwarding(monkeypatch) -> None:
    # only the bootstrap line names the descriptor; without forwarding it
    # is the line of execnet 2.1.2's form
    monkeypatch.delenv("EXECNET_TERMINATE_GRACE", raising=False)

    class FakeIO:
        output_fd = 7

    spec = XSpec("popen//id=gw0")
    assert gateway_bootstrap._serve_line(spec) == "serve(init_popen_io(execmodel), id='gw0-worker')"
    assert gateway_bootstrap._serve_line(spec, FakeIO()) == (
        "serve(init_popen_io(execmodel, output_fd=7), id='gw0-worker')"
    )


@pytest.mark.parametrize("value", ["yes", "2", "PREFIX"])
def test_bad_environment_value_is_refused(group, monkeypatch, value) -> None:
    monkeypatch.setenv("EXECNET_FORWARD_OUTPUT", value)
    with pytest.raises(ValueError, match="EXECNET_FORWARD_OUTPUT"):
        group.makegateway("popen")
    assert len(group) == 0


@pytest.mark.parametrize(
    "spec, match",
    [
        ("popen//output=loud", "must be one of"),
        ("popen//output", "must be one of"),
        ("socket=127.0.0.1:1//output=forward", "only local popen"),
        ("ssh=somewhere//output=prefix", "only local popen"),
        ("popen//via=gw0//output=forward", "only local popen"),
    ],
)
def test_bad_or_impossible_output_spec_is_refused(group, spec, match) -> None:
    with pytest.raises(ValueError, match=match):
        gateway_output.output_mode(XSpec(spec), "thread")


def test_green_master_cannot_forward() -> None:
    with pytest.raises(ValueError, match="thread or main_thread_only"):
        gateway_output.output_mode(XSpec("popen//output=forward"), "gevent")


def test_environment_variable_leaves_other_gateways_alone(monkeypatch) -> None:
    monkeypatch.setenv("EXECNET_FORWARD_OUTPUT", "1")
    assert gateway_output.output_mode(XSpec("ssh=somewhere"), "thread") is None
    assert gateway_output.output_mode(XSpec("popen//via=gw0"), "thread") is None
    assert gateway_output.output_mode(XSpec("popen"), "eventlet") is None
    assert gateway_output.output_mode(XSpec("popen"), "thread") == "forward"


def test_via_gateway_under_the_environment_variable(group, capfd, monkeypatch) -> None:
    # the middle gateway forwards, the one through it does not: its fd 1
    # goes to the null device, as without forwarding
    monkeypatch.setenv("EXECNET_FORWARD_OUTPUT", "prefix")
    group.makegateway("popen//id=middle")
    gw = group.makegateway("popen//via=middle//id=inner")
    channel = gw.remote_exec("print('inner-text'); channel.send(1)")
    assert channel.receive(timeout=30) == 1
    group.terminate(timeout=10)
    out, _ = capfd.readouterr()
    assert "inner-text" not in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd")
def test_output_pipes_are_closed_when_the_workers_end(group, capfd) -> None:
    import os

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    run_writes(group, "popen//output=forward")  # the forwarding thread exists now
    before = open_fds()
    for _ in range(5):
        run_writes(group, "popen//output=forward")
    assert open_fds() == before
    out, _ = capfd.readouterr()
    assert out.count("print-text\n") == 6

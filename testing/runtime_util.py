"""Helpers for the runtime tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

# how long a test waits for anything before it counts as a failure
TIMEOUT = 20.0


def wait_for(predicate, timeout: float = TIMEOUT, interval: float = 0.01) -> None:
    """Poll predicate until it is true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def run_python(source: str, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """Run source in a fresh interpreter; capture its output."""
    return subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        timeout=timeout,
        **kwargs,
    )


def wait_until_sleeping(pid: int) -> None:
    """Wait until the process's main thread blocks (Linux; elsewhere: return)."""
    stat = f"/proc/{pid}/stat"
    if not os.path.exists(stat):
        return
    # the state follows the parenthesized command name
    wait_for(lambda: open(stat).read().rpartition(")")[2].split()[0] == "S")


def interrupt_when_ready(source: str, cwd) -> tuple[bytes, bytes, int]:
    """Run source in a fresh interpreter started in cwd (not our checkout,
    whose sources would shadow the installed package); once it prints
    "ready", send it SIGINT. Returns its stdout, stderr and exit status."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    try:
        assert proc.stdout.readline() == b"ready\n"
        wait_until_sleeping(proc.pid)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    return out, err, proc.returncode

"""Helpers for the runtime tests."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
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
    # Python raises KeyboardInterrupt on SIGINT only if SIGINT was not
    # ignored when it started, and a CI job run in the background of a
    # shell inherits it ignored: the child installs the handler itself
    prologue = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", prologue + textwrap.dedent(source)],
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


# how a socket server (ours or execnet's) says where it listens
ADDRESS_LINE = re.compile(r"Entering Accept loop \('([^']*)', (\d+)\)")


class ServerProcess:
    """A socket server subprocess whose output is read all the time (so it
    never blocks on a full pipe) and kept for inspection."""

    def __init__(self, command, cwd=None, env=None) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
        )
        self.stdout_lines: queue.Queue = queue.Queue()
        self.stdout: list = []
        self.stderr: list = []
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout, True)),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()
        try:
            self.host, self.port = self._read_address()
        except BaseException:
            self.stop()
            raise
        self.address = f"{self.host}:{self.port}"

    def _drain(self, stream, lines, announce) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            if announce:
                self.stdout_lines.put(line)
        stream.close()
        if announce:
            self.stdout_lines.put(None)

    def wait_for_line(self, pattern):
        """The first match of pattern in a stdout line yet to be read."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self.stdout_lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"server printed no line matching {pattern!r}")
            if line is None:
                pytest.fail(f"server ended without printing {pattern!r}: {self.stderr}")
            match = re.search(pattern, line)
            if match:
                return match

    def _read_address(self):
        match = self.wait_for_line(ADDRESS_LINE)
        return match.group(1), int(match.group(2))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for reader in self._readers:
            reader.join(TIMEOUT)


def _interpreters(variable: str, versions: list[str]) -> list[str]:
    """The interpreters named in the environment variable (separated by
    os.pathsep), or else one pyenv interpreter per version of this
    machine's image: the newest ~/.pyenv/versions/<version>.*/bin/python.
    A version without one is given as its pattern, so that its test fails
    (the image has them all) rather than being left out."""
    listed = os.environ.get(variable)
    if listed is not None:
        return [path for path in listed.split(os.pathsep) if path]
    import glob

    found = []
    for version in versions:
        pattern = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")
        paths = sorted(glob.glob(pattern), key=lambda p: [int(n) for n in p.split("/")[-3].split(".")])
        found.append(paths[-1] if paths else pattern)
    return found


# the interpreters execnet supports (as masters and workers): 3.8 and newer
SUPPORTED_PYTHONS = _interpreters(
    "EXECNET_TEST_PYTHONS", ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]
)
# remote interpreters the portable core runs on: those and 3.7
REMOTE_PYTHONS = _interpreters("EXECNET_TEST_OLD_REMOTE_PYTHONS", ["3.7"]) + SUPPORTED_PYTHONS
# older ones, which makegateway must refuse with a clear error
UNSUPPORTED_PYTHONS = _interpreters("EXECNET_TEST_OLD_PYTHONS", ["2.7", "3.6"])


def require_interpreter(path: str) -> None:
    """Fail (not skip) if path is no interpreter: the image has them all."""
    if not os.access(path, os.X_OK):
        pytest.fail(f"interpreter {path} not found (set EXECNET_TEST_PYTHONS to change the list)")

"""The exec and socket bootstraps ship a small, compressed loader line
(doc/protocol.md) that runs the portable core in interpreters without execnet."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from runtime_util import REMOTE_PYTHONS
from runtime_util import UNSUPPORTED_PYTHONS
from runtime_util import require_interpreter

import execnet
from execnet import gateway_bootstrap

pytest_plugins = ["conftest_runtime"]

TIMEOUT = 30.0
# Debian's interpreter, which does not have our package installed
SYSTEM_PYTHON = "/usr/bin/python3"
# measured: about 21.2 KB for a 62.5 KB core (the plain source was 64.5 KB)
MAX_BOOTSTRAP_LINE = 25_000

needs_system_python = pytest.mark.skipif(
    not os.path.exists(SYSTEM_PYTHON), reason=f"{SYSTEM_PYTHON} does not exist"
)


class RecordingIO:
    """An IO that keeps what is written and acknowledges the bootstrap."""

    def __init__(self):
        self.written = b""

    def write(self, data):
        self.written += data

    def read(self, numbytes):
        return b"1"


def bootstrap_line(function, spec: str) -> bytes:
    io = RecordingIO()
    function(io, execnet.XSpec(spec))
    return io.written


def check_line(line: bytes) -> str:
    """The rules for a bootstrap line (one line of Python, ASCII, ending in a
    newline); returns the source it carries."""
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert line.isascii()
    assert len(line) < MAX_BOOTSTRAP_LINE
    source = ast.literal_eval(line.decode("ascii"))  # a plain string literal
    assert isinstance(source, str)
    compile(source, "<bootstrap>", "exec")
    return source


def test_exec_line_is_small_ascii_one_line():
    line = bootstrap_line(gateway_bootstrap.bootstrap_exec, "popen//python=x//id=gwX")
    source = check_line(line)
    core = gateway_bootstrap.portable_core_source()
    # far smaller than the core itself
    assert len(line) < len(core) / 2
    assert "zlib" in source and "def serve" not in source
    assert "id='gwX-worker')" in source


@pytest.mark.parametrize("variant", ["bootstrap_import", "bootstrap_exec"])
def test_child_acknowledges_before_anything_else(variant):
    # the master waits only for the line to be read, not for the imports
    source = check_line(bootstrap_line(getattr(gateway_bootstrap, variant), "popen//id=gwX"))
    ack = "import sys\nsys.stdout.write('1')\nsys.stdout.flush()\n"
    if variant == "bootstrap_exec":
        # an interpreter that may be too old first says so (and ends)
        ack = "\n".join(gateway_bootstrap._ACK_CHECKED) + "\n"
        assert ack.endswith("\nsys.stdout.write('1')\nsys.stdout.flush()\n")
    assert source.startswith(ack)
    assert source.count("'1'") == 1


def test_socket_line_is_small_ascii_one_line():
    line = bootstrap_line(gateway_bootstrap.bootstrap_socket, "socket=h:1//id=s1")
    source = check_line(line)
    assert "'socket=h:1//id=s1-worker'" in source
    assert "class SocketIO" not in source  # packed with the core


def test_packed_once_per_process():
    first = gateway_bootstrap.packed_source("core", gateway_bootstrap.portable_core_source)

    def must_not_run():
        raise AssertionError("packed again")

    assert gateway_bootstrap.packed_source("core", must_not_run) is first


def test_packed_source_runs_in_callers_namespace():
    line = gateway_bootstrap.packed_source("test-namespace", lambda: "x = 42\ny = __name__")
    namespace = {"__name__": "somewhere"}
    exec(line, namespace)
    assert namespace["x"] == 42
    assert namespace["y"] == "somewhere"


def test_loader_needs_no_base64_or_re():
    # the remote pays for every module the loader imports
    line = bootstrap_line(gateway_bootstrap.bootstrap_exec, "popen//python=x//id=gw0")
    source = ast.literal_eval(line.decode("ascii"))
    core_part = next(line for line in source.split("\n") if "zlib" in line)
    code = (
        "import sys\n"
        f"exec({core_part!r}, {{'__name__': 'notmain'}})\n"
        "print('base64' in sys.modules, 're' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


HEAVY = {"re", "textwrap", "queue", "shlex", "typing", "inspect", "enum"}


def test_worker_start_imports_little(makegateway, tmp_path):
    # what a popen worker imports before it runs code is what every gateway
    # start pays: none of these, beyond what the interpreter itself loads
    probe = f"import sys; print(sorted(set(sys.modules) & {HEAVY!r}))"
    bare = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    gw = makegateway("popen")
    remote = f"import sys; channel.send(sorted(set(sys.modules) & {HEAVY!r}))"
    loaded = gw.remote_exec(remote).receive(TIMEOUT)
    assert set(loaded) <= set(ast.literal_eval(bare.stdout))


REMOTE_FACTS = """
import sys
import __main__
module = sys.modules[type(channel).__module__]
channel.send({
    "module": type(channel).__module__,
    "backend": module.BACKEND,
    "execnet_imported": "execnet" in sys.modules,
    "serve_in_main": getattr(__main__, "serve", None) is not None,
    "echo": channel.receive(),
})
"""


def check_portable_worker(gw, executable: str) -> None:
    assert gw._rinfo().executable == executable
    channel = gw.remote_exec(REMOTE_FACTS)
    channel.send(("data", 1, 2.5, [b"x"], {"k": None}))
    assert channel.receive(TIMEOUT) == {
        "module": "__main__",
        "backend": "python",
        "execnet_imported": False,
        "serve_in_main": True,
        "echo": ("data", 1, 2.5, [b"x"], {"k": None}),
    }
    channel.waitclose(TIMEOUT)
    status = gw.remote_status()
    assert status.numchannels >= 0
    assert status.execmodel in ("thread", "main_thread_only")


@needs_system_python
def test_system_python_without_our_package(makegateway):
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import execnet"], capture_output=True, cwd="/"
    )
    assert check.returncode != 0, f"{SYSTEM_PYTHON} has an execnet: test is meaningless"
    gw = makegateway(f"popen//python={SYSTEM_PYTHON}")
    check_portable_worker(gw, SYSTEM_PYTHON)
    # channels both ways (one after the other: main_thread_only runs one)
    for i in range(3):
        channel = gw.remote_exec("for x in channel: channel.send(x * 2)")
        for x in (i, "ab", [i]):
            channel.send(x)
            assert channel.receive(TIMEOUT) == x * 2
        channel.close()
        channel.waitclose(TIMEOUT)


@needs_system_python
def test_system_python_via_system_python(group):
    # the via proxy (gateway_io) runs on a core that is __main__ there
    group.makegateway(f"popen//python={SYSTEM_PYTHON}//id=sys1")
    gw = group.makegateway(f"popen//python={SYSTEM_PYTHON}//via=sys1//id=sys2")
    check_portable_worker(gw, SYSTEM_PYTHON)


@needs_system_python
def test_system_python_remote_error(makegateway):
    gw = makegateway(f"popen//python={SYSTEM_PYTHON}")
    channel = gw.remote_exec("raise ValueError('boom')")
    with pytest.raises(execnet.RemoteError, match="boom"):
        channel.receive(TIMEOUT)


def _version_of(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print('%d.%d.%d' % tuple(sys.version_info[:3]))"],
        capture_output=True,
        timeout=TIMEOUT,
    )
    return out.stdout.decode().strip()


@pytest.mark.parametrize("python", REMOTE_PYTHONS)
def test_remote_interpreter_versions(python, makegateway):
    """The portable core, sent as source, runs on every remote version from
    3.7 on, whatever version this master is."""
    require_interpreter(python)
    gw = makegateway(f"popen//python={python}")
    check_portable_worker(gw, python)
    version = gw.remote_exec(
        "import sys; channel.send('%d.%d.%d' % tuple(sys.version_info[:3]))"
    ).receive(TIMEOUT)
    assert version == _version_of(python)


@pytest.mark.parametrize("python", UNSUPPORTED_PYTHONS)
def test_remote_interpreter_too_old(python, group):
    require_interpreter(python)
    version = _version_of(python)
    expected = f"python {version} at {python} is not supported: execnet needs 3.7 or newer"
    with pytest.raises(gateway_bootstrap.UnsupportedPython) as info:
        group.makegateway(f"popen//python={python}")
    assert str(info.value) == expected
    assert isinstance(info.value, execnet.HostNotFound)
    assert list(group) == []


def test_exec_bootstrap_default_interpreter(makegateway):
    gw = makegateway(f"popen//python={sys.executable}")
    check_portable_worker(gw, sys.executable)

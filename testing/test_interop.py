"""Interoperation with reference execnet 2.1.2 (doc/protocol.md).

Four pairings, each running the same channel operations:

1. our master  -> the reference's socketserver.py (worker: our shipped core)
2. reference master -> our socketserver (worker: the reference's shipped core)
3. our master  -> a fresh reference interpreter running the reference's own
   gateway_base source (exec bootstrap)
4. reference master (import bootstrap) -> a worker importing
   our execnet.gateway_base (the C backend)

1 and 2 also run with the socket server script shipped by remote_exec (what
installvia does), and every pairing checks that a worker killed mid-run
gives EOFError on the master side.  Values sent both ways avoid ints below
-2**31, which the reference cannot encode (struct.error in its dumps).

The reference package is also called ``execnet``, so whatever uses it runs
in its own interpreter (testing/reference.py), with a working directory
outside the checkout and no PYTHON* variables.  Every test is bounded in
time and ends every process it starts.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import execnet
from execnet import gateway_base
from execnet import gateway_bootstrap
from execnet import gateway_io
from execnet.gateway import Gateway
from execnet.xspec import XSpec

import reference
from runtime_util import ServerProcess

TIMEOUT = 30.0  # seconds for any single wait
CHECKOUT = str(Path(execnet.__file__).resolve().parent.parent)

# The channel operations, as source text: run in this process against our
# master, and inside scripts run by the reference interpreter against its
# master.  Results are reprs, so both sides compare equal as JSON.
OPS_SOURCE = r'''
VALUES = [
    # (no int below -2**31: the reference cannot encode one, struct.error)
    None, True, False, 0, 1, -1, 2**31 - 1, -2**31, 2**31, 2**63, 2**100,
    0.0, -0.0, 1.5, -1e300, float("inf"), complex(1, -2),
    "", "text", "\u00fcn\u00efc\u00f6d\u00e9 \u20ac \U0001f600", b"",
    b"\x00\xff bytes", (), (1,), ((), (1, "a")), [], [1, [2, [3]]],
    {}, {"a": 1, 2: "b", (3, 4): [None]}, set(), {1, 2, 3},
    frozenset(), frozenset({7}), {frozenset({1})},
    [True, False, None, 1.25, b"x", "y", (1,), {"k": {5}}],
]


def channel_ops(gw, timeout):
    import queue

    results = {}

    ch = gw.remote_exec("channel.send(6 * 7)")
    results["exec"] = repr(ch.receive(timeout))
    ch.waitclose(timeout)

    ch = gw.remote_exec("for item in channel:\n    channel.send(item)")
    echoed = []
    for value in VALUES:
        ch.send(value)
        got = ch.receive(timeout)
        echoed.append([type(got).__name__, repr(got)])
    big = bytes(range(256)) * 4096
    ch.send(big)
    results["big"] = repr(ch.receive(timeout) == big)
    ch.close()
    ch.waitclose(timeout)
    results["echo"] = echoed

    ch = gw.remote_exec("channel.send(channel.receive() + 1)")
    try:
        ch.receive(0.2)
    except ch.TimeoutError:
        results["timeout"] = "TimeoutError"
    ch.send(1)
    results["after_timeout"] = repr(ch.receive(timeout))
    ch.waitclose(timeout)

    # (an exec channel cannot be closed by its own remote code: sub channels)
    ch = gw.remote_exec(
        "sub = channel.gateway.newchannel()\n"
        "channel.send(sub)\n"
        "sub.close('closed with an error')\n"
    )
    sub = ch.receive(timeout)
    try:
        sub.receive(timeout)
    except sub.RemoteError as exc:
        results["close_error"] = [type(exc).__name__, str(exc)]
    sub.waitclose(timeout)  # the error was reported once, by receive()
    ch.waitclose(timeout)
    sub = gw.newchannel()
    ch = gw.remote_exec(
        "sub = channel.receive()\n"
        "try:\n"
        "    sub.receive()\n"
        "except sub.RemoteError as exc:\n"
        "    channel.send(str(exc))\n"
    )
    ch.send(sub)
    sub.close("closed by the master")
    results["close_error_master"] = ch.receive(timeout)
    ch.waitclose(timeout)
    ch = gw.remote_exec("raise ValueError('boom')")
    try:
        ch.waitclose(timeout)
    except ch.RemoteError as exc:
        results["raise"] = [type(exc).__name__, "ValueError: boom" in str(exc)]

    ch = gw.remote_exec("pass")
    ch.waitclose(timeout)
    results["waitclose"] = repr(ch.isclosed())

    ch = gw.remote_exec(
        "sub = channel.gateway.newchannel()\n"
        "channel.send(sub)\n"
        "sub.send(('via', channel.receive()))\n"
    )
    sub = ch.receive(timeout)
    ch.send("sub channel")
    results["subchannel"] = [type(sub).__name__, repr(sub.receive(timeout))]
    ch.waitclose(timeout)

    ch = gw.remote_exec("channel.receive()")
    status = gw.remote_status()
    results["status"] = [
        status.numexecuting >= 1,
        status.numchannels >= 1,
        status.execmodel,
    ]
    ch.send(None)
    ch.waitclose(timeout)

    items = queue.Queue()
    ch = gw.remote_exec("for i in range(3):\n    channel.send(i)")
    ch.setcallback(items.put, endmarker="END")
    results["callback"] = [repr(items.get(timeout=timeout)) for _ in range(4)]
    ch.waitclose(timeout)

    ch = gw.remote_exec("channel.send(sum(channel.receive()))")
    ch.send(list(range(1000)))
    results["last"] = repr(ch.receive(timeout))
    ch.waitclose(timeout)
    return results


def kill_check(gw, kill, timeout):
    """Start a blocking remote task, kill the worker with kill(pid) and
    return what the master sees on the channel."""
    import time

    ch = gw.remote_exec("import os\nchannel.send(os.getpid())\nchannel.receive()")
    pid = ch.receive(timeout)
    kill(pid)
    start = time.time()
    try:
        ch.receive(timeout)
    except EOFError:
        outcome = "EOFError"
    except Exception as exc:
        outcome = type(exc).__name__
    else:
        outcome = "no error"
    return [outcome, time.time() - start < timeout]
'''

_ops: dict = {}
exec(compile(OPS_SOURCE, "<interop ops>", "exec"), _ops)
channel_ops = _ops["channel_ops"]
kill_check = _ops["kill_check"]

EXPECTED = {
    "exec": "42",
    "big": "True",
    "echo": [[type(v).__name__, repr(v)] for v in _ops["VALUES"]],
    "timeout": "TimeoutError",
    "after_timeout": "2",
    "close_error": ["RemoteError", "closed with an error"],
    "close_error_master": "closed by the master",
    "raise": ["RemoteError", True],
    "waitclose": "True",
    "subchannel": ["Channel", repr(("via", "sub channel"))],
    "status": [True, True, "thread"],
    "callback": ["0", "1", "2", "'END'"],
    "last": repr(sum(range(1000))),
}
KILLED = ["EOFError", True]


@pytest.fixture(scope="module")
def refpython() -> str:
    try:
        return reference.python()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"reference execnet {reference.REFERENCE_VERSION} unavailable: {exc}")


def ref_package_dir(refpython: str) -> Path:
    out = reference.run("import execnet, os; print(os.path.dirname(execnet.__file__))")
    path = Path(out.decode().strip())
    assert str(reference.venv_dir()) in str(path), path
    return path


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("EXECNET_PUREPYTHON", None)
    env.update(extra)
    return env


WATCHDOG_SECONDS = 150.0


@pytest.fixture(autouse=True)
def watchdog():
    """Kill what a test started if it runs too long, so that a call that
    cannot take a timeout (remote_status, makegateway) hits EOF instead of
    hanging: register kill functions with watchdog.append."""
    kills: list = []

    def fire():
        for kill in kills:
            try:
                kill()
            except Exception:
                pass

    timer = threading.Timer(WATCHDOG_SECONDS, fire)
    timer.daemon = True
    timer.start()
    try:
        yield kills
    finally:
        timer.cancel()


@pytest.fixture
def tmpcwd():
    with tempfile.TemporaryDirectory() as d:
        yield d


def running(server, watchdog):
    """Yield server (a ServerProcess) for a fixture; stop it afterwards."""
    watchdog.append(server.proc.kill)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ref_server(refpython, tmpcwd, watchdog):
    script = ref_package_dir(refpython) / "script" / "socketserver.py"
    command = [refpython, "-u", str(script), "127.0.0.1:0"]
    yield from running(ServerProcess(command, tmpcwd, clean_env()), watchdog)


@pytest.fixture
def our_server(tmpcwd, watchdog):
    command = [sys.executable, "-u", "-m", "execnet.script.socketserver", "127.0.0.1:0"]
    yield from running(ServerProcess(command, tmpcwd), watchdog)


@pytest.fixture
def group(watchdog):
    group = execnet.Group()
    watchdog.append(lambda: [gw._io.kill() for gw in list(group)])
    try:
        yield group
    finally:
        group.terminate(timeout=5.0)


def run_reference_script(code: str, timeout: float = 120) -> dict:
    """Run OPS_SOURCE + code in the reference interpreter; code prints one
    line "RESULT: <json>"."""
    out = reference.run(OPS_SOURCE + "\n" + code, timeout=timeout).decode()
    for line in out.splitlines():
        if line.startswith("RESULT: "):
            return json.loads(line[len("RESULT: ") :])
    raise AssertionError(f"no result line in {out!r}")


# --- 1. our master, the reference's socket server ---------------------------


def test_our_master_reference_socketserver(ref_server, group):
    port = ref_server.port
    gw = group.makegateway(f"socket=127.0.0.1:{port}")
    assert channel_ops(gw, TIMEOUT) == EXPECTED
    # the worker lives in the reference server's process
    ch = gw.remote_exec("import sys\nchannel.send(sys.executable)")
    assert ch.receive(TIMEOUT) == reference.python()


def test_our_master_reference_socketserver_killed(ref_server, group):
    port = ref_server.port
    gw = group.makegateway(f"socket=127.0.0.1:{port}")

    def kill(pid):
        assert pid == ref_server.proc.pid
        ref_server.proc.kill()

    assert kill_check(gw, kill, TIMEOUT) == KILLED


def test_our_master_reference_socketserver_shipped(refpython, group):
    # what installvia does, with the reference's unmodified script: sent
    # with remote_exec, it binds the address it receives, answers with the
    # bound address and serves one connection
    script = ref_package_dir(refpython) / "script" / "socketserver.py"
    via = group.makegateway("popen//id=via")
    ch = via.remote_exec(script.read_text(encoding="utf-8"))
    ch.send(("127.0.0.1", 0))
    host, port = ch.receive(TIMEOUT)
    gw = group.makegateway(f"socket={host}:{port}//id=shipped")
    assert channel_ops(gw, TIMEOUT) == EXPECTED
    gw.exit()
    gw.join(TIMEOUT)
    ch.waitclose(TIMEOUT)


# --- 2. the reference's master, our socket server ---------------------------

REF_SOCKET_MASTER = """
import json, os, signal, execnet
gw = execnet.makegateway("socket=127.0.0.1:%(port)d")
results = channel_ops(gw, %(timeout)r)
results["master"] = execnet.__file__
if %(kill)r:
    results["killed"] = kill_check(gw, lambda pid: os.kill(pid, signal.SIGKILL), %(timeout)r)
else:
    gw.exit()
    gw.join(%(timeout)r)
print("RESULT: " + json.dumps(results), flush=True)
"""


@pytest.mark.parametrize("kill", [False, True], ids=["ops", "killed"])
def test_reference_master_our_socketserver(our_server, kill):
    port = our_server.port
    results = run_reference_script(REF_SOCKET_MASTER % dict(port=port, timeout=TIMEOUT, kill=kill))
    assert str(reference.venv_dir()) in results.pop("master")
    if kill:
        assert results.pop("killed") == KILLED
        assert our_server.proc.wait(TIMEOUT) == -signal.SIGKILL
    assert results == EXPECTED
    if not kill:
        # the server survives its client and accepts the next one
        assert our_server.proc.poll() is None


REF_SHIPPED_SERVER = """
import json, execnet
via = execnet.makegateway("popen")
with open(%(script)r, encoding="utf-8") as f:
    ch = via.remote_exec(f.read())
ch.send(("127.0.0.1", 0))
host, port = ch.receive(%(timeout)r)
gw = execnet.makegateway("socket=%%s:%%d" %% (host, port))
results = channel_ops(gw, %(timeout)r)
gw.exit()
gw.join(%(timeout)r)
ch.waitclose(%(timeout)r)
via.exit()
via.join(%(timeout)r)
print("RESULT: " + json.dumps(results), flush=True)
"""


def test_reference_master_our_socketserver_shipped(refpython):
    # our script sent as plain source to a reference worker (installvia mode)
    script = Path(CHECKOUT) / "execnet" / "script" / "socketserver.py"
    results = run_reference_script(REF_SHIPPED_SERVER % dict(script=str(script), timeout=TIMEOUT))
    assert results == EXPECTED


# --- 3. our master, a worker running the reference's exec-bootstrap core ----


class RefPopenIO(gateway_io.Popen2IOMaster):
    """Pipes to a reference interpreter started outside the checkout."""

    def __init__(self, argv, cwd, execmodel):
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            env=clean_env(),
        )
        gateway_base.Popen2IO.__init__(
            self, self.popen.stdin, self.popen.stdout, execmodel=execmodel
        )


def reference_exec_gateway(refpython, cwd, group, watchdog, id="refexec"):
    source = (ref_package_dir(refpython) / "gateway_base.py").read_text(encoding="utf-8")
    spec = XSpec(f"popen//id={id}")
    spec.execmodel = "thread"
    io = RefPopenIO(
        [refpython, "-u", "-c", "import sys;exec(eval(sys.stdin.readline()))"],
        cwd,
        group.execmodel,
    )
    watchdog.append(io.kill)
    try:
        gateway_bootstrap.sendexec(
            io,
            source,
            f"execmodel = get_execmodel({spec.execmodel!r})",
            "io = init_popen_io(execmodel)",
            "io.write('1'.encode('ascii'))",
            f"serve(io, id={spec.id + '-worker'!r})",
        )
        assert io.read(1) == b"1"
        gw = Gateway(io, spec)
    except BaseException:
        io.kill()
        io.wait()
        raise
    group._register(gw)
    return gw, io


def test_our_master_reference_exec_worker(refpython, tmpcwd, group, watchdog):
    gw, io = reference_exec_gateway(refpython, tmpcwd, group, watchdog)
    # the worker runs the reference's core as __main__, in the reference venv
    ch = gw.remote_exec(
        "import sys, __main__\n"
        "channel.send((sys.executable, hasattr(__main__, 'BACKEND'),"
        " hasattr(__main__, 'WorkerGateway')))"
    )
    assert ch.receive(TIMEOUT) == (refpython, False, True)
    assert channel_ops(gw, TIMEOUT) == EXPECTED
    gw.exit()
    gw.join(TIMEOUT)
    assert io.popen.wait(TIMEOUT) == 0


def test_our_master_reference_exec_worker_killed(refpython, tmpcwd, group, watchdog):
    gw, io = reference_exec_gateway(refpython, tmpcwd, group, watchdog)

    def kill(pid):
        assert pid == io.popen.pid
        os.kill(pid, signal.SIGKILL)

    assert kill_check(gw, kill, TIMEOUT) == KILLED
    assert io.popen.wait(TIMEOUT) == -signal.SIGKILL


# --- 4. the reference's master, import bootstrap of our gateway_base --------

REF_IMPORT_MASTER = """
import json, os, signal, sys
import execnet
from execnet import gateway_bootstrap
assert isinstance(gateway_bootstrap.importdir, str)
# the import bootstrap puts this directory first and imports
# execnet.gateway_base from it in the worker: our checkout
gateway_bootstrap.importdir = %(checkout)r
# no python= (that would be the exec bootstrap): the worker is sys.executable
sys.executable = %(worker)r
gw = execnet.makegateway("popen")
ch = gw.remote_exec(
    "import sys, os, execnet.gateway_base as base\\n"
    "channel.send((base.BACKEND, base.__file__, sys.executable, os.getpid()))"
)
backend, basefile, executable, pid = ch.receive(%(timeout)r)
results = channel_ops(gw, %(timeout)r)
results["worker"] = [backend, basefile, executable]
results["master"] = execnet.__file__
if %(kill)r:
    results["killed"] = kill_check(gw, lambda pid: os.kill(pid, signal.SIGKILL), %(timeout)r)
    results["returncode"] = gw._io.popen.wait(%(timeout)r)
else:
    gw.exit()
    gw.join(%(timeout)r)
    results["returncode"] = gw._io.popen.wait(%(timeout)r)
print("RESULT: " + json.dumps(results), flush=True)
"""


@pytest.mark.parametrize("kill", [False, True], ids=["ops", "killed"])
@pytest.mark.parametrize("worker", ["ours", "refvenv"])
def test_reference_master_our_import_worker(refpython, worker, kill):
    python = sys.executable if worker == "ours" else refpython
    results = run_reference_script(
        REF_IMPORT_MASTER
        % dict(checkout=CHECKOUT, worker=python, timeout=TIMEOUT, kill=kill)
    )
    assert str(reference.venv_dir()) in results.pop("master")
    backend, basefile, executable = results.pop("worker")
    assert backend == "c"
    assert Path(basefile).resolve() == Path(gateway_base.__file__).resolve()
    assert executable == python
    returncode = results.pop("returncode")
    if kill:
        assert results.pop("killed") == KILLED
        assert returncode == -signal.SIGKILL
    else:
        assert returncode == 0
    assert results == EXPECTED

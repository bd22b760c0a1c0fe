"""pytest-xdist on our execnet: small generated suites run with ``pytest -n``.

Each test writes a suite into tmp_path and runs pytest in a subprocess whose
``import execnet`` finds this package (the directory holding it goes first
on PYTHONPATH, which the workers inherit).  pytest-xdist's own test suite is
compared with the reference's by .ci/xdist-suite (doc/xdist.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import xdist  # noqa: F401  (a test dependency: no skip without it)

import execnet

TIMEOUT = 120
PACKAGE_PARENT = str(Path(execnet.__file__).resolve().parent.parent)


def write(directory: Path, files: dict) -> None:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    env["PYTHONPATH"] = PACKAGE_PARENT
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "xdist", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def summary_counts(stdout: str) -> dict:
    """{"passed": 3, "failed": 1, ...} from pytest's last line."""
    last = stdout.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last)}


OUTCOMES_SUITE = {
    "test_one.py": """
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_pass(i):
            assert i >= 0

        def test_fail():
            assert 1 == 2, "intended failure"

        def test_skip():
            pytest.skip("intended skip")
    """,
    "test_two.py": """
        import pytest

        @pytest.mark.xfail(reason="expected to fail")
        def test_xfail():
            assert False

        @pytest.mark.xfail(reason="expected to fail, passes")
        def test_xpass():
            pass

        def test_error(missing_fixture):
            pass

        @pytest.mark.parametrize("i", range(4))
        def test_more(i):
            assert i < 4
    """,
}


def test_outcomes_with_two_workers(tmp_path: Path) -> None:
    write(tmp_path, OUTCOMES_SUITE)
    proc = run_pytest(tmp_path, "-n", "2", "-rA")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert summary_counts(proc.stdout) == {
        "passed": 10, "failed": 1, "skipped": 1, "xfailed": 1, "xpassed": 1, "error": 1,
    }, proc.stdout
    assert "created: 2/2 workers" in proc.stdout
    assert "intended failure" in proc.stdout


def test_workers_run_our_execnet(tmp_path: Path) -> None:
    """Controller and workers import this package, and it's not execnet 2.1.2."""
    report = tmp_path / "report.json"
    write(tmp_path, {
        "conftest.py": f"""
            import importlib.metadata, json, os, sys
            import execnet

            def pytest_sessionfinish(session):
                worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
                with open({str(report)!r} + "." + worker, "w") as f:
                    json.dump({{"file": execnet.__file__, "argv": sys.argv,
                               "version": execnet.__version__,
                               "dist": importlib.metadata.version("execnet")}}, f)
        """,
        "test_a.py": "def test_a():\n    pass\n",
        "test_b.py": "def test_b():\n    pass\n",
    })
    proc = run_pytest(tmp_path, "-n", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = {p.name.rsplit(".", 1)[1]: json.loads(p.read_text())
            for p in tmp_path.glob("report.json.*")}
    assert set(seen) == {"controller", "gw0", "gw1"}
    ours = str(Path(execnet.__file__).resolve())
    for who, info in seen.items():
        assert str(Path(info["file"]).resolve()) == ours, who
        assert info["version"] == execnet.__version__ != "2.1.2", who
        assert info["dist"] != "2.1.2", who
    # the worker's sys.argv, as execnet's popen bootstrap (python -c) leaves it
    assert seen["gw0"]["argv"] == seen["gw1"]["argv"] == ["-c"]


CRASH_SUITE = {
    "test_crash.py": """
        import os

        def test_before():
            pass

        def test_die():
            os._exit(1)

        def test_after():
            pass
    """,
}


def test_crashed_worker_is_reported_and_replaced(tmp_path: Path) -> None:
    write(tmp_path, CRASH_SUITE)
    proc = run_pytest(tmp_path, "-n", "2")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "Not properly terminated" in out
    assert re.search(r"replacing crashed worker gw\d", out), out
    assert re.search(r"worker 'gw\d' crashed while running 'test_crash.py::test_die'", out), out
    assert summary_counts(out) == {"passed": 2, "failed": 1}, out


def test_dist_loadfile_keeps_a_file_on_one_worker(tmp_path: Path) -> None:
    files = {
        f"test_f{i}.py": "import pytest\n\n@pytest.mark.parametrize('j', range(5))\n"
                         "def test_t(j):\n    pass\n"
        for i in range(4)
    }
    write(tmp_path, files)
    proc = run_pytest(tmp_path, "-n", "2", "--dist", "loadfile", "-v")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers_of: dict = {}
    for worker, name in re.findall(r"\[(gw\d)\] \[\s*\d+%\] PASSED (test_f\d\.py)::", proc.stdout):
        workers_of.setdefault(name, set()).add(worker)
    assert sorted(workers_of) == sorted(files), proc.stdout
    assert all(len(w) == 1 for w in workers_of.values()), workers_of
    assert summary_counts(proc.stdout) == {"passed": 20}


def test_rinfo_of_new_gateways(tmp_path: Path) -> None:
    """pytest_xdist_newgateway gets our gateways; _rinfo() is right and cached."""
    report = tmp_path / "rinfo.json"
    write(tmp_path, {
        "conftest.py": f"""
            import json, os, sys

            infos = []

            def pytest_xdist_newgateway(gateway):
                info = gateway._rinfo()
                infos.append({{"id": gateway.id, "spec": str(gateway.spec),
                              "cached": gateway._rinfo() is info,
                              "updated": gateway._rinfo(update=True) is not info,
                              "executable": info.executable,
                              "version_info": list(info.version_info),
                              "platform": info.platform, "cwd": info.cwd,
                              "pid_differs": info.pid != os.getpid(),
                              "class": type(gateway).__module__ + "." + type(gateway).__name__,
                              "execmodel": gateway.spec.execmodel}})

            def pytest_sessionfinish(session):
                if not os.environ.get("PYTEST_XDIST_WORKER"):
                    with open({str(report)!r}, "w") as f:
                        json.dump(infos, f)
        """,
        "test_a.py": "def test_a():\n    pass\n",
    })
    proc = run_pytest(tmp_path, "-n", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    infos = json.loads(report.read_text())
    assert sorted(i["id"] for i in infos) == ["gw0", "gw1"]
    for info in infos:
        assert info["cached"] and info["updated"] and info["pid_differs"], info
        assert info["executable"] == sys.executable
        assert info["version_info"] == list(sys.version_info)
        assert len(info["version_info"]) == 5
        assert info["platform"] == sys.platform
        assert info["cwd"] == str(tmp_path.resolve())
        assert info["class"] == "execnet.gateway.Gateway"
        assert info["execmodel"] == "main_thread_only"
        assert info["spec"] == "execmodel=main_thread_only//popen"


# How pytest-xdist uses execnet's types; checked as strictly as pytest-xdist
# checks itself (its pyproject: strict, warn_unreachable).  Each "type: ignore"
# below is one that pytest-xdist carries too: with reference execnet it is
# needed, so it must be needed with ours (warn_unused_ignores is part of strict).
TYPED_USE = '''
from __future__ import annotations

import execnet


def specs(text: str) -> list[execnet.XSpec]:
    spec = execnet.XSpec(text)
    if not spec.chdir and not spec.popen:
        spec.chdir = "somewhere"
    if spec.ssh:
        return [spec]
    return [execnet.XSpec(f"execmodel=main_thread_only//{spec}")]


def start(group: execnet.Group, spec: execnet.XSpec) -> execnet.Gateway:
    group.allocate_id(spec)
    gw = group.makegateway(spec)
    gw.node = object()  # type: ignore[attr-defined]
    for other in group:
        other.remote_exec = None  # type: ignore[assignment]
    return gw


def default() -> execnet.Gateway:
    return execnet.makegateway("execmodel=main_thread_only//popen")


def describe(gateway: execnet.Gateway) -> str:
    rinfo = gateway._rinfo()
    version = "{}.{}.{}".format(*rinfo.version_info[:3])
    same = rinfo.executable == "python" and gateway.spec._samefilesystem()
    return f"{rinfo.platform} {version} {rinfo.cwd} {same} {gateway.spec.chdir}"


def queue_parts(execmodel: execnet.gateway_base.ExecModel) -> None:
    lock = execmodel.RLock()  # type: ignore[no-untyped-call]
    event = execmodel.Event()
    with lock:
        event.set()


def talk(channel: execnet.Channel) -> int:
    channel.send(1)
    channel.setcallback(print, endmarker=None)
    err: object | None = channel._getremoteerror()  # type: ignore[no-untyped-call]
    return channel.receive()  # type: ignore[no-any-return]
'''


def test_annotations_satisfy_xdists_strict_mypy(tmp_path: Path) -> None:
    (tmp_path / "typed_use.py").write_text(TYPED_USE)
    # a copy of the package's Python files, so that mypy reads this package
    # whether it is installed (MYPYPATH may not name site-packages) or not
    shutil.copytree(Path(execnet.__file__).parent, tmp_path / "src" / "execnet",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MYPY"))}
    env["MYPYPATH"] = str(tmp_path / "src")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--warn-unreachable",
           "--follow-imports=silent", "--no-incremental",
           "typed_use.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found in 1 source file" in proc.stdout


def test_worker_stdout_is_dropped_and_stderr_inherited(tmp_path: Path) -> None:
    """Writes to the worker's fd 1 go to /dev/null, to fd 2 to the controller's stderr."""
    write(tmp_path, {
        "test_fds.py": """
            import os

            def test_write_fds():
                os.write(1, b"worker-fd1-text\\n")
                os.write(2, b"worker-fd2-text\\n")
        """,
    })
    proc = run_pytest(tmp_path, "-n", "1", "-s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker-fd2-text" in proc.stderr
    assert "worker-fd1-text" not in proc.stdout + proc.stderr


def test_warnings_with_unserializable_arguments(tmp_path: Path) -> None:
    """xdist probes warning arguments with execnet.dumps, falling back on DumpError."""
    write(tmp_path, {
        "test_warn.py": """
            import warnings

            def test_plain():
                warnings.warn(UserWarning("plain-warning-text"))

            def test_unserializable():
                warnings.warn(UserWarning("odd-warning-text", object()))
        """,
    })
    proc = run_pytest(tmp_path, "-n", "2")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "UserWarning: plain-warning-text" in out
    assert re.search(r"UserWarning: \('odd-warning-text', <object object at 0x\w+>\)", out), out
    assert summary_counts(out) == {"passed": 2, "warnings": 2}, out


# A session fixture whose teardown takes 8 s and then leaves a file; the
# test signals through a FIFO that it runs, so that the master can be
# interrupted while the worker is busy (what Ctrl-C does to xdist's master:
# it ends the group while the worker still runs).
SLOW_TEARDOWN_SUITE = {
    "conftest.py": """
        import os, time, pytest

        @pytest.fixture(scope="session", autouse=True)
        def slow_teardown():
            yield
            time.sleep(8)
            with open(os.environ["TEARDOWN_DONE"], "w") as f:
                f.write("done")
    """,
    "test_busy.py": """
        import os, time

        def test_busy():
            with open(os.environ["TEST_RUNNING"], "w") as f:
                f.write("running")
            time.sleep(1)
    """,
}


def run_interrupted(tmp_path: Path, **extra_env: str) -> bool:
    """Run SLOW_TEARDOWN_SUITE with one worker, interrupt the master while
    the test runs; True if the session teardown completed."""
    import select
    import signal

    write(tmp_path, SLOW_TEARDOWN_SUITE)
    fifo = tmp_path / "running.fifo"
    done = tmp_path / "teardown.done"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON", "EXECNET_"))}
    env.update(PYTHONPATH=PACKAGE_PARENT, TEST_RUNNING=str(fifo), TEARDOWN_DONE=str(done))
    env.update(extra_env)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "xdist", "-n", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        ready, _, _ = select.select([reader], [], [], TIMEOUT)
        assert ready, "the test did not start"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"KeyboardInterrupt" in out, out
    return done.exists()


def test_interrupted_session_teardown_is_cut_without_a_grace(tmp_path: Path) -> None:
    assert not run_interrupted(tmp_path)


def test_interrupted_session_teardown_completes_with_a_grace(tmp_path: Path) -> None:
    assert run_interrupted(tmp_path, EXECNET_TERMINATE_GRACE="20")


PRINTS_SUITE = {
    "test_prints.py": """
        import os, sys
        import pytest

        @pytest.mark.parametrize("i", range(20))
        def test_print(i):
            print("print-line-%d-" % i + "z" * 200)
            sys.stderr.write("stderr-line-%d\\n" % i)
            os.write(1, b"fd1-line-%d\\n" % i)

        def test_fails():
            print("print-of-failing-test")
            assert 0
    """,
}


def run_with_env(cwd: Path, env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON", "EXECNET_"))}
    env["PYTHONPATH"] = PACKAGE_PARENT
    env.update(env_extra)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "xdist", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_session_teardown_after_x_completes_with_a_grace(tmp_path: Path) -> None:
    # -x with the grace raised: the failing test stops the session, the
    # 8 s session teardown still runs to its end and writes its file, and
    # the session ends as interrupted (exit status 2: pytest-xdist reports
    # a stop after -x that way)
    write(tmp_path, {
        "conftest.py": SLOW_TEARDOWN_SUITE["conftest.py"],
        "test_stop.py": """
            def test_fails():
                assert 0

            def test_passes():
                pass
        """,
    })
    done = tmp_path / "teardown.done"
    proc = run_with_env(
        tmp_path, {"EXECNET_TERMINATE_GRACE": "20", "TEARDOWN_DONE": str(done)}, "-x", "-n", "1"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "stopping after 1 failures" in proc.stdout, proc.stdout
    assert done.read_text() == "done"


def test_forwarded_prints_under_s_appear_once_and_whole(tmp_path: Path) -> None:
    write(tmp_path, PRINTS_SUITE)
    proc = run_with_env(tmp_path, {"EXECNET_FORWARD_OUTPUT": "1"}, "-s", "-n", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out, err = proc.stdout, proc.stderr
    # (a forwarded line may continue the master's own unfinished line, the
    # progress dots; it is never cut, and no other bytes come inside it)
    for i in range(20):
        assert out.count("print-line-%d-" % i) == 1, out
        assert out.count("print-line-%d-" % i + "z" * 200 + "\n") == 1, out
        assert out.count("fd1-line-%d\n" % i) == 1, out
        assert err.count("stderr-line-%d\n" % i) == 1, err
    assert out.count("print-of-failing-test\n") == 1
    assert summary_counts(proc.stdout) == {"passed": 20, "failed": 1}


def test_forwarding_leaves_pytest_capture_alone(tmp_path: Path) -> None:
    # without -s, the workers' pytest captures the prints: the failing
    # test's print is in its report, nothing reaches the output raw
    write(tmp_path, PRINTS_SUITE)
    proc = run_with_env(tmp_path, {"EXECNET_FORWARD_OUTPUT": "prefix"}, "-n", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    both = proc.stdout + proc.stderr
    assert "print-line-" not in both and "fd1-line-" not in both and "stderr-line" not in both
    assert "Captured stdout call" in proc.stdout
    assert proc.stdout.splitlines().count("print-of-failing-test") == 1
    assert summary_counts(proc.stdout) == {"passed": 20, "failed": 1}


def test_without_forwarding_prints_under_s_are_lost(tmp_path: Path) -> None:
    write(tmp_path, PRINTS_SUITE)
    proc = run_with_env(tmp_path, {}, "-s", "-n", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "print-line-" not in proc.stdout + proc.stderr
    assert "fd1-line-" not in proc.stdout + proc.stderr


FORK_ENV = {"EXECNET_FORK": "1", "EXECNET_FORK_PRELOAD": "pytest"}

# a conftest whose tests fail unless their worker is a fork of the template
FORKED_CONFTEST = """
    import os

    import pytest

    @pytest.fixture(autouse=True)
    def forked_worker():
        with open("/proc/%d/cmdline" % os.getppid(), "rb") as f:
            assert b"_template_main" in f.read(), "not a forked worker"
"""


def test_forked_workers_give_the_outcomes_of_started_ones(tmp_path: Path) -> None:
    write(tmp_path, {**OUTCOMES_SUITE, "conftest.py": FORKED_CONFTEST})
    proc = run_with_env(tmp_path, FORK_ENV, "-n", "2", "-rA")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert summary_counts(proc.stdout) == {
        "passed": 10, "failed": 1, "skipped": 1, "xfailed": 1, "xpassed": 1, "error": 1,
    }, proc.stdout
    assert "not a forked worker" not in proc.stdout
    assert "not forked" not in proc.stderr


def test_crashed_forked_worker_is_reported_and_replaced(tmp_path: Path) -> None:
    write(tmp_path, {**CRASH_SUITE, "conftest.py": FORKED_CONFTEST})
    proc = run_with_env(tmp_path, FORK_ENV, "-n", "2")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert re.search(r"replacing crashed worker gw\d", out), out
    assert re.search(r"worker 'gw\d' crashed while running 'test_crash.py::test_die'", out), out
    assert summary_counts(out) == {"passed": 2, "failed": 1}, out


def test_max_worker_restart_with_forked_workers(tmp_path: Path) -> None:
    write(tmp_path, {
        "conftest.py": FORKED_CONFTEST,
        "test_crashes.py": """
            import os
            import pytest

            @pytest.mark.parametrize("i", range(4))
            def test_die(i):
                os._exit(1)
        """,
    })
    proc = run_with_env(tmp_path, FORK_ENV, "-n", "1", "--max-worker-restart", "1")
    out = proc.stdout
    assert proc.returncode != 0, out + proc.stderr
    assert "maximum crashed workers reached: 1" in out, out
    assert out.count("replacing crashed worker") == 1, out


def test_x_with_forked_workers_stops_the_session(tmp_path: Path) -> None:
    write(tmp_path, {
        "conftest.py": FORKED_CONFTEST,
        "test_stop.py": """
            def test_fails():
                assert 0

            def test_passes():
                pass
        """,
    })
    proc = run_with_env(tmp_path, FORK_ENV, "-x", "-n", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "stopping after 1 failures" in proc.stdout, proc.stdout
    assert "1 failed" in proc.stdout.splitlines()[-1]

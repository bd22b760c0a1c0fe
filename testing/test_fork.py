"""Popen gateways forked from a template interpreter (``popen//fork``,
``preload=``, EXECNET_FORK and EXECNET_FORK_PRELOAD)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

import execnet
from execnet import gateway_fork

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

TIMEOUT = 30

WHO = """
import os, sys
channel.send({
    "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0),
    "argv": sys.argv, "name": __name__, "cwd": os.getcwd(),
    "env": os.environ.get("FORK_TEST_VALUE"),
    "nobytecode": sys.dont_write_bytecode,
    "modules": sorted(name for name in ("colorsys", "sched") if name in sys.modules),
})
"""


@pytest.fixture
def group(monkeypatch):
    for name in (gateway_fork.ENV, gateway_fork.PRELOAD_ENV, "PYTHONDONTWRITEBYTECODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(gateway_fork, "_said", set())
    group = execnet.Group()
    yield group
    group.terminate(timeout=10)


def who(gw) -> dict:
    return gw.remote_exec(WHO).receive(timeout=TIMEOUT)


def template_of(group, preload=()) -> gateway_fork.Template:
    (template,) = [t for key, t in group._fork_templates.items() if key[0] == tuple(preload)]
    return template


def wait_gone(pid: int, timeout: float = TIMEOUT) -> bool:
    """True once process pid (not necessarily our child) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        fd = None  # 3.8, or an old kernel: watch the pid
    if fd is not None:
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        select.select([], [], [], 0.02)
    return False


def test_forked_worker_is_a_child_of_the_template(group) -> None:
    gw = group.makegateway("popen//fork")
    seen = who(gw)
    template = template_of(group)
    assert seen["ppid"] == template.popen.pid != os.getpid()
    assert isinstance(gw._io.popen, gateway_fork.ForkedProcess)
    assert gw._io.popen.pid == seen["pid"]
    # what a worker sees is unchanged; its process group is its own
    assert seen["argv"] == ["-c"]
    assert seen["name"] == "__channelexec__"
    assert seen["pgid"] == seen["pid"]
    assert gw.remote_exec("channel.send(7 * 6)").receive(timeout=TIMEOUT) == 42


def test_gateways_of_a_group_share_one_template(group) -> None:
    gateways = [group.makegateway("popen//fork") for _ in range(3)]
    seen = [who(gw) for gw in gateways]
    assert len({s["pid"] for s in seen}) == 3
    assert len({s["ppid"] for s in seen}) == 1
    assert [key[0] for key in group._fork_templates] == [()]


def test_each_preload_list_has_its_template(group) -> None:
    plain = who(group.makegateway("popen//fork"))
    preloaded = who(group.makegateway("popen//fork//preload=colorsys"))
    assert plain["ppid"] != preloaded["ppid"]
    assert "colorsys" not in plain["modules"]
    assert preloaded["modules"] == ["colorsys"]


def test_preload_from_the_environment(group, monkeypatch) -> None:
    monkeypatch.setenv(gateway_fork.ENV, "1")
    monkeypatch.setenv(gateway_fork.PRELOAD_ENV, "colorsys, sched")
    gw = group.makegateway("popen")
    assert isinstance(gw._io.popen, gateway_fork.ForkedProcess)
    assert who(gw)["modules"] == ["colorsys", "sched"]


def test_spec_turns_off_what_the_environment_turns_on(group, monkeypatch) -> None:
    monkeypatch.setenv(gateway_fork.ENV, "1")
    gw = group.makegateway("popen//fork=0")
    assert isinstance(gw._io.popen, subprocess.Popen)
    assert not group._fork_templates


SITECUSTOMIZE = "import sys; sys.path.append('added-by-sitecustomize')\n"


def test_a_changed_startup_environment_gets_its_own_template(
    group, monkeypatch, tmp_path
) -> None:
    # a new PYTHONPATH is read by a new interpreter at its start (its
    # sitecustomize runs): the template that started before does not do
    first = group.makegateway("popen//fork")
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    second = group.makegateway("popen//fork")
    path_of = "import sys; channel.send(sys.path)"
    assert "added-by-sitecustomize" not in first.remote_exec(path_of).receive(timeout=TIMEOUT)
    assert "added-by-sitecustomize" in second.remote_exec(path_of).receive(timeout=TIMEOUT)
    assert who(first)["ppid"] != who(second)["ppid"]
    assert len(group._fork_templates) == 2
    # the same environment again: the same template
    monkeypatch.setenv("FORK_TEST_VALUE", "not read at start")
    assert who(group.makegateway("popen//fork"))["ppid"] == who(second)["ppid"]


def test_worker_gets_the_masters_environment_and_directory_of_now(
    group, monkeypatch, tmp_path
) -> None:
    first = who(group.makegateway("popen//fork"))
    assert first["env"] is None
    # after the template started: the next worker sees the change, as a
    # new interpreter would
    monkeypatch.setenv("FORK_TEST_VALUE", "now")
    monkeypatch.chdir(tmp_path)
    second = who(group.makegateway("popen//fork"))
    assert second["ppid"] == first["ppid"]
    assert second["env"] == "now"
    assert second["cwd"] == str(tmp_path)


def test_spec_keys_apply_in_the_forked_worker(group, tmp_path) -> None:
    target = tmp_path / "sub"
    gw = group.makegateway(f"popen//fork//chdir={target}//env:FORK_TEST_VALUE=spec")
    seen = who(gw)
    assert seen["cwd"] == str(target)
    assert seen["env"] == "spec"
    assert seen["nobytecode"] is False
    assert who(group.makegateway("popen//fork//dont_write_bytecode"))["nobytecode"] is True


def test_nice_applies_in_the_forked_worker(group) -> None:
    # (niceness is per thread on Linux: the setup and this task run in the
    # main thread under main_thread_only)
    gw = group.makegateway("popen//fork//nice=5//execmodel=main_thread_only")
    assert gw.remote_exec(
        "import os; channel.send(os.nice(0))"
    ).receive(timeout=TIMEOUT) == min(os.nice(0) + 5, 19)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("popen//fork=maybe", "fork="),
        ("popen//fork//preload=not-a-module", "not a module name"),
        ("popen//fork//preload", "preload needs a value"),
    ],
)
def test_bad_values_are_refused_before_a_process_starts(group, spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        group.makegateway(spec)
    assert not group._fork_templates and len(group) == 0


def test_bad_environment_value_is_refused(group, monkeypatch) -> None:
    monkeypatch.setenv(gateway_fork.ENV, "perhaps")
    with pytest.raises(ValueError, match=gateway_fork.ENV):
        group.makegateway("popen")


def test_a_preload_that_fails_is_said_once_and_the_workers_go_on(group, capfd) -> None:
    gateways = [group.makegateway("popen//fork//preload=no_such_module_here") for _ in range(2)]
    assert [who(gw)["ppid"] for gw in gateways] == [template_of(group, ["no_such_module_here"]).popen.pid] * 2
    err = capfd.readouterr().err
    assert err.count("could not import no_such_module_here") == 1, err


def test_another_python_falls_back_and_says_why_once(group, capfd) -> None:
    spec = f"popen//fork//python={sys.executable}"
    gateways = [group.makegateway(spec) for _ in range(2)]
    for gw in gateways:
        assert isinstance(gw._io.popen, subprocess.Popen)
        assert who(gw)["ppid"] == os.getpid()
    err = capfd.readouterr().err
    assert err.count("popen gateways are not forked: python=") == 1, err


def test_a_template_that_cannot_start_falls_back(group, capfd, monkeypatch) -> None:
    # a template whose interpreter ends at once: the gateway starts as usual
    monkeypatch.setattr(gateway_fork, "template_argv", lambda line: ["/bin/false"])
    gw = group.makegateway("popen//fork")
    assert isinstance(gw._io.popen, subprocess.Popen)
    assert gw.remote_exec("channel.send(1)").receive(timeout=TIMEOUT) == 1
    assert "popen gateways are not forked: the template did not start" in capfd.readouterr().err


def test_exit_status_of_a_forked_worker(group) -> None:
    gw = group.makegateway("popen//fork")
    gw.remote_exec("import os; os._exit(3)")
    assert gw._io.popen.wait(timeout=TIMEOUT) == 3
    assert gw._io.popen.poll() == 3
    killed = group.makegateway("popen//fork")
    killed._io.kill()
    assert killed._io.popen.wait(timeout=TIMEOUT) == -signal.SIGKILL


def test_wait_with_a_timeout_raises_timeoutexpired(group) -> None:
    gw = group.makegateway("popen//fork")
    with pytest.raises(subprocess.TimeoutExpired):
        gw._io.popen.wait(timeout=0.05)
    assert gw._io.popen.poll() is None


def test_terminate_ends_workers_and_template(group) -> None:
    gateways = [group.makegateway("popen//fork") for _ in range(2)]
    pids = [who(gw)["pid"] for gw in gateways]
    template = template_of(group)
    group.terminate(timeout=10)
    assert template.popen.poll() is not None
    assert not group._fork_templates
    for pid in pids:
        assert wait_gone(pid)
    # terminate() waited for each worker before it ended the template
    assert [gw._io.popen.returncode for gw in gateways] == [0, 0]


def test_worker_outlives_a_killed_template(group) -> None:
    gw = group.makegateway("popen//fork")
    pid = who(gw)["pid"]
    template = template_of(group)
    template.popen.kill()
    template.popen.wait(timeout=TIMEOUT)
    assert template.gone.wait(TIMEOUT)
    assert gw.remote_exec("channel.send(5)").receive(timeout=TIMEOUT) == 5
    # the next gateway gets a new template
    other = group.makegateway("popen//fork")
    assert who(other)["ppid"] != template.popen.pid
    group.terminate(timeout=10)
    assert wait_gone(pid)
    assert gw._io.popen.poll() is None  # an orphan's status is not known


MASTER = """
import os, sys, execnet
gw = execnet.makegateway("popen//fork")
info = gw.remote_exec("import os; channel.send((os.getpid(), os.getppid()))").receive(30)
sys.stdout.write("%d %d\\n" % info)
sys.stdout.flush()
os._exit(0) if sys.argv[1] == "exit" else os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_template_and_workers_never_outlive_the_master(how) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECNET_")}
    proc = subprocess.run(
        [sys.executable, "-c", MASTER, how], capture_output=True, text=True,
        timeout=TIMEOUT, env=env,
    )
    worker, template = map(int, proc.stdout.split())
    assert wait_gone(template)
    assert wait_gone(worker)


def test_forwarded_output_of_a_forked_worker(group, capfd) -> None:
    gw = group.makegateway("popen//fork//output=prefix//id=fk")
    channel = gw.remote_exec(
        "import os, sys; print('out-line'); sys.stderr.write('err-line\\n'); channel.send(1)"
    )
    assert channel.receive(timeout=TIMEOUT) == 1
    group.terminate(timeout=10)
    out, err = capfd.readouterr()
    assert out == "[fk] out-line\n"
    assert "[fk] err-line\n" in err


def test_stderr_is_the_masters_fd_2_of_now(group, tmp_path) -> None:
    group.makegateway("popen//fork")  # the template starts with today's fd 2
    saved = os.dup(2)
    target = tmp_path / "stderr"
    try:
        with open(target, "wb") as f:
            os.dup2(f.fileno(), 2)
        gw = group.makegateway("popen//fork")
        gw.remote_exec("import os; os.write(2, b'worker-stderr\\n'); channel.send(1)").receive(
            timeout=TIMEOUT
        )
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    assert target.read_bytes() == b"worker-stderr\n"


@pytest.mark.parametrize("execmodel", ["thread", "main_thread_only"])
def test_execmodels_in_a_forked_worker(group, execmodel) -> None:
    gw = group.makegateway(f"popen//fork//execmodel={execmodel}")
    assert gw.remote_exec(
        "channel.send(channel.gateway.execmodel.backend)"
    ).receive(timeout=TIMEOUT) == execmodel


def test_remote_exec_of_a_function_in_a_forked_worker(group) -> None:
    gw = group.makegateway("popen//fork")
    assert gw.remote_exec(_double, value=21).receive(timeout=TIMEOUT) == 42


def _double(channel, value):
    channel.send(value * 2)


def test_preload_pytest_imports_its_default_plugins(group) -> None:
    pytest_config = pytest.importorskip("_pytest.config")
    gw = group.makegateway("popen//fork//preload=pytest")
    names = ["_pytest." + name for name in pytest_config.default_plugins]
    loaded = gw.remote_exec(
        "import sys; channel.send([n for n in channel.receive() if n in sys.modules])"
    )
    loaded.send(names)
    assert loaded.receive(timeout=TIMEOUT) == names


PRESTART = """
import os, sys
import execnet
from execnet import gateway_fork
templates = {k[0]: t.popen.pid for k, t in gateway_fork._prestarted.items()}
sys.stdout.write("%r\\n" % (templates,))
sys.stdout.flush()
if sys.argv[1] == "gateway":
    gw = execnet.makegateway("popen")
    sys.stdout.write("%d\\n" % gw.remote_exec("import os; channel.send(os.getppid())").receive(30))
    execnet.default_group.terminate(10)
"""


def run_prestart(tmp_path, *args, **env_extra):
    script = tmp_path / "master.py"
    script.write_text(PRESTART)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECNET_")}
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True,
        timeout=TIMEOUT, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_template_starts_at_import_and_serves_the_first_gateway(tmp_path) -> None:
    lines = run_prestart(tmp_path, "gateway", EXECNET_FORK="1", EXECNET_FORK_PRELOAD="colorsys")
    templates = eval(lines[0])
    assert list(templates) == [("colorsys",)]
    assert int(lines[1]) == templates[("colorsys",)]
    assert wait_gone(templates[("colorsys",)])


def test_a_prestarted_template_ends_with_a_master_that_made_no_gateway(tmp_path) -> None:
    templates = eval(run_prestart(tmp_path, "none", EXECNET_FORK="1")[0])
    assert list(templates) == [()]
    assert wait_gone(templates[()])


def test_no_template_at_import_without_the_variable_or_in_a_worker(tmp_path) -> None:
    assert run_prestart(tmp_path, "none") == ["{}"]
    assert run_prestart(tmp_path, "none", EXECNET_FORK="0") == ["{}"]
    # a worker (argv ["-c"], as every worker's) starts none
    env = {**os.environ, "EXECNET_FORK": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "from execnet import gateway_fork as f; print(f._prestarted)"],
        capture_output=True, text=True, timeout=TIMEOUT, env=env,
    )
    assert proc.stdout.strip() == "{}", proc.stderr


ZOMBIE_MASTER = """
import ctypes, os, sys, execnet
# the master is the reaper of orphans (as a container's init would be) and
# never reaps them: an orphaned worker that ends stays a zombie
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
group = execnet.Group()
gw = group.makegateway("popen//fork")
(template,) = group._fork_templates.values()
template.popen.kill()
template.popen.wait(30)
assert template.gone.wait(30)
gw.remote_exec("import os; os._exit(0)")
sys.stdout.write("%r\\n" % (gw._io.popen.wait(timeout=30),))
"""


def test_wait_returns_for_an_orphan_left_a_zombie() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECNET_")}
    proc = subprocess.run(
        [sys.executable, "-c", ZOMBIE_MASTER], capture_output=True, text=True,
        timeout=TIMEOUT + 10, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "None\n"

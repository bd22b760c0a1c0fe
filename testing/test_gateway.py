"""Gateway creation, the Gateway object, remote_exec sources, termination
and faults."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import textwrap
import time

import pytest
from runtime_util import TIMEOUT
from runtime_util import interrupt_when_ready
from runtime_util import run_python
from runtime_util import wait_for

import execnet
from execnet import gateway
from execnet import gateway_base
from execnet import gateway_bootstrap
from execnet import gateway_io

pytest_plugins = ["conftest_runtime"]


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- gateway creation --------------------------------------------------------


@pytest.mark.parametrize("spec", [None, ""])
def test_makegateway_default_is_popen(group, spec):
    gw = group.makegateway(spec)
    assert gw.spec.popen is True and gw.spec.python is None
    assert gw.spec.execmodel == "thread" and gw.id == "gw0"


def test_makegateway_unknown_type(group):
    with pytest.raises(ValueError, match="no gateway type found for 'hello'"):
        group.makegateway("hello")
    group.defaultspec = "not-existing-type"
    with pytest.raises(ValueError):
        group.makegateway()


def test_popen_cwd_is_creation_cwd(makegateway, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gw = makegateway()
    monkeypatch.chdir("/")
    assert gw._rinfo().cwd == str(tmp_path)
    assert gw.remote_exec("import os; channel.send(os.getcwd())").receive(TIMEOUT) == str(tmp_path)


def test_chdir_absolute(makegateway, tmp_path):
    gw = makegateway(f"popen//chdir={tmp_path}")
    assert gw._rinfo().cwd == str(tmp_path)


def test_chdir_relative_is_created(makegateway, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gw = makegateway("popen//chdir=hello")
    assert gw._rinfo().cwd == str(tmp_path / "hello")
    assert (tmp_path / "hello").is_dir()


def test_env(makegateway):
    gw = makegateway("popen//env:NAME123=123")
    channel = gw.remote_exec("import os; channel.send(os.environ['NAME123'])")
    assert channel.receive(TIMEOUT) == "123"


def test_nice(group):
    if not hasattr(os, "nice"):
        pytest.skip("no os.nice")
    # niceness is per thread on Linux: only main_thread_only runs every
    # task in the thread that ran the setup
    gw = group.makegateway("popen//nice=5//execmodel=main_thread_only")
    remote_nice = gw.remote_exec("import os; channel.send(os.nice(0))").receive(TIMEOUT)
    assert remote_nice == min(os.nice(0) + 5, 19)


def test_setup_failure_raises_remote_error(makegateway, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(execnet.RemoteError):
        makegateway(f"popen//chdir={tmp_path / 'afile'}")


def test_python_executable_uses_exec_bootstrap(makegateway):
    gw = makegateway(f"popen//python={sys.executable}")
    assert gw.spec.python == sys.executable
    assert gw._rinfo().executable == sys.executable
    # the worker runs the shipped source as __main__, not the package
    channel = gw.remote_exec(
        "import sys; channel.send((type(channel).__module__, 'execnet' in sys.modules))"
    )
    assert channel.receive(TIMEOUT) == ("__main__", False)


def test_dont_write_bytecode(makegateway, monkeypatch):
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    source = "import sys; channel.send(sys.dont_write_bytecode)"
    assert makegateway("popen").remote_exec(source).receive(TIMEOUT) is False
    assert makegateway("popen//dont_write_bytecode").remote_exec(source).receive(TIMEOUT) is True


def test_socket_host_not_found(group):
    with pytest.raises(execnet.HostNotFound):
        group.makegateway("socket=qwepoipqwe.invalid:9000")


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_ssh_host_not_found(group):
    with pytest.raises(execnet.HostNotFound):
        group.makegateway("ssh=-o ConnectTimeout=5 nowhere.invalid")


def test_via(makegateway, group):
    # the forwarder occupies a task of the master for good: thread model
    master = group.makegateway("popen//id=master//execmodel=thread")
    worker = makegateway("popen//via=master//id=worker")
    master_pid = master._rinfo().pid
    channel = worker.remote_exec("import os; channel.send(os.getppid())")
    assert channel.receive(TIMEOUT) == master_pid
    channel.waitclose(TIMEOUT)
    channel = worker.remote_exec("channel.send(channel.receive() * 2)")
    channel.send(b"x" * 100000)
    assert channel.receive(TIMEOUT) == b"x" * 200000


def test_four_gateways_in_parallel(group):
    gateways = [group.makegateway() for _ in range(4)]
    channels = [gw.remote_exec("channel.send(channel.receive() + 1)") for gw in gateways]
    for i, channel in enumerate(channels):
        channel.send(i)
    assert [channel.receive(TIMEOUT) for channel in channels] == [1, 2, 3, 4]


def test_xspec_object_gets_id_and_execmodel(group):
    group.set_execmodel("thread", "main_thread_only")
    spec = execnet.XSpec("popen")
    gw = group.makegateway(spec)
    assert gw.spec is spec
    assert (spec.id, spec.execmodel) == ("gw0", "main_thread_only")
    assert gw.remote_status().execmodel == "main_thread_only"


def test_bad_bootstrap_ack(group, monkeypatch):
    child = "import sys; sys.stdout.write('x'); sys.stdout.flush(); sys.stdin.read()"
    monkeypatch.setattr(gateway_io, "popen_args", lambda spec: [sys.executable, "-c", child])
    with pytest.raises(AssertionError, match="acknowledgement"):
        group.makegateway("popen")
    assert not group


def test_worker_that_cannot_import_us_ends_its_gateway(group, monkeypatch, tmp_path, capfd):
    # the child acknowledges the line before it imports execnet: a failing
    # import ends the gateway, with the child's traceback on stderr
    package = tmp_path / "execnet"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "backend.py").write_text("from . import gateway_base\n")
    (package / "gateway_base.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.setattr(gateway_bootstrap, "importdir", str(tmp_path))
    gw = group.makegateway("popen")
    with pytest.raises((OSError, EOFError)):
        gw.remote_exec("channel.send(1)").receive(TIMEOUT)
    gw._io.popen.wait(TIMEOUT)  # its traceback is written by then
    assert "broken on purpose" in capfd.readouterr().err


def test_duplicate_id_spawns_nothing(group, monkeypatch):
    group.makegateway("popen//id=a")

    def no_spawn(*args, **kwargs):
        raise AssertionError("spawned")

    monkeypatch.setattr(gateway_io, "Popen2IOMaster", no_spawn)
    with pytest.raises(AssertionError, match="already have gateway with id 'a'"):
        group.makegateway("popen//id=a")


def test_unknown_execmodel_gives_dead_gateway(group):
    gw = group.makegateway("popen//execmodel=nonsense")
    gw.join(TIMEOUT)
    assert not gw.hasreceiver()
    with pytest.raises(OSError, match="connection already closed"):
        gw.remote_exec("pass")


# --- gateway object ------------------------------------------------------------


def test_gateway_basics(gw):
    assert gw.hasreceiver()
    assert gw in gw._group and gw.id in gw._group and gw.spec
    backend = gw.spec.execmodel
    assert repr(gw) == "<Gateway id='gw0' receive-live, thread model, 0 active channels>"
    assert isinstance(gw, execnet.Gateway)
    gw.node = "anything"
    assert gw.node == "anything"
    status = gw.remote_status()
    assert (status.numexecuting, status.numchannels, status.execmodel) == (0, 0, backend)
    assert repr(status) == f"<RInfo 'execmodel={backend}, numchannels=0, numexecuting=0'>"
    with pytest.raises(AttributeError):
        gw.remoteaddress


def test_remote_status_leaves_no_channel(gw):
    before = gw._channelfactory.channels()
    gw.remote_status()
    assert gw._channelfactory.channels() == before
    assert gw.newchannel().id == 3  # the status request used id 1


def test_status_counts_executing_tasks(thread_gw):
    start = thread_gw.remote_status().numchannels
    channels = [thread_gw.remote_exec("channel.send(1); channel.receive()") for _ in range(2)]
    for channel in channels:
        assert channel.receive(TIMEOUT) == 1
    status = thread_gw.remote_status()
    assert status.numexecuting == 2 and status.numchannels == start + 2
    for channel in channels:
        channel.send(None)
        channel.waitclose(TIMEOUT)
    wait_for(lambda: thread_gw.remote_status().numexecuting == 0)
    wait_for(lambda: thread_gw.remote_status().numchannels == start)


def test_rinfo(gw, tmp_path):
    info = gw._rinfo()
    assert info.executable == sys.executable
    assert info.cwd == os.getcwd()
    assert info.version_info == sys.version_info
    assert info.platform == sys.platform and info.pid != os.getpid()
    assert repr(info).startswith("<RInfo \"cwd=")
    channel = gw.remote_exec(f"import os; os.chdir({str(tmp_path)!r})")
    channel.waitclose(TIMEOUT)
    assert gw._rinfo().cwd == os.getcwd()
    assert gw._rinfo(update=True).cwd == str(tmp_path)


def test_remote_init_threads_is_noop(thread_gw, capsys):
    thread_gw.remote_init_threads(3)
    assert "no-operation" in capsys.readouterr().out
    channels = [thread_gw.remote_exec("channel.send(channel.receive())") for _ in range(5)]
    for i, channel in enumerate(channels):
        channel.send(i)
    assert [channel.receive(TIMEOUT) for channel in channels] == list(range(5))


def test_exit_does_not_wait(gw, group):
    channel = gw.remote_exec("import time; time.sleep(10)")
    start = time.monotonic()
    gw.exit()
    assert time.monotonic() - start < 2
    assert gw.id not in group
    with pytest.raises(KeyError):
        group[gw.id]
    gw.exit()  # no-op
    group.terminate(timeout=0.5)
    with pytest.raises(EOFError):
        channel.waitclose(TIMEOUT)


def test_join(gw):
    gw.join(timeout=0.01)  # returns though the receiver runs
    assert gw.hasreceiver()
    gw.exit()
    gw.join(TIMEOUT)
    assert not gw.hasreceiver()
    assert "not-receiving" in repr(gw)


# --- remote_exec sources -------------------------------------------------------


def test_remote_namespace(gw):
    channel = gw.remote_exec(
        """
        channel.send((__name__, "channel" in globals(), "__file__" in globals()))
        """
    )
    assert channel.receive(TIMEOUT) == ("__channelexec__", True, False)


def test_fresh_namespace_per_call(gw):
    gw.remote_exec("x = 1").waitclose(TIMEOUT)
    channel = gw.remote_exec("channel.send('x' in globals())")
    assert channel.receive(TIMEOUT) is False


def _write_module(path, text):
    path.write_text(textwrap.dedent(text))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_remote_exec_module_rereads_source(gw, tmp_path):
    path = tmp_path / "remote1.py"
    guard = "if __name__ == '__channelexec__':\n    "
    module = _write_module(path, guard + "channel.send(1)\n")
    assert gw.remote_exec(module).receive(TIMEOUT) == 1
    path.write_text(guard + "channel.send(2)\n")
    assert gw.remote_exec(module).receive(TIMEOUT) == 2


def test_remote_exec_module_source_taken_at_call(gw, tmp_path):
    path = tmp_path / "sub" / "remote2.py"
    path.parent.mkdir()
    module = _write_module(
        path, "if __name__ == '__channelexec__':\n    channel.send(channel.receive())\n"
    )
    channel = gw.remote_exec(module)
    shutil.rmtree(path.parent)
    channel.send(5)
    assert channel.receive(TIMEOUT) == 5


def test_remote_traceback_shows_module_file(gw, tmp_path):
    module = _write_module(
        tmp_path / "remotetest.py",
        """
        def run_me(channel=None):
            raise ValueError("me")

        if __name__ == "__channelexec__":
            run_me()
        """,
    )
    channel = gw.remote_exec(module)
    with pytest.raises(execnet.RemoteError) as excinfo:
        channel.waitclose(TIMEOUT)
    assert 'remotetest.py", line 3, in run_me' in excinfo.value.formatted
    assert "ValueError: me" in excinfo.value.formatted
    with pytest.raises(TypeError, match="can't pass kwargs to non-function remote_exec"):
        gw.remote_exec(module, x=1)


def remote_add(channel, data):
    channel.send(data + 1)


def remote_fails(channel):
    raise ValueError("me")


def remote_uses_global(channel):
    channel.send(sys.platform)


def remote_pure(channel):
    import sys

    channel.send(len(sys.platform) > 0)


def test_remote_exec_function(gw):
    assert gw.remote_exec(remote_add, data=1).receive(TIMEOUT) == 2
    assert gw.remote_exec(remote_pure).receive(TIMEOUT) is True


def test_remote_function_traceback(gw):
    channel = gw.remote_exec(remote_fails)
    with pytest.raises(execnet.RemoteError) as excinfo:
        channel.waitclose(TIMEOUT)
    lineno = remote_fails.__code__.co_firstlineno + 1
    assert f'test_gateway.py", line {lineno}, in remote_fails' in excinfo.value.formatted
    assert "ValueError: me" in excinfo.value.formatted


def test_function_checks(gw):
    with pytest.raises(ValueError, match="can't evaluate lambda functions'"):
        gw.remote_exec(lambda channel: None)

    def wrong_name(chan):
        pass

    with pytest.raises(ValueError, match="expected first function argument to be `channel`"):
        gw.remote_exec(wrong_name)

    def no_args():
        pass

    with pytest.raises(ValueError, match="expected first function argument"):
        gw.remote_exec(no_args)
    outer = 1

    def closure(channel):
        return outer

    with pytest.raises(ValueError, match="functions with closures can't be passed"):
        gw.remote_exec(closure)
    namespace = {}
    exec("def from_exec(channel):\n    pass\n", namespace)
    with pytest.raises(ValueError, match="can't find source file for"):
        gw.remote_exec(namespace["from_exec"])
    with pytest.raises(ValueError) as excinfo:
        gw.remote_exec(remote_uses_global)
    assert excinfo.value.args == ("the use of non-builtin globals isn't supported", ["sys"])
    with pytest.raises(TypeError, match="can't pass kwargs"):
        gw.remote_exec("pass", x=1)
    with pytest.raises(execnet.DumpError):
        gw.remote_exec(remote_add, data=object())
    assert gw._channelfactory.channels() == []


def test_find_non_builtin_globals():
    def pure(channel):
        x = len([])
        return x

    source = gateway._source_of_function(pure).lstrip("\n")
    assert gateway._find_non_builtin_globals(source, pure.__code__) == []
    assert gateway._find_non_builtin_globals("sys.x", pure.__code__) == ["sys"]


def test_source_of_function():
    def working(channel: object) -> None:
        pass

    source = gateway._source_of_function(working)
    assert source.lstrip("\n") == "def working(channel: object) -> None:\n    pass\n"
    assert source.count("\n") - 2 == working.__code__.co_firstlineno - 1


def test_remote_stack_inspection(gw):
    channel = gw.remote_exec(
        """
        import inspect, traceback
        channel.send((len(inspect.stack()) > 0, "".join(traceback.format_stack())))
        """
    )
    has_stack, stack = channel.receive(TIMEOUT)
    assert has_stack and 'File "<remote exec>"' in stack


# --- termination and faults ---------------------------------------------------


def test_terminate_ends_blocked_worker(gw, group):
    pid = gw._rinfo().pid
    channel = gw.remote_exec("channel.receive()")
    group.terminate(timeout=TIMEOUT)
    assert not pid_exists(pid)
    with pytest.raises(EOFError):
        channel.waitclose(TIMEOUT)


def test_terminate_kills_within_timeout(gw, group):
    pid = gw._rinfo().pid
    gw.remote_exec("import time; time.sleep(100)")
    start = time.monotonic()
    group.terminate(timeout=0.5)
    assert time.monotonic() - start < 3
    assert not group
    wait_for(lambda: not pid_exists(pid), timeout=5)


def test_script_terminate_has_empty_stderr():
    result = run_python(
        textwrap.dedent(
            """
            import execnet
            gw = execnet.makegateway()
            ch1 = gw.remote_exec("channel.receive()")
            ch2 = gw.remote_exec("channel.receive()")
            execnet.default_group.terminate()
            print("done")
            """
        )
    )
    assert result.stdout == b"done\n"
    assert result.stderr == b""


def test_script_atexit_ends_sleeping_worker():
    result = run_python(
        textwrap.dedent(
            """
            import execnet
            gw = execnet.makegateway()
            print(gw._rinfo().pid, flush=True)
            gw.remote_exec("import time; time.sleep(100)")
            """
        )
    )
    assert result.returncode == 0
    assert result.stderr in (b"", b"Killed\n"), result.stderr
    wait_for(lambda: not pid_exists(int(result.stdout)), timeout=5)


def test_killed_worker(gw):
    channel = gw.remote_exec("channel.receive()")
    os.kill(gw._io.popen.pid, signal.SIGTERM)
    with pytest.raises(EOFError, match="couldn't load message header"):
        channel.waitclose(10)
    with pytest.raises(OSError, match=r"cannot send \(already closed\?\)"):
        channel.send(1)
    for _ in range(2):
        with pytest.raises(EOFError):
            channel.receive()
    assert not channel.isclosed()
    assert channel._getremoteerror() is gw._error
    gw.join(TIMEOUT)  # the receiver may still be closing down
    with pytest.raises(OSError, match="connection already closed: <Gateway id='gw0' not-receiving"):
        gw.remote_exec("pass")
    with pytest.raises(OSError, match="connection already closed"):
        gw.remote_status()
    assert not gw.hasreceiver()
    assert repr(gw).endswith("not-receiving, thread model, 0 active channels>")


def test_worker_killed_mid_message(gw):
    q = gw.execmodel.queue.Queue()
    channel = gw.remote_exec(
        """
        import os, signal, struct
        channel.send(1)
        io = channel.gateway._io
        io.write(struct.pack("!bii", 4, channel.id, 30) + b"x" * 10)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert channel.receive(TIMEOUT) == 1
    channel.setcallback(q.put, endmarker=999)
    assert q.get(timeout=TIMEOUT) == 999
    with pytest.raises(EOFError, match=rf"^expected 30 bytes, got 10 \[gateway {gw.id}\]$"):
        channel.waitclose(TIMEOUT)


@pytest.mark.parametrize(
    "frame, text",
    [
        ("struct.pack('!bii', 4, channel.id, -5)", "negative length -5"),
        ("struct.pack('!bii', 17, channel.id, 0)", "unknown message code 17"),
        ("struct.pack('!bii', 6, channel.id, 6) + b'F\\0\\0\\0\\1Q'", "CHANNEL_CLOSE_ERROR"),
        ("struct.pack('!bii', 4, channel.id, 5) + b'F\\0\\0\\0\\1'", "invalid message payload"),
        ("struct.pack('!bii', 4, channel.id, 2) + b'ZQ'", "unknown opcode"),
    ],
)
def test_malformed_frame_closes_gateway(gw, frame, text):
    channel = gw.remote_exec(
        f"""
        import struct
        channel.gateway._io.write({frame})
        channel.receive()
        """
    )
    with pytest.raises(execnet.DataFormatError, match=text):
        channel.waitclose(TIMEOUT)
    gw.join(TIMEOUT)
    assert not gw.hasreceiver()
    assert isinstance(gw._error, execnet.DataFormatError)


def test_system_exit_does_not_end_worker(gw):
    with pytest.raises(execnet.RemoteError, match="SystemExit"):
        gw.remote_exec("raise SystemExit()").waitclose(TIMEOUT)
    assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1


@pytest.mark.parametrize("wait", ["ch.receive()", "ch.waitclose()"])
def test_sigint_interrupts_blocked_wait(wait, tmp_path):
    out, err, status = interrupt_when_ready(
        f"""
        import execnet
        gw = execnet.makegateway()
        ch = gw.remote_exec("channel.receive()")
        try:
            print("ready", flush=True)
            {wait}
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """,
        tmp_path,
    )
    assert out == b"interrupted\n", err
    assert status == 0


def test_gateway_base_names_for_worker():
    # what a real execnet master's import bootstrap uses
    assert callable(gateway_base.serve)
    assert callable(gateway_base.init_popen_io)
    assert callable(gateway_base.get_execmodel)


def test_worker_imports_our_package_whatever_its_cwd(group, tmp_path, monkeypatch):
    # under -c the worker's sys.path starts with its current directory
    fake = tmp_path / "execnet"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the wrong execnet')\n")
    monkeypatch.chdir(tmp_path)
    gw = group.makegateway("popen")
    channel = gw.remote_exec("import execnet; channel.send(execnet.__file__)")
    assert channel.receive(TIMEOUT) == execnet.__file__


@pytest.mark.parametrize("proxy_model", ["thread", "main_thread_only"])
def test_one_proxy_hosts_many_via_gateways(group, proxy_model):
    # execnet's forwarder holds the proxy's task for the gateway's life, so
    # a main_thread_only proxy hosted one: ours hands over to a thread
    group.makegateway(f"popen//id=proxy//execmodel={proxy_model}")
    gateways = [group.makegateway(f"popen//via=proxy//id=w{i}") for i in range(3)]
    channels = [gw.remote_exec("channel.send(channel.receive() + 1)") for gw in gateways]
    for i, channel in enumerate(channels):
        channel.send(i)
    assert [channel.receive(TIMEOUT) for channel in channels] == [1, 2, 3]
    status = group["proxy"].remote_status()
    assert status.numexecuting == 0  # no task is held by the forwarding

"""Package surface, message framing, exec models, worker pools, worker IO
setup and tracing."""

from __future__ import annotations

import builtins
import io
import os
import struct
import sys
import textwrap
import types

import pytest
from runtime_util import TIMEOUT
from runtime_util import run_python

import execnet
from execnet import gateway_base
from execnet import gateway_io

pytest_plugins = ["conftest_runtime"]

# --- package surface ------------------------------------------------------


def test_all_names():
    assert execnet.__all__ == [
        "Channel", "DataFormatError", "DumpError", "Gateway", "Group",
        "HostNotFound", "LoadError", "MultiChannel", "RSync", "RemoteError",
        "TimeoutError", "XSpec", "__version__", "backend_info", "default_group", "dump",
        "dumps", "load", "loads", "makegateway", "set_execmodel",
    ]  # fmt: skip
    for name in execnet.__all__:
        assert hasattr(execnet, name)
    assert isinstance(execnet.__version__, str)
    assert execnet.BACKEND in ("c", "python")


def test_exception_classes():
    assert issubclass(execnet.DumpError, execnet.DataFormatError)
    assert issubclass(execnet.LoadError, execnet.DataFormatError)
    assert issubclass(execnet.TimeoutError, OSError)
    assert execnet.TimeoutError is not builtins.TimeoutError
    assert execnet.Channel.RemoteError is execnet.RemoteError
    assert execnet.Channel.TimeoutError is execnet.TimeoutError


def test_default_group_bound_methods():
    assert execnet.makegateway.__self__ is execnet.default_group
    assert execnet.set_execmodel.__self__ is execnet.default_group
    assert execnet.default_group.defaultspec == "popen"


def test_submodules_share_identity():
    from execnet import gateway
    from execnet import gateway_bootstrap
    from execnet import gateway_io
    from execnet import gateway_socket
    from execnet import multi
    from execnet import rsync
    from execnet import xspec

    assert gateway_base.RemoteError is execnet.RemoteError
    assert gateway_base.Channel is execnet.Channel
    assert gateway_base.TimeoutError is execnet.TimeoutError
    assert gateway.Gateway is execnet.Gateway
    assert gateway.RemoteStatus is gateway.RInfo
    assert multi.Group is execnet.Group
    assert multi.MultiChannel is execnet.MultiChannel
    assert multi.default_group is execnet.default_group
    assert xspec.XSpec is execnet.XSpec
    assert rsync.RSync is execnet.RSync
    assert gateway_bootstrap.HostNotFound is execnet.HostNotFound
    assert gateway_socket.create_io and gateway_io.create_io
    assert (gateway_io.RIO_KILL, gateway_io.RIO_WAIT) == (1, 2)
    assert (gateway_io.RIO_REMOTEADDRESS, gateway_io.RIO_CLOSE_WRITE) == (3, 4)


def test_gateway_base_names():
    for name in (
        "Channel RemoteError TimeoutError DataFormatError DumpError LoadError "
        "dumps dump loads load dumps_internal loads_internal Unserializer "
        "opcode Message Popen2IO ChannelFactory ChannelFile ChannelFileWrite "
        "ChannelFileRead BaseGateway WorkerGateway WorkerPool Reply ExecModel "
        "ThreadExecModel MainThreadOnlyExecModel EventletExecModel "
        "GeventExecModel get_execmodel serve init_popen_io geterrortext trace "
        "notrace fn DEBUG bchr DUMPFORMAT_VERSION FOUR_BYTE_INT_MAX "
        "INTERRUPT_TEXT MAIN_THREAD_ONLY_DEADLOCK_TEXT NO_ENDMARKER_WANTED "
        "ENDMARKER GatewayReceivedTerminate"
    ).split():
        assert hasattr(gateway_base, name), name


def test_bootstrapline_compiles():
    from execnet import gateway_io

    assert gateway_io.popen_bootstrapline == "import sys;exec(eval(sys.stdin.readline()))"
    compile(gateway_io.popen_bootstrapline, "<line>", "exec")


def test_trace_is_notrace_without_debug():
    env = {k: v for k, v in os.environ.items() if k != "EXECNET_DEBUG"}
    result = run_python(
        "from execnet import gateway_base as g; print(g.trace is g.notrace, g.fn)",
        env=env,
    )
    assert result.stdout.split() == [b"True", b"None"], result.stderr


def test_portable_core_is_self_contained():
    # it is shipped as source: only standard library imports
    import ast

    with open(gateway_base.__file__.replace(".pyc", ".py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module.split(".")[0] != "execnet" or (
                node.module == "execnet" and node.names[0].name == "_execnet"
            ), ast.dump(node)


# --- message framing --------------------------------------------------------


@pytest.mark.parametrize("code", range(8))
def test_message_roundtrip(code):
    f = io.BytesIO()
    gateway_base.Message(code, 42, b"23").to_io(f)
    assert f.getvalue() == struct.pack("!bii", code, 42, 2) + b"23"
    f.seek(0)
    msg = gateway_base.Message.from_io(f)
    assert (msg.msgcode, msg.channelid, msg.data) == (code, 42, b"23")


def test_message_codes_and_repr():
    Message = gateway_base.Message
    names = [name for name, handler in Message._types.values()]
    assert list(Message._types) == list(range(8))
    assert names == [
        "STATUS", "RECONFIGURE", "GATEWAY_TERMINATE", "CHANNEL_EXEC",
        "CHANNEL_DATA", "CHANNEL_CLOSE", "CHANNEL_CLOSE_ERROR",
        "CHANNEL_LAST_MESSAGE",
    ]  # fmt: skip
    for code, name in enumerate(names):
        assert getattr(Message, name) == code
    assert repr(Message(4, 3, b"abc")) == "<Message CHANNEL_DATA channel=3 lendata=3>"


def _pipe_io(data: bytes):
    return gateway_base.Popen2IO(io.BytesIO(), io.BytesIO(data), gateway_base.get_execmodel("thread"))


def test_message_header_eof():
    with pytest.raises(EOFError, match="^couldn't load message header, expected 9 bytes, got 0"):
        gateway_base.Message.from_io(_pipe_io(b""))
    with pytest.raises(EOFError, match="expected 9 bytes, got 4"):
        gateway_base.Message.from_io(_pipe_io(b"\x04\x00\x00\x00"))


def test_message_payload_eof():
    pio = _pipe_io(struct.pack("!bii", 4, 1, 30) + b"x" * 10)
    with pytest.raises(EOFError, match="^expected 30 bytes, got 10$"):
        gateway_base.Message.from_io(pio)


@pytest.mark.parametrize(
    "header, text",
    [
        (struct.pack("!bii", 4, 1, -5), "negative length -5"),
        (struct.pack("!bii", 9, 1, 0), "unknown message code 9"),
        (struct.pack("!bii", -1, 1, 0), "unknown message code -1"),
    ],
)
def test_malformed_frame(header, text):
    with pytest.raises(execnet.DataFormatError, match=text):
        gateway_base.Message.from_io(_pipe_io(header + b"x" * 100))


def test_oversized_length_reads_in_pieces():
    # a length claiming 2 GB with 10 bytes behind it: EOFError, no huge buffer
    reads = []
    pio = _pipe_io(struct.pack("!bii", 4, 1, 2**31 - 1) + b"x" * 10)
    read = pio._read
    pio._read = lambda n: reads.append(n) or read(n)
    with pytest.raises(EOFError, match="got 10"):
        gateway_base.Message.from_io(pio)
    assert max(reads) <= 1 << 20


def test_popen2io_read_loops_over_short_reads():
    pio = _pipe_io(b"test")
    read = pio._read
    pio._read = lambda n: read(max(1, n - 1))
    assert pio.read(3) == b"tes"


def test_popen2io_write_requires_bytes():
    out = io.BytesIO()
    pio = gateway_base.Popen2IO(out, io.BytesIO(), gateway_base.get_execmodel("thread"))
    pio.write(b"abc")
    assert out.getvalue() == b"abc"
    with pytest.raises(TypeError):
        pio.write("abc")


ECHO_WORKER = """
import struct, sys
sys.stdin.buffer.readline()  # the bootstrap line
out = sys.stdout.buffer
out.write(b"1")
out.flush()
data = sys.stdin.buffer.read(39)
# send those bytes back, as a bytes item on channel 1
payload = b"A" + struct.pack("!i", len(data)) + data + b"Q"
out.write(struct.pack("!bii", 4, 1, len(payload)) + payload)
out.flush()
sys.stdin.buffer.read()
"""


def test_remote_exec_wire_bytes(group, monkeypatch):
    # a fake worker that echoes the first 39 bytes it gets after bootstrap
    monkeypatch.setattr(
        gateway_io, "popen_args", lambda spec: [sys.executable, "-c", ECHO_WORKER]
    )
    gw = group.makegateway("popen")
    channel = gw.remote_exec("channel.send(42)")
    expected = (
        b"\x03\x00\x00\x00\x01\x00\x00\x00\x1e"
        b"N\x00\x00\x00\x10channel.send(42)LLJ@\x00\x00\x00\x04Q"
    )
    assert len(expected) == 39
    assert channel.receive(TIMEOUT) == expected


def test_channel_ids_odd_and_even(thread_gw):
    assert thread_gw.newchannel().id == 1
    assert thread_gw.newchannel().id == 3
    channel = thread_gw.remote_exec("channel.send(channel.gateway.newchannel().id)")
    assert channel.id == 5
    assert channel.receive(TIMEOUT) == 2


class _MiniGateway:
    """The least a ChannelFactory needs of a gateway."""

    def __init__(self):
        self.execmodel = gateway_base.get_execmodel("thread")
        self.sent = []

    def _trace(self, *msg):
        pass

    def _send(self, *message):
        self.sent.append(message)


def test_channelfactory_ids_and_registry():
    gw = _MiniGateway()
    gw._channelfactory = factory = gateway_base.ChannelFactory(gw, startcount=1)
    first, second = factory.new(), factory.new()
    assert (first.id, second.id) == (1, 3)
    assert factory._channels[1] is first and 3 in factory._channels
    assert len(factory._channels) == 2 and set(factory.channels()) == {first, second}
    assert factory.new(3) is second
    assert factory.count == 5 and not factory.finished


def test_local_close_wakes_waitclose():
    gw = _MiniGateway()
    gw._channelfactory = factory = gateway_base.ChannelFactory(gw)
    ch1, ch2 = factory.new(), factory.new()
    factory._local_close(ch1.id)
    ch1.waitclose(0.1)
    factory._local_close(ch2.id, gateway_base.RemoteError("error"))
    with pytest.raises(execnet.RemoteError, match="error"):
        ch2.waitclose(0.01)
    assert ch1.id not in factory._channels


# --- exec models -------------------------------------------------------------


@pytest.mark.parametrize("name", ["thread", "main_thread_only"])
def test_get_execmodel(name, tmp_path):
    model = gateway_base.get_execmodel(name)
    assert model.backend == name
    assert repr(model) == f"<ExecModel {name!r}>"
    assert gateway_base.get_execmodel(model) is model
    assert gateway_base.get_execmodel(name) is not model
    assert model.get_ident()
    assert callable(model.start)
    path = tmp_path / "f"
    path.write_text("hello")
    with model.fdopen(os.open(path, os.O_RDONLY), "r") as f:
        assert f.read() == "hello"
    lock = model.Lock()
    with lock, lock:  # re-entrant
        pass
    event = model.Event()
    assert not event.is_set()
    import queue
    import subprocess

    assert model.queue is queue and model.subprocess is subprocess


def test_get_execmodel_unknown():
    with pytest.raises(ValueError, match="unknown execmodel 'xyz'"):
        gateway_base.get_execmodel("xyz")


@pytest.mark.parametrize("name", ["eventlet", "gevent"])
def test_green_execmodels(name):
    pytest.importorskip(name)
    assert gateway_base.get_execmodel(name).backend == name


def test_thread_worker_runs_first_task_in_main_thread(thread_gw):
    source = """
        import threading
        channel.send(threading.current_thread() is threading.main_thread())
        channel.receive()
    """
    first = thread_gw.remote_exec(source)
    assert first.receive(TIMEOUT) is True
    second = thread_gw.remote_exec(source)
    assert second.receive(TIMEOUT) is False
    for channel in (first, second):
        channel.send(None)
        channel.waitclose(TIMEOUT)


def test_task_runs_while_the_main_thread_waits_for_something_else(thread_gw):
    # the main thread reads the connection only while idle: a task that
    # waits for anything but a channel must not hold up the next task
    first = thread_gw.remote_exec(
        """
        import threading
        channel.gateway._released = threading.Event()
        channel.send("waiting")
        channel.send(channel.gateway._released.wait(60))
        """
    )
    assert first.receive(TIMEOUT) == "waiting"
    thread_gw.remote_exec("channel.gateway._released.set()").waitclose(TIMEOUT)
    assert first.receive(TIMEOUT) is True
    first.waitclose(TIMEOUT)


def test_main_thread_only_runs_sequential_tasks_in_main_thread(group):
    gw = group.makegateway("popen//execmodel=main_thread_only")
    for _ in range(10):
        channel = gw.remote_exec(
            "import threading\n"
            "channel.send(threading.current_thread() is threading.main_thread())"
        )
        assert channel.receive(TIMEOUT) is True
        channel.waitclose(TIMEOUT)


def test_main_thread_only_refuses_concurrent_task(group):
    gw = group.makegateway("popen//execmodel=main_thread_only")
    first = gw.remote_exec(
        "import threading\n"
        "channel.send(threading.current_thread() is threading.main_thread())\n"
        "channel.receive()"
    )
    assert first.receive(TIMEOUT) is True
    second = gw.remote_exec("channel.send(1)")
    with pytest.raises(execnet.RemoteError) as excinfo:
        second.receive(TIMEOUT)
    assert excinfo.value.formatted == gateway_base.MAIN_THREAD_ONLY_DEADLOCK_TEXT
    first.send(None)
    first.waitclose(TIMEOUT)


def test_main_thread_only_after_failing_task(group):
    # execnet's defect D1: a failed task blocked every later one
    gw = group.makegateway("popen//execmodel=main_thread_only")
    for _ in range(3):
        channel = gw.remote_exec("raise ValueError(42)")
        with pytest.raises(execnet.RemoteError, match="ValueError: 42"):
            channel.waitclose(TIMEOUT)
    channel = gw.remote_exec("channel.send(7)")
    assert channel.receive(TIMEOUT) == 7


# --- WorkerPool / Reply ------------------------------------------------------


@pytest.fixture(params=["thread", "main_thread_only"])
def pool(request):
    pool = gateway_base.WorkerPool(gateway_base.get_execmodel(request.param))
    yield pool
    assert pool.terminate(TIMEOUT)


def test_pool_spawn_get(pool):
    assert pool.spawn(lambda: 42).get(TIMEOUT) == 42
    assert pool.spawn(lambda x, y=0: x + y, 1, y=2).get(TIMEOUT) == 3


def test_reply_timeout_and_exception(pool):
    event = pool.execmodel.Event()

    def task():
        event.wait(TIMEOUT)
        raise ValueError(42)

    reply = pool.spawn(task)
    with pytest.raises(IOError, match="timeout waiting for"):
        reply.get(timeout=0.01)
    with pytest.raises(IOError):
        reply.waitfinish(timeout=0.01)
    assert reply.running
    event.set()
    reply.waitfinish(TIMEOUT)  # does not raise the call's exception
    for _ in range(2):
        with pytest.raises(ValueError, match="42"):
            reply.get()
    assert not reply.running


def test_pool_waitall_and_count(pool):
    event = pool.execmodel.Event()
    reply = pool.spawn(event.wait, TIMEOUT)
    assert pool.active_count() == 1 and reply in pool._running
    assert pool.waitall(0.01) is False
    event.set()
    assert pool.waitall(TIMEOUT) is True
    assert pool.active_count() == 0 and not reply.running


def test_pool_shutdown(pool, capfd):
    event = pool.execmodel.Event()
    reply = pool.spawn(event.wait, TIMEOUT)
    pool.trigger_shutdown()
    with pytest.raises(ValueError, match="pool is shutting down"):
        pool.spawn(lambda: None)
    assert not pool.waitall(0.01)
    event.set()
    assert pool.waitall(TIMEOUT)
    assert reply.get() is True
    assert capfd.readouterr().err == ""


def test_pool_primary_requires_thread_model():
    class GreenModel(gateway_base.ThreadExecModel):
        backend = "gevent"

    with pytest.raises(ValueError, match="hasprimary=True requires thread model"):
        gateway_base.WorkerPool(GreenModel(), hasprimary=True)


@pytest.mark.parametrize("name", ["thread", "main_thread_only"])
def test_pool_primary_thread(name):
    model = gateway_base.get_execmodel(name)
    pool = gateway_base.WorkerPool(model, hasprimary=True)
    idents = model.queue.Queue()

    def primary():
        idents.put(model.get_ident())
        pool.integrate_as_primary_thread()
        idents.put("released")

    model.start(primary)
    primary_ident = idents.get(timeout=TIMEOUT)
    assert pool.spawn(model.get_ident).get(TIMEOUT) == primary_ident
    assert pool.spawn(model.get_ident).get(TIMEOUT) == primary_ident
    pool.trigger_shutdown()
    assert idents.get(timeout=TIMEOUT) == "released"


def test_pool_primary_runs_task_handed_over_at_shutdown():
    # defect D7: a task handed to the primary just before shutdown runs
    model = gateway_base.get_execmodel("thread")
    pool = gateway_base.WorkerPool(model, hasprimary=True)
    reply = pool.spawn(lambda: 5)  # the primary is not integrated yet
    pool.trigger_shutdown()
    pool.integrate_as_primary_thread()  # returns after running it
    assert reply.get(0) == 5


# --- worker IO setup -----------------------------------------------------------


def test_init_popen_io():
    source = textwrap.dedent(
        """
        import os
        from execnet.gateway_base import init_popen_io, get_execmodel
        io = init_popen_io(get_execmodel("thread"))
        os.write(1, b"lost")
        print("lost too")
        assert os.read(0, 1) == b""
        io.write(b"hello")
        io.write(io.read(3))
        """
    )
    result = run_python(source, input=b"abc")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"helloabc"


def test_remote_environment(gw):
    channel = gw.remote_exec(
        """
        import sys, os
        channel.send((sys.exc_info(), "py" in sys.modules, os.read(0, 1)))
        """
    )
    assert channel.receive(TIMEOUT) == ((None, None, None), False, b"")


def test_geterrortext():
    try:
        raise ValueError("the message")
    except ValueError as exc:
        text = gateway_base.geterrortext(exc)
    assert text.startswith("Traceback (most recent call last):")
    assert "ValueError: the message" in text


def test_executetask_malformed_task():
    class FakeChannel:
        id = 1
        closed_with = []
        gateway = types.SimpleNamespace(
            _channelfactory=types.SimpleNamespace(finished=False)
        )

        def close(self, text=None):
            self.closed_with.append(text)

    pio = _pipe_io(b"")
    worker = gateway_base.WorkerGateway(pio, id="w", _startcount=2)
    channel = FakeChannel()
    worker.executetask((channel, ("x = 1", None)))
    [text] = channel.closed_with
    assert "ValueError" in text
    worker.executetask((channel, ("channel.x = 5", None, None, {})))
    assert channel.closed_with[-1] is None and channel.x == 5
    assert not channel._executing


# --- tracing -------------------------------------------------------------------


def test_debug_to_file(group, monkeypatch, tmp_path):
    monkeypatch.setenv("EXECNET_DEBUG", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    gw = group.makegateway("popen")
    channel = gw.remote_exec(
        "import sys; channel.send(sys.modules[type(channel).__module__].fn)"
    )
    path = channel.receive(TIMEOUT)
    assert os.path.dirname(path) == str(tmp_path)
    with open(path) as f:
        assert "creating workergateway" in f.read()


def test_debug_to_stderr(group, monkeypatch, capfd):
    monkeypatch.setenv("EXECNET_DEBUG", "2")
    gw = group.makegateway("popen")
    pid = gw._rinfo().pid
    group.terminate(TIMEOUT)
    err = capfd.readouterr().err
    assert f"[{pid}] creating workergateway" in err
    assert f"[{pid}] gw0-worker [serve] integrating as primary thread" in err


@pytest.mark.parametrize("name", ["eventlet", "gevent"])
def test_green_worker_runs_tasks(group, name):
    pytest.importorskip(name)
    gw = group.makegateway(f"popen//execmodel={name}")
    waiting = gw.remote_exec("channel.send(channel.receive() * 2)")
    # a second task runs while the first waits: greenlets, not a blocked worker
    status = gw.remote_exec("channel.send(channel.gateway.execmodel.backend)")
    assert status.receive(TIMEOUT) == name
    waiting.send(21)
    assert waiting.receive(TIMEOUT) == 42
    waiting.waitclose(TIMEOUT)

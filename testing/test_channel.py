"""Channels: data transfer, errors and closing, callbacks, channel files
in the behaviour of execnet 2.1.2."""

from __future__ import annotations

import gc
import os

import pytest
from runtime_util import TIMEOUT
from runtime_util import wait_for

import execnet
from execnet import gateway_base

pytest_plugins = ["conftest_runtime"]

# --- data transfer --------------------------------------------------------------


def test_send_receive(gw):
    channel = gw.remote_exec("channel.send(channel.receive() + 1)")
    channel.send(1)
    assert channel.receive(TIMEOUT) == 2
    for _ in range(2):
        with pytest.raises(EOFError):
            channel.receive(TIMEOUT)


def test_values_roundtrip(gw):
    channel = gw.remote_exec("for item in channel: channel.send(item)")
    values = [None, True, 2**100, -3, 1.5, 1j, b"\x00\xff", "é", (1, ()), [1, "a"],
              {"a": {1: frozenset({2})}}, {1, 2}, b"x" * 3000000]  # fmt: skip
    for value in values:
        channel.send(value)
    assert [channel.receive(TIMEOUT) for _ in values] == values
    channel.close()
    channel.waitclose(TIMEOUT)


def test_big_items_arrive_intact_both_ways(gw):
    # sizes around where big writes take another path (splice.c: 128 KiB
    # messages, 256 KiB pieces, a 4 MiB ring), mixed with small items
    channel = gw.remote_exec("for item in channel: channel.send(item)")
    sizes = [131062, 131063, 262144, 262145, 1 << 20, (4 << 20) + 3, 7 << 20, 5, 300001]
    items = [os.urandom(n) for n in sizes] * 3
    for item in items:
        channel.send(item)
        channel.send(len(item))
    for item in items:
        assert channel.receive(TIMEOUT) == item
        assert channel.receive(TIMEOUT) == len(item)
    channel.close()
    channel.waitclose(TIMEOUT)


def test_iteration(gw):
    channel = gw.remote_exec("for i in range(3): channel.send(i)")
    assert list(channel) == [0, 1, 2]


def test_iteration_ends_with_remote_error(gw):
    channel = gw.remote_exec("channel.send(1); raise ValueError('it')")
    items = []
    with pytest.raises(execnet.RemoteError, match="ValueError: it"):
        for item in channel:
            items.append(item)
    assert items == [1]


def test_receive_timeout(gw):
    channel = gw.remote_exec("channel.send(channel.receive())")
    with pytest.raises(channel.TimeoutError, match="no item after 0.2 seconds"):
        channel.receive(timeout=0.2)
    channel.send(5)
    assert channel.receive(TIMEOUT) == 5


def test_receive_refuses_timeouts_a_wait_cannot_have(gw):
    # as threading's waits do (the C core's conversion of 1e20 s to
    # nanoseconds overflowed: it waited forever)
    channel = gw.remote_exec("channel.receive()")
    with pytest.raises(OverflowError):
        channel.receive(1e20)
    with pytest.raises(ValueError):
        channel.receive(float("nan"))
    with pytest.raises(channel.TimeoutError):
        channel.receive(1e-3)
    channel.send(None)
    channel.waitclose(TIMEOUT)


def test_waitclose_timeout(gw):
    channel = gw.remote_exec("channel.receive()")
    with pytest.raises(execnet.TimeoutError, match="Timeout after 0.02 seconds"):
        channel.waitclose(0.02)
    channel.send(None)
    channel.waitclose(TIMEOUT)


def test_unserializable_remote_send(gw):
    channel = gw.remote_exec("channel.send(ValueError(42))")
    with pytest.raises(execnet.RemoteError, match="can't serialize"):
        channel.receive(TIMEOUT)


def test_send_after_close(gw):
    channel = gw.remote_exec("pass")
    channel.waitclose(TIMEOUT)
    with pytest.raises(IOError, match="cannot send to <Channel id=1 closed>"):
        channel.send(1)
    with pytest.raises(execnet.DumpError):
        gw.newchannel().send(object())


def test_send_channels(gw):
    channel = gw.remote_exec(
        """
        c1, c2 = channel.receive()
        c1.send(1)
        c2.send(2)
        """
    )
    c1, c2 = gw.newchannel(), gw.newchannel()
    channel.send((c1, c2))
    assert (c2.receive(TIMEOUT), c1.receive(TIMEOUT)) == (2, 1)
    channel.waitclose(TIMEOUT)


def test_channel_sent_back_is_identical(gw):
    channel = gw.remote_exec("channel.send(channel.receive())")
    newchan = gw.newchannel()
    channel.send(newchan)
    assert channel.receive(TIMEOUT) is newchan


def test_remote_newchannel(gw):
    channel = gw.remote_exec(
        """
        newchan = channel.gateway.newchannel()
        channel.send(newchan)
        newchan.send(42)
        """
    )
    newchan = channel.receive(TIMEOUT)
    assert isinstance(newchan, execnet.Channel) and newchan.id == 2
    assert newchan.receive(TIMEOUT) == 42


def test_task_channel_unregistered_both_sides(gw):
    channel = gw.remote_exec("channel.send(channel.id)")
    channel_id = channel.receive(TIMEOUT)
    channel.waitclose(TIMEOUT)
    assert channel_id not in gw._channelfactory._channels
    probe = gw.remote_exec(
        "channel.send(channel.receive() in channel.gateway._channelfactory._channels)"
    )
    probe.send(channel_id)
    assert probe.receive(TIMEOUT) is False


def test_fd_writes_do_not_disturb(gw):
    channel = gw.remote_exec(
        """
        import os
        os.write(1, b"to stdout")
        os.write(2, b"")
        print("printed")
        channel.send(channel.receive())
        """
    )
    channel.send("ok")
    assert channel.receive(TIMEOUT) == "ok"


def test_concurrent_senders(thread_gw):
    channel = thread_gw.remote_exec(
        """
        import threading
        def produce(n):
            for i in range(10):
                channel.send((n, i, "x" * 10000))
        threads = [threading.Thread(target=produce, args=(n,)) for n in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        """
    )
    items = [channel.receive(TIMEOUT) for _ in range(50)]
    for n in range(5):
        assert [i for (m, i, x) in items if m == n] == list(range(10))
    assert all(x == "x" * 10000 for (_, _, x) in items)
    channel.waitclose(TIMEOUT)


def test_concurrent_receivers(thread_gw):
    channel = thread_gw.remote_exec("for i in range(100): channel.send(i)")
    pool = gateway_base.WorkerPool(thread_gw.execmodel)

    def drain():
        items = []
        try:
            while True:
                items.append(channel.receive(TIMEOUT))
        except EOFError:
            return items

    replies = [pool.spawn(drain) for _ in range(3)]
    results = [reply.get(TIMEOUT) for reply in replies]
    assert sorted(sum(results, [])) == list(range(100))


def test_reconfigure_gateway(gw):
    source = "channel.send('hello')"
    assert gw.remote_exec(source).receive(TIMEOUT) == "hello"
    gw.reconfigure(py3str_as_py2str=True)
    assert gw.remote_exec(source).receive(TIMEOUT) == b"hello"


def test_reconfigure_channel(gw):
    channel = gw.remote_exec("channel.send(channel.receive())")
    channel.reconfigure(py2str_as_py3str=False)
    channel.send("text")
    assert channel.receive(TIMEOUT) == "text"


def test_reconfigure_unknown_channel_is_harmless(gw):
    # execnet's defect D6 closed the channel
    channel = gw.newchannel()
    channel.reconfigure()
    status = gw.remote_status()
    assert status.numchannels == 0
    assert not channel.isclosed()


# --- errors and closing ---------------------------------------------------------


def test_remote_error_then_eof(gw):
    channel = gw.remote_exec("raise ValueError")
    with pytest.raises(execnet.RemoteError):
        channel.receive(TIMEOUT)
    with pytest.raises(EOFError):
        channel.receive(TIMEOUT)


def test_remote_error_delivered_once(gw):
    channel = gw.remote_exec("raise ValueError")
    with pytest.raises(execnet.RemoteError):
        channel.waitclose(TIMEOUT)
    assert channel.waitclose(TIMEOUT) is None


def test_remote_error_traceback(gw):
    channel = gw.remote_exec("\n\nfoobar()")
    with pytest.raises(execnet.RemoteError) as excinfo:
        channel.waitclose(TIMEOUT)
    text = excinfo.value.formatted
    assert text.startswith("Traceback (most recent call last):")
    assert "NameError" in text and "foobar" in text
    assert 'File "<remote exec>", line 3' in text
    if gw.spec.python is None:  # the import bootstrap
        assert "gateway_base" in text


def test_remote_syntax_error(gw):
    channel = gw.remote_exec("a b c")
    with pytest.raises(execnet.RemoteError) as excinfo:
        channel.waitclose(TIMEOUT)
    assert excinfo.value.formatted.startswith("Traceback (most recent call last):")
    assert "SyntaxError" in excinfo.value.formatted


def test_close_inside_remote_exec(gw):
    channel = gw.remote_exec("channel.close()")
    with pytest.raises(execnet.RemoteError) as excinfo:
        channel.waitclose(TIMEOUT)
    assert "explicit" in excinfo.value.formatted


def test_local_close_with_error(gw):
    channel = gw.remote_exec(
        """
        out = channel.receive()
        inner = channel.gateway.newchannel()
        out.send(inner)
        try:
            inner.receive()
        except channel.RemoteError as e:
            out.send(str(e))
        """
    )
    out = gw.newchannel()
    channel.send(out)
    inner = out.receive(TIMEOUT)
    inner.close("myerror")
    assert out.receive(TIMEOUT) == "myerror"
    channel.waitclose(TIMEOUT)


def test_remote_close_with_error(gw):
    channel = gw.remote_exec(
        """
        newchan = channel.gateway.newchannel()
        channel.send(newchan)
        newchan.close("custom error text")
        """
    )
    newchan = channel.receive(TIMEOUT)
    with pytest.raises(execnet.RemoteError) as excinfo:
        newchan.receive(TIMEOUT)
    assert excinfo.value.formatted == "custom error text"


def test_close_twice(gw):
    channel = gw.remote_exec("channel.receive()")
    channel.close()
    channel.close()
    with pytest.raises(EOFError):
        channel.receive(TIMEOUT)
    channel.waitclose(TIMEOUT)
    assert channel.isclosed()
    assert repr(channel) == "<Channel id=1 closed>"


def test_remote_error_api():
    error = execnet.RemoteError("x")
    assert str(error) == "x"
    assert repr(error) == "RemoteError: x"
    assert error.args == () and error.formatted == "x"


def test_unhandled_remote_error_warned(gw, capfd):
    channel = gw.remote_exec("raise ValueError('unseen')")
    channel._receiveclosed.wait(TIMEOUT)
    del channel
    gc.collect()
    err = capfd.readouterr().err
    assert "Warning: unhandled RemoteError: Traceback" in err
    assert "unseen" in err


def test_keyboard_interrupt_text_never_warned(capfd):
    gateway_base.RemoteError(gateway_base.INTERRUPT_TEXT).warn()
    gateway_base.RemoteError("shown").warn()
    assert capfd.readouterr().err.endswith("Warning: unhandled RemoteError: shown\n")


def test_waitclose_unused_channel_times_out(gw):
    with pytest.raises(IOError):
        gw.newchannel().waitclose(0.01)


# --- callbacks --------------------------------------------------------------------

SEND_THREE = """
    channel.send(42)
    channel.send(13)
    channel.send(channel.gateway.newchannel())
"""


def test_callback_after_items_arrived(gw):
    channel = gw.remote_exec(SEND_THREE)
    channel.waitclose(TIMEOUT)
    items = []
    channel.setcallback(items.append)
    with pytest.raises(IOError, match="cannot receive\\(\\), channel has receiver callback"):
        channel.receive()
    assert items[:2] == [42, 13] and isinstance(items[2], execnet.Channel)


def test_callback_skips_received_items(gw):
    channel = gw.remote_exec(SEND_THREE)
    assert channel.receive(TIMEOUT) == 42
    channel.waitclose(TIMEOUT)
    items = []
    channel.setcallback(items.append)
    assert items[0] == 13 and len(items) == 2


def test_callback_with_endmarker(gw):
    channel = gw.remote_exec(SEND_THREE)
    items = []
    channel.setcallback(items.append, endmarker=999)
    channel.waitclose(TIMEOUT)
    assert items[:2] == [42, 13] and items[3] == 999 and len(items) == 4


def test_callback_endmarker_on_remote_error(gw):
    q = gw.execmodel.queue.Queue()
    channel = gw.remote_exec("raise ValueError('failing')")
    channel.setcallback(q.put, endmarker=999)
    assert q.get(timeout=TIMEOUT) == 999
    assert "ValueError" in str(channel._getremoteerror())


def test_callback_thread(gw):
    idents = []
    channel = gw.remote_exec("channel.send(1); channel.receive(); channel.send(2)")
    assert channel.receive(TIMEOUT) == 1
    channel.send(None)  # 2 arrives later or has already arrived
    channel.waitclose(TIMEOUT)
    # the queued item is delivered in our thread, with the endmarker
    channel.setcallback(lambda item: idents.append((item, gw.execmodel.get_ident())), endmarker=0)
    me = gw.execmodel.get_ident()
    assert idents == [(2, me), (0, me)]


def test_callback_runs_in_receiver_thread(gw):
    idents = []
    channel = gw.remote_exec("channel.send(channel.receive())")
    channel.setcallback(lambda item: idents.append(gw.execmodel.get_ident()))
    channel.send(1)
    channel.waitclose(TIMEOUT)
    assert idents == [gw._receiver_ident] and idents[0] != gw.execmodel.get_ident()


def test_slow_callback_finishes_before_waitclose(gw):
    items = []

    def slow(item):
        gw.execmodel.sleep(0.2)
        items.append(item)

    channel = gw.remote_exec("channel.send(1)")
    channel.setcallback(slow)
    channel.waitclose(TIMEOUT)
    assert items == [1]


def test_second_setcallback(gw):
    channel = gw.newchannel()
    channel.setcallback(lambda item: None)
    with pytest.raises(OSError, match="has callback already registered"):
        channel.setcallback(lambda item: None)


def test_local_close_fires_endmarker(gw):
    items = []
    channel = gw.remote_exec("channel.receive()")
    channel.setcallback(items.append, endmarker=999)
    channel.close()
    assert items == [999]


def test_failing_callback(gw):
    channel = gw.remote_exec(
        """
        reply = channel.receive()
        channel.send(1)  # our callback fails on it
        try:
            channel.waitclose()
        except channel.RemoteError as e:
            reply.send(e.formatted)
        """
    )

    def callback(item):
        raise ValueError(42)

    channel.setcallback(callback)  # before the remote can send
    reply = gw.newchannel()
    channel.send(reply)
    assert "ValueError: 42" in reply.receive(TIMEOUT)
    assert channel.isclosed()
    # execnet's defect D2: the local error is a RemoteError too
    with pytest.raises(execnet.RemoteError, match="42"):
        channel.waitclose(TIMEOUT)


def test_dropped_callback_channel_keeps_receiving(thread_gw):
    q = thread_gw.execmodel.queue.Queue()
    channel = thread_gw.remote_exec(
        """
        import threading
        def produce():
            for i in range(0, 500, 100):
                channel.send(i)
        t = threading.Thread(target=produce)
        channel.receive()
        t.start()
        t.join()
        """
    )
    channel.setcallback(q.put)
    channel.send(None)
    del channel
    gc.collect()
    assert [q.get(timeout=TIMEOUT) for _ in range(5)] == [0, 100, 200, 300, 400]


@pytest.mark.parametrize("endmarker", [[], ["end"]], ids=["no-endmarker", "endmarker"])
def test_remote_drops_callback_channel(gw, endmarker):
    # the remote sends one item on a channel and drops its last reference:
    # the channel closes here, and the callback got the item, then the
    # endmarker if one was asked for, each once, before waitclose returned
    channel = gw.remote_exec(
        """
        c = channel.gateway.newchannel()
        channel.send(c)
        c.send(42)
        del c
        channel.receive()
        """
    )
    sub = channel.receive(TIMEOUT)
    items = []
    sub.setcallback(items.append, *endmarker)
    sub.waitclose(TIMEOUT)
    assert items == [42, *endmarker]
    assert sub.isclosed()
    channel.send(None)
    channel.waitclose(TIMEOUT)


def test_endmarker_on_killed_worker(gw):
    q = gw.execmodel.queue.Queue()
    channel = gw.remote_exec("channel.receive()")
    channel.setcallback(q.put, endmarker=999)
    gw._io.kill()
    assert q.get(timeout=TIMEOUT) == 999
    assert isinstance(channel._getremoteerror(), EOFError)


# --- channel files ------------------------------------------------------------------


def test_makefile_write(gw):
    channel = gw.remote_exec(
        """
        f = channel.makefile()
        f.write("hello world\\n")
        f.close()
        channel.send(42)
        """
    )
    assert channel.receive(TIMEOUT) == "hello world\n"
    assert channel.receive(TIMEOUT) == 42


def test_makefile_proxyclose(gw):
    channel = gw.remote_exec(
        """
        f = channel.makefile(proxyclose=True)
        f.write("hello world")
        f.close()
        channel.send(42)
        """
    )
    assert channel.receive(TIMEOUT) == "hello world"
    with pytest.raises(execnet.RemoteError):
        channel.receive(TIMEOUT)


def test_makefile_write_closed(gw):
    channel = gw.newchannel()
    channel.close()
    f = channel.makefile("w")
    assert f.isatty() is False
    with pytest.raises(IOError):
        f.write("x")
    assert repr(f) == f"<ChannelFile {channel.id} closed>"


def test_makefile_read(gw):
    channel = gw.remote_exec(
        """
        f = channel.makefile("r")
        channel.send((f.read(2), f.read(5)))
        """
    )
    channel.send("xyabcde")
    assert channel.receive(TIMEOUT) == ("xy", "abcde")


def test_makefile_read_ended_empty(gw):
    channel = gw.remote_exec("pass")
    channel.waitclose(TIMEOUT)
    f = channel.makefile("r")
    assert [f.read(3), f.read(1)] == ["", ""]


def test_makefile_readline(gw):
    channel = gw.remote_exec("channel.send('123\\n45')")
    f = channel.makefile("r")
    assert f.readline() == "123\n"
    assert f.readline() == "45"
    assert f.readline() == ""


def test_makefile_read_bytes(gw):
    channel = gw.remote_exec("channel.send(b'ab'); channel.send(b'c\\nd')")
    f = channel.makefile("r")
    assert f.readline() == b"abc\n"
    assert f.read(5) == b"d"


def test_makefile_bad_mode(gw):
    with pytest.raises(ValueError, match="mode 'rw' not available"):
        gw.newchannel().makefile("rw")
    channel = gw.remote_exec("channel.makefile('rw')")
    with pytest.raises(execnet.RemoteError, match="ValueError"):
        channel.waitclose(TIMEOUT)


def test_wait_for_helper_is_bounded():
    with pytest.raises(pytest.fail.Exception):
        wait_for(lambda: False, timeout=0.05)

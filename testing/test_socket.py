"""Socket gateways and the socket server (doc/socket.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from runtime_util import TIMEOUT
from runtime_util import ServerProcess
from runtime_util import wait_for

import execnet
from execnet import gateway_base
from execnet import gateway_bootstrap
from execnet import gateway_socket
from execnet.script import socketserver

pytest_plugins = ["conftest_runtime"]

SERVER_SCRIPT = socketserver.__file__


def start_server(*args, cwd=None, module=True) -> ServerProcess:
    if module:
        command = [sys.executable, "-m", "execnet.script.socketserver", *args]
    else:
        command = [sys.executable, *args]
    return ServerProcess(command, cwd=cwd)


@pytest.fixture(scope="module")
def server():
    """One server for the module; the tests check it keeps serving."""
    proc = start_server("127.0.0.1:0")
    yield proc
    assert proc.proc.poll() is None, "the server ended during the tests"
    proc.stop()


@pytest.fixture
def own_server():
    """A server for one test (which may stop or kill it)."""
    started = []

    def start(*args, **kwargs):
        proc = start_server(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raw_client(server):
    return socket.create_connection((server.host, server.port), timeout=TIMEOUT)


def assert_closed_by_server(sock) -> None:
    """The server drops the connection (it must not execute anything)."""
    with sock:
        assert sock.recv(100) == b""


# --- the gateway -------------------------------------------------------------


def test_remote_exec_and_channel(server, group):
    gw = group.makegateway(f"socket={server.address}")
    assert gw.id == "gw0"
    assert gw.remoteaddress == server.address
    assert repr(gw) == "<Gateway id='gw0' receive-live, thread model, 0 active channels>"
    channel = gw.remote_exec(
        "import os\n"
        "channel.send(os.getpid())\n"
        "for item in channel:\n"
        "    channel.send(item * 2)\n"
    )
    assert channel.receive(TIMEOUT) == server.proc.pid
    for value in (1, "ab", [1, 2.5, None], b"\x00\xff" * 1000):
        channel.send(value)
        assert channel.receive(TIMEOUT) == value * 2
    channel.close()
    channel.waitclose(TIMEOUT)


def test_master_runs_the_expected_core(server, group):
    gw = group.makegateway(f"socket={server.address}")
    assert (getattr(gw, "_conn", None) is not None) == (gateway_base.BACKEND == "c")
    channel = gw.remote_exec("channel.send(channel.receive())")
    channel.send("x" * 100000)
    assert channel.receive(TIMEOUT) == "x" * 100000
    channel.waitclose(TIMEOUT)


def test_large_messages(server, group):
    gw = group.makegateway(f"socket={server.address}")
    channel = gw.remote_exec("channel.send(channel.receive())")
    data = os.urandom(3 * 1024 * 1024 + 7)
    channel.send(data)
    assert channel.receive(TIMEOUT) == data
    channel.waitclose(TIMEOUT)


def test_remote_errors(server, group):
    gw = group.makegateway(f"socket={server.address}")
    channel = gw.remote_exec("raise ValueError('boom')")
    with pytest.raises(execnet.RemoteError, match="ValueError: boom"):
        channel.waitclose(TIMEOUT)
    channel = gw.remote_exec(
        "other = channel.gateway.newchannel()\n"
        "channel.send(other)\n"
        "other.close('closed with a reason')\n"
    )
    other = channel.receive(TIMEOUT)
    with pytest.raises(execnet.RemoteError, match="closed with a reason"):
        other.receive(TIMEOUT)
    channel.waitclose(TIMEOUT)
    # and the other way round: the worker sees our error
    channel = gw.remote_exec(
        "other = channel.receive()\n"
        "try:\n"
        "    other.receive()\n"
        "except Exception as exc:\n"
        "    channel.send('%s: %s' % (type(exc).__name__, exc))\n"
    )
    mine = gw.newchannel()
    channel.send(mine)
    mine.close("master says no")
    assert channel.receive(TIMEOUT) == "RemoteError: master says no"
    channel.waitclose(TIMEOUT)
    # the worker serves on
    assert gw.remote_exec("channel.send(42)").receive(TIMEOUT) == 42


def test_remote_status_and_rinfo(server, group):
    gw = group.makegateway(f"socket={server.address}//id=sock1")
    assert gw.id == "sock1"
    status = gw.remote_status()
    assert status
    assert status.execmodel == "thread"
    assert status.numexecuting == 0
    channel = gw.remote_exec("channel.receive()")
    assert gw.remote_status().numexecuting == 1
    channel.send(None)
    channel.waitclose(TIMEOUT)
    rinfo = gw._rinfo()
    assert rinfo.pid == server.proc.pid
    assert rinfo.executable == sys.executable
    assert rinfo.version_info == tuple(sys.version_info)


def test_worker_runs_server_execmodel_and_id(server, group):
    spec = f"socket={server.address}//id=sock2//execmodel=main_thread_only"
    gw = group.makegateway(spec)
    channel = gw.remote_exec(
        "channel.send((channel.gateway.execmodel.backend, channel.gateway.id))"
    )
    assert channel.receive(TIMEOUT) == ("thread", execnet.XSpec(spec)._spec + "-worker")


def test_chdir_and_env(server, group, tmp_path):
    gw = group.makegateway(f"socket={server.address}//env:EXECNET_SOCKTEST=7")
    channel = gw.remote_exec("import os; channel.send(os.environ['EXECNET_SOCKTEST'])")
    assert channel.receive(TIMEOUT) == "7"


def test_two_gateways_served_at_once(server, group):
    first = group.makegateway(f"socket={server.address}")
    waiting = first.remote_exec("channel.send(channel.receive() + 1)")
    # a server serving one client at a time would never acknowledge this one
    second = group.makegateway(f"socket={server.address}")
    echo = second.remote_exec("channel.send(channel.receive() * 10)")
    echo.send(5)
    assert echo.receive(TIMEOUT) == 50
    waiting.send(1)
    assert waiting.receive(TIMEOUT) == 2
    pids = [gw.remote_exec("import os; channel.send(os.getpid())").receive(TIMEOUT)
            for gw in (first, second)]
    assert pids == [server.proc.pid] * 2


def test_many_gateways_block_on_each_other(server, group):
    """Each worker waits for the next one's value: all are served at once."""
    count = 4
    gateways = []
    errors = []

    def make():
        try:
            gateways.append(group.makegateway(f"socket={server.address}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors and len(gateways) == count
    channels = [gw.remote_exec("channel.send(channel.receive() + 1)") for gw in gateways]
    value = 0
    # all tasks are blocked in receive now; feed them in reverse order
    for channel in reversed(channels):
        channel.send(value)
        value = channel.receive(TIMEOUT)
    assert value == count
    for channel in channels:
        channel.waitclose(TIMEOUT)


def test_exit_and_terminate_leave_server_serving(server, group):
    gw = group.makegateway(f"socket={server.address}")
    channel = gw.remote_exec("channel.receive()")
    gw.exit()
    with pytest.raises(EOFError):
        channel.waitclose(TIMEOUT)
    gw2 = group.makegateway(f"socket={server.address}")
    gw2.remote_exec("channel.receive()")
    group.terminate(timeout=TIMEOUT)
    assert not group
    assert server.proc.poll() is None
    gw3 = group.makegateway(f"socket={server.address}")
    assert gw3.remote_exec("channel.send(3)").receive(TIMEOUT) == 3


def test_server_death_is_eof(own_server, group):
    proc = own_server("127.0.0.1:0")
    gw = group.makegateway(f"socket={proc.address}")
    channel = gw.remote_exec("channel.receive()")
    assert gw.remote_status().numexecuting == 1
    proc.proc.kill()
    with pytest.raises(EOFError):
        channel.waitclose(TIMEOUT)
    gw.join(TIMEOUT)
    assert not gw._receiving()
    assert isinstance(gw._error, EOFError)


# --- bad clients --------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"this is ( not python\n",
        b"12345\n",  # evaluates, but not to source text
        b"'unfinished string\n",
        b"\xff\xfe\n",
        b"'half a line without its end",  # then the client goes away
        b"",  # connects and goes away
        b"'raise ValueError(42)'\n",  # source that fails
        b"'x = (1,'\n",  # source that does not compile
    ],
)
def test_bad_client_is_dropped(server, group, data):
    sock = raw_client(server)
    if data:
        sock.sendall(data)
    if not data.endswith(b"\n"):
        sock.shutdown(socket.SHUT_WR)
    assert_closed_by_server(sock)
    gw = group.makegateway(f"socket={server.address}")
    assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1


def test_bad_client_reported_on_stderr(own_server):
    proc = own_server("127.0.0.1:0")
    assert_closed_by_server_after(proc, b"garbage (\n")
    proc.stop()
    assert any("dropped client" in line for line in proc.stderr), proc.stderr


def assert_closed_by_server_after(proc, data) -> None:
    sock = raw_client(proc)
    sock.sendall(data)
    assert_closed_by_server(sock)


def test_silent_client_does_not_block_others(server, group):
    with raw_client(server) as silent:
        silent.sendall(b"'still typing")
        gw = group.makegateway(f"socket={server.address}")
        assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1


def test_line_rest_stays_on_the_socket(server):
    """Bytes after the line are left for the executed code to read."""
    with raw_client(server) as sock:
        source = "clientsock.sendall(clientsock.recv(5) + repr(sorted(globals())).encode())"
        sock.sendall(repr(source).encode() + b"\nhello")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            data = sock.recv(4096)
            if not data:
                break
            received += data
    assert received == b"hello['__builtins__', 'address', 'clientsock', 'execmodel']"


# --- connecting fails -----------------------------------------------------------


def test_wrong_port_fails_quickly(group):
    port = unused_port()
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
        group.makegateway(f"socket=127.0.0.1:{port}")
    assert time.monotonic() - start < TIMEOUT
    assert not group


def test_unknown_host(group):
    start = time.monotonic()
    with pytest.raises(execnet.HostNotFound):
        group.makegateway("socket=qwepoipqwe.invalid:9000")
    assert time.monotonic() - start < TIMEOUT
    assert execnet.HostNotFound is gateway_bootstrap.HostNotFound
    assert not group


def test_bad_spec(group):
    with pytest.raises(ValueError):
        group.makegateway("socket=127.0.0.1")
    with pytest.raises(ValueError):
        group.makegateway("socket=127.0.0.1:notaport")


def test_peer_that_is_no_server(group):
    """A peer that closes without acknowledging gives a clear error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def refuse():
            conn, _ = listener.accept()
            conn.close()

        thread = threading.Thread(target=refuse, daemon=True)
        thread.start()
        with pytest.raises(EOFError, match=f"127.0.0.1:{port}"):
            group.makegateway(f"socket=127.0.0.1:{port}")
        thread.join(TIMEOUT)
    assert not group


# --- server modes -----------------------------------------------------------------


def test_server_as_script_without_execnet(own_server, group, tmp_path):
    """The file runs alone (python -S: execnet is not importable)."""
    proc = own_server("-S", SERVER_SCRIPT, "127.0.0.1:0", module=False, cwd=str(tmp_path))
    gw = group.makegateway(f"socket={proc.address}")
    channel = gw.remote_exec(
        "import os, sys\n"
        "channel.send((os.getcwd(), 'execnet' in sys.modules, channel.gateway.execmodel.backend))"
    )
    assert channel.receive(TIMEOUT) == (str(tmp_path), False, "thread")
    assert gw.remote_status().numchannels >= 0


def test_server_changes_back_to_its_directory(own_server, group, tmp_path):
    proc = own_server("127.0.0.1:0", cwd=str(tmp_path))
    (tmp_path / "sub").mkdir()
    gw = group.makegateway(f"socket={proc.address}//chdir={tmp_path / 'sub'}")
    assert gw._rinfo().cwd == str(tmp_path / "sub")
    gw.exit()
    gw.join(TIMEOUT)
    proc.wait_for_line("finished executing code")
    gw = group.makegateway(f"socket={proc.address}")
    assert gw._rinfo().cwd == str(tmp_path)


def test_quitserver(own_server):
    from execnet.script import quitserver

    proc = own_server("127.0.0.1:0")
    quitserver.quit_server(proc.address)
    assert proc.proc.wait(TIMEOUT) == 0
    proc.stop()
    assert any("leaving socketserver execloop" in line for line in proc.stdout)


def test_progress_lines(own_server, group):
    proc = own_server("127.0.0.1:0")
    gw = group.makegateway(f"socket={proc.address}")
    proc.wait_for_line(r"got new connection from 127\.0\.0\.1 \d+")
    proc.wait_for_line("reading line")
    proc.wait_for_line("compiled source, executing")
    gw.exit()
    proc.wait_for_line("finished executing code")


def test_installvia(group):
    group.makegateway("popen//id=p1")
    gw = group.makegateway("socket//installvia=p1//id=s1")
    assert gw.id == "s1"
    assert gw.remote_status()
    popen_pid = group["p1"].remote_exec("import os; channel.send(os.getpid())").receive(TIMEOUT)
    assert gw._rinfo().pid == popen_pid
    host, port = gw.remoteaddress.split(":")
    assert host in ("localhost", "127.0.0.1") and int(port) > 0
    channel = gw.remote_exec("channel.send(channel.receive() * 2)")
    channel.send(21)
    assert channel.receive(TIMEOUT) == 42
    group.terminate(timeout=TIMEOUT)
    assert not group


def test_unfinished_task_does_not_stop_server(own_server, group):
    """A worker whose task outlives the gateway leaves it running (after
    5 s) instead of interrupting the whole server process."""
    proc = own_server("127.0.0.1:0")
    gw = group.makegateway(f"socket={proc.address}")
    gw.remote_exec("import threading; threading.Event().wait(60)")
    start = time.monotonic()
    group.terminate(timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT
    assert gw._error is None or isinstance(gw._error, EOFError)
    assert proc.proc.poll() is None
    gw = group.makegateway(f"socket={proc.address}")
    assert gw.remote_exec("channel.send(5)").receive(TIMEOUT) == 5


# --- safe defaults: the address, the shared secret --------------------------------


def test_default_address_is_loopback():
    assert socketserver.parse_args([]) == ("127.0.0.1:8888", None)
    assert socketserver.parse_args(["--secret-file", "f", ":0"]) == (":0", "f")
    assert socketserver.parse_args(["--secret-file=f"]) == ("127.0.0.1:8888", "f")
    for bad in (["--secret-file"], ["a:1", "b:2"], ["--other"]):
        with pytest.raises(SystemExit):
            socketserver.parse_args(bad)


def test_server_without_address_listens_on_loopback(tmp_path):
    # in a network namespace of its own (needs root), so that port 8888 is
    # surely free: the server started without arguments binds 127.0.0.1:8888
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip("no network namespace (unshare -n): %s" % probe.stderr.decode().strip())
    script = "ip link set lo up 2>/dev/null; exec %s -u -m execnet.script.socketserver" % (
        sys.executable
    )
    proc = ServerProcess(["unshare", "-n", "sh", "-c", script])
    try:
        assert (proc.host, proc.port) == ("127.0.0.1", 8888)
    finally:
        proc.stop()
    assert not any("WARNING" in line for line in proc.stderr), proc.stderr


@pytest.mark.parametrize("address", ["0.0.0.0:0", ":0"])
def test_warning_for_non_loopback_address(own_server, address):
    proc = own_server(address)
    assert proc.host == "0.0.0.0"
    proc.stop()
    warnings = [line for line in proc.stderr if "WARNING" in line]
    assert len(warnings) == 1, proc.stderr
    assert "not a loopback address" in warnings[0] and "--secret-file" in warnings[0]


def test_no_warning_for_loopback_address(own_server):
    proc = own_server("127.0.0.1:0")
    proc.stop()
    assert not any("WARNING" in line for line in proc.stderr), proc.stderr


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"correct horse battery staple\n")
    return path


@pytest.fixture
def secret_server(own_server, secret_file):
    return own_server("--secret-file", str(secret_file), "127.0.0.1:0")


def marker_source(path) -> bytes:
    """A source line that creates the file at path when executed."""
    source = f"open({str(path)!r}, 'w').close()"
    return repr(source).encode() + b"\n"


def challenge(sock) -> bytes:
    """Say hello and return the server's nonce."""
    sock.sendall(socketserver.AUTH_HELLO)
    line = socketserver.read_short_line(sock)
    assert line.startswith(socketserver.AUTH_CHALLENGE) and line.endswith(b"\n"), line
    nonce = bytes.fromhex(line[len(socketserver.AUTH_CHALLENGE) : -1].decode())
    assert len(nonce) == 32
    return nonce


def test_secret_right(secret_server, secret_file, group):
    gw = group.makegateway(f"socket={secret_server.address}//secret_file={secret_file}")
    channel = gw.remote_exec("channel.send(channel.receive() + 1)")
    channel.send(41)
    assert channel.receive(TIMEOUT) == 42
    assert gw.remote_exec("import os; channel.send(os.getpid())").receive(TIMEOUT) == (
        secret_server.proc.pid
    )


def test_secret_wrong(secret_server, tmp_path, group):
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"incorrect horse\n")
    with pytest.raises(gateway_socket.SocketSecretError, match="refused the shared secret"):
        group.makegateway(f"socket={secret_server.address}//secret_file={wrong}")
    assert not group
    wait_for(lambda: any("wrong answer to the challenge" in x for x in secret_server.stderr))


def test_secret_missing(secret_server, group):
    with pytest.raises(gateway_socket.SocketSecretError, match="requires a shared secret"):
        group.makegateway(f"socket={secret_server.address}")
    assert not group
    wait_for(lambda: any("a secret is required" in x for x in secret_server.stderr))


def test_secret_missing_nothing_executed(secret_server, secret_file, tmp_path, group):
    marker = tmp_path / "marker"
    with raw_client(secret_server) as sock:
        sock.sendall(marker_source(marker))
        assert socketserver.read_short_line(sock) == socketserver.AUTH_REQUIRED
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    # the server goes on serving, and a client that knows the secret runs
    # its code after the one that did not
    gw = group.makegateway(f"socket={secret_server.address}//secret_file={secret_file}")
    assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1
    assert not marker.exists()


def test_secret_wrong_answer_nothing_executed(secret_server, secret_file, tmp_path, group):
    marker = tmp_path / "marker"
    secret = socketserver.read_secret(str(secret_file))
    with raw_client(secret_server) as sock:
        nonce = challenge(sock)
        # right secret, other nonce; then the source
        answer = socketserver.challenge_answer(secret, bytes(32))
        assert answer != socketserver.challenge_answer(secret, nonce)
        sock.sendall(answer + b"\n" + marker_source(marker))
        assert socketserver.read_short_line(sock) == socketserver.AUTH_DENIED
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    gw = group.makegateway(f"socket={secret_server.address}//secret_file={secret_file}")
    assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1
    assert not marker.exists()


def test_secret_answer_cannot_be_replayed(secret_server, secret_file, tmp_path):
    secret = socketserver.read_secret(str(secret_file))
    marker = tmp_path / "marker"
    with raw_client(secret_server) as sock:
        nonce = challenge(sock)
        answer = socketserver.challenge_answer(secret, nonce)
        sock.sendall(answer + b"\n")
        assert socketserver.read_short_line(sock) == socketserver.AUTH_ACCEPTED
        sock.sendall(marker_source(marker))
        assert sock.recv(100) == b""  # the code ran and the server closed
    assert marker.exists()
    marker.unlink()
    with raw_client(secret_server) as sock:
        assert challenge(sock) != nonce
        sock.sendall(answer + b"\n" + marker_source(marker))
        assert socketserver.read_short_line(sock) == socketserver.AUTH_DENIED
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    secret_server.stop()
    assert not marker.exists()


def test_secret_given_to_a_server_without(server, secret_file, group):
    with pytest.raises(gateway_socket.SocketSecretError, match="checks none"):
        group.makegateway(f"socket={server.address}//secret_file={secret_file}")
    assert not group
    gw = group.makegateway(f"socket={server.address}")
    assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1


def test_secret_file_errors(own_server, tmp_path, group):
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        group.makegateway(f"socket=127.0.0.1:1//secret_file={empty}")
    with pytest.raises(FileNotFoundError):
        group.makegateway(f"socket=127.0.0.1:1//secret_file={tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="needs a path"):
        group.makegateway("socket=127.0.0.1:1//secret_file")
    with pytest.raises(ValueError, match="installvia"):
        group.makegateway(f"socket//installvia=x//secret_file={empty}")
    assert not group
    for path in (empty, tmp_path / "missing"):
        proc = subprocess.run(
            [sys.executable, "-m", "execnet.script.socketserver", "--secret-file", str(path)],
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 2
        assert b"cannot use the secret file" in proc.stderr


def test_secret_script_without_execnet(own_server, secret_file, tmp_path, group):
    """The handshake needs nothing from execnet on the server's side."""
    proc = own_server(
        "-S", SERVER_SCRIPT, "--secret-file", str(secret_file), "127.0.0.1:0", module=False
    )
    gw = group.makegateway(f"socket={proc.address}//secret_file={secret_file}")
    code = "import sys; channel.send('execnet' in sys.modules)"
    assert gw.remote_exec(code).receive(TIMEOUT) is False

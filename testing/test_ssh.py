"""ssh= gateways against a real sshd on 127.0.0.1, on both transports:
libssh2 in our C core ("native") and the ssh program ("program")."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import sshd
from runtime_util import TIMEOUT
from runtime_util import run_python
from runtime_util import wait_for

import execnet
from execnet import gateway_io
from execnet import gateway_ssh
from execnet.gateway_ssh import SshAuthenticationError
from execnet.gateway_ssh import SshHostKeyError

pytest_plugins = ["conftest_runtime"]

TRANSPORTS = ["native", "program"]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if not sshd.available():
        pytest.fail("the ssh tests need OpenSSH's sshd and ssh-keygen (.ci/run installs them)")
    server = sshd.SshServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """The native transport reads ~ and the agent: neither is the user's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    yield home
    assert gateway_ssh.shared_sessions() == [], "an ssh session outlived its gateways"


def ssh_spec(server, transport, host="testhost", config=None, python=sys.executable, extra=""):
    config = config or server.ssh_config
    spec = f"ssh={host}//ssh_config={config}//ssh_transport={transport}"
    if python:
        spec += f"//python={python}"
    return spec + extra


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
def ssh_gw(group, server, transport, execmodel):
    return group.makegateway(ssh_spec(server, transport, extra=f"//execmodel={execmodel}"))


def test_native_transport_is_built():
    # CI installs libssh2: a build without it must not pass quietly
    assert gateway_ssh.HAVE_NATIVE, "the extension was built without libssh2"
    assert gateway_ssh.LIBSSH2_VERSION



LOADED_LIBSSH2 = """
import sys
def loaded():
    with open("/proc/self/maps") as f:
        return "libssh2" in f.read() or "execnet._ssh" in sys.modules
"""


def test_popen_gateways_do_not_load_libssh2(tmp_path):
    # the ssh transport is an extension of its own: loading libssh2 and
    # libcrypto would cost every master and worker start
    source = LOADED_LIBSSH2 + """
import execnet
gw = execnet.makegateway("popen")
worker = gw.remote_exec(%r + "channel.send(loaded())").receive(30)
print(worker, loaded())
gw.exit()
""" % LOADED_LIBSSH2
    out = run_python(source, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [b"False", b"False"]
    # and the check sees it where it is loaded
    out = run_python(LOADED_LIBSSH2 + "import execnet._ssh; print(loaded())", cwd=tmp_path)
    assert out.stdout.split() == [b"True"], out.stderr

# --- the core conformance subset over ssh --------------------------------------


def test_transport_is_the_one_asked_for(ssh_gw, transport):
    expected = gateway_ssh.SshNativeIO if transport == "native" else gateway_io.Popen2IOMaster
    assert type(ssh_gw._io) is expected
    assert ssh_gw.remoteaddress == "testhost"


def test_remote_exec_echo(ssh_gw):
    channel = ssh_gw.remote_exec(
        "while 1:\n"
        "    item = channel.receive()\n"
        "    if item is None: break\n"
        "    channel.send(item)\n"
    )
    for item in [1, "zwei", (3.0, [4]), {"five": b"5"}, None]:
        channel.send(item)
        if item is not None:
            assert channel.receive(TIMEOUT) == item
    channel.waitclose(TIMEOUT)


def test_receive_timeout(ssh_gw):
    channel = ssh_gw.remote_exec("channel.receive()")
    with pytest.raises(channel.TimeoutError):
        channel.receive(0.05)
    channel.send(None)
    channel.waitclose(TIMEOUT)


def test_remote_error(ssh_gw):
    channel = ssh_gw.remote_exec("raise ValueError('boom over ssh')")
    with pytest.raises(channel.RemoteError, match="boom over ssh"):
        channel.receive(TIMEOUT)


def test_callback_with_endmarker(ssh_gw):
    items = []
    done = threading.Event()

    def callback(item):
        items.append(item)
        if item == "end":
            done.set()

    channel = ssh_gw.remote_exec("for i in range(5): channel.send(i)")
    channel.setcallback(callback, endmarker="end")
    assert done.wait(TIMEOUT)
    assert items == [0, 1, 2, 3, 4, "end"]


def test_remote_status_and_waitclose(ssh_gw):
    status = ssh_gw.remote_status()
    assert status.numexecuting == 0
    channel = ssh_gw.remote_exec("import os; channel.send(os.getpid())")
    assert isinstance(channel.receive(TIMEOUT), int)
    channel.waitclose(TIMEOUT)
    assert channel.isclosed()


def test_bulk_one_mebibyte(group, server, transport):
    gw = group.makegateway(ssh_spec(server, transport))
    channel = gw.remote_exec("data = channel.receive(); channel.send(data[::-1])")
    data = os.urandom(1 << 20)
    channel.send(data)
    assert channel.receive(TIMEOUT) == data[::-1]


def test_terminate_ends_blocked_worker(group, server, transport):
    gw = group.makegateway(ssh_spec(server, transport))
    channel = gw.remote_exec("channel.receive()")
    group.terminate(timeout=TIMEOUT)
    assert not group
    with pytest.raises(EOFError):
        channel.waitclose(TIMEOUT)


def test_terminate_of_busy_worker_returns(group, server, transport):
    gw = group.makegateway(ssh_spec(server, transport))
    pid = gw._rinfo().pid  # the "remote" is this machine
    channel = gw.remote_exec("import time; channel.send(1); time.sleep(30)")
    assert channel.receive(TIMEOUT) == 1
    start = time.monotonic()
    group.terminate(timeout=0.5)
    assert time.monotonic() - start < 5
    assert not group
    if transport == "native":
        # kill() asks sshd to signal the worker (the ssh program leaves it)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"))


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason=f"no {SYSTEM_PYTHON}")
def test_system_python_without_execnet(group, server, transport):
    gw = group.makegateway(ssh_spec(server, transport, python=SYSTEM_PYTHON))
    channel = gw.remote_exec("import sys; channel.send(sys.executable)")
    assert channel.receive(TIMEOUT) == SYSTEM_PYTHON


def test_options_in_the_ssh_value(group, server, transport, tmp_path):
    # host, port, user and key only from -p/-l/-i; the config just knows the host key
    config = tmp_path / "cfg"
    config.write_text(
        "Host *\n"
        f"    UserKnownHostsFile {server.known_hosts}\n"
        "    GlobalKnownHostsFile /dev/null\n"
        "    IdentitiesOnly yes\n"
        "    BatchMode yes\n"
    )
    host = f"-p {server.port} -l {server.user} -i {server.user_key} {server.host}"
    gw = group.makegateway(ssh_spec(server, transport, host=host, config=config))
    assert gw.remote_exec("channel.send(7)").receive(TIMEOUT) == 7
    assert gw.remoteaddress == host


# --- errors ---------------------------------------------------------------------


def test_unresolvable_host(group, server, transport):
    with pytest.raises(execnet.HostNotFound):
        group.makegateway(ssh_spec(server, transport, host="nowhere.invalid"))


def test_connection_refused(group, server, transport, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here
    host = f"-p {port} 127.0.0.1"
    with pytest.raises(execnet.HostNotFound):
        group.makegateway(ssh_spec(server, transport, host=host))


def test_exit_status_255_is_host_not_found(group, server, transport):
    # the remote login shell runs "exit 255; -c ..."
    with pytest.raises(execnet.HostNotFound):
        group.makegateway(ssh_spec(server, transport, python="exit 255;"))


def test_unknown_host_key_refused(group, server, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = server.write_client_config("cfg_unknown", known_hosts=known)
    with pytest.raises(SshHostKeyError, match="not in") as info:
        group.makegateway(ssh_spec(server, "native", config=config))
    assert isinstance(info.value, execnet.HostNotFound)
    assert known.read_text() == ""


def test_unknown_host_key_accepted_when_asked(group, server, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = server.write_client_config("cfg_accept", known_hosts=known)
    spec = ssh_spec(server, "native", config=config, extra="//ssh_accept_new")
    gw = group.makegateway(spec)
    assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1
    line = known.read_text()
    assert line.startswith(f"[{server.host}]:{server.port} ssh-ed25519 ")
    group.terminate(TIMEOUT)
    # now known: the plain spec connects
    gw = group.makegateway(ssh_spec(server, "native", config=config))
    assert gw.remote_exec("channel.send(2)").receive(TIMEOUT) == 2
    assert known.read_text() == line


def test_changed_host_key_refused_even_when_accepting_new(group, server, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
        check=True,
        timeout=TIMEOUT,
    )
    kind, key = (tmp_path / "other_key.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{server.host}]:{server.port} {kind} {key}\n")
    config = server.write_client_config("cfg_changed", known_hosts=known)
    with pytest.raises(SshHostKeyError, match="differs"):
        group.makegateway(ssh_spec(server, "native", config=config, extra="//ssh_accept_new"))


def test_failed_authentication_names_host_user_methods(group, server, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
        timeout=TIMEOUT,
    )
    config = tmp_path / "cfg"
    config.write_text(
        server.client_config().replace(f"IdentityFile {server.user_key}", f"IdentityFile {stranger}")
    )
    with pytest.raises(SshAuthenticationError) as info:
        group.makegateway(ssh_spec(server, "native", config=config))
    text = str(info.value)
    assert repr(server.user) in text
    assert f"{server.host}:{server.port}" in text
    assert f"publickey {stranger}" in text
    assert "agent" in text  # SSH_AUTH_SOCK is unset: said so
    assert isinstance(info.value, execnet.HostNotFound)


@pytest.mark.parametrize("how", ["SSH_AUTH_SOCK", "IdentityAgent"])
def test_agent_authentication(group, server, tmp_path, monkeypatch, how):
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent_env = dict(os.environ, SSH_AUTH_SOCK=str(sock))

    def agent_answers():
        # the socket file appears at bind(), before the agent listens: ask it.
        # ssh-add -l exits 1 for "no identities" (it answered), 2 when it
        # cannot connect
        assert agent.poll() is None, f"ssh-agent exited with {agent.returncode}"
        listing = subprocess.run(
            ["ssh-add", "-l"], env=agent_env, capture_output=True, timeout=TIMEOUT
        )
        return listing.returncode in (0, 1)

    try:
        wait_for(agent_answers)
        subprocess.run(
            ["ssh-add", "-q", str(server.user_key)],
            env=agent_env,
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
        # the only key is in the agent
        text = server.client_config().replace(
            f"IdentityFile {server.user_key}", f"IdentityFile {tmp_path / 'missing'}"
        )
        text = text.replace("IdentitiesOnly yes", "IdentitiesOnly no")
        if how == "SSH_AUTH_SOCK":
            monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        else:
            text += f"    IdentityAgent {sock}\n"
        config = tmp_path / "cfg"
        config.write_text(text)
        gw = group.makegateway(ssh_spec(server, "native", config=config))
        assert gw.remote_exec("channel.send(3)").receive(TIMEOUT) == 3
    finally:
        agent.terminate()
        agent.wait(TIMEOUT)


def test_failed_authentication_program(group, server, tmp_path):
    config = tmp_path / "cfg"
    config.write_text(
        server.client_config().replace(f"IdentityFile {server.user_key}", "IdentityFile /nonexistent")
    )
    with pytest.raises(execnet.HostNotFound):
        group.makegateway(ssh_spec(server, "program", config=config))


def test_dropped_connection_is_eof(group, server, transport):
    gw = group.makegateway(ssh_spec(server, transport))
    ended = threading.Event()
    channel = gw.remote_exec("channel.send('up'); channel.receive()")
    assert channel.receive(TIMEOUT) == "up"
    channel.setcallback(lambda item: item == "gone" and ended.set(), endmarker="gone")
    other = gw.remote_exec("channel.receive()")
    server.drop_connections()
    assert ended.wait(TIMEOUT)
    with pytest.raises(EOFError):
        other.receive(TIMEOUT)
    with pytest.raises((EOFError, OSError)):
        gw.remote_exec("pass").waitclose(TIMEOUT)


# --- sharing one connection --------------------------------------------------------


def test_gateways_to_one_host_share_a_connection(group, server, transport):
    before = set(server.connection_pids())
    gateways = [group.makegateway(ssh_spec(server, transport)) for _ in range(4)]
    pids = {gw.remote_exec("import os; channel.send(os.getpid())").receive(TIMEOUT) for gw in gateways}
    assert len(pids) == 4  # four workers
    connections = set(server.connection_pids()) - before
    if transport == "native":
        assert len(connections) == 1
        assert gateway_ssh.shared_sessions() == [(server.user, server.host, server.port, 4)]
    else:
        assert len(connections) == 4
    # one gateway ends, the others go on
    gateways[0].exit()
    gateways[0].join(TIMEOUT)
    for gw in gateways[1:]:
        assert gw.remote_exec("channel.send(3)").receive(TIMEOUT) == 3
    group.terminate(TIMEOUT)
    assert gateway_ssh.shared_sessions() == []
    wait_for(lambda: not set(server.connection_pids()) - before)


def test_gateways_made_in_parallel_share_a_connection(group, server):
    before = set(server.connection_pids())
    gateways, errors = [], []

    def make():
        try:
            gateways.append(group.makegateway(ssh_spec(server, "native")))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors
    assert len(gateways) == 4
    assert len(set(server.connection_pids()) - before) == 1
    for gw in gateways:
        assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1


def test_native_works_without_the_ssh_program(group, server, monkeypatch, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("ssh") is None
    gw = group.makegateway(ssh_spec(server, "auto"))
    assert isinstance(gw._io, gateway_ssh.SshNativeIO)
    assert gw.remote_exec("channel.send(6 * 7)").receive(TIMEOUT) == 42


def test_fallback_to_the_program_works(group, server, tmp_path):
    config = tmp_path / "cfg"
    config.write_text(server.client_config(extra="    ControlMaster no\n"))
    gw = group.makegateway(ssh_spec(server, "auto", config=config))
    assert isinstance(gw._io, gateway_io.Popen2IOMaster)
    assert gw.remote_exec("channel.send(5)").receive(TIMEOUT) == 5


def test_native_asked_for_but_impossible(group, server, tmp_path):
    config = tmp_path / "cfg"
    config.write_text(server.client_config(extra="    ProxyCommand nc %h %p\n"))
    with pytest.raises(ValueError, match="ProxyCommand"):
        group.makegateway(ssh_spec(server, "native", config=config))


def test_bad_transport_name(group, server):
    with pytest.raises(ValueError, match="ssh_transport"):
        group.makegateway(ssh_spec(server, "carrier-pigeon"))


# --- the ssh= value and ssh config (no server) --------------------------------------


def spec_of(value, config_text=None, tmp_path=None, **keys):
    spec = execnet.XSpec("ssh=" + value)
    if config_text is not None:
        path = tmp_path / "ssh_config"
        path.write_text(config_text)
        spec.ssh_config = str(path)
    for key, val in keys.items():
        setattr(spec, key, val)
    return spec


def test_parse_ssh_value():
    t = gateway_ssh.parse_ssh_value("-p 2222 -i ~/k -C alice@example.org")
    assert (t.alias, t.user, t.port, t.identities) == ("example.org", "alice", "2222", ["~/k"])
    assert not t.unsupported
    t = gateway_ssh.parse_ssh_value("-lbob -p22 -oUser=carol host")
    assert (t.alias, t.user, t.port, t.options) == ("host", "bob", "22", {"user": ["carol"]})
    assert gateway_ssh.parse_ssh_value("-J jump host").unsupported
    assert gateway_ssh.parse_ssh_value("-L 1:a:2 host").unsupported
    assert gateway_ssh.parse_ssh_value("host extra-command").unsupported


@pytest.mark.parametrize(
    ("patterns", "host", "expected"),
    [
        (["*"], "a.example", True),
        (["*.example"], "a.example", True),
        (["*.example"], "example", False),
        (["web?"], "web1", True),
        (["web?"], "web10", False),
        (["*", "!secret"], "secret", False),
        (["*", "!secret"], "public", True),
        (["a,b"], "b", True),
        (["A"], "a", True),
        (["[h]:22"], "[h]:22", True),
        (["[h]:22"], "h", False),
        (["a.b"], "axb", False),
    ],
)
def test_host_patterns(patterns, host, expected):
    assert gateway_ssh.host_matches(patterns, host) is expected


def test_config_first_value_wins_and_identities_add_up(tmp_path, private_home):
    spec = spec_of(
        "box",
        "# a comment\n"
        "Host box\n"
        "    HostName box.example.org\n"
        "    User=first\n"
        "    IdentityFile ~/.ssh/id_%h_%r_%p\n"
        "Host !other *\n"
        "    User second\n"
        "    Port 2200\n"
        '    IdentityFile "/keys/all keys"\n'
        "Host other\n"
        "    Port 9\n",
        tmp_path,
    )
    t = gateway_ssh.resolve_target(spec)
    assert (t.hostname, t.user, t.port) == ("box.example.org", "first", 2200)
    assert t.identities == [f"{private_home}/.ssh/id_box.example.org_first_2200", "/keys/all keys"]
    assert gateway_ssh.choose_transport(spec, t) == "native"


def test_value_beats_config(tmp_path):
    spec = spec_of("-p 23 -l me box", "Host box\n  User you\n  Port 24\n", tmp_path)
    t = gateway_ssh.resolve_target(spec)
    assert (t.user, t.port) == ("me", 23)


@pytest.mark.parametrize(
    "line",
    [
        "ProxyJump gateway",
        "ProxyCommand ssh -W %h:%p gateway",
        "ControlMaster auto",
        "ControlPath ~/.ssh/cm-%r@%h:%p",
        "LocalForward 8080 localhost:80",
        "SomeFutureOption yes",
    ],
)
def test_config_the_native_path_cannot_do_falls_back(tmp_path, line):
    spec = spec_of("box", f"Host box\n    {line}\n", tmp_path)
    assert gateway_ssh.choose_transport(spec) == "program"
    spec.ssh_transport = "native"
    with pytest.raises(ValueError, match="cannot honour"):
        gateway_ssh.choose_transport(spec)


def test_config_for_other_hosts_does_not_matter(tmp_path):
    spec = spec_of("box", "Host elsewhere\n    ProxyJump gateway\n", tmp_path)
    assert gateway_ssh.choose_transport(spec) == "native"


def test_match_blocks_fall_back(tmp_path):
    spec = spec_of("box", "Match host box\n    User x\n", tmp_path)
    assert gateway_ssh.choose_transport(spec) == "program"


def test_program_transport_builds_the_reference_command_line(tmp_path):
    spec = spec_of("-p 22100 user@host", None, None, python="python3", ssh_config="/cfg")
    assert gateway_io.ssh_args(spec)[:6] == ["ssh", "-C", "-F", "/cfg", "-p", "22100"]
    spec.ssh_transport = "program"
    assert gateway_ssh.choose_transport(spec) == "program"


def test_remote_stderr_reaches_ours(group, server, transport, capfd):
    gw = group.makegateway(ssh_spec(server, transport))
    gw.remote_exec("import os; os.write(2, b'written to stderr remotely\\n')").waitclose(TIMEOUT)
    seen = []
    wait_for(lambda: seen.append(capfd.readouterr().err) or "written to stderr remotely" in "".join(seen))


def test_idle_native_session_does_not_spin(group, server):
    gw = group.makegateway(ssh_spec(server, "native"))
    channel = gw.remote_exec("channel.send(1); channel.receive()")
    assert channel.receive(TIMEOUT) == 1
    before = os.times()
    time.sleep(0.5)  # a measurement window, not synchronisation
    after = os.times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.1, f"{used:.2f} s of CPU in 0.5 s of waiting"
    channel.send(None)
    channel.waitclose(TIMEOUT)


def test_session_closed_while_its_arguments_convert(server):
    # converting an argument runs Python code, which may close the session:
    # the call then fails as on a closed session instead of using freed memory
    spec = execnet.XSpec(ssh_spec(server, "native"))
    session = None

    class Closing:
        def __index__(self):
            session.close()
            return 1

        def __float__(self):
            session.close()
            return 1.0

    for call in (
        lambda: session.close_channel(Closing()),
        lambda: session.wait_channel(Closing()),
        lambda: session.wait_channel(1, Closing()),
        lambda: session.open_channel("true", Closing()),
    ):
        session = gateway_ssh.connect(spec, gateway_ssh.resolve_target(spec))
        with pytest.raises(gateway_ssh._ssh.SshError, match="not running"):
            call()
        assert not session.alive


def test_signal_handler_ends_a_wait_for_a_channel(server):
    # the waits without the GIL run Python's signal handlers (Ctrl-C)
    spec = execnet.XSpec(ssh_spec(server, "native"))
    session = gateway_ssh.connect(spec, gateway_ssh.resolve_target(spec))

    class Alarm(Exception):
        pass

    def on_alarm(signum, frame):
        raise Alarm

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        chan_id, rfd, wfd = session.open_channel("sleep 30", TIMEOUT)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        start = time.monotonic()
        with pytest.raises(Alarm):
            session.wait_channel(chan_id, TIMEOUT)
        assert time.monotonic() - start < TIMEOUT / 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        session.close()
    os.close(rfd)
    os.close(wfd)


# --- a server with an RSA host key too, and at most two channels a connection ----------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    server = sshd.SshServer(
        tmp_path_factory.mktemp("sshd-small"),
        extra_host_keys=["ecdsa", "rsa"],
        sshd_options="MaxSessions 2",
    )
    yield server
    server.stop()


def test_host_key_type_follows_known_hosts(group, small_server, transport, tmp_path):
    # only the ECDSA key is known: the client must ask for it, not for ed25519
    known = tmp_path / "known_hosts"
    known.write_text(small_server.known_hosts_line(small_server.extra_host_keys[0]))
    config = tmp_path / "cfg"
    config.write_text(small_server.client_config(known_hosts=known))
    gw = group.makegateway(ssh_spec(small_server, transport, config=config))
    assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1


def test_host_known_by_rsa_key_only(group, small_server, tmp_path):
    # libssh2 before 1.11 has no rsa-sha2-*: then the ssh program is used
    known = tmp_path / "known_hosts"
    known.write_text(small_server.known_hosts_line(small_server.extra_host_keys[1]))
    config = tmp_path / "cfg"
    config.write_text(small_server.client_config(known_hosts=known))
    spec = ssh_spec(small_server, "auto", config=config)
    native = "rsa-sha2-256" in gateway_ssh.supported_hostkey_algorithms()
    gw = group.makegateway(spec)
    assert isinstance(gw._io, gateway_ssh.SshNativeIO) is native
    assert gw.remote_exec("channel.send(1)").receive(TIMEOUT) == 1
    if not native:
        with pytest.raises(ValueError, match="ssh-rsa"):
            group.makegateway(ssh_spec(small_server, "native", config=config))


def test_hashed_known_hosts_entry(small_server, tmp_path):
    hashed = tmp_path / "known_hosts"
    shutil.copy(small_server.known_hosts, hashed)
    subprocess.run(
        ["ssh-keygen", "-q", "-H", "-f", str(hashed)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert hashed.read_text().startswith("|1|")
    config = tmp_path / "cfg"
    config.write_text(small_server.client_config(known_hosts=hashed))
    target = gateway_ssh.resolve_target(
        execnet.XSpec(f"ssh=testhost//ssh_config={config}")
    )
    assert gateway_ssh.known_key_types(target) == ["ssh-ed25519"]
    group = execnet.Group()
    try:
        gw = group.makegateway(ssh_spec(small_server, "native", config=config))
        assert gw.remote_exec("channel.send(2)").receive(TIMEOUT) == 2
    finally:
        group.terminate(TIMEOUT)


def test_a_full_connection_makes_another(group, small_server):
    before = set(small_server.connection_pids())
    gateways = [group.makegateway(ssh_spec(small_server, "native")) for _ in range(3)]
    for i, gw in enumerate(gateways):
        assert gw.remote_exec(f"channel.send({i})").receive(TIMEOUT) == i
    assert len(set(small_server.connection_pids()) - before) == 2
    user, host, port = small_server.user, small_server.host, small_server.port
    assert gateway_ssh.shared_sessions() == [(user, host, port, 1), (user, host, port, 2)]
    group.terminate(TIMEOUT)
    assert gateway_ssh.shared_sessions() == []

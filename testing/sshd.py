"""A throw-away OpenSSH server on 127.0.0.1 for the ssh gateway tests.

``SshServer(directory)`` makes a host key, a user key, an sshd_config, a
known_hosts file and a client ssh_config in ``directory`` and starts
``sshd -D -e`` on a free port.  Nothing outside ``directory`` is read or
written on the client side: tests point the gateways at ``ssh_config``.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
TIMEOUT = 20.0


def available() -> bool:
    """True if this machine can run the fixture (sshd and ssh-keygen)."""
    return os.access(SSHD, os.X_OK) and _which("ssh-keygen") is not None


def _which(name: str):
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "execnet-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshServer:
    """An sshd serving the current user with a throw-away key."""

    def __init__(self, directory, extra_host_keys=(), sshd_options: str = "") -> None:
        """extra_host_keys: key types ("rsa", ...) the server has besides
        its ed25519 host key (files host_key_<type>); sshd_options: more
        sshd_config lines."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.host = "127.0.0.1"
        self.host_key = self.dir / "host_key"
        self.user_key = self.dir / "id_ed25519"
        self.sshd_options = sshd_options
        _keygen(self.host_key)
        _keygen(self.user_key)
        self.extra_host_keys = []
        for kind in extra_host_keys:
            path = self.dir / f"host_key_{kind}"
            _keygen(path, kind)
            self.extra_host_keys.append(path)
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_bytes(Path(str(self.user_key) + ".pub").read_bytes())
        self.known_hosts = self.dir / "known_hosts"
        self.empty_known_hosts = self.dir / "known_hosts_empty"
        self.empty_known_hosts.write_text("")
        # sshd needs its privilege separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.stderr: list = []
        self.proc = None
        self.port = None
        for _attempt in range(5):  # the free port may be taken meanwhile
            self.port = _free_port()
            self._write_configs()
            if self._start():
                break
        else:
            raise RuntimeError("sshd did not start:\n" + "\n".join(self.stderr))

    def _write_configs(self) -> None:
        d = self.dir
        self.sshd_config = d / "sshd_config"
        self.sshd_config.write_text(
            f"ListenAddress {self.host}\n"
            f"Port {self.port}\n"
            f"HostKey {self.host_key}\n"
            + "".join(f"HostKey {path}\n" for path in self.extra_host_keys)
            + f"{self.sshd_options}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            f"PidFile {d / 'sshd.pid'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PermitRootLogin yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "MaxSessions 64\n"
            "MaxStartups 64\n"
            "LogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n"
        )
        host_pub = Path(str(self.host_key) + ".pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.ssh_config = d / "ssh_config"
        self.ssh_config.write_text(self.client_config())

    def client_config(self, known_hosts=None, extra: str = "") -> str:
        """Text of a client config for host alias "testhost" and for
        127.0.0.1 (extra lines go into the Host block)."""
        known = known_hosts or self.known_hosts
        return (
            f"Host testhost {self.host}\n"
            f"    HostName {self.host}\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {self.user_key}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            + extra
        )

    def known_hosts_line(self, key_file) -> str:
        """The known_hosts line of one of the server's host keys."""
        kind, key = Path(str(key_file) + ".pub").read_text().split()[:2]
        return f"[{self.host}]:{self.port} {kind} {key}\n"

    def write_client_config(self, name: str, **kwargs) -> Path:
        path = self.dir / name
        path.write_text(self.client_config(**kwargs))
        return path

    def _start(self) -> bool:
        self.stderr = []
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.sshd_config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        reader = threading.Thread(target=self._drain, daemon=True)
        reader.start()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    s.settimeout(TIMEOUT)
                    if s.recv(4).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.02)  # not listening yet: poll again
        self.stop()
        return False

    def _drain(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            self.stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))
        self.proc.stderr.close()

    def connection_pids(self) -> list:
        """Pids of the sshd processes serving one connection each (the
        listener's children)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == self.proc.pid:
                pids.append(int(entry))
        return pids

    def drop_connections(self) -> None:
        """Kill the processes serving the current connections."""
        for pid in self.connection_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.drop_connections()
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":  # a server to try things by hand
    import tempfile

    server = SshServer(tempfile.mkdtemp(prefix="execnet-sshd-"))
    print(f"port {server.port}; ssh -F {server.ssh_config} testhost", flush=True)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        server.stop()
        sys.exit(0)

"""ssh= gateways without the ssh program: libssh2 sessions from the C core.

The ``ssh=`` value and the user's ssh config are read here; what the
native transport can do is done by ``execnet._ssh.SshSession``, the
rest falls back to the ``ssh`` program (``gateway_io.ssh_args``).  Several
gateways to the same user, host and port share one connection, one
channel each.  See doc/ssh.md.
"""

from __future__ import annotations

import binascii
import getpass
import hmac
import os
import re
import shlex
import socket
import threading
from typing import Any

from . import gateway_io
from .gateway_base import Popen2IO
from .gateway_bootstrap import HostNotFound

try:
    from . import _ssh
except ImportError:  # built without libssh2
    _ssh = None  # type: ignore[assignment]

# True when the native transport was built
HAVE_NATIVE = _ssh is not None
LIBSSH2_VERSION = getattr(_ssh, "LIBSSH2_VERSION", None)

TRANSPORTS = ("auto", "native", "program")

# seconds for connecting, the handshake and authentication (ConnectTimeout
# overrides the connect part)
TIMEOUT = 30.0


class SshHostKeyError(HostNotFound):
    """The server's host key is unknown or changed (native transport)."""


class SshAuthenticationError(HostNotFound):
    """No authentication method worked (native transport)."""


class NativeUnsupported(Exception):
    """The native transport cannot do what the spec or config asks."""


# ---------------------------------------------------------------------------
# The ssh= value and the ssh config
# ---------------------------------------------------------------------------

# ssh client flags without an argument that change nothing for us
_HARMLESS_FLAGS = set("CqTxanv46k")
# ssh config keywords handled by the native transport
_HANDLED = {
    "host",
    "hostname",
    "user",
    "port",
    "identityfile",
    "identitiesonly",
    "userknownhostsfile",
    "globalknownhostsfile",
    "stricthostkeychecking",
    "connecttimeout",
    "identityagent",
    "batchmode",
}
# keywords that make no difference to an exec channel
_IGNORED = {
    "addkeystoagent",
    "addressfamily",
    "checkhostip",
    "ciphers",
    "compression",
    "connectionattempts",
    "forwardagent",
    "forwardx11",
    "forwardx11trusted",
    "gssapiauthentication",
    "gssapidelegatecredentials",
    "hashknownhosts",
    "hostbasedauthentication",
    "kbdinteractiveauthentication",
    "loglevel",
    "macs",
    "passwordauthentication",
    "preferredauthentications",
    "pubkeyauthentication",
    "requesttty",
    "sendenv",
    "serveralivecountmax",
    "serveraliveinterval",
    "setenv",
    "tcpkeepalive",
    "updatehostkeys",
    "usekeychain",
    "visualhostkey",
    "challengeresponseauthentication",
    "escapechar",
    "exitonforwardfailure",
    "nohostauthenticationforlocalhost",
    "verifyhostkeydns",
    "identitiesonly",
}


class SshTarget:
    """Where and as whom to connect, from the ssh= value and the config."""

    def __init__(self) -> None:
        self.alias: Any = None  # the host as written
        self.hostname: Any = None  # str once resolved
        self.user: Any = None
        self.port: Any = None  # as written, an int once resolved
        self.identities: list[str] = []  # -i files, then IdentityFile ones
        self.config_file: Any = None
        self.options: dict[str, Any] = {}  # -o options, lower-case keys
        self.unsupported: list[str] = []  # reasons to use the ssh program

    def __repr__(self) -> str:
        return f"<SshTarget {self.user}@{self.hostname}:{self.port}>"


def parse_ssh_value(value: str) -> SshTarget:
    """The ssh= value, ``[options] [user@]host``, as an SshTarget (config
    not applied yet).  Options the native transport lacks are noted in
    ``unsupported``."""
    target = SshTarget()
    words = value.split()
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            if target.alias is not None:
                target.unsupported.append(f"a remote command {word!r} in the ssh= value")
                continue
            target.alias = word
            continue
        flag, attached = word[1:2], word[2:]
        if flag in "pliFo" or flag in "JbcDEeIKLmOQRSWw":
            if attached:
                argument = attached
            elif i < len(words):
                argument = words[i]
                i += 1
            else:
                target.unsupported.append(f"option {word} without its argument")
                continue
            if flag == "p":
                target.port = argument
            elif flag == "l":
                target.user = argument
            elif flag == "i":
                target.identities.append(argument)
            elif flag == "F":
                target.config_file = argument
            elif flag == "o":
                key, _, val = argument.replace("=", " ", 1).partition(" ")
                target.options.setdefault(key.lower(), []).append(val.strip())
            else:
                target.unsupported.append(f"ssh option -{flag}")
        elif all(c in _HARMLESS_FLAGS for c in word[1:]):
            pass
        else:
            target.unsupported.append(f"ssh option {word}")
    if target.alias is None:
        target.unsupported.append("no host in the ssh= value")
        target.alias = ""
    user, at, host = target.alias.rpartition("@")
    if at:
        target.alias = host
        if target.user is None:
            target.user = user
    return target


def _config_words(line: str) -> list[str]:
    """A config line as [keyword, argument...] ("Key=Value" allowed)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    key, sep, rest = line.partition("=")
    if sep and " " not in key.strip() and "\t" not in key.strip():
        words = [key.strip()] + _split_args(rest)
    else:
        words = _split_args(line)
    return words


def _split_args(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError:
        return text.split()


def _wildcard_match(pattern: str, text: str) -> bool:
    """True if text matches pattern, where only * and ? are special (so
    "[host]:port" is literal, unlike in fnmatch)."""
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern
    )
    return re.fullmatch(regex, text, re.DOTALL) is not None


def host_matches(patterns: list[str], host: str) -> bool:
    """True if host matches a Host line's patterns: some pattern matches
    and no negated one does (``*`` and ``?`` wildcards)."""
    matched = False
    for pattern in patterns:
        for single in pattern.split(","):
            negated = single.startswith("!")
            if negated:
                single = single[1:]
            if _wildcard_match(single.lower(), host.lower()):
                if negated:
                    return False
                matched = True
    return matched


def read_ssh_config(path, host: str) -> tuple[dict[str, Any], list[str]]:
    """The options of the config file at path that apply to host.

    Returns (options, unsupported): options maps lower-case keywords to
    their first value (IdentityFile, UserKnownHostsFile and
    GlobalKnownHostsFile to lists of all values); unsupported lists the
    applying keywords the native transport cannot honour.
    """
    options: dict[str, Any] = {}
    unsupported: list[str] = []
    applies = True
    with open(os.path.expanduser(str(path)), encoding="utf-8", errors="replace") as f:
        for line in f:
            words = _config_words(line)
            if not words:
                continue
            key = words[0].lower()
            args = words[1:]
            if key == "host":
                applies = host_matches(args, host)
                continue
            if key == "match":
                unsupported.append("Match blocks in the ssh config")
                applies = False  # its conditions are not evaluated
                continue
            if not applies:
                continue
            if key in ("identityfile", "userknownhostsfile", "globalknownhostsfile"):
                options.setdefault(key, []).extend(args)
            elif key in _HANDLED or key in _IGNORED:
                options.setdefault(key, " ".join(args))
            else:
                unsupported.append(f"{words[0]} in the ssh config")
    return options, unsupported


def _expand(path: str, target: SshTarget) -> str:
    """path with ~ and the %-tokens OpenSSH knows for file names."""
    tokens = {
        "%": "%",
        "h": target.hostname,
        "n": target.alias,
        "p": str(target.port),
        "r": target.user,
        "u": getpass.getuser(),
        "d": os.path.expanduser("~"),
    }
    out = []
    i = 0
    while i < len(path):
        if path[i] == "%" and i + 1 < len(path) and path[i + 1] in tokens:
            out.append(tokens[path[i + 1]])
            i += 2
        else:
            out.append(path[i])
            i += 1
    return os.path.expanduser("".join(out))


def resolve_target(spec) -> SshTarget:
    """The SshTarget for spec: the ssh= value, then ``-o`` options, then the
    config file (-F in the value, the ssh_config key, or ~/.ssh/config)."""
    target = parse_ssh_value(gateway_io._text_value(spec, "ssh"))
    config_path = target.config_file or spec.ssh_config
    if config_path is None:
        default = os.path.expanduser("~/.ssh/config")
        config_path = default if os.path.exists(default) else None
    options: dict[str, Any] = {}
    for key, values in target.options.items():
        if key not in _HANDLED and key not in _IGNORED:
            target.unsupported.append(f"-o {key}")
        if key in ("identityfile", "userknownhostsfile", "globalknownhostsfile"):
            options[key] = list(values)
        else:
            options[key] = values[0]
    if config_path is not None:
        try:
            found, unsupported = read_ssh_config(config_path, target.alias)
        except OSError as exc:
            raise NativeUnsupported(f"cannot read ssh config {config_path}: {exc}") from exc
        target.unsupported += unsupported
        for key, value in found.items():
            if key in ("identityfile",):
                options[key] = options.get(key, []) + value
            else:
                options.setdefault(key, value)
    target.options = options
    target.hostname = options.get("hostname") or target.alias
    if target.user is None:
        target.user = options.get("user") or getpass.getuser()
    port = target.port or options.get("port") or 22
    try:
        target.port = int(port)
    except ValueError:
        target.unsupported.append(f"port {port!r}")
        target.port = 22
    if "%" in target.hostname:
        target.hostname = target.hostname.replace("%h", target.alias).replace("%%", "%")
    target.identities = [_expand(p, target) for p in target.identities]
    target.identities += [
        _expand(p, target) for p in options.get("identityfile", []) if p.lower() != "none"
    ]
    return target


def choose_transport(spec, target: SshTarget | None = None) -> str:
    """ "native" or "program" for an ssh= spec (the ssh_transport key:
    auto, native or program).  Raises ValueError for a native transport
    that was asked for and cannot be used."""
    wanted = spec.ssh_transport or "auto"
    if wanted is True or wanted not in TRANSPORTS:
        raise ValueError(
            f"ssh_transport must be one of {', '.join(TRANSPORTS)}, got {wanted!r}"
        )
    if wanted == "program":
        return "program"
    if not HAVE_NATIVE:
        if wanted == "native":
            raise ValueError(
                "ssh_transport=native: this execnet was built without libssh2 "
                "(pkg-config did not find it), so only the ssh program can be used"
            )
        return "program"
    if target is None:
        try:
            target = resolve_target(spec)
        except NativeUnsupported as exc:
            target = SshTarget()
            target.unsupported.append(str(exc))
    if not target.unsupported:
        kinds = known_key_types(target)
        if kinds and not any(_checkable(kind) for kind in kinds):
            target.unsupported.append(
                f"the host keys known for {target.hostname} ({', '.join(kinds)}) "
                f"need host key algorithms libssh2 {LIBSSH2_VERSION} lacks"
            )
    if target.unsupported:
        if wanted == "native":
            raise ValueError(
                "ssh_transport=native cannot honour: " + "; ".join(target.unsupported)
            )
        return "program"
    return "native"


# ---------------------------------------------------------------------------
# Sessions: connect, check the host key, authenticate; shared per target
# ---------------------------------------------------------------------------


def _known_hosts_files(target: SshTarget) -> tuple[list[str], list[str]]:
    """(user files, global files) to check the host key against."""
    user = target.options.get("userknownhostsfile") or [
        "~/.ssh/known_hosts",
        "~/.ssh/known_hosts2",
    ]
    glob = target.options.get("globalknownhostsfile") or [
        "/etc/ssh/ssh_known_hosts",
        "/etc/ssh/ssh_known_hosts2",
    ]
    user = [_expand(p, target) for p in user if p.lower() != "none"]
    glob = [_expand(p, target) for p in glob if p.lower() != "none"]
    return user, glob


def _accepts_new_keys(spec, target: SshTarget) -> bool:
    if spec.ssh_accept_new:
        return True
    return str(target.options.get("stricthostkeychecking", "")).lower() in (
        "accept-new",
        "no",
        "off",
    )


def _check_host_key(session, spec, target: SshTarget) -> None:
    user_files, global_files = _known_hosts_files(target)
    results = []
    for path in user_files + global_files:
        if os.path.exists(path):
            results.append(
                (session.check_host_key(path, target.hostname, target.port), path)
            )
    where = f"{target.hostname}:{target.port}"
    for result, path in results:
        if result == "mismatch":
            raise SshHostKeyError(
                f"the host key of {where} differs from the one in {path}: "
                "refusing to connect (if the change is expected, remove the old "
                "key from that file)"
            )
    if any(result == "match" for result, _ in results):
        return
    if not _accepts_new_keys(spec, target):
        raise SshHostKeyError(
            f"the host key of {where} is not in "
            f"{', '.join(user_files + global_files) or 'any known_hosts file'}: "
            "refusing to connect (ssh_accept_new or StrictHostKeyChecking "
            "accept-new would add it)"
        )
    if not user_files:
        return
    name = target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"
    line = session.host_key_line(name)
    path = user_files[0]
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    with open(path, "a", encoding="ascii") as f:
        f.write(line.rstrip("\n") + "\n")


def _known_host_matches(field: str, name: str) -> bool:
    """True if a known_hosts host field (patterns, or one hashed name)
    names name."""
    if field.startswith("|1|"):
        parts = field.split("|")
        if len(parts) != 4:
            return False
        try:
            salt = binascii.a2b_base64(parts[2])
            digest = binascii.a2b_base64(parts[3])
        except binascii.Error:
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), "sha1").digest(), digest)
    return host_matches([field], name)


def known_key_types(target: SshTarget) -> list[str]:
    """The key types recorded for target in its known-hosts files, in the
    order first seen."""
    name = target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"
    user_files, global_files = _known_hosts_files(target)
    kinds: list[str] = []
    for path in user_files + global_files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 3 or fields[0].startswith(("#", "@")):
                continue
            if _known_host_matches(fields[0], name) and fields[1] not in kinds:
                kinds.append(fields[1])
    return kinds


# host key algorithms by the key type that known_hosts records
_HOSTKEY_ALGORITHMS = {
    "ssh-ed25519": ["ssh-ed25519"],
    "ecdsa-sha2-nistp256": ["ecdsa-sha2-nistp256"],
    "ecdsa-sha2-nistp384": ["ecdsa-sha2-nistp384"],
    "ecdsa-sha2-nistp521": ["ecdsa-sha2-nistp521"],
    "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
    "ssh-dss": ["ssh-dss"],
}
_HOSTKEY_DEFAULT = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                    "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]


_supported_hostkey_algorithms = None


def supported_hostkey_algorithms() -> list[str]:
    """The host key algorithms of our libssh2 (empty without it)."""
    global _supported_hostkey_algorithms
    if _supported_hostkey_algorithms is None:
        _supported_hostkey_algorithms = (
            _ssh.ssh_hostkey_algorithms() if HAVE_NATIVE else []
        )
    return _supported_hostkey_algorithms


def _checkable(kind: str) -> bool:
    """True if our libssh2 can have a server show a key of this type.
    RSA keys need rsa-sha2-*: SHA-1 "ssh-rsa" is off in today's servers."""
    wanted = _HOSTKEY_ALGORITHMS.get(kind, [])
    if kind == "ssh-rsa":
        wanted = wanted[:2]
    return any(a in supported_hostkey_algorithms() for a in wanted)


def hostkey_preference(target: SshTarget) -> str:
    """The host key algorithms to offer, those of recorded keys first (as
    OpenSSH does), so that the server shows the key we can check."""
    order: list[str] = []
    for kind in known_key_types(target):
        order += [a for a in _HOSTKEY_ALGORITHMS.get(kind, []) if a not in order]
    order += [a for a in _HOSTKEY_DEFAULT if a not in order]
    supported = supported_hostkey_algorithms()
    return ",".join(a for a in order if a in supported)


_DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ed25519")


def _authenticate(session, target: SshTarget) -> None:
    methods = session.auth_methods(target.user)
    if methods == "":
        return  # the "none" method was enough
    tried = []
    offered = methods.split(",")
    if "publickey" in offered:
        identities_only = str(target.options.get("identitiesonly", "no")).lower() == "yes"
        agent = target.options.get("identityagent")
        if agent is not None and agent.startswith("$"):
            agent = os.environ.get(agent[1:].strip("{}"))
        elif agent == "SSH_AUTH_SOCK":
            agent = None
        if identities_only and target.identities:
            tried.append("agent (not used: IdentitiesOnly)")
        elif agent is not None and agent.lower() == "none":
            tried.append("agent (not used: IdentityAgent none)")
        elif agent is None and not os.environ.get("SSH_AUTH_SOCK"):
            tried.append("agent (SSH_AUTH_SOCK not set)")
        else:
            socket_path = None if agent is None else _expand(agent, target)
            why = session.auth_agent(target.user, socket_path)
            if why is None:
                return
            tried.append(f"agent ({why})")
        keys = target.identities or [
            os.path.expanduser(p)
            for p in _DEFAULT_IDENTITIES
            if os.path.exists(os.path.expanduser(p))
        ]
        for path in keys:
            if not os.path.exists(path):
                tried.append(f"publickey {path} (no such file)")
                continue
            why = session.auth_key_file(target.user, path)
            if why is None:
                return
            tried.append(f"publickey {path} ({why})")
        if not keys:
            tried.append("publickey (no identity file)")
    raise SshAuthenticationError(
        f"ssh authentication as {target.user!r} to {target.hostname}:{target.port} "
        f"failed; tried: {'; '.join(tried) or 'nothing'}; "
        f"the server offers: {methods}"
    )


def connect(spec, target: SshTarget):
    """A started SshSession to target, authenticated.  Raises HostNotFound
    (or its SshHostKeyError and SshAuthenticationError) on failure."""
    timeout = TIMEOUT
    if target.options.get("connecttimeout"):
        try:
            timeout = float(target.options["connecttimeout"])
        except ValueError:
            pass
    address = gateway_io._text_value(spec, "ssh")
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    except OSError as exc:
        # like the ssh program, which exits with 255 for all of these
        raise HostNotFound(address) from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(True)
    except OSError:
        pass
    session = _ssh.SshSession(sock.detach(), TIMEOUT)
    try:
        session.set_hostkey_methods(hostkey_preference(target))
        try:
            session.handshake()
        except _ssh.SshError as exc:
            raise HostNotFound(address) from exc
        _check_host_key(session, spec, target)
        _authenticate(session, target)
        session.start()
    except BaseException:
        session.close()
        raise
    return session


class _Shared:
    """One session and the channels using it."""

    def __init__(self, key, session) -> None:
        self.key = key
        self.session = session
        self.channels: set[int] = set()
        self.opening = 0  # channels being opened on it


# target -> the session new channels go to; _open: every open session (one
# that sshd refused more channels on stays open for the channels it has);
# _target_locks: one connection attempt per target at a time
_registry: dict[tuple[Any, ...], _Shared] = {}
_open: set[_Shared] = set()
_target_locks: dict[tuple[Any, ...], threading.Lock] = {}
_registry_lock = threading.Lock()


def _session_key(spec, target: SshTarget) -> tuple[Any, ...]:
    return (
        target.user,
        target.hostname,
        target.port,
        tuple(target.identities),
        tuple(_known_hosts_files(target)[0]),
        bool(_accepts_new_keys(spec, target)),
    )


def open_channel(spec, target: SshTarget, command: str):
    """(shared session, channel id, read fd, write fd) for command, on a
    session shared with the other gateways to the same target."""
    key = _session_key(spec, target)
    with _registry_lock:
        target_lock = _target_locks.setdefault(key, threading.Lock())
    # connecting to one target does not hold up gateways to others
    with target_lock:
        stale = None
        shared: _Shared | None
        with _registry_lock:
            shared = _registry.get(key)
            if shared is not None and not shared.session.alive:
                del _registry[key]  # its channels close it as they end
                if _forget_if_idle(shared):
                    stale = shared
                shared = None
        if stale is not None:
            stale.session.close()
        fresh = shared is None
        if shared is None:
            shared = _connect_shared(spec, target, key)
        while True:
            with _registry_lock:
                shared.opening += 1
            try:
                chan_id, rfd, wfd = shared.session.open_channel(command, TIMEOUT)
                error = None
            except _ssh.SshError as exc:
                error = exc
            with _registry_lock:
                shared.opening -= 1
                if error is None:
                    shared.channels.add(chan_id)
                    return shared, chan_id, rfd, wfd
                idle = _forget_if_idle(shared)
                if _registry.get(key) is shared:
                    del _registry[key]
            if idle:
                shared.session.close()
            if fresh:
                raise HostNotFound(gateway_io._text_value(spec, "ssh")) from error
            # the connection is gone, or full (sshd's MaxSessions channels
            # per connection): new channels go to a new one
            shared = _connect_shared(spec, target, key)
            fresh = True


def _connect_shared(spec, target: SshTarget, key) -> _Shared:
    """A new session for target, where new channels go from now on."""
    shared = _Shared(key, connect(spec, target))
    with _registry_lock:
        _registry[key] = shared
        _open.add(shared)
    return shared


def _forget_if_idle(shared: _Shared) -> bool:
    """True, having forgotten shared, if no channel uses it or is being
    opened on it: the caller then closes it (registry lock held)."""
    if shared.channels or shared.opening:
        return False
    if _registry.get(shared.key) is shared:
        del _registry[shared.key]
    _open.discard(shared)
    return True


def release(shared: _Shared, chan_id: int) -> None:
    """chan_id is over; the last channel of a session closes it."""
    with _registry_lock:
        shared.channels.discard(chan_id)
        idle = _forget_if_idle(shared)
    if idle:
        shared.session.close()


# A forked child has the sessions but not their pump threads: it forgets
# them (and keeps them from being freed, which would join those threads).
_forked_leftovers: list[_Shared] = []


def _forget_sessions_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    _forked_leftovers.extend(_open)
    _registry.clear()
    _open.clear()
    _target_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_sessions_in_child)


def shared_sessions() -> list[tuple[str, str, int, int]]:
    """The sessions currently open: (user, host, port, channel count)."""
    with _registry_lock:
        return sorted((s.key[0], s.key[1], s.key[2], len(s.channels)) for s in _open)


class SshNativeIO(Popen2IO):
    """A gateway's bytes over one channel of a native SSH session."""

    def __init__(self, spec, target: SshTarget, execmodel) -> None:
        command = gateway_io._remote_command(spec)
        self._shared, self._chan, rfd, wfd = open_channel(spec, target, command)
        self._status = None
        self._released = False
        self._lock = threading.Lock()
        super().__init__(os.fdopen(wfd, "wb"), os.fdopen(rfd, "rb"), execmodel=execmodel)
        self.remoteaddress = spec.ssh

    def wait(self):
        """The remote command's exit status once the channel is over (None
        after kill())."""
        if not self._released:
            try:
                status = self._shared.session.wait_channel(self._chan)
            except _ssh.SshError:
                status = None  # the session was closed meanwhile
            self._release(status)
        return self._status

    def kill(self) -> None:
        """End the channel; its worker sees end of file on its input."""
        if self._released:
            return
        try:
            self._shared.session.close_channel(self._chan)
        except _ssh.SshError:
            pass  # the session is already gone
        self._release(None)

    def _release(self, status) -> None:
        with self._lock:
            if not self._released:
                self._released = True
                self._status = status
                release(self._shared, self._chan)

    def __repr__(self) -> str:
        return f"<SshNativeIO {self.remoteaddress} channel {self._chan}>"


def create_io(spec, execmodel):
    """The IO of an ssh= gateway on the transport chosen for spec."""
    target = None
    if HAVE_NATIVE and spec.ssh_transport != "program":
        try:
            target = resolve_target(spec)
        except NativeUnsupported as exc:
            target = SshTarget()
            target.unsupported.append(str(exc))
    if choose_transport(spec, target) == "native" and target is not None:
        return SshNativeIO(spec, target, execmodel)
    io = gateway_io.Popen2IOMaster(gateway_io.ssh_args(spec), execmodel)
    io.remoteaddress = spec.ssh
    return io

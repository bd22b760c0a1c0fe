"""Popen gateways forked from a template interpreter (doc/gateways.md,
"Forked workers").

The master starts one template per group and preload list: a fresh
interpreter of its own executable (never a fork of the master, which has
threads) that imports execnet's core and the preload modules, then waits on
a Unix socket.  For each gateway the master sends the ends of the worker's
pipes (its fds 0, 1 and 2, and the forwarded fd 1 if any) with its current
environment and directory; the template forks, and the child puts them in
place and becomes what ``python -u -c <bootstrap line>`` would be: it reads
the bootstrap line from its stdin.  The template tells the master each
child's pid and, when the child ends, its exit status.  It ends when the
master closes the socket, or dies.

Both sides are here; the template side (template_main) only uses the
standard library.  Messages are marshal dumps, one per SOCK_SEQPACKET
packet:

    template -> master  ("ready", [(module, error), ...])  preloads that failed
    master -> template  {"env": ..., "cwd": ..., "nobytecode": ...} + fds
    template -> master  ("forked", pid) or ("failed", text)
    template -> master  ("exit", pid, returncode)
"""

from __future__ import annotations

import marshal
import os
import sys

# (signal and socket are imported where they are used: every process that
# imports execnet imports this module, workers too, which import little)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from typing import Tuple

    TemplateKey = Tuple[Tuple[str, ...], Tuple[Tuple[str, str], ...]]

ENV = "EXECNET_FORK"
PRELOAD_ENV = "EXECNET_FORK_PRELOAD"

_ON = ("1", "yes", "true", "on")
_OFF = ("", "0", "no", "false", "off")

# seconds the template may take to import the preload modules, and to
# answer a fork request
READY_TIMEOUT = 120.0
REQUEST_TIMEOUT = 30.0

_MAX_PACKET = 1 << 20
_MAX_FDS = 4
# where the forwarded fd 1 sits in a forked worker until init_popen_io
# moves it to fd 1
OUTPUT_FD = 3


def _flag(value, where: str) -> bool:
    if value is True:
        return True
    if isinstance(value, str) and value.lower() in _ON:
        return True
    if isinstance(value, str) and value.lower() in _OFF:
        return False
    raise ValueError(f"{where}{value!r}: the value must be 1 or 0")


def _module_names(text: str, where: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{where}{text!r}: {name!r} is not a module name")
    return names


def fork_request(spec) -> tuple[str, ...] | None:
    """The preload list if spec's gateway is to be forked from a template,
    else None.  ``fork`` in the spec wins over the master's EXECNET_FORK;
    ``preload=`` over EXECNET_FORK_PRELOAD (comma-separated module names).
    Bad values raise ValueError."""
    if spec.fork is not None:
        wanted = _flag(spec.fork, "fork=")
    else:
        wanted = _flag(os.environ.get(ENV, ""), ENV + "=")
    if spec.preload is not None:
        if not isinstance(spec.preload, str):
            raise ValueError("preload needs a value (preload=module,...)")
        preload = _module_names(spec.preload, "preload=")
    else:
        preload = _module_names(os.environ.get(PRELOAD_ENV, ""), PRELOAD_ENV + "=")
    if not wanted or not spec.popen:
        return None
    return preload


def cannot_fork(spec, execmodel_backend: str) -> str:
    """Why spec's gateway is not forked although asked to ("" if it can)."""
    if not sys.platform.startswith("linux"):
        return "forked gateways need Linux"
    if spec.via:
        return "a gateway via another one is started by that one"
    if spec.python:
        return "python= names another interpreter than the master's"
    if execmodel_backend not in ("thread", "main_thread_only"):
        return "forked gateways need the thread or main_thread_only model in the master"
    return ""


_said: set[str] = set()


def say_once(reason: str) -> None:
    """Tell the user, once per text, why forking is not (all) done."""
    if reason in _said:
        return
    _said.add(reason)
    from .gateway_base import trace

    trace("fork: " + reason)
    sys.stderr.write(f"execnet: {reason}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# The master's side
# ---------------------------------------------------------------------------


class ForkedProcess:
    """A worker forked by the template, used as a Popen object is: pid,
    returncode, poll(), wait(timeout), send_signal(), terminate(), kill().
    It is the template's child, so its status comes from the template; if
    the template is gone first, wait() watches the pid instead."""

    def __init__(self, pid: int, template: Template) -> None:
        import threading

        self.pid = pid
        self.returncode: int | None = None
        self._template = template
        self._ended = threading.Event()

    def _end(self, returncode) -> None:
        self.returncode = returncode
        self._ended.set()

    def poll(self):
        return self.returncode

    def wait(self, timeout: float | None = None):
        import subprocess
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended.is_set():
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(["forked worker", str(self.pid)], timeout or 0.0)
            if self._template.gone.is_set():
                # an orphan now: its status is lost
                if not _running(self.pid):
                    self._end(None)
                    break
                left = min(left, 0.02)
            # (the template's reader sets _ended, or gone within 0.1 s)
            self._ended.wait(left)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self._ended.is_set():
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether process pid is there and not a zombie (which a reaper that
    is not its parent may be slow to reap, or never)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # the state follows the command's closing parenthesis
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


class TemplateError(Exception):
    """The template could not be started or did not fork."""


def template_argv(line: str) -> list[str]:
    """The template's command line: the master's interpreter, as popen's."""
    return [sys.executable, "-u", "-c", line]


class Template:
    """The master's handle of one template process."""

    def __init__(self, preload: tuple[str, ...]) -> None:
        import socket
        import subprocess
        import threading

        from .gateway_bootstrap import importdir

        self.preload = preload
        self.gone = threading.Event()
        self._gone_cond = threading.Condition()
        self._lock = threading.Lock()  # one fork request at a time
        self._replies: list[tuple[Any, ...]] = []
        self._processes: dict[int, ForkedProcess] = {}
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        line = (
            "import sys;"
            f"sys.path[:1] == [{importdir!r}] or sys.path.insert(0, {importdir!r});"
            "from execnet.gateway_fork import template_main as _template_main;"
            f"_template_main({fd}, {list(preload)!r});"
            "del _template_main;"
            "exec(eval(sys.stdin.readline()))"
        )
        try:
            self.popen = subprocess.Popen(
                template_argv(line),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(fd,),
            )
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self._reader: threading.Thread | None = None
        self.failed_preloads: list[tuple[str, str]] | None = None

    def wait_ready(self) -> None:
        """Wait until the template has imported its preload modules (it
        starts doing so at once; a thread reads its replies from the first
        call on).  TemplateError if it does not get there."""
        import threading

        if self.failed_preloads is not None:
            return
        if self._reader is None:
            self._reader = threading.Thread(
                target=self._read_replies, name="execnet-fork-template", daemon=True
            )
            self._reader.start()
        reply = self._reply(READY_TIMEOUT)
        if reply[0] != "ready":
            self.close()
            raise TemplateError(f"the template did not start: {reply[1]}")
        self.failed_preloads = reply[1]

    def _read_replies(self) -> None:
        try:
            while True:
                data = self.sock.recv(_MAX_PACKET)
                if not data:
                    break
                message = marshal.loads(data)
                if message[0] == "exit":
                    process = self._processes.pop(message[1], None)
                    if process is not None:
                        process._end(message[2])
                    continue
                if message[0] == "forked":
                    # the object, not the pid: its exit may come next
                    process = ForkedProcess(message[1], self)
                    self._processes[message[1]] = process
                    message = ("forked", process)
                with self._gone_cond:
                    self._replies.append(message)
                    self._gone_cond.notify_all()
        except (OSError, EOFError, ValueError, TypeError, IndexError):
            pass
        finally:
            with self._gone_cond:
                self.gone.set()
                self._gone_cond.notify_all()

    def _reply(self, timeout: float):
        with self._gone_cond:
            ended = self._gone_cond.wait_for(
                lambda: self._replies or self.gone.is_set(), timeout
            )
            if self._replies:
                return self._replies.pop(0)
        if not ended:
            return ("timeout", f"no answer within {timeout} s")
        status = self.popen.poll()
        return ("gone", f"the template ended (exit status {status})")

    def spawn(self, fds: list[int], nobytecode: bool) -> ForkedProcess:
        """Fork a worker whose fds 0, 1, 2 (and OUTPUT_FD) are fds."""
        try:
            cwd: str | None = os.getcwd()
        except OSError:
            cwd = None  # removed: the worker stays where the template is
        request = {"env": dict(os.environ), "cwd": cwd, "nobytecode": nobytecode}
        with self._lock:
            if self.gone.is_set():
                raise TemplateError("the template has ended")
            try:
                _send_fds(self.sock, marshal.dumps(request), fds)
            except OSError as exc:
                raise TemplateError(f"the template did not take the request: {exc}") from None
            reply = self._reply(REQUEST_TIMEOUT)
            if reply[0] == "timeout":
                # a late answer would be taken as the next request's
                self.close()
        if reply[0] != "forked":
            raise TemplateError(f"the template did not fork: {reply[1]}")
        process: ForkedProcess = reply[1]
        return process

    def close(self) -> None:
        """End the template (its workers go on until their gateways end)."""
        import socket
        import subprocess

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        if self._reader is not None:
            self._reader.join(5.0)
        self.sock.close()


# What a template is for (TemplateKey): its preload list, and the
# environment variables an interpreter reads as it starts (a worker forked
# from a template that started with other ones would not be the interpreter
# a popen gateway starts: another PYTHONPATH, sitecustomize, locale, core).

# read by each forked worker itself (_become_worker), not at the template's start
_PER_WORKER = ("PYTHONDONTWRITEBYTECODE",)


def template_key(preload: tuple[str, ...], environ=os.environ) -> TemplateKey:
    """The key of the template that forks workers for preload now."""
    startup = tuple(
        sorted(
            (name, value)
            for name, value in environ.items()
            if (name.startswith("PYTHON") and name not in _PER_WORKER)
            or name.startswith("LC_")
            or name in ("LANG", "LANGUAGE", "EXECNET_PUREPYTHON")
        )
    )
    return preload, startup


# templates started at import (prestart), by key
_prestarted: dict[TemplateKey, Template] = {}


def prestart() -> None:
    """Start the template of EXECNET_FORK_PRELOAD now if EXECNET_FORK is on,
    so that it has done its imports when the first gateway is made (a
    master imports execnet well before it makes gateways, pytest-xdist's
    at its plugin's import).  Not in a worker or template (their argv is
    ["-c"]), nor with a value that makegateway() would refuse."""
    if sys.argv[:1] == ["-c"] or not sys.platform.startswith("linux"):
        return
    try:
        if not _flag(os.environ.get(ENV, ""), ""):
            return
        preload = _module_names(os.environ.get(PRELOAD_ENV, ""), "")
        _prestarted[template_key(preload)] = Template(preload)
    except (ValueError, OSError):
        pass  # makegateway() says what is wrong


def take_prestarted(key: TemplateKey) -> Template | None:
    """The template prestart() started for key, if it is still there."""
    template = _prestarted.pop(key, None)
    if template is not None and template.popen.poll() is not None:
        template.close()
        return None
    return template


def _send_fds(sock, data: bytes, fds: list[int]) -> None:
    import array
    import socket

    fd_array = array.array("i", fds)
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd_array.tobytes())])


def _receive_fds(sock):
    """(data, fds) of one packet; (b"", []) at the end."""
    import array
    import socket

    fd_size = array.array("i").itemsize
    data, ancillary, flags, _ = sock.recvmsg(_MAX_PACKET, socket.CMSG_SPACE(_MAX_FDS * fd_size))
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fd_size])
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError("truncated fork request")
    return data, list(fds)


class ForkedIO:
    """Makes the Popen2IOMaster of a worker forked by a template."""

    @staticmethod
    def create(template: Template, spec, execmodel, output=None, prefix=""):
        from . import gateway_output
        from .gateway_io import Popen2IOMaster

        io = Popen2IOMaster.__new__(Popen2IOMaster)
        mine: list[int] = []  # the master's ends
        theirs: list[int] = []  # the worker's, closed here once sent

        def pipe(worker_reads: bool) -> int:
            read_end, write_end = os.pipe()
            ours, worker = (write_end, read_end) if worker_reads else (read_end, write_end)
            mine.append(ours)
            theirs.append(worker)
            return ours

        try:
            stdin_w = pipe(worker_reads=True)
            stdout_r = pipe(worker_reads=False)
            if output is None:
                theirs.append(2)  # the master's own stderr
            else:
                err_r = pipe(worker_reads=False)
                out_r = pipe(worker_reads=False)
            io.popen = template.spawn(theirs, bool(spec.dont_write_bytecode))
        except BaseException:
            for fd in mine:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                if fd != 2:
                    os.close(fd)
        outfile = os.fdopen(stdin_w, "wb")
        infile = os.fdopen(stdout_r, "rb")
        super(Popen2IOMaster, io).__init__(outfile, infile, execmodel=execmodel)
        if output is not None:
            io.output_fd = OUTPUT_FD
            io._output_done = gateway_output.forward(out_r, err_r, prefix)
        return io


# ---------------------------------------------------------------------------
# The template's side: it runs nothing but this and the preload imports
# ---------------------------------------------------------------------------


def template_main(fd: int, preload: list[str]) -> None:
    """Serve fork requests on the socket at fd; return only in a forked
    child, ready to read the bootstrap line."""
    import gc
    import select
    import signal
    import socket

    sock = socket.socket(fileno=fd)
    sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the master's
    import execnet.backend  # noqa: F401  (the core, C or portable)

    failed = []
    for name in preload:
        try:
            __import__(name)
        except Exception as exc:
            failed.append((name, f"{type(exc).__name__}: {exc}"))
    if "pytest" in preload and "pytest" in sys.modules:
        _import_pytest_plugins()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, _ignore_signal)

    def send(message) -> None:
        try:
            sock.send(marshal.dumps(message))
        except OSError:
            os._exit(0)  # the master is gone

    send(("ready", failed))
    while True:
        try:
            readable = select.select([sock, wake_r], [], [])[0]
        except InterruptedError:
            continue
        if wake_r in readable:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        _report_ended(send)
        if sock not in readable:
            continue
        try:
            data, fds = _receive_fds(sock)
        except (OSError, ValueError) as exc:
            send(("failed", repr(exc)))
            continue
        if not data:
            os._exit(0)  # the master closed the socket, or ended
        try:
            request = marshal.loads(data)
            # what the template has is there for good: the workers' gc
            # leaves it alone, and does not copy its pages by touching it
            gc.freeze()
            pid = os.fork()
        except Exception as exc:
            for received in fds:
                os.close(received)
            send(("failed", repr(exc)))
            continue
        if pid == 0:
            sock.close()
            os.close(wake_r)
            os.close(wake_w)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, sigint)
            _become_worker(fds, request)
            return
        for received in fds:
            os.close(received)
        send(("forked", pid))


def _import_pytest_plugins() -> None:
    """The plugins every pytest session loads, which ``import pytest`` does
    not import (a worker's pytest would, at its start)."""
    import importlib

    try:
        default_plugins = importlib.import_module("_pytest.config").default_plugins
    except (ImportError, AttributeError):
        return
    for name in default_plugins:
        try:
            __import__("_pytest." + name)
        except Exception:
            pass  # the worker's pytest says what is wrong, if it is


def _ignore_signal(signum, frame) -> None:
    pass  # SIGCHLD: the wakeup fd wakes the loop


def _report_ended(send) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSIGNALED(status):
            code = -os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
        send(("exit", pid, code))


def _become_worker(fds: list[int], request: dict[str, Any]) -> None:
    """In the forked child: its own process group, the received fds at
    0, 1, 2 (and OUTPUT_FD), the master's environment and directory."""
    import fcntl

    os.setpgid(0, 0)
    # out of the way of the targets first
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(high):
        os.dup2(fd, target)
        os.close(fd)
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    if request["cwd"] is not None:
        try:
            os.chdir(request["cwd"])
        except OSError:
            pass
    sys.dont_write_bytecode = bool(request["nobytecode"] or env.get("PYTHONDONTWRITEBYTECODE"))

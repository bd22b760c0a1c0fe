"""Forwarded worker output: what popen workers write to their fds 1 and 2,
copied line by line to the master's fds 1 and 2 by one thread per process.

Master side only (never shipped).  The channel pipes are not involved:
each forwarding worker gets two pipes of its own, and one thread polls the
read ends of all of them, so the C core's IO threads keep their pipes to
themselves.  Only whole lines are written out, each run of lines in one
write by that one thread, so two workers' bytes never share a line.
"""

from __future__ import annotations

import os
import select
import sys
import threading

ENV = "EXECNET_FORWARD_OUTPUT"

# spec values of output=: forward (as is), prefix (each line begins with
# "[<gateway id>] "), discard (to the null device, as without forwarding)
SPEC_VALUES = ("forward", "prefix", "discard")
# EXECNET_FORWARD_OUTPUT values
ENV_VALUES = {"": None, "0": None, "1": "forward", "forward": "forward", "prefix": "prefix"}

# A line longer than this goes out in pieces of this size (what is
# buffered per stream stays bounded; another worker's line may then come
# between two pieces).
MAX_LINE = 1 << 20
READ_SIZE = 1 << 16


def output_mode(spec, execmodel_backend: str):
    """How the gateway for spec forwards output: None (not at all),
    "forward" or "prefix".  ``output=`` in the spec wins over the master's
    EXECNET_FORWARD_OUTPUT; the variable applies to the gateways that can
    forward (local popen ones without via=) and is ignored by others,
    while the spec key on another gateway raises ValueError."""
    value = spec.output
    if value is not None:
        if value not in SPEC_VALUES:
            raise ValueError(
                "output=%r: the value must be one of %s" % (value, ", ".join(SPEC_VALUES))
            )
        if value == "discard":
            return None
        reason = _cannot_forward(spec, execmodel_backend)
        if reason:
            raise ValueError("output=%s: %s" % (value, reason))
        return value
    text = os.environ.get(ENV, "")
    if text not in ENV_VALUES:
        raise ValueError(
            "%s=%r: the value must be 1 or prefix (0 or empty: off)" % (ENV, text)
        )
    mode = ENV_VALUES[text]
    if mode is None or _cannot_forward(spec, execmodel_backend):
        return None
    return mode


def _cannot_forward(spec, execmodel_backend: str) -> str:
    """Why the gateway for spec cannot forward output ("" if it can)."""
    if not spec.popen or spec.via:
        return "only local popen gateways without via= forward output"
    if sys.platform == "win32":
        return "forwarding output needs POSIX pipes"
    if execmodel_backend not in ("thread", "main_thread_only"):
        return "forwarding output needs the thread or main_thread_only model in the master"
    return ""


class _Stream:
    """One read end: a worker's fd 1 or 2 on its way to ours."""

    def __init__(self, fd: int, target: int, prefix: bytes, done: threading.Event) -> None:
        self.fd = fd
        self.target = target
        self.prefix = prefix
        self.pending = bytearray()  # the unfinished last line
        self.done = done  # set once both streams of the worker ended


class Forwarder:
    """The thread that copies every forwarding worker's output."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._poll = select.poll()
        self._wakeup_r = self._wakeup_w = -1
        self._pid = -1

    def _start(self) -> None:
        # (called with the lock held) once per process, again after a fork
        self._streams = {}
        self._poll = select.poll()
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_w, False)
        self._poll.register(self._wakeup_r, select.POLLIN)
        self._pid = os.getpid()
        thread = threading.Thread(target=self._run, name="execnet-output", daemon=True)
        thread.start()

    def add(self, out_fd: int, err_fd: int, prefix: bytes) -> threading.Event:
        """Forward out_fd to our fd 1 and err_fd to our fd 2 (taking both
        descriptors); the event is set once both reached their end."""
        done = threading.Event()
        with self._lock:
            if self._pid != os.getpid():
                self._start()
            for fd, target in ((out_fd, 1), (err_fd, 2)):
                self._streams[fd] = _Stream(fd, target, prefix, done)
                self._poll.register(fd, select.POLLIN)
            try:
                os.write(self._wakeup_w, b"x")  # poll() again, with these
            except BlockingIOError:
                pass  # a wakeup is pending anyway
        return done

    def _run(self) -> None:
        while True:
            try:
                events = self._poll.poll()
            except InterruptedError:  # (retried by Python since 3.5)
                continue
            for fd, _ in events:
                if fd == self._wakeup_r:
                    os.read(fd, 4096)
                    continue
                with self._lock:
                    stream = self._streams.get(fd)
                if stream is not None:
                    self._pump(stream)

    def _pump(self, stream: _Stream) -> None:
        try:
            data = os.read(stream.fd, READ_SIZE)
        except OSError:
            data = b""
        if data:
            stream.pending += data
            end = stream.pending.rfind(b"\n") + 1
            if end == 0 and len(stream.pending) >= MAX_LINE:
                end = len(stream.pending)
            if end:
                self._emit(stream, bytes(stream.pending[:end]))
                del stream.pending[:end]
            return
        # the end of the stream: its unfinished last line gets a line end,
        # so that another worker's next line does not continue it
        if stream.pending:
            self._emit(stream, bytes(stream.pending) + b"\n")
            stream.pending.clear()
        with self._lock:
            self._poll.unregister(stream.fd)
            del self._streams[stream.fd]
            others = [s for s in self._streams.values() if s.done is stream.done]
        os.close(stream.fd)
        if not others:
            stream.done.set()

    def _emit(self, stream: _Stream, data: bytes) -> None:
        if stream.prefix:
            lines = data.splitlines(keepends=True)
            data = b"".join(stream.prefix + line for line in lines)
        view = memoryview(data)
        while view:
            try:
                written = os.write(stream.target, view)
            except OSError:
                return  # our fd is closed or broken: the output is dropped
            view = view[written:]


_forwarder = Forwarder()


def forward(out_fd: int, err_fd: int, prefix: str = "") -> threading.Event:
    """Copy what arrives on out_fd to our fd 1, on err_fd to our fd 2, each
    line (optionally prefixed) whole; the descriptors are closed at their
    end, when the returned event is set."""
    return _forwarder.add(out_fd, err_fd, prefix.encode("utf-8", "replace"))

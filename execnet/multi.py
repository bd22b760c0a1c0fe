"""Groups of gateways, channels of several gateways, and termination."""

from __future__ import annotations

import atexit
import threading
import time

from . import backend
from . import gateway_base
from . import gateway_bootstrap
from . import gateway_fork
from . import gateway_io
from . import gateway_output
from .backend import get_execmodel
from .gateway_base import NO_ENDMARKER_WANTED
from .gateway_base import RemoteError
from .gateway_base import WorkerPool
from .gateway_base import trace
from .xspec import XSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    import types
    from typing import Any
    from typing import Callable
    from typing import Iterable
    from typing import Iterator
    from typing import Sequence

    from .gateway import Gateway
    from .gateway_base import Channel
    from .gateway_base import ExecModel

# the remote part of makegateway's chdir/nice/env handling (the spec's keys)
_REMOTE_SETUP = """
import os
path, nice, env = channel.receive()
if path:
    if not os.path.exists(path):
        os.mkdir(path)
    os.chdir(path)
if nice and hasattr(os, "nice"):
    os.nice(nice)
for name, value in env.items():
    os.environ[name] = value
"""


class Group:
    """Gateways that share one local execution model."""

    defaultspec = "popen"

    def __init__(
        self, xspecs: Iterable[XSpec | str | None] = (), execmodel: str = "thread"
    ) -> None:
        self._gateways: list[Gateway] = []
        self._autoidcounter = 0
        self._autoidlock = threading.Lock()
        self._gateways_to_join: list[Gateway] = []
        # fork templates by preload list and startup environment
        # (gateway_fork.template_key), made on first use
        self._fork_templates: dict[gateway_fork.TemplateKey, gateway_fork.Template] = {}
        self._fork_lock = threading.Lock()
        self.set_execmodel(execmodel)
        for xspec in xspecs:
            self.makegateway(xspec)
        atexit.register(self._cleanup_atexit)

    @property
    def execmodel(self) -> ExecModel:
        """The execution model of our side of the group's gateways."""
        return self._execmodel

    @property
    def remote_execmodel(self) -> ExecModel:
        """The execution model of the workers of new gateways (unless their
        spec names one)."""
        return self._remote_execmodel

    def set_execmodel(self, execmodel: str, remote_execmodel: str | None = None) -> None:
        """Set the local and remote execution models (before any gateway)."""
        if self:
            raise ValueError(
                "can not set execution models if gateways have been created already"
            )
        if remote_execmodel is None:
            remote_execmodel = execmodel
        self._execmodel = get_execmodel(execmodel)
        self._remote_execmodel = get_execmodel(remote_execmodel)

    def __repr__(self) -> str:
        return "<Group %r>" % [gw.id for gw in self._gateways]

    def __getitem__(self, key: int | str | Gateway) -> Gateway:
        if isinstance(key, int):
            return self._gateways[key]
        for gw in self._gateways:
            if gw == key or gw.id == key:
                return gw
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]  # any key: KeyError if not ours
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._gateways)

    def __iter__(self) -> Iterator[Gateway]:
        return iter(list(self._gateways))

    def makegateway(self, spec: XSpec | str | None = None) -> Gateway:
        """Start a gateway for spec, add it to this group and return it.

        :param spec: an ``XSpec`` or its text, e.g. ``"popen"``,
            ``"ssh=host//python=python3"``, ``"socket=host:port"`` or
            ``"popen//via=gw0"``; ``None`` uses ``defaultspec``.  Without an
            ``id`` the gateway gets the next ``gw<N>``; an id the group has
            already raises ``AssertionError`` before any process starts.
            ``chdir``, ``nice`` and ``env`` are applied in the worker before
            this returns.
        """
        if not spec:
            spec = self.defaultspec
        if not isinstance(spec, XSpec):
            spec = XSpec(spec)
        self.allocate_id(spec)
        if any(gw.id == spec.id for gw in self._gateways):
            # checked before a process exists (execnet checks after, D8)
            raise AssertionError(f"already have gateway with id {spec.id!r}")
        if spec.execmodel is None:
            spec.execmodel = self.remote_execmodel.backend
        # (bad values are refused before a process exists)
        grace = gateway_bootstrap.terminate_grace(spec)
        output = gateway_output.output_mode(spec, self.execmodel.backend)
        preload = gateway_fork.fork_request(spec)
        io: Any = None
        if spec.via:
            assert not spec.socket
            master = self[spec.via]
            proxy_channel = master.remote_exec(gateway_io)
            proxy_channel.send(vars(spec))
            io = gateway_io.ProxyIO(proxy_channel, self.execmodel)
        elif spec.popen or spec.ssh or spec.vagrant_ssh:
            if preload is not None:
                io = self._forked_io(spec, preload, output)
            if io is None:
                io = gateway_io.create_io(spec, execmodel=self.execmodel, output=output)
        elif spec.socket:
            from . import gateway_socket

            io = gateway_socket.create_io(spec, self, execmodel=self.execmodel)
        else:
            raise ValueError(f"no gateway type found for {spec._spec!r}")
        gw = gateway_bootstrap.bootstrap(io, spec)
        gw.spec = spec
        gw._terminate_grace = grace or 0.0
        self._register(gw)
        if spec.chdir or spec.nice or spec.env:
            channel = gw.remote_exec(_REMOTE_SETUP)
            nice = int(spec.nice) if spec.nice else 0
            channel.send((spec.chdir, nice, spec.env))
            channel.waitclose()
        return gw

    def _forked_io(self, spec: XSpec, preload: tuple[str, ...], output: str | None) -> Any:
        """The IO of a worker forked from the group's template for preload,
        or None (after saying why, once) to start it the usual way."""
        reason = gateway_fork.cannot_fork(spec, self.execmodel.backend)
        if reason:
            gateway_fork.say_once(f"popen gateways are not forked: {reason}")
            return None
        try:
            with self._fork_lock:
                key = gateway_fork.template_key(preload)
                template = self._fork_templates.get(key)
                if template is None or template.gone.is_set():
                    template = gateway_fork.take_prestarted(key)
                    if template is None:
                        template = gateway_fork.Template(preload)
                    template.wait_ready()
                    assert template.failed_preloads is not None
                    self._fork_templates[key] = template
                    for name, error in template.failed_preloads:
                        gateway_fork.say_once(
                            f"the fork template could not import {name} ({error});"
                            " its workers import it themselves"
                        )
            prefix = gateway_io.output_prefix(spec, output)
            return gateway_fork.ForkedIO.create(template, spec, self.execmodel, output, prefix)
        except (OSError, gateway_fork.TemplateError) as exc:
            gateway_fork.say_once(f"popen gateways are not forked: {exc}")
            return None

    def _end_fork_templates(self) -> None:
        with self._fork_lock:
            templates = list(self._fork_templates.values())
            self._fork_templates.clear()
        for template in templates:
            template.close()

    def allocate_id(self, spec: XSpec) -> None:
        """Give spec an id ("gw<N>") unless it has one."""
        with self._autoidlock:
            if spec.id is None:
                id = "gw" + str(self._autoidcounter)
                self._autoidcounter += 1
                if id in self:
                    raise ValueError(f"already have gateway with id {id!r}")
                spec.id = id

    def _register(self, gateway) -> None:
        assert not hasattr(gateway, "_group")
        assert gateway.id
        assert gateway.id not in self
        self._gateways.append(gateway)
        gateway._group = self

    def _unregister(self, gateway) -> None:
        self._gateways.remove(gateway)
        self._gateways_to_join.append(gateway)

    def _cleanup_atexit(self) -> None:
        trace(f"=== atexit cleanup {self!r} ===")
        self._terminate_in_this_thread(timeout=1.0)

    def _exit_gateways(self) -> None:
        """exit() the gateways no other gateway goes through (all if none)."""
        vias = {gw.spec.via for gw in self._gateways if gw.spec.via}
        leaves = [gw for gw in self._gateways if gw.id not in vias]
        for gw in leaves or list(self._gateways):
            gw.exit()

    def _terminate_in_this_thread(self, timeout: float) -> None:
        """terminate() without starting a thread, for the atexit handler:
        from 3.12 on an interpreter that is shutting down refuses new
        threads.  The gateways of one round share one timeout, waited for
        one after the other; a process still there at its end is killed."""
        while self._gateways or self._gateways_to_join:
            self._exit_gateways()
            grace = max((_grace_of(gw) for gw in self._gateways_to_join), default=0.0)
            deadline = time.monotonic() + timeout + grace
            for gw in self._gateways_to_join:
                _end_without_threads(gw, deadline)
            self._gateways_to_join[:] = []
        self._end_fork_templates()

    def terminate(self, timeout: float | None = None) -> None:
        """End every gateway of the group: ask each to exit, wait for its
        receiver and process, and kill the processes still there after
        ``timeout`` seconds (``None``: wait as long as it takes).  A gateway
        made with a grace (``grace=`` or EXECNET_TERMINATE_GRACE) gets its
        grace on top of ``timeout``."""

        def join_and_wait(gw):
            gw.join()
            gw._io.wait()

        def kill(gw):
            trace(f"Gateways did not come down after timeout: {gw!r}")
            gw._io.kill()

        while True:
            self._exit_gateways()
            pairs = [
                (
                    lambda gw=gw: join_and_wait(gw),
                    lambda gw=gw: kill(gw),
                    None if timeout is None else timeout + _grace_of(gw),
                )
                for gw in self._gateways_to_join
            ]
            safe_terminate(self.execmodel, timeout, pairs)
            self._gateways_to_join[:] = []
            if not self._gateways:
                break
        self._end_fork_templates()

    def remote_exec(
        self, source: str | types.ModuleType | Callable[..., object], **kwargs: object
    ) -> MultiChannel:
        """``remote_exec(source, **kwargs)`` on every gateway of the group;
        their channels as one MultiChannel."""
        return MultiChannel([gw.remote_exec(source, **kwargs) for gw in self])


class MultiChannel:
    """Several channels used together."""

    _queue: Any  # set by make_receive_queue()

    def __init__(self, channels: Sequence[Channel]) -> None:
        self._channels = channels

    def __len__(self) -> int:
        return len(self._channels)

    def __iter__(self):
        return iter(self._channels)

    def __getitem__(self, key):
        return self._channels[key]

    def __contains__(self, channel) -> bool:
        return channel in self._channels

    def send_each(self, item) -> None:
        """Send item on every channel."""
        for channel in self._channels:
            channel.send(item)

    def receive_each(self, withchannel: bool = False) -> list[Any]:
        """One item from each channel, in order; with ``withchannel`` as
        ``(channel, item)`` pairs.  Not while ``make_receive_queue()`` is in use."""
        assert not hasattr(self, "_queue"), "receive queue in use"
        if withchannel:
            return [(channel, channel.receive()) for channel in self._channels]
        return [channel.receive() for channel in self._channels]

    def make_receive_queue(self, endmarker=NO_ENDMARKER_WANTED):
        """A queue that gets ``(channel, item)`` for every item of every
        channel, by a callback on each (so ``receive()`` is no longer
        possible on them); with ``endmarker``, ``(channel, endmarker)`` when
        a channel ends.  The same queue on every call."""
        try:
            return self._queue
        except AttributeError:
            pass
        self._queue = None
        for channel in self._channels:
            if self._queue is None:
                self._queue = channel.gateway.execmodel.queue.Queue()

            def put(item, channel=channel):
                self._queue.put((channel, item))

            channel.setcallback(put, endmarker=endmarker)
        return self._queue

    def waitclose(self) -> None:
        """Wait for every channel; then raise the first RemoteError seen."""
        first_error = None
        for channel in self._channels:
            try:
                channel.waitclose()
            except RemoteError as exc:
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error


if TYPE_CHECKING:
    from typing import Tuple

    _Pair = Tuple[str, str]
else:
    _Pair = tuple


class BackendInfo(_Pair):
    """(backend, reason): which core runs gateways and serializes (``"c"`` or
    ``"python"``) and, for ``"python"``, why the C core is not active (else
    empty).  A tuple of its own, as typing (NamedTuple) would cost every
    worker its import."""

    __slots__ = ()

    def __new__(cls, backend: str, reason: str) -> BackendInfo:
        return tuple.__new__(cls, (backend, reason))

    @property
    def backend(self) -> str:
        """``"c"`` or ``"python"``."""
        return self[0]

    @property
    def reason(self) -> str:
        """Why the backend is ``"python"``; empty for ``"c"``."""
        return self[1]

    def __repr__(self) -> str:
        return f"BackendInfo(backend={self[0]!r}, reason={self[1]!r})"

    def __str__(self) -> str:
        return self.backend if not self.reason else f"{self.backend}: {self.reason}"


def backend_info(execmodel: str | ExecModel | None = None) -> BackendInfo:
    """The active core, and why it is the portable one if so; for gateways
    of execmodel if one is given (the C core serves the thread models)."""
    name = get_execmodel(execmodel).backend if execmodel is not None else None
    if backend.BACKEND != "c":
        return BackendInfo("python", backend.BACKEND_REASON)
    if name is not None:
        if name not in gateway_base._THREAD_BACKENDS:
            return BackendInfo(
                "python", f"the {name} execmodel runs gateways on the portable core"
            )
    return BackendInfo("c", "")


def _grace_of(gw) -> float:
    """The grace (seconds) gw was made with, 0.0 for the worker's default."""
    return getattr(gw, "_terminate_grace", 0.0)


def _end_without_threads(gw, deadline: float) -> None:
    """Wait for gw's receiver and process until deadline, kill the process
    if it is still there; in the calling thread only."""

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    gw.join(left())
    io = gw._io
    popen = getattr(io, "popen", None)
    if popen is None:
        # sockets, proxied and native ssh connections: their wait() does not
        # block once the connection is over; else they are cut
        if not gw._receiving():
            io.wait()
        else:
            io.kill()
        return
    expired = gw.execmodel.subprocess.TimeoutExpired
    try:
        popen.wait(timeout=left())
        wait_output = getattr(io, "wait_output", None)
        if wait_output is not None:
            wait_output(min(left(), gateway_io.OUTPUT_DRAIN_TIMEOUT))
    except expired:
        trace(f"Gateways did not come down after timeout: {gw!r}")
        io.kill()
        try:
            popen.wait(timeout=1.0)
        except expired:
            pass  # not reaped: the process is killed all the same


def safe_terminate(execmodel, timeout, list_of_paired_functions) -> None:
    """Run each (term, kill) pair concurrently: kill if term overruns timeout.

    A pair may be a triple (term, kill, its own timeout).  All waits are
    bounded by twice the longest timeout, so a hanging kill cannot block
    the caller.  An exception raised by a pair is raised again.
    """
    pool = WorkerPool(execmodel)
    items = [(t[0], t[1], t[2] if len(t) > 2 else timeout) for t in list_of_paired_functions]
    timeouts = [item[2] for item in items]
    if timeout is None or None in timeouts:
        bound = None
    else:
        bound = 2 * max(timeouts, default=timeout)

    def term_or_kill(term, kill, own_timeout):
        reply = pool.spawn(term)
        try:
            reply.get(timeout=own_timeout)
        except OSError:
            kill()

    replies = [pool.spawn(term_or_kill, *item) for item in items]
    for reply in replies:
        try:
            reply.get(timeout=bound)
        except OSError:
            if not reply.running:
                raise
    pool.trigger_shutdown()


default_group = Group()
makegateway = default_group.makegateway
gateway_fork.prestart()
set_execmodel = default_group.set_execmodel

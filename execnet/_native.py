"""The C core's side of the package: classes of the portable core whose hot
paths go through the extension ``execnet._execnet``.

Only local interpreters import this module (a remote that gets the portable
core as source never does); ``execnet.backend`` imports it when it chooses
the C core.  Importing it binds the extension to ``execnet.gateway_base``,
whose ``DUMPFORMAT_VERSION``, ``Unserializer`` and exception classes the C
serializer uses.

What runs where (see doc/architecture.md): a gateway whose IO has plain
file descriptors gets a ``Connection``, whose IO thread reads frames with
the GIL released; data for a channel without callback goes, still
serialized, into that channel's ``ItemQueue`` and is decoded by
``receive()`` in the caller's thread; every other message is passed to
``NativeBaseGateway._dispatch`` (in the IO thread) or, when a thread that
waits reads it, to ``_dispatch_inline``.
"""

from __future__ import annotations

import time
import weakref

from . import _execnet
from . import gateway_base as base
from .gateway_base import ENDMARKER
from .gateway_base import NO_ENDMARKER_WANTED
from .gateway_base import DataFormatError
from .gateway_base import GatewayReceivedTerminate
from .gateway_base import Message
from .gateway_base import TimeoutError
from .gateway_base import init_popen_io as init_popen_io  # the worker's IO: as portable
from .gateway_base import load as load  # reads a stream: the portable reader does

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from typing import Callable

_execnet._install(vars(base))

dumps: Callable[[object], bytes] = _execnet.dumps
loads: Callable[..., Any] = _execnet.loads
dumps_internal: Callable[[object], bytes] = _execnet.dumps_internal
loads_internal: Callable[..., Any] = _execnet.loads_internal


def dump(byteio, obj: object) -> None:
    """Write the serialization of obj (as ``dumps()`` makes it) to byteio."""
    byteio.write(dumps(obj))


# --------------------------------------------------------------------------
# exec models: the thread models wait on the C core's Event
# --------------------------------------------------------------------------


class NativeThreadExecModel(base.ThreadExecModel):
    """The ``thread`` model with the C core's Event (same interface; it
    waits with the GIL released)."""

    def Event(self):
        """A new event of the C core."""
        return _execnet.Event()


class NativeMainThreadOnlyExecModel(base.MainThreadOnlyExecModel):
    """The ``main_thread_only`` model with the C core's Event."""

    def Event(self):
        """A new event of the C core."""
        return _execnet.Event()


_NATIVE_EXECMODELS = {
    "thread": NativeThreadExecModel,
    "main_thread_only": NativeMainThreadOnlyExecModel,
}


def get_execmodel(backend: str | base.ExecModel) -> base.ExecModel:
    """A new ExecModel for a backend name (the C core's for the thread
    models); an ExecModel is returned as it is."""
    if isinstance(backend, str) and backend in _NATIVE_EXECMODELS:
        return _NATIVE_EXECMODELS[backend]()
    return base.get_execmodel(backend)


# --------------------------------------------------------------------------
# channels
# --------------------------------------------------------------------------


class Channel(base.Channel):
    """A channel of a gateway that a C ``Connection`` serves: items wait,
    serialized, in the connection's queue for this id.  (Both serializers
    know a channel by its class's name: it stays ``Channel``.)"""

    def _new_items(self):
        return self.gateway._conn.queue(self.id, ENDMARKER)

    def _pass_on_queued(self, items, callback, endmarker) -> bool:
        payloads, ended = items.pass_on()
        for data in payloads:
            callback(loads_internal(data, self))
        if ended and endmarker is not NO_ENDMARKER_WANTED:
            callback(endmarker)
        return bool(ended)

    def _wait_closed(self, timeout: float | None) -> bool:
        """True once the peer closed, False after timeout seconds.  The
        waiting thread reads the connection itself meanwhile (as receive()
        does), so that the close is handled as it arrives with no other
        thread to wake; not in the thread that dispatches frames."""
        closed = self._receiveclosed
        gateway = self.gateway
        conn = gateway._conn
        if gateway._receiver_ident == gateway.execmodel.get_ident():
            return bool(closed.wait(timeout=timeout))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not closed.is_set():
            mark = conn.dispatched  # before looking: nothing is missed
            if closed.is_set():
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                if not conn.pump(mark, left):  # reading ended
                    return bool(closed.wait(timeout=left))
            except TimeoutError:
                return bool(closed.is_set())
        return True

    def send(self, item: object) -> None:
        """Send item: serialized by the C core straight into the frame it
        writes, with the GIL released while writing."""
        if self._closed:
            raise OSError(f"cannot send to {self!r}")
        gateway = self.gateway
        if gateway._error is not None:
            # the portable path reports the lost connection
            gateway._send(Message.CHANNEL_DATA, self.id, dumps_internal(item))
            return
        try:
            gateway._conn.send(Message.CHANNEL_DATA, self.id, item)
        except OSError as exc:
            if type(exc) is not OSError:
                raise
            raise gateway._cannot_send() from exc

    def receive(self, timeout: float | None = None) -> Any:
        """The next item: waits in the C queue (GIL released) and decodes
        the item in the calling thread; see ``gateway_base.Channel``."""
        items = self._items
        if items is None:
            raise OSError("cannot receive(), channel has receiver callback")
        # decoded here; the end stays in the queue for every receiver
        try:
            item = items.get(timeout, self)
        except DataFormatError as exc:
            self.gateway._fail(exc)
            raise
        if item is ENDMARKER:
            raise self._getremoteerror() or EOFError()
        return item



class NativeChannelFactory(base.ChannelFactory):
    """The channels of a gateway that may be served by a C ``Connection``.

    Items are decoded when received, not when they arrive: the peer's data
    for a channel may come before the item that refers to that channel is
    decoded.  Such channels are made on arrival and kept in ``_unclaimed``
    until a reference claims them; and a reference decoded after its channel
    closed must find that channel, so ``_all`` keeps every channel object.
    """

    def __init__(self, gateway, startcount: int = 1) -> None:
        super().__init__(gateway, startcount)
        self._known_ids: set[int] = set()
        self._unclaimed: dict[int, base.Channel] = {}
        self._all: weakref.WeakValueDictionary[int, base.Channel] = (
            weakref.WeakValueDictionary()
        )

    def new(self, id=None) -> base.Channel:
        """The live channel with this id (a C-backed one when the gateway
        has a connection), created if needed; a new id if None."""
        with self._writelock:
            if self.finished:
                raise OSError(f"connection already closed: {self.gateway!r}")
            if id is None:
                id = self.count
                self.count += 2
            else:
                self._known_ids.add(id)
                channel = self._unclaimed.pop(id, None) or self._all.get(id)
                if channel is not None:
                    return channel
            channel = self._channels.get(id)
            if channel is None:
                if self.gateway._conn is not None:
                    channel = Channel(self.gateway, id)
                    self._all[id] = channel
                else:
                    channel = base.Channel(self.gateway, id)
                self._channels[id] = channel
            return channel


    def _unknown(self, id: int):
        """A channel of the peer not referred to yet (see _unclaimed), or None."""
        if (
            self.gateway._conn is None
            or id in self._known_ids
            or id % 2 == self.count % 2
            or self.finished
        ):
            return None
        channel = self.new(id)
        self._unclaimed[id] = channel
        return channel

    def _queue_item(self, channel, data: bytes) -> None:
        item = self._loads(data, channel)  # corrupt data ends here
        channel._items.put(data if isinstance(channel, Channel) else item)


# --------------------------------------------------------------------------
# gateways
# --------------------------------------------------------------------------


class NativeBaseGateway(base.BaseGateway):
    """A gateway end that a C ``Connection`` serves when its IO allows
    (plain file descriptors, no tracing, a thread execmodel); else it runs
    exactly as the portable one, with the C serializer."""

    # The extension this gateway uses; None makes it run the portable core
    # entirely (the test suite's "portable master").
    _c_core: Any = _execnet
    _conn = None  # the C core's connection, when it serves this gateway
    _ChannelFactory = NativeChannelFactory

    def __init__(self, io, id, _startcount: int = 2) -> None:
        core = self._c_core
        if core is not None:
            self._dumps = core.dumps_internal
            self._loads = core.loads_internal
        super().__init__(io, id, _startcount)

    def _initreceive(self) -> None:
        self._conn = self._native_connection()
        if self._conn is None:
            super()._initreceive()
        else:
            self._receiver_done = self.execmodel.Event()
            self._conn.start()

    def _native_connection(self):
        """A C core connection for our IO, if the C core can serve it."""
        core = self._c_core
        if core is None or base.trace is not base.notrace:
            return None
        if self.execmodel.backend not in base._THREAD_BACKENDS:
            return None  # green threads would not run while C blocks
        native_fds = getattr(self._io, "native_fds", None)
        fds = native_fds() if native_fds is not None else None
        if fds is None:
            return None
        return core.Connection(fds[0], fds[1], self._dispatch, self._dispatch_inline)

    def _dispatch(self, code: int, channelid: int, data) -> None:
        """Handle a message from the C core's IO thread (code -1: the end,
        data is the exception that ended the connection)."""
        self._receiver_ident = self.execmodel.get_ident()
        if code < 0:
            ended_cleanly = isinstance(data, (GatewayReceivedTerminate, KeyboardInterrupt))
            if not ended_cleanly and self._error is None:
                self._error = self._named(data)
            try:
                self._stop_receiving()
            finally:
                self._receiver_done.set()
            return
        self._handle(Message(code, channelid, data))

    def _dispatch_inline(self, code: int, channelid: int, data) -> bool:
        """Handle a message in the thread that read it (one waiting for items,
        or the worker's idle primary thread) rather than the C core's IO
        thread; False leaves it to the IO thread. User callbacks and the end
        of the connection stay with the IO thread."""
        if code == Message.CHANNEL_DATA or code == Message.GATEWAY_TERMINATE:
            return False
        if channelid in self._channelfactory._callbacks:
            return False  # a close calls the endmarker callback
        self._handle(Message(code, channelid, data))
        return True

    def _fail(self, exc: Exception) -> None:
        """Received data was corrupt: end the connection (the C core decodes
        items when they are received, not when they arrive)."""
        if self._error is None:
            self._error = exc
        try:
            self._close_write()
        except OSError:
            pass

    def _receiving(self) -> bool:
        if self._conn is not None:
            return not self._receiver_done.is_set()
        return super()._receiving()

    def _close_write(self) -> None:
        if self._conn is not None:
            self._conn.close_write()
        super()._close_write()

    def _send(self, msgcode: int, channelid: int = 0, data: bytes = b"") -> None:
        conn = self._conn
        if conn is None:
            super()._send(msgcode, channelid, data)
            return
        if self._error is not None:
            raise self._cannot_send()
        try:
            conn.send_raw(msgcode, channelid, data)
        except OSError as exc:
            raise self._cannot_send() from exc

    def _wait_received(self, timeout: float | None) -> None:
        if self._conn is not None:
            self._receiver_done.wait(timeout)
        else:
            super()._wait_received(timeout)

    def _while_idle(self):
        """While the worker's primary thread has no task, it reads the
        connection itself (Connection.pump), so that a task needs no other
        thread to wake it."""
        conn = self._conn
        if conn is None:
            return None
        reading = [True]

        def pump(wakeup) -> None:
            while reading[0] and not wakeup.is_set():
                mark = conn.dispatched  # before looking: nothing is missed
                if not wakeup.is_set() and not conn.pump(mark):
                    reading[0] = False  # reading ended

        return pump


class NativeWorkerGateway(NativeBaseGateway, base.WorkerGateway):
    """The serving end of a connection, on the C core."""


def serve(io, id, grace=None) -> None:
    """Be the worker end of the connection io until it ends (grace: as the
    portable core's serve())."""
    base.trace(f"creating workergateway on {io!r}")
    gateway = NativeWorkerGateway(io, id, _startcount=2)
    if grace is not None:
        gateway._grace = float(grace)
    gateway.serve()


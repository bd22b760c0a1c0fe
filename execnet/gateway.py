"""The master's end of a connection: Gateway, remote_exec and status."""

from __future__ import annotations

import functools
import types

from . import backend
from . import gateway_base
from .gateway_base import Message

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from typing import Callable

    from .xspec import XSpec


if TYPE_CHECKING:
    _ChosenBaseGateway = gateway_base.BaseGateway
else:
    _ChosenBaseGateway = backend.BaseGateway


class Gateway(_ChosenBaseGateway):
    """A connection to one remote interpreter (made by makegateway)."""

    # the seconds of grace its worker was given beyond the default (grace=,
    # EXECNET_TERMINATE_GRACE); Group.terminate() adds them to its timeout
    _terminate_grace = 0.0

    def __init__(self, io: Any, spec: XSpec) -> None:
        super().__init__(io=io, id=spec.id, _startcount=1)
        self.spec = spec
        self._initreceive()

    @property
    def remoteaddress(self):
        """The address of the remote end, as its IO knows it (a socket's
        ``(host, port)``; for a ``via=`` gateway, asked of the gateway in the middle)."""
        return self._io.remoteaddress

    def __repr__(self) -> str:
        try:
            receiving = "receive-live" if self.hasreceiver() else "not-receiving"
            count = str(len(self._channelfactory.channels()))
        except AttributeError:
            receiving, count = "uninitialized", "no"
        try:
            backend = self.execmodel.backend
        except AttributeError:
            backend = "uninitialized"
        return "<{} id={!r} {}, {} model, {} active channels>".format(
            self.__class__.__name__, self.id, receiving, backend, count
        )

    def exit(self) -> None:
        """Ask the worker to end and close our sending side; never waits."""
        self._trace("gateway.exit() called")
        group = getattr(self, "_group", None)
        if group is None or self not in group._gateways:
            self._trace("gateway already unregistered with group")
            return
        group._unregister(self)
        try:
            self._trace("--> sending GATEWAY_TERMINATE")
            self._send(Message.GATEWAY_TERMINATE)
            self._trace("--> io.close_write")
            self._close_write()
        except (ValueError, EOFError, OSError) as exc:
            self._trace("io-error: could not send termination sequence")
            self._trace(" exception: %r" % exc)

    def reconfigure(self, py2str_as_py3str: bool = True, py3str_as_py2str: bool = False) -> None:
        """Set the string coercion for channels created from now on, both sides."""
        self._strconfig = (py2str_as_py3str, py3str_as_py2str)
        self._send(Message.RECONFIGURE, data=self._dumps(self._strconfig))

    def _rinfo(self, update: bool = False) -> RInfo:
        """Facts about the remote interpreter (cached)."""
        if update or not hasattr(self, "_cache_rinfo"):
            channel = self.remote_exec(rinfo_source)
            try:
                self._cache_rinfo = RInfo(channel.receive())
            finally:
                channel.waitclose()
        return self._cache_rinfo

    def hasreceiver(self) -> bool:
        """True while the receiver thread runs."""
        return self._receiving()

    def remote_status(self) -> RInfo:
        """numchannels, numexecuting and execmodel of the remote side."""
        channel = self.newchannel()
        self._send(Message.STATUS, channel.id)
        status = channel.receive()
        # the remote answers without a channel object of its own
        self._channelfactory._local_close(channel.id)
        return RemoteStatus(status)

    def remote_exec(
        self, source: str | types.ModuleType | Callable[..., object], **kwargs: object
    ) -> gateway_base.Channel:
        """Run source in the remote interpreter; return the channel whose
        other end the remote code sees as ``channel``.

        :param source: a string of code (dedented first), a module (its
            source is run) or a pure function, called remotely as
            ``function(channel, **kwargs)``; a function must not use names
            from its enclosing scope.
        :param kwargs: for a function only; values ``dumps()`` accepts.
        """
        call_name = None
        filename = None
        if isinstance(source, (types.ModuleType, types.FunctionType)):
            import inspect  # costly: not imported by workers
        if isinstance(source, types.ModuleType):
            import linecache

            filename = inspect.getsourcefile(source)
            linecache.updatecache(filename or "")  # see edits made since last time
            source = inspect.getsource(source)
        elif isinstance(source, types.FunctionType):
            call_name = source.__name__
            source, filename = _function_source_and_file(source)
        else:
            source = _dedent(str(source))
        if call_name is None and kwargs:
            raise TypeError("can't pass kwargs to non-function remote_exec")
        data = self._dumps((source, filename, call_name, kwargs))
        channel = self.newchannel()
        self._send(Message.CHANNEL_EXEC, channel.id, data)
        return channel

    def remote_init_threads(self, num=None) -> None:
        """Deprecated; does nothing."""
        print("WARNING: remote_init_threads() is a no-operation in execnet-1.2")


@functools.lru_cache(maxsize=256)
def _dedent(source: str) -> str:
    # sent again and again by loops of remote_exec(), often
    import textwrap  # here: a worker that never calls remote_exec saves 3 ms (re)

    return textwrap.dedent(source)


class RInfo:
    """An attribute bag made from a dict."""

    # what _rinfo() holds
    executable: str
    version_info: tuple[int, int, int, str, int]
    platform: str
    cwd: str
    pid: int
    # what remote_status() holds
    numchannels: int
    numexecuting: int
    execmodel: str

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.__dict__.update(kwargs)

    def __repr__(self) -> str:
        info = ", ".join(f"{key}={value}" for key, value in sorted(self.__dict__.items()))
        return f"<RInfo {info!r}>"


RemoteStatus = RInfo


def rinfo_source(channel) -> None:
    """remote_exec task of ``_rinfo()``: send the remote interpreter's
    executable, version, platform, working directory and pid as a dict."""
    import os
    import sys

    channel.send(
        {
            "executable": sys.executable,
            "version_info": tuple(sys.version_info),
            "platform": sys.platform,
            "cwd": os.getcwd(),
            "pid": os.getpid(),
        }
    )


def _find_non_builtin_globals(source: str, codeobj) -> list[str]:
    """Names in source that are neither locals of codeobj nor builtins."""
    import ast
    import builtins

    local_names = set(codeobj.co_varnames)
    return [
        node.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Name)
        and node.id not in local_names
        and node.id not in builtins.__dict__
    ]


def _source_of_function(function) -> str:
    """The source of a pure function, padded to keep its line numbers."""
    return _function_source_and_file(function)[0]


def _function_source_and_file(function) -> tuple[str, str | None]:
    """(source, file name) of a pure function, the source padded to keep its
    line numbers."""
    if function.__name__ == "<lambda>":
        raise ValueError("can't evaluate lambda functions'")
    if function.__closure__:
        raise ValueError("functions with closures can't be passed")
    try:
        return _source_of_code(function.__code__)
    except OSError:
        raise ValueError(f"can't find source file for {function}") from None


@functools.lru_cache(maxsize=256)
def _source_of_code(code: types.CodeType) -> tuple[str, str | None]:
    # A function's code is fixed, and so is its source: loops of
    # remote_exec(function) look it up once (reading and parsing its file
    # took most of each call's time).
    import inspect

    positional = code.co_varnames[: code.co_argcount]
    if not positional or positional[0] != "channel":
        raise ValueError("expected first function argument to be `channel`")
    filename = inspect.getsourcefile(code)
    source = inspect.getsource(code)  # OSError: not found
    import textwrap

    source = textwrap.dedent(source)
    used_globals = _find_non_builtin_globals(source, code)
    if used_globals:
        raise ValueError("the use of non-builtin globals isn't supported", used_globals)
    return "\n" * (code.co_firstlineno - 1) + source, filename

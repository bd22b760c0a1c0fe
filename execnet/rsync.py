"""Directory synchronisation to gateways (doc/rsync.md).

RSync walks a source tree once, streams its structure to every target and
then answers the targets' requests for file content.  The receiving end is
``execnet/rsync_remote.py``, shipped as source to each gateway.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from . import backend
from . import gateway_base
from . import rsync_remote
from .gateway_base import RemoteError
from .rsync_remote import CHUNKED
from .rsync_remote import COPY
from .rsync_remote import LINKS_END
from .rsync_remote import LOCAL_OPTION
from .rsync_remote import STREAM_OPTION
from .rsync_remote import STREAM_VERSION
from .rsync_remote import _md5_file_python
from .rsync_remote import describe_error
from .rsync_remote import host_identity

TYPE_CHECKING = False  # (typing is not imported at run time)
if TYPE_CHECKING:
    import queue
    from typing import Any
    from typing import Callable

    from .gateway import Gateway
    from .gateway_base import BaseGateway

# Files at least this large go out in pieces of this size to receivers that
# accept pieces (ours); whole otherwise, as the protocol has it.
PIECE_SIZE = 4 * 1024 * 1024
# the largest single item the wire format carries
MAX_ITEM = 2**31 - 1
# how often the progress display is redrawn, at most (seconds)
PROGRESS_INTERVAL = 0.2
PROGRESS_ENV = "EXECNET_RSYNC_PROGRESS"
# set to 0 to send file content through the channel even to receivers that
# could copy it from the source directory themselves
LOCAL_ENV = "EXECNET_RSYNC_LOCAL"


class RSyncError(OSError):
    """send() synchronised what it could; ``failures`` lists the rest as
    (gateway, relative path, reason) tuples."""

    def __init__(self, failures) -> None:
        self.failures = list(failures)
        lines = "".join(f"\n  {gw!r}: {path}: {why}" for gw, path, why in self.failures)
        super().__init__(f"{len(self.failures)} entries not synchronised:{lines}")


def _read_file_python(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _file_helpers():
    """(read_file, md5_file): the C core's when our side runs it."""
    core = backend.core
    if core is not None and hasattr(core, "rsync_read_file"):
        return core.rsync_read_file, core.rsync_md5_file
    return _read_file_python, _md5_file_python


def _inside(components) -> bool:
    """Whether the path components name an entry inside a directory."""
    return all(
        isinstance(name, str) and name not in ("", os.curdir, os.pardir) and os.sep not in name
        for name in components
    )


def _put(channel, item) -> None:
    """channel.send(item), unless the channel closed: then its end marker,
    on its way to us, tells what happened."""
    try:
        channel.send(item)
    except OSError:
        if not channel.isclosed():
            raise


class _Target:
    """What send() knows about one receiver."""

    def __init__(self, channel, finishedcallback) -> None:
        self.channel = channel
        self.finishedcallback = finishedcallback
        self.stream = False  # the receiver accepts pieces and reports failures
        self.local = False  # ... and copies files from our source itself
        self.sizes: dict[str, int] = {}  # relative path -> bytes requested
        self.listed = False


class _Progress:
    """Files and bytes acknowledged out of those requested, on stderr."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.files_total = self.bytes_total = 0
        self.files_done = self.bytes_done = 0
        self.shown = 0.0
        self.drawn = False

    def requested(self, size) -> None:
        self.files_total += 1
        self.bytes_total += size
        self.show()

    def acked(self, size) -> None:
        self.files_done += 1
        self.bytes_done += size
        self.show()

    def show(self, final=False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < PROGRESS_INTERVAL:
            return
        self.shown = now
        mib = 1024 * 1024
        self.stream.write(
            f"\rrsync: {self.files_done}/{self.files_total} files, "
            f"{self.bytes_done / mib:.1f}/{self.bytes_total / mib:.1f} MiB"
        )
        if final:
            self.stream.write("\n")
        self.stream.flush()
        self.drawn = True


class RSync:
    """Send a directory tree to one or more gateways.

    callback(kind, size, channel), if given, hears of each target's total
    ("list") and of each file it acknowledged ("ack").  verbose announces
    every file sent on stdout.  progress=True (or EXECNET_RSYNC_PROGRESS=1
    in the environment) shows files and bytes done of the total on stderr.
    """

    def __init__(
        self,
        sourcedir: str | os.PathLike[str],
        callback: Callable[[str, int, Any], object] | None = None,
        verbose: bool = True,
        progress: bool | None = None,
    ) -> None:
        self._sourcedir: str = str(sourcedir)
        self._verbose: bool = verbose
        assert callback is None or callable(callback)
        self._callback = callback
        if progress is None:
            progress = os.environ.get(PROGRESS_ENV, "") not in ("", "0")
        self._progress_wanted = bool(progress)
        self._targets: dict[Any, _Target] = {}  # channel -> _Target
        import queue  # here: importing execnet (every worker does) stays cheaper

        self._receivequeue: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self._links: list[tuple[str, str, str]] = []
        self._failures: list[tuple[Any, str, str]] = []
        self._errors: list[BaseException] = []

    def filter(self, path: str) -> bool:
        """Whether to synchronise the entry at path (a full source path)."""
        return True

    def add_target(
        self,
        gateway: Gateway,
        destdir: str | os.PathLike[str],
        finishedcallback: Callable[[], object] | None = None,
        **options: bool,
    ) -> None:
        """Synchronise to destdir (a path on the remote) at the next send().

        The only option is delete=True: remove entries of destdir that the
        source does not have.
        """
        for name in options:
            assert name == "delete", f"unknown option {name!r}"
        channel = gateway.remote_exec(rsync_remote)
        channel.reconfigure(False, False)
        receivequeue = self._receivequeue

        def itemcallback(item, channel=channel):
            receivequeue.put((channel, item))

        channel.setcallback(itemcallback, endmarker=None)
        wire_options: dict[str, object] = dict(options)
        wire_options[STREAM_OPTION] = STREAM_VERSION
        local = self._local_offer()
        if local is not None:
            wire_options[LOCAL_OPTION] = local
        # (a receiver that failed at once has closed the channel already:
        # send() reports its error)
        _put(channel, (str(destdir), wire_options))
        self._targets[channel] = _Target(channel, finishedcallback)

    def _local_offer(self):
        """The source directory's identity, offered to receivers on this
        machine so that they copy files from it themselves (None: don't)."""
        if os.environ.get(LOCAL_ENV, "") in ("0", "no", "false"):
            return None
        path = os.path.abspath(self._sourcedir)
        try:
            st = os.stat(path)
        except OSError:
            return None
        return {"path": path, "dev": st.st_dev, "ino": st.st_ino,
                "host": host_identity()}

    def send(self, raises: bool = True) -> list[tuple[Any, str, str]] | None:
        """Synchronise to every target added since the last send().

        Returns None when everything was synchronised.  Files that could
        not be read or written are reported and the rest synchronised; then
        RSyncError (an OSError) is raised, or with raises=False the list of
        failures returned.  A target that ended abnormally raises its error.
        """
        if not self._targets:
            if raises:
                raise OSError("no targets available, maybe you are trying call send() twice?")
            return None
        if self._sourcedir[-1:] == os.sep and len(self._sourcedir) > 1:
            self._sourcedir = self._sourcedir[:-1]
        self._failures = []
        self._errors = []
        self._read_file, self._md5_file = _file_helpers()
        self._progress = _Progress(sys.stderr) if self._progress_wanted else None
        try:
            try:
                self._send_directory(self._sourcedir, os.listdir(self._sourcedir))
            except BaseException:
                # the receivers wait for the rest of the tree: end them
                for channel in self._targets:
                    channel.close()
                self._targets.clear()
                raise
            while self._targets:
                channel, item = self._receivequeue.get()
                self._handle(channel, item)
        finally:
            if self._progress is not None and self._progress.drawn:
                self._progress.show(final=True)
        if self._errors:
            raise self._errors[0]
        if self._failures:
            if raises:
                raise RSyncError(self._failures)
            return list(self._failures)
        return None

    # -- phase A: the structure, to every target ----------------------------------

    def _broadcast(self, item) -> None:
        for channel in self._targets:
            _put(channel, item)

    def _send_directory(self, path, entries) -> None:
        names = [name for name in entries if self.filter(os.path.join(path, name))]
        self._broadcast([os.lstat(path).st_mode, *names])
        for name in names:
            self._send_entry(os.path.join(path, name))

    def _send_entry(self, path) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            self._broadcast((None, 0, 0))  # vanished meanwhile
            return
        if stat.S_ISREG(st.st_mode):
            self._broadcast((st.st_mode, st.st_mtime, st.st_size))
        elif stat.S_ISDIR(st.st_mode):
            try:
                entries = os.listdir(path)
            except OSError as exc:
                # leave the destination's copy as it is (None: as for a link)
                relpath = path[len(self._sourcedir) + 1 :].replace(os.sep, "/")
                for channel in self._targets:
                    self._fail(channel, relpath, describe_error(exc))
                self._broadcast(None)
                return
            self._send_directory(path, entries)
        elif stat.S_ISLNK(st.st_mode):
            self._remember_link(path)
            self._broadcast(None)
        else:
            raise ValueError(f"cannot sync {path!r}")

    def _remember_link(self, path) -> None:
        relname = path[len(self._sourcedir) + 1 :]
        target = os.readlink(path)
        try:
            inside = os.path.relpath(target, self._sourcedir)
        except ValueError:
            inside = None
        if (
            inside is not None
            and inside not in (os.curdir, os.pardir)
            and not inside.startswith(os.pardir + os.sep)
        ):
            self._links.append(("linkbase", relname, inside))
        else:
            self._links.append(("link", relname, target))

    # -- phase B: the targets' requests -------------------------------------------

    def _handle(self, channel, item) -> None:
        target = self._targets.get(channel)
        if target is None:
            return  # a target that failed already
        if item is None:
            self._ended(target)
            return
        try:
            command, data = item
        except (TypeError, ValueError):
            self._unexpected(target, item)
            return
        if command == "send":
            try:
                components, checksum = data
                components = list(components)
            except (TypeError, ValueError):
                self._unexpected(target, item)
                return
            self._send_file(target, components, checksum)
        elif command == "ack":
            self._acked(target, data)
        elif command == "xn-acks":
            for relpath in data:
                self._acked(target, relpath)
        elif command == "xn-copying" and target.local:
            for entry in data:
                self._copying(target, entry)
        elif command == "list_done":
            target.listed = True
            if self._callback is not None:
                self._callback("list", sum(target.sizes.values()), channel)
        elif command == "links":
            for link in self._links:
                _put(channel, link)
            _put(channel, LINKS_END)
        elif command == "done":
            del self._targets[channel]
            if target.finishedcallback is not None:
                target.finishedcallback()
            try:
                channel.waitclose()
            except RemoteError as exc:
                self._errors.append(exc)
        elif command == STREAM_OPTION:
            target.stream = data.get("version") == STREAM_VERSION
            target.local = target.stream and data.get("local") is True
        elif command == "xn-failed":
            try:
                relpath, why = data
            except (TypeError, ValueError):
                self._unexpected(target, item)
                return
            self._fail(channel, relpath, why)
        else:
            self._unexpected(target, item)

    def _acked(self, target, relpath) -> None:
        size = target.sizes.get(relpath.replace(os.sep, "/"), 0)
        if self._progress is not None:
            self._progress.acked(size)
        if self._callback is not None:
            self._callback("ack", size, target.channel)

    def _unexpected(self, target, item) -> None:
        self._drop(target, OSError(f"rsync: unexpected message {item!r}"))

    def _drop(self, target, exc) -> None:
        """Give up on target (its receiver misbehaved or ended)."""
        self._targets.pop(target.channel, None)
        self._errors.append(exc)
        target.channel.close()

    def _ended(self, target) -> None:
        """The channel of a target still registered closed."""
        del self._targets[target.channel]
        try:
            target.channel.waitclose()
        except RemoteError as exc:
            self._errors.append(exc)
        else:
            gateway = target.channel.gateway
            self._errors.append(OSError(f"connection unexpectedly closed: {gateway!r} "))

    def _fail(self, channel, relpath, why) -> None:
        self._failures.append((channel.gateway, relpath, why))
        if self._verbose:
            print(f"{channel.gateway!r} !! {relpath}: {why}", file=sys.stderr)

    def _copying(self, target, entry) -> None:
        """A local receiver copies a file from our source directory itself
        (and reports a failure itself): count and announce it. entry is
        (relpath, size), the size our walk sent."""
        try:
            relpath, size = entry
        except (TypeError, ValueError):
            relpath = size = None
        if not (isinstance(relpath, str) and _inside(relpath.split("/"))
                and isinstance(size, int) and size >= 0):
            self._unexpected(target, ("xn-copying", entry))
            return
        self._account(target, relpath, size, announce=True)

    def _send_file(self, target, components, checksum) -> None:
        """Answer a receiver's request for a file's content: the bytes, the
        bytes in pieces, "copy it yourself", or None (unchanged or unreadable)."""
        channel = target.channel
        relpath = "/".join(map(str, components))
        if not _inside(components):
            self._fail(channel, relpath, "refused: the path leaves the source directory")
            _put(channel, None)
            return
        path = os.path.join(self._sourcedir, *components)
        try:
            size = os.stat(path).st_size
            if checksum is not None and self._md5_file(path) == checksum:
                # same content: the receiver only fixes mode and times
                self._account(target, relpath, size, announce=False)
                _put(channel, None)
                return
            if target.local:
                self._account(target, relpath, size, announce=True)
                _put(channel, (COPY, None))
                return
            if target.stream and size >= PIECE_SIZE:
                self._account(target, relpath, size, announce=True)
                self._send_pieces(target, path, relpath)
                return
            data = self._read_file(path)
            if len(data) > MAX_ITEM:
                raise OSError(f"{len(data)} bytes: too large for one item")
        except OSError as exc:
            self._account(target, relpath, 0, announce=False)
            self._fail(channel, relpath, describe_error(exc))
            _put(channel, None)
            return
        self._account(target, relpath, len(data), announce=True)
        _put(channel, data)

    def _account(self, target, relpath, size, announce) -> None:
        """Count a requested file for the callback and the progress display;
        announce it (verbose) if its content goes out."""
        target.sizes[relpath] = size
        if self._progress is not None:
            self._progress.requested(size)
        if announce:
            self._report_send_file(target.channel.gateway, relpath)

    def _send_pieces(self, target, path, relpath) -> None:
        """Send a large file as pieces ended by None (or False on failure)."""
        channel = target.channel
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            self._fail(channel, relpath, describe_error(exc))
            _put(channel, None)
            return
        _put(channel, (CHUNKED, None))
        try:
            while True:
                piece = os.read(fd, PIECE_SIZE)
                if not piece:
                    break
                _put(channel, piece)
        except OSError as exc:
            self._fail(channel, relpath, describe_error(exc))
            _put(channel, False)
        else:
            _put(channel, None)
        finally:
            os.close(fd)

    def _report_send_file(self, gateway: BaseGateway, modified_rel_path: str) -> None:
        """Announce a file whose content is being sent (when verbose)."""
        if self._verbose:
            print(f"{gateway!r} <= {modified_rel_path}")

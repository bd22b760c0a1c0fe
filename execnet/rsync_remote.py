"""The receiving end of RSync (doc/rsync.md), run on the remote side.

RSync.add_target() ships this file's source with ``remote_exec(module)``,
so it depends on nothing but the standard library and the ``channel`` the
remote interpreter provides.  When the remote happens to run our C core, its
file helpers (MD5, whole-file writes without the GIL) are used; otherwise
the pure-Python ones below do the same.

Speaks the reference protocol with any master.  With a master that offers
the "xn-stream" option (ours), it also accepts large files in pieces and
reports each file it could not write, instead of one error at the end.
"""

import collections
import os
import stat
import sys
import time

TYPE_CHECKING = False  # (typing is not imported at run time)
if TYPE_CHECKING:
    from typing import Any, Deque

# the option a master sets to offer our extensions, and our answer
STREAM_OPTION = "xn-stream"
STREAM_VERSION = 1
# the option offering the master's source directory for local copies: a
# dict with its absolute "path", "dev", "ino" and the master's "host"
LOCAL_OPTION = "xn-local"
# the replies announcing a file sent in pieces, or to copy from the source
# directory on this machine (stream mode only)
CHUNKED = "chunked"
COPY = "copy"
# acknowledgements go out in batches of this many, or after this long (s)
ACK_BATCH = 256
ACK_INTERVAL = 0.05
# the writer threads get their work in batches of this many files
JOB_BATCH = 16
# threads writing files, where the execution model allows threads (the
# receiving process's EXECNET_RSYNC_THREADS overrides it; 0: none)
WRITER_THREADS = 2
# the sender's last item of the tree's links
LINKS_END = 42


def describe_error(exc):
    """How a failure is reported: "ExceptionClass: message"."""
    return f"{type(exc).__name__}: {exc}"


def _md5_file_python(path):
    """The raw MD5 digest of the file at path, read in pieces."""
    import hashlib

    digest = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            piece = f.read(1 << 20)
            if not piece:
                return digest.digest()
            digest.update(piece)


# os.open() flags for a file to write: created or truncated, a symlink
# there refused
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_WRITE_FLAGS |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _write_all(fd, data):
    """os.write() data to fd until all of it is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_file_python(path, data, mode, mtime):
    """Write data to path, refusing a symlink there; then, best effort, set
    the permission bits (mode, unless 0) and both times (mtime, unless None)."""
    fd = os.open(path, _WRITE_FLAGS, 0o666)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    _set_metadata(path, mode, mtime)


def _set_metadata(path, mode, mtime):
    """Best effort: permission bits (unless mode is 0/None), then times."""
    try:
        if mode:
            os.chmod(path, mode)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
    except OSError:
        pass


def _copy_file_python(source, path, mode, mtime):
    """Copy the regular file source to path, refusing a symlink at path;
    then set mode and times as _write_file_python does."""
    import shutil

    # O_NONBLOCK: a FIFO put there meanwhile is refused, not waited on for
    # a writer (reads of a regular file do not heed it)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    with open(os.open(source, flags), "rb") as fsrc:
        if not stat.S_ISREG(os.fstat(fsrc.fileno()).st_mode):
            raise OSError(f"not a regular file: {source!r}")
        with open(os.open(path, _WRITE_FLAGS, 0o666), "wb") as fdst:
            shutil.copyfileobj(fsrc, fdst, 1 << 20)
    _set_metadata(path, mode, mtime)


def _file_helpers():
    """(md5_file, write_file, copy_file): our C core's when this
    interpreter runs it."""
    chosen = sys.modules.get("execnet.backend")  # not there: the portable core as source
    core = getattr(chosen, "core", None)
    if core is not None and hasattr(core, "rsync_copy_file"):
        return core.rsync_md5_file, core.rsync_write_file, core.rsync_copy_file
    return _md5_file_python, _write_file_python, _copy_file_python


def host_identity():
    """A name for this machine's boot: source paths are shared with a master
    that reports the same (and finds the same directory under its path)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        import socket

        return socket.gethostname()


def _shared_source(offer):
    """The master's source directory if this process sees the very same
    directory under that path, else None."""
    if not isinstance(offer, dict):
        return None
    path = offer.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != (offer.get("dev"), offer.get("ino")):
        return None
    if offer.get("host") != host_identity():
        return None
    if not os.access(path, os.R_OK | os.X_OK):
        return None  # another user's files: let the master send them
    return path


def _check_name(name):
    """name if it is one plain directory entry name, else raise ValueError."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or os.sep in name
        or (os.altsep and os.altsep in name)
        or "\0" in name
    ):
        raise ValueError(f"rsync: refusing entry name {name!r} from the sender")
    return name


def _check_relpath(relpath):
    """The components of relpath if it stays inside the destination."""
    if not isinstance(relpath, str) or os.path.isabs(relpath):
        raise ValueError(f"rsync: refusing path {relpath!r} from the sender")
    parts = relpath.replace(os.sep, "/").split("/")
    try:
        return [_check_name(part) for part in parts]
    except ValueError:
        raise ValueError(f"rsync: refusing path {relpath!r} from the sender") from None


def _remove(path, st=None):
    """Remove whatever is at path (a directory with its content)."""
    if st is None:
        st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


def _plausible_file_item(mode, mtime, size):
    """Whether a file item's fields have the types and ranges a sender
    produces: a st_mode (or None for a vanished file), a time and a size."""

    def integer(value):
        return isinstance(value, int) and not isinstance(value, bool)

    if mode is None:
        return True
    if not integer(mode) or not 0 <= mode < 1 << 32:
        return False
    if not (integer(mtime) or isinstance(mtime, float)) or not -1e18 < mtime < 1e18:
        return False
    return integer(size) and size >= 0


def _lstat(path):
    try:
        return os.lstat(path)
    except OSError:
        return None


class _Pool:
    """A few threads that write files (the helpers release the GIL, so two
    files are written at once while the main thread receives)."""

    def __init__(self, nthreads, done):
        import queue
        import threading

        self.jobs: "queue.Queue[Any]" = queue.Queue(maxsize=4 * nthreads)
        self.done = done  # relpaths written (a deque: append is thread-safe)
        self.failures = []  # (relpath, exception)
        self.threads = [threading.Thread(target=self.work) for _ in range(nthreads)]
        for thread in self.threads:
            thread.daemon = True
            thread.start()

    def work(self):
        while True:
            batch = self.jobs.get()
            if batch is None:
                return
            for relpath, function, args in batch:
                try:
                    function(*args)
                except BaseException as exc:
                    self.failures.append((relpath, exc))
                else:
                    self.done.append(relpath)

    def submit(self, batch):
        """Write the files of batch, a list of (relpath, function, args)."""
        self.jobs.put(batch)

    def join(self, tick=None):
        """Wait for every job, calling tick() every ACK_INTERVAL meanwhile;
        returns the failures."""
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join(ACK_INTERVAL)
            while thread.is_alive():
                if tick is not None:
                    tick()
                thread.join(ACK_INTERVAL)
        return self.failures


def _threads_allowed(channel):
    """Whether this worker's execution model lets us start OS threads."""
    execmodel = getattr(getattr(channel, "gateway", None), "execmodel", None)
    return getattr(execmodel, "backend", None) in ("thread", "main_thread_only")


class Receiver:
    """Mirrors the sender's tree into destdir (one sync, one channel)."""

    def __init__(self, channel):
        self.channel = channel
        self.md5_file, self.write_file, self.copy_file = _file_helpers()
        first = channel.receive()
        if not (isinstance(first, tuple) and len(first) == 2 and isinstance(first[1], dict)):
            raise ValueError(f"rsync: expected (destdir, options), got {first!r}")
        destdir, options = first
        if not isinstance(destdir, str) or not destdir:
            raise ValueError(f"rsync: bad destination {destdir!r}")
        self.destdir = destdir
        self.delete = bool(options.get("delete"))
        self.stream = options.get(STREAM_OPTION) == STREAM_VERSION
        self.source = _shared_source(options.get(LOCAL_OPTION)) if self.stream else None
        self.pending = []
        self.failures = []
        self.acks = []
        self.acked = 0.0
        self.copying = []  # files being copied locally, not yet announced
        self.batch = []  # jobs for the writer threads, not yet handed over
        self.written: "Deque[str]" = collections.deque()  # files written, not yet acked
        self.pool = None
        self.nthreads = 0
        if _threads_allowed(channel):
            try:
                self.nthreads = int(os.environ.get("EXECNET_RSYNC_THREADS", WRITER_THREADS))
            except ValueError:
                self.nthreads = WRITER_THREADS
        if self.stream:
            hello = {
                "version": STREAM_VERSION,
                "local": self.source is not None,
                "helpers": "python" if self.write_file is _write_file_python else "c",
            }
            channel.send((STREAM_OPTION, hello))

    def fail(self, relpath, exc):
        """Note that relpath could not be synchronised and why."""
        text = describe_error(exc)
        self.failures.append((relpath, text))
        if self.stream:
            self.channel.send(("xn-failed", (relpath, text)))

    # -- the tree --------------------------------------------------------------

    def visit(self, path, components, new_parent=False):
        # in a directory this sync made, nothing exists yet
        """Receive the entry for path and act on it (a directory, a file or a
        symbolic link); new_parent: path's directory was just made."""
        st = None if new_parent else _lstat(path)
        item = self.channel.receive()
        if isinstance(item, list):
            self.directory(path, components, st, item)
        elif isinstance(item, tuple):
            self.file(path, components, st, item)
        elif item is not None:
            raise ValueError(f"rsync: unexpected item {item!r} in the tree")

    def directory(self, path, components, st, item):
        """Make path the directory item describes and visit its entries."""
        if not item or not isinstance(item[0], int):
            raise ValueError(f"rsync: bad directory item {item!r}")
        mode, names = item[0], [_check_name(name) for name in item[1:]]
        try:
            if st is not None and not stat.S_ISDIR(st.st_mode):
                _remove(path, st)
                st = None
            made = st is None
            if made:
                os.makedirs(path)
            if mode:
                os.chmod(path, mode | 0o700)  # keep it writable for us
        except OSError as exc:
            self.fail("/".join(components) or ".", exc)
            self.skip_entries(components, names, exc)
            return
        for name in names:
            self.visit(os.path.join(path, name), [*components, name], made)
        if self.delete:
            self.delete_others(path, components, set(names))

    def skip_entries(self, components, names, exc):
        """Consume the items of the entries of a directory that could not be
        made, and report every file among them."""
        for name in names:
            item = self.channel.receive()
            if isinstance(item, list):
                self.skip_entries([*components, _check_name(name)], item[1:], exc)
            elif isinstance(item, tuple) and item[0] is not None:
                self.fail("/".join([*components, name]), exc)

    def delete_others(self, path, components, keep):
        """Remove the entries of directory path whose names are not in keep."""
        try:
            present = os.listdir(path)
        except OSError as exc:
            self.fail("/".join(components) or ".", exc)
            return
        for name in present:
            if name not in keep:
                try:
                    _remove(os.path.join(path, name))
                except OSError as exc:
                    self.fail("/".join([*components, name]), exc)

    def remove(self, path, relpath, st):
        """Remove what is at path; False (the failure reported) if it stays."""
        try:
            _remove(path, st)
        except OSError as exc:
            self.fail(relpath, exc)
            return False
        return True

    def file(self, path, components, st, item):
        """Decide about the file the item describes: up to date, copied
        locally, or requested from the sender."""
        if len(item) != 3 or not _plausible_file_item(*item):
            raise ValueError(f"rsync: bad file item {item!r}")
        mode, mtime, size = item
        relpath = "/".join(components)
        if mode is None:
            # the source vanished before the sender could look at it
            if self.delete and st is not None:
                self.remove(path, relpath, st)
            return
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            # a hard link to a file elsewhere: writing or chmod-ing it would
            # change the other name too, so it is replaced unless up to date
            if (st.st_size, st.st_mtime) != (size, mtime) or (mode and mode != st.st_mode):
                if not self.remove(path, relpath, st):
                    return
                st = None
        checksum = None
        if st is not None and stat.S_ISREG(st.st_mode):
            if st.st_size != size:
                pass
            elif st.st_mtime != mtime:
                try:
                    checksum = self.md5_file(path)
                except OSError:
                    pass
            elif mode and mode != st.st_mode:
                try:
                    os.chmod(path, mode)
                except OSError as exc:
                    self.fail(relpath, exc)
                return
            else:
                return  # up to date
        elif st is not None and not self.remove(path, relpath, st):
            return
        if checksum is None and self.source is not None:
            # a local copy: start it at once, while the tree is still
            # arriving, and announce it (our master does not answer)
            source = os.path.join(self.source, *components)
            self.do_file(relpath, self.copy_file, source, path, mode or 0, mtime)
            self.copying.append((relpath, size))
            if len(self.copying) >= ACK_BATCH:
                self.announce_copies()
            return
        self.channel.send(("send", (components, checksum)))
        self.pending.append((path, relpath, mode, mtime))

    def announce_copies(self):
        """Tell the sender which files this side copies itself."""
        if self.copying:
            self.channel.send(("xn-copying", self.copying))
            self.copying = []
        self.ack_written()

    # -- the content -----------------------------------------------------------

    def ack(self, relpath):
        """Tell the master a file arrived: at once to a reference master,
        in batches to ours."""
        relpath = relpath.replace("/", os.sep)
        if not self.stream:
            self.channel.send(("ack", relpath))
            return
        self.acks.append(relpath)
        if len(self.acks) >= ACK_BATCH or time.monotonic() - self.acked > ACK_INTERVAL:
            self.flush_acks()

    def ack_written(self):
        """Acknowledge the files written since the last call (each was
        requested or announced before)."""
        while self.written:
            self.ack(self.written.popleft())

    def flush_acks(self):
        """Send the acknowledgements gathered so far."""
        if self.acks:
            self.channel.send(("xn-acks", self.acks))
            self.acks = []
        self.acked = time.monotonic()

    def transfer(self):
        """Receive the requested files' contents, write them and acknowledge
        each."""
        self.submit_batch()
        for path, relpath, mode, mtime in self.pending:
            data = self.channel.receive()
            self.ack_written()
            if data is None:
                _set_metadata(path, mode, mtime)
                self.written.append(relpath)
            elif self.stream and data == (COPY, None) and self.source is not None:
                source = os.path.join(self.source, *relpath.split("/"))
                self.do_file(relpath, self.copy_file, source, path, mode or 0, mtime)
            elif self.stream and data == (CHUNKED, None):
                if self.receive_pieces(path, relpath, mode, mtime):
                    self.written.append(relpath)
            elif isinstance(data, bytes):
                self.do_file(relpath, self.write_file, path, data, mode or 0, mtime)
            else:
                raise ValueError(f"rsync: bad content item for {relpath!r}")
        self.finish_files()
        self.flush_acks()

    def do_file(self, relpath, function, *args):
        """function(*args) on the writer threads, in batches, or now. A
        file written is acked later; an OSError fails it."""
        if self.nthreads > 0:
            self.batch.append((relpath, function, args))
            if len(self.batch) >= JOB_BATCH:
                self.submit_batch()
            return
        try:
            function(*args)
        except OSError as exc:
            self.fail(relpath, exc)
        else:
            self.written.append(relpath)

    def submit_batch(self):
        """Hand the files gathered for writing to the writer threads."""
        if self.batch:
            if self.pool is None:
                self.pool = _Pool(self.nthreads, self.written)
            self.pool.submit(self.batch)
            self.batch = []

    def finish_files(self):
        """Wait for the writer threads; report what they could not write."""
        self.submit_batch()
        pool, self.pool, self.nthreads = self.pool, None, 0
        # acknowledging as they finish keeps a progress display moving
        failures = pool.join(self.ack_written) if pool is not None else ()
        self.ack_written()
        for relpath, exc in failures:
            if not isinstance(exc, OSError):
                raise exc
            self.fail(relpath, exc)

    def receive_pieces(self, path, relpath, mode, mtime):
        """Write a file sent as bytes items ended by None (complete) or
        False (the sender failed) into a temporary name, then rename it.
        Returns whether it was written."""
        head, tail = os.path.split(path)
        partial = os.path.join(head, f".{tail}.xn-partial")
        fd, error = None, None
        try:
            fd = os.open(partial, _WRITE_FLAGS, 0o600)  # (not through a symlink)
        except OSError as exc:
            error = exc
        try:
            while True:
                piece = self.channel.receive()
                if piece is None or piece is False:
                    break
                if not isinstance(piece, bytes):
                    raise ValueError(f"rsync: bad piece for {relpath!r}")
                if error is None:
                    try:
                        _write_all(fd, piece)
                    except OSError as exc:
                        error = exc
        except BaseException:
            # a bad piece, or the sender gone: the partial file goes too
            if fd is not None:
                os.close(fd)
                try:
                    os.unlink(partial)
                except OSError:
                    pass
            raise
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                error = error or exc
        if error is None and piece is None:
            try:
                os.replace(partial, path)
            except OSError as exc:
                error = exc
            else:
                _set_metadata(path, mode, mtime)
                return True
        if fd is not None:
            try:
                os.unlink(partial)
            except OSError:
                pass
        if error is not None:
            self.fail(relpath, error)
        return False

    # -- the links -------------------------------------------------------------

    def links(self):
        """Receive and make the symbolic links, until the sender's end marker."""
        while True:
            item = self.channel.receive()
            if item == LINKS_END and isinstance(item, int):
                return
            if not (isinstance(item, tuple) and len(item) == 3):
                raise ValueError(f"rsync: bad link item {item!r}")
            kind, relpath, target = item
            components = _check_relpath(relpath)
            if not isinstance(target, str):
                raise ValueError(f"rsync: bad link target {target!r}")
            if kind == "linkbase":
                _check_relpath(target)
                target = os.path.join(self.destdir, target)
            elif kind != "link":
                raise ValueError(f"rsync: unknown link kind {kind!r}")
            self.check_parents(components)
            path = os.path.join(self.destdir, *components)
            st = _lstat(path)
            try:
                if st is not None:
                    _remove(path, st)
                os.symlink(target, path)
            except OSError as exc:
                self.fail("/".join(components), exc)

    def check_parents(self, components):
        """Refuse a link whose parent is not a real directory inside the
        destination (a symlink there would lead outside)."""
        path = self.destdir
        for name in components[:-1]:
            path = os.path.join(path, name)
            st = _lstat(path)
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise ValueError(
                    f"rsync: refusing link {'/'.join(components)!r}: "
                    f"{name!r} is not a directory"
                )

    def run(self):
        """Synchronise the destination: the tree, then the contents, then the
        links."""
        try:
            self.visit(self.destdir, [])
            self.announce_copies()
            self.channel.send(("list_done", None))
            self.transfer()
        finally:
            if self.pool is not None:  # an error: let the writers end
                self.pool.join()
        self.channel.send(("links", None))
        self.links()
        self.channel.send(("done", None))
        if self.failures and not self.stream:
            # a reference master learns of them only as the error of the task
            lines = "".join(f"\n  {path}: {text}" for path, text in self.failures)
            raise OSError(f"rsync: {len(self.failures)} entries not synchronised:{lines}")


def serve_rsync(channel):
    """The receiver's remote_exec entry point: synchronise into the
    directory the sender names on channel."""
    Receiver(channel).run()


if __name__ == "__channelexec__":
    serve_rsync(channel)  # type: ignore[name-defined] # noqa: F821

# Types of execnet._execnet, the C core built from csrc/ (module.c,
# serializer.c, unserializer.c, rsync.c, channel.c, event.c and the
# connection's files).  Only local interpreters import it; the portable core
# in gateway_base.py has the same serializer in pure Python.

from typing import Any, Callable, Dict, List, Optional, Tuple, Union, final

from _typeshed import ReadableBuffer, StrOrBytesPath, SupportsRead

# deepest container nesting dumps() and loads() accept
MAX_NESTING: int

# Binds the module to gateway_base's globals: DUMPFORMAT_VERSION is read from
# there at every dumps(), and DumpError, LoadError and TimeoutError are the
# exceptions raised.  Everything below that serializes needs it first.
def _install(namespace: Dict[str, Any], /) -> None: ...

# serializer: the version byte first, as a public dump has it
def dumps(obj: object) -> bytes: ...

# serializer: a message payload, without the version byte
def dumps_internal(obj: object) -> bytes: ...
# bytestring: a bytes-like object, or a stream to read() the dump from
def loads(
    bytestring: Union[ReadableBuffer, SupportsRead[bytes]],
    py2str_as_py3str: bool = False,
    py3str_as_py2str: bool = False,
) -> Any: ...

# channel_or_gateway: what channel references in the payload resolve
# against; strconfig: (py2str_as_py3str, py3str_as_py2str), else the
# owner's own or (False, False)
def loads_internal(
    data: Union[ReadableBuffer, SupportsRead[bytes]],
    channel_or_gateway: object = None,
    strconfig: Optional[Tuple[bool, bool]] = None,
) -> Any: ...

# RSync's file work, the GIL released while reading, hashing and writing
def rsync_md5(data: ReadableBuffer, /) -> bytes: ...
def rsync_md5_file(path: StrOrBytesPath, /) -> bytes: ...
def rsync_read_file(path: StrOrBytesPath, /) -> bytes: ...

# mode 0 leaves the permission bits alone, mtime None the times
def rsync_write_file(
    path: StrOrBytesPath, data: ReadableBuffer, mode: int, mtime: Optional[float], /
) -> None: ...

# returns the number of bytes copied
def rsync_copy_file(
    source: StrOrBytesPath, path: StrOrBytesPath, mode: int, mtime: Optional[float], /
) -> int: ...

# threading.Event's interface; wait() does not hold the GIL
@final
class Event:
    def __new__(cls) -> Event: ...
    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: Optional[float] = None) -> bool: ...

# The serialized items of one channel, filled by the connection's IO thread.
@final
class ItemQueue:
    def __new__(cls, endmarker: object = None) -> ItemQueue: ...
    # the next item decoded (channel references and strconfig from owner),
    # or the endmarker once the queue ended; raises TimeoutError
    def get(self, timeout: Optional[float], owner: object, /) -> Any: ...
    # payload: serialized bytes, or the endmarker, which ends the queue;
    # False if nothing was queued (ended, or passing items on)
    def put(self, payload: Union[ReadableBuffer, object], /) -> bool: ...
    def end(self) -> None: ...
    # stop queueing: (the payloads queued so far, whether the queue ended)
    def pass_on(self) -> Tuple[List[bytes], bool]: ...
    def qsize(self) -> int: ...

# Frames over two file descriptors (owned by the connection from then on).
# dispatch(code, channelid, payload) runs in the IO thread for each frame
# that needs Python, and once at the end as dispatch(-1, 0, exception);
# inline(code, channelid, payload), if given, may take a frame in the
# thread that read it, and returns whether it did.
@final
class Connection:
    def __new__(
        cls,
        rfd: int,
        wfd: int,
        dispatch: Callable[[int, int, Union[bytes, BaseException]], object],
        inline: Optional[Callable[[int, int, bytes], object]] = None,
    ) -> Connection: ...
    def start(self) -> None: ...
    def send(self, code: int, channelid: int, item: object, /) -> None: ...
    def send_raw(self, code: int, channelid: int, payload: ReadableBuffer, /) -> None: ...
    def queue(self, channelid: int, endmarker: object, /) -> ItemQueue: ...
    def forget(self, channelid: int, /) -> None: ...
    def close_write(self) -> None: ...
    # read in this thread while the IO thread is idle, until a frame went to
    # Python since mark (a value of dispatched): True then, False once
    # reading ended; raises TimeoutError
    def pump(self, mark: int, timeout: Optional[float] = None) -> bool: ...
    @property
    def reading(self) -> bool: ...
    @property
    def dispatched(self) -> int: ...

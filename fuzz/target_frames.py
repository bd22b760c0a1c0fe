"""Harness: a hostile peer's byte stream into a Connection's reading side.

Each input is written into a pipe read by a C Connection (csrc/reader.c), with
queues for channels 1 and 3 as a gateway has for channels that receive;
then the pipe is closed. Inputs of even length are read by the IO thread
alone (this thread waits for the end before it empties the queues); for
those of odd length this thread waits on channel 1's queue at once, and
takes the read role while it waits, as Channel.receive does. The
dispatcher decodes every payload that reaches Python, as a gateway's does,
and any error ends the connection, as in a gateway.

Whatever the bytes, the connection must end (dispatch(-1, ...) is called
once), every queue must then deliver its items and its endmarker to the
waiting thread within TIMEOUT seconds, and no exception but the decoders'
own may come out of a queue.
"""

import fcntl
import os
import threading

from common import C, NEVER, Finding, shape

from execnet import _execnet, gateway_base

NAME = "frames"
# room for a big frame (64 KB and more take another path); an input is
# written before anything reads, so it is cut to what the pipe holds
MAX_SIZE = 200000
TIMEOUT = 10.0
QUEUED = (1, 3)
ENDMARKER = gateway_base.ENDMARKER


def _header(code, channelid, length):
    return bytes([code]) + channelid.to_bytes(4, "big") + length.to_bytes(4, "big", signed=True)


TOKENS = [
    _header(4, 1, 2) + b"LQ",
    _header(4, 3, 6) + b"F\x00\x00\x00\x05Q",
    _header(5, 1, 0),
    _header(5, 3, 0),
    _header(7, 1, 0),
    _header(6, 3, 7) + b"LQ",
    _header(2, 0, 0),
    _header(4, 1, -1),
    _header(4, 1, 0x7FFFFFFF),
    _header(99, 1, 0),
    _header(4, 1, 70000),
    b"A\x00\x01\x11\x70",
]


class Target:
    def __init__(self, workdir):
        pass

    def run(self, data: bytes):
        r, w = os.pipe()
        r2, w2 = os.pipe()
        ended = threading.Event()
        ends = []
        frames = []

        def dispatch(code, channelid, payload):
            if code < 0:
                ends.append(payload)
                for q in queues:
                    q.end()
                ended.set()
                return
            frames.append(code)
            if code in (3, 4, 6):
                C["loads_internal"](payload)  # as a gateway would: errors end it

        try:
            conn = _execnet.Connection(r, w2, dispatch)
        except BaseException:
            for fd in (r, w, r2, w2):
                os.close(fd)
            raise
        queues = [conn.queue(channelid, ENDMARKER) for channelid in QUEUED]
        # (the Connection enlarged the pipe where the system lets it)
        data = data[: fcntl.fcntl(w, getattr(fcntl, "F_GETPIPE_SZ", 1032))]
        try:
            os.write(w, data)
        finally:
            os.close(w)
        try:
            conn.start()
            if len(data) % 2 == 0 and not ended.wait(TIMEOUT):
                raise Finding(f"the connection did not end within {TIMEOUT} s")
            results = [self.drain(q, len(data) // 9 + 2) for q in queues]
            if not ended.wait(TIMEOUT):
                raise Finding(f"the connection did not end within {TIMEOUT} s")
        finally:
            os.close(r2)
        if len(ends) != 1:
            raise Finding(f"the end was dispatched {len(ends)} times: {ends!r}")
        end = ends[0]
        if isinstance(end, NEVER):
            raise Finding(f"the connection ended with {end!r}")
        return (type(end).__name__, shape(end), min(len(frames), 3), tuple(results))

    @staticmethod
    def drain(q, most):
        """Items of q until its endmarker: a summary of what came out."""
        kinds = set()
        for _ in range(most + 1):
            try:
                item = q.get(TIMEOUT, None)
            except gateway_base.TimeoutError:
                raise Finding(f"a queue waiter was not woken within {TIMEOUT} s") from None
            except NEVER as exc:
                raise Finding(f"a queue gave {exc!r}") from exc
            except (gateway_base.LoadError, EOFError) as exc:
                kinds.add(type(exc).__name__)
                continue
            if item is ENDMARKER:
                return tuple(sorted(kinds))
            kinds.add("item")
        raise Finding(f"a queue gave more items than {most} frames could hold")

    def close(self):
        pass

"""Writes the seed corpus under fuzz/corpus/: real dumps of values for
loads, real frames for frames, whole sender sessions for rsync. Run it
again after changing it (the files are committed)."""

import os
import shutil
import sys

from execnet import gateway_base

HERE = os.path.dirname(os.path.abspath(__file__))
dumps = gateway_base.PURE_PYTHON_SERIALIZER["dumps"]
dumps_internal = gateway_base.PURE_PYTHON_SERIALIZER["dumps_internal"]
frame = gateway_base._frame

VALUES = [
    None, True, False, 0, 1, -1, 2**31 - 1, -2**31, 2**31, 2**63, -2**63 - 1, 10**30,
    0.0, -0.0, 1.5, float("nan"), float("inf"), 1e-310, 3 + 4j, complex(-0.0, float("nan")),
    b"", b"bytes\x00\xff", "", "text", "\u00e9\u20ac\U0001f600", [], [1, [2, [3]]],
    (), (1, "a", b"b"), {}, {"a": 1, 2: [3], (4,): None}, set(), {1, 2, "x"},
    frozenset({(1, 2), b"z"}), [{"k": (1.0, [None])}, frozenset(), {-1}],
    ("CHANNEL_EXEC", "print(1)", {"x": [1, 2]}), [[[[[[[[[[1]]]]]]]]]],
]


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def loads_corpus():
    for i, value in enumerate(VALUES):
        write("loads", f"{i:03d}-{type(value).__name__}", dumps(value))
    # the py2 string opcodes, which dumps of a py3 interpreter does not write
    write("loads", "900-py2str", b"\x02M\x00\x00\x00\x03abcQ")
    write("loads", "901-py3str", b"\x02N\x00\x00\x00\x03abcQ")


def frames_corpus():
    def data(channelid, value):
        return frame(4, channelid, dumps_internal(value))

    sessions = {
        "data-queued": data(1, [1, "two", b"3"]) + data(3, {"k": 1.5}),
        "data-python": data(7, "for python") + frame(0, 0, b""),
        "close": data(1, 1) + frame(5, 1, b"") + frame(5, 3, b""),
        "close-error": frame(6, 3, dumps_internal("Traceback: boom")),
        "last-message": data(3, None) + frame(7, 3, b""),
        "exec": frame(3, 5, dumps_internal(("print(1)", None, {}))),
        "terminate": data(1, 2) + frame(2, 0, b""),
        "big": data(1, b"x" * 70000),
        "bytes-twice": data(1, b"y" * 20000) * 2,
        "many": b"".join(data(1 + i % 3 * 2, i) for i in range(50)),
        "corrupt-payload": frame(4, 1, b"K\x00\x00\x00\x09Q") + data(3, 1),
        "unknown-code": frame(42, 1, b"LQ"),
        "short-header": data(1, 1) + b"\x04\x00\x00",
    }
    for name, stream in sessions.items():
        write("frames", name, stream)


def rsync_corpus():
    mtime = 1700000000.25
    stream = {"xn-stream": 1}
    sessions = {
        # a tree of one file, its content, no links
        "one-file": [{}, [0o40755, "f"], (0o100644, mtime, 3), b"abc", 42],
        "tree": [
            {}, [0o40755, "a", "sub"], (0o100644, mtime, 0),
            [0o40700, "b", "c"], (0o100600, mtime, 5), (0o100755, mtime, 1),
            b"", b"hello", b"x", ("link", "l", "a"), ("linkbase", "sub/l2", "a"), 42,
        ],
        "stream-chunked": [
            stream, [0o40755, "big", "small"], (0o100644, mtime, 9000),
            (0o100644, mtime, 1), ("chunked", None), b"p" * 4500, b"q" * 4500, None,
            b"s", 42,
        ],
        "stream-failed-piece": [
            stream, [0o40755, "big"], (0o100644, mtime, 10), ("chunked", None),
            b"12345", False, 42,
        ],
        # found by this harness: the partial file stayed behind (and its
        # descriptor open) when the pieces ended with an error
        "bad-piece": [
            stream, [0o40755, "big"], (0o100644, mtime, 10), ("chunked", None),
            b"12345", 7, 42,
        ],
        "sender-gone-mid-pieces": [
            stream, (0o100644, mtime, 10), ("chunked", None), b"12345",
        ],
        "local-copy": [
            {"xn-stream": 1, "xn-local": "SOURCE"}, [0o40755, "f", "a", "sub"],
            (0o100644, mtime, 8), (0o100644, mtime, 0), [0o40755, "b"],
            (0o100644, mtime, 5000), 42,
        ],
        "copy-answer": [
            {"xn-stream": 1, "xn-local": "SOURCE"}, [0o40755, "planted"],
            (0o100644, mtime, 0), ("copy", None), 42,
        ],
        "delete": [
            {"delete": True}, [0o40755, "planted_dir", "keep"], [0o40755],
            (None, None, None), 42,
        ],
        "replace-planted": [
            {}, [0o40755, "planted", "planted_dir"], (0o100644, mtime, 4),
            [0o40755, "inner"], (0o100644, mtime, 2), b"four", b"in", 42,
        ],
        "vanished": [{}, [0o40755, "gone"], (None, None, None), 42],
        "links-only": [{}, [0o40755], ("link", "up", "../../outside"), 42],
    }
    for name, items in sessions.items():
        write("rsync", name, dumps_internal(items))


def main():
    shutil.rmtree(os.path.join(HERE, "corpus"), ignore_errors=True)
    loads_corpus()
    frames_corpus()
    rsync_corpus()
    return 0


if __name__ == "__main__":
    sys.exit(main())

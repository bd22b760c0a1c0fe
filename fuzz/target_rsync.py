"""Harness: a hostile RSync sender against the receiver (rsync_remote.py,
with the C core's file helpers).

An input is a serialized list (the portable dumps_internal) of what the
sender sends after its first message. Its first element, when it is a
dict, is the options of that first message; the destination is always this
harness's. An option "xn-local" whose value is the string "SOURCE" is
replaced by a true offer of the harness's source directory, so that local
copies are reached too. The receiver runs in this thread against a channel
that hands out the messages one by one and raises EOFError after the last
(a sender that went away).

Whatever the messages, the receiver must return or raise an exception, and
nothing outside the destination may change: the work directory holds only
dest (which a sender's tree of one file replaces by a file), source/ (as
made) and outside/ (empty). The destination starts with
two planted symlinks into outside/, which the receiver must replace, never
follow.
"""

import os
import shutil
import stat

from common import NEVER, PURE, Finding, shape

from execnet import rsync_remote

NAME = "rsync"
MAX_SIZE = 8192

NAMES = ["a", "b", "sub", "f", "planted", "planted_dir", ".f.xn-partial", "..", ".", "",
         "/", "a/b", "/etc", "a/../../x", "../outside/x", "nul\0", "x" * 300]
ATOMS = [None, True, False, 0, -1, 42, 0o40755, 0o100644, 0o120777, 0o10644, 0o4755,
         2**31, 2**64, -2**63, 0.0, -1.0, 1e300, float("nan"), float("inf"), b"", b"data",
         b"x" * 100, ("chunked", None), ("copy", None), ("link", "a", "b"),
         ("linkbase", "a", "f"), [], (), {}, {"delete": True}, "SOURCE"] + NAMES


class Channel:
    """What the receiver sees of its channel: the input's messages."""

    def __init__(self, items):
        self.items = iter(items)
        self.sent = 0

    def receive(self, timeout=None):
        try:
            return next(self.items)
        except StopIteration:
            raise EOFError("the sender went away") from None

    def send(self, item):
        PURE["dumps_internal"](item)  # what it sends must go over the wire
        self.sent += 1


class Target:
    def __init__(self, workdir):
        self.root = os.path.join(workdir, "rsync")
        self.dest = os.path.join(self.root, "dest")
        self.source = os.path.join(self.root, "source")
        self.outside = os.path.join(self.root, "outside")
        shutil.rmtree(self.root, ignore_errors=True)
        os.makedirs(os.path.join(self.source, "sub"))
        os.makedirs(self.outside)
        for name, content in (("f", b"source f"), ("a", b""), ("sub/b", b"b" * 5000)):
            with open(os.path.join(self.source, name), "wb") as f:
                f.write(content)
        st = os.stat(self.source)
        self.offer = {"path": self.source, "dev": st.st_dev, "ino": st.st_ino,
                      "host": rsync_remote.host_identity()}
        self.source_state = self.snapshot(self.source)
        self.modes = self.top_modes()

    @staticmethod
    def snapshot(top):
        state = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                st = os.lstat(os.path.join(dirpath, name))
                state.append((dirpath, name, st.st_mode, st.st_size, st.st_mtime_ns))
        return state

    def run(self, data: bytes):
        try:
            items = PURE["loads_internal"](data)
        except Exception:
            items = [data]  # still a message (a bytes item), not a finding
        if not isinstance(items, list):
            items = [items]
        options = {}
        if items and isinstance(items[0], dict):
            options = dict(items[0])
            items = items[1:]
            if options.get("xn-local") == "SOURCE":
                options["xn-local"] = self.offer
        self.plant()
        channel = Channel([(self.dest, options)] + items)
        try:
            rsync_remote.serve_rsync(channel)
            result = "done"
        except NEVER as exc:
            raise Finding(f"the receiver raised {exc!r}") from exc
        except Exception as exc:
            result = (type(exc).__name__, shape(exc))
        self.check()
        return (result, min(channel.sent, 4))

    def plant(self):
        if os.path.islink(self.dest) or os.path.isfile(self.dest):
            os.unlink(self.dest)
        shutil.rmtree(self.dest, ignore_errors=True)
        os.mkdir(self.dest)
        os.symlink(os.path.join(self.outside, "f"), os.path.join(self.dest, "planted"))
        os.symlink(self.outside, os.path.join(self.dest, "planted_dir"))

    def check(self):
        # dest itself may go or become a file (a sender's tree may be one file)
        entries = sorted(set(os.listdir(self.root)) - {"dest"})
        if entries != ["outside", "source"]:
            raise Finding(f"the work directory holds {entries}")
        if os.listdir(self.outside):
            raise Finding(f"written outside the destination: {os.listdir(self.outside)}")
        if self.snapshot(self.source) != self.source_state:
            raise Finding("the source directory changed")
        if self.top_modes() != self.modes:
            raise Finding(f"modes changed outside the destination: {self.top_modes()}")

    def top_modes(self):
        return [os.lstat(p).st_mode for p in (self.root, self.source, self.outside)]

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)

    # -- structure-aware mutation (the driver calls it when present) --------

    def mutate(self, rng, data, pool):
        try:
            items = PURE["loads_internal"](data)
        except Exception:
            items = []
        if not isinstance(items, list):
            items = [items]
        for _ in range(rng.choice((1, 1, 2, 3))):
            items = self.mutate_items(rng, items, pool)
        try:
            return PURE["dumps_internal"](items)
        except Exception:
            return data

    def mutate_items(self, rng, items, pool):
        items = list(items)
        choice = rng.randrange(6)
        if choice == 0 and items:
            del items[rng.randrange(len(items))]
        elif choice == 1 and items:
            i = rng.randrange(len(items))
            items.insert(rng.randrange(len(items) + 1), items[i])
        elif choice == 2 and len(items) > 1:
            i, j = rng.randrange(len(items)), rng.randrange(len(items))
            items[i], items[j] = items[j], items[i]
        elif choice == 3 and pool:
            try:
                other = PURE["loads_internal"](rng.choice(pool))
            except Exception:
                other = []
            if isinstance(other, list) and other:
                cut = rng.randrange(len(items) + 1)
                items = items[:cut] + other[rng.randrange(len(other)) :]
        elif choice == 4:
            items.insert(rng.randrange(len(items) + 1), rng.choice(ATOMS))
        elif items:
            i = rng.randrange(len(items))
            items[i] = self.replace_inside(rng, items[i])
        return items

    def replace_inside(self, rng, value):
        """value with one element somewhere inside it replaced by an atom."""
        if isinstance(value, (list, tuple)) and value and rng.random() < 0.8:
            parts = list(value)
            i = rng.randrange(len(parts))
            parts[i] = self.replace_inside(rng, parts[i])
            return type(value)(parts)
        if isinstance(value, dict) and value and rng.random() < 0.8:
            value = dict(value)
            key = rng.choice(list(value))
            value[key] = self.replace_inside(rng, value[key])
            return value
        return rng.choice(ATOMS)

"""Byte-level mutations of fuzz inputs, driven by one random.Random so that
a seed names a whole run."""

import random

# values worth putting where a length, count or integer is read (4 bytes,
# big endian, as every length on our wire is)
INTERESTING_INTS = [
    0, 1, 2, 7, 8, 9, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
    0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFF0, 0x40000000,
]
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xED, 0xF4]


class Mutator:
    """Mutates byte strings: flips, overwrites, inserts, deletes, repeats,
    interesting integers, dictionary tokens and splices with other inputs."""

    def __init__(self, rng: random.Random, tokens=(), max_size=4096):
        self.rng = rng
        self.tokens = list(tokens)
        self.max_size = max_size
        self.operations = [
            self.flip_bit,
            self.set_byte,
            self.insert_bytes,
            self.delete_range,
            self.repeat_range,
            self.put_int,
            self.put_int,
            self.insert_token,
            self.truncate,
        ]

    def mutate(self, data: bytes, pool) -> bytes:
        """data changed by one to four stacked operations (a splice with a
        random pool entry among them now and then)."""
        buf = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 2, 2, 3, 4))):
            if pool and self.rng.random() < 0.1:
                buf = self.splice(buf, self.rng.choice(pool))
            else:
                buf = self.rng.choice(self.operations)(buf)
        return bytes(buf[: self.max_size])

    def _pos(self, buf, end=False):
        return self.rng.randrange(len(buf) + 1 if end else max(len(buf), 1))

    def flip_bit(self, buf):
        if buf:
            buf[self._pos(buf)] ^= 1 << self.rng.randrange(8)
        return buf

    def set_byte(self, buf):
        if buf:
            value = self.rng.choice(INTERESTING_BYTES + [self.rng.randrange(256)])
            buf[self._pos(buf)] = value
        return buf

    def insert_bytes(self, buf):
        n = self.rng.choice((1, 1, 2, 4, 8, 32))
        pos = self._pos(buf, end=True)
        buf[pos:pos] = bytes(self.rng.randrange(256) for _ in range(n))
        return buf

    def delete_range(self, buf):
        if buf:
            pos = self._pos(buf)
            del buf[pos : pos + self.rng.choice((1, 1, 2, 4, 9, 64))]
        return buf

    def repeat_range(self, buf):
        if buf:
            pos = self._pos(buf)
            chunk = buf[pos : pos + self.rng.choice((1, 5, 9, 16, 64))]
            at = self._pos(buf, end=True)
            buf[at:at] = chunk * self.rng.choice((1, 2, 3, 16))
        return buf

    def put_int(self, buf):
        value = self.rng.choice(INTERESTING_INTS)
        if self.rng.random() < 0.3:
            value = (value + self.rng.choice((-1, 1, len(buf)))) & 0xFFFFFFFF
        raw = value.to_bytes(4, "big")
        pos = self._pos(buf)
        if self.rng.random() < 0.5:
            buf[pos : pos + 4] = raw  # overwrite
        else:
            buf[pos:pos] = raw
        return buf

    def insert_token(self, buf):
        if self.tokens:
            pos = self._pos(buf, end=True)
            buf[pos:pos] = self.rng.choice(self.tokens)
        return buf

    def truncate(self, buf):
        if buf:
            del buf[self._pos(buf) :]
        return buf

    def splice(self, buf, other):
        """The head of buf followed by the tail of other."""
        cut = self._pos(buf, end=True)
        return buf[:cut] + bytearray(other[self.rng.randrange(len(other) + 1) :])

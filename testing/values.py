"""Random values of every type the serializer handles, for randomized tests."""

from __future__ import annotations

import random


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(14 if depth < 4 else 8)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(2**31), 2**31 - 1)
    if kind == 2:
        return rng.choice([-1, 1]) * rng.randint(2**31, 2**80)
    if kind == 3:
        return rng.uniform(-1e9, 1e9)
    if kind == 4:
        return complex(rng.random(), -rng.random())
    if kind == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
    if kind in (6, 7):
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x3000)]))
                       for _ in range(rng.randrange(20)))
    size = rng.randrange(5)
    items = [random_value(rng, depth + 1) for _ in range(size)]
    # Set members of stable hash only: hash(None) follows its address on
    # Python < 3.12, so sets holding None iterate differently per process.
    hashable = [x for x in items if _hashable(x) and "None" not in repr(x)]
    if kind in (8, 9):
        return items
    if kind == 10:
        return tuple(items)
    if kind == 11:
        return {k: v for k, v in zip(hashable, items)}
    if kind == 12:
        return set(hashable)
    return frozenset(hashable)


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True

"""Harness: the C decoder against the portable one.

Each input is decoded by both backends as a dump (loads, which checks the
version byte) and, without its first byte, as a message payload
(loads_internal) under each of the four string configurations. Both must
return the same value (same types all the way down) or raise the same
exception class.
"""

from common import C, PURE, Finding, outcome, shape

NAME = "loads"
MAX_SIZE = 4096
# opcodes and a few operands, for insertion by the mutator
TOKENS = [bytes([c]) for c in b"@ABCDEFGHIJKLMNOPQRST"] + [
    b"F\x00\x00\x00\x01",
    b"K\x00\x00\x00\x02",
    b"A\x00\x00\x00\x03abc",
    b"S\x00\x00\x00\x02\xc3\xa9",
    b"S\x00\x00\x00\x01\xed",
    b"H\x00\x00\x00\x03-12",
    b"D\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"D\x80\x00\x00\x00\x00\x00\x00\x00",
    b"LLP",
    b"JLLP",
    b"\x02",
]
STRCONFIGS = [(False, False), (True, False), (False, True), (True, True)]


class Target:
    def __init__(self, workdir):
        pass

    def run(self, data: bytes):
        """A signature of what happened (for the driver's novelty
        measure); raises Finding when the backends disagree."""
        calls = [("loads", (data,))]
        calls += [("loads_internal", (data[1:], None, s)) for s in STRCONFIGS]
        signature = []
        for name, args in calls:
            c = outcome(C[name], *args)
            pure = outcome(PURE[name], *args)
            if c[:2] != pure[:2]:
                raise Finding(
                    f"{name}{args[1:]!r}: C gave {c[0]} {c[2]!r}, portable {pure[0]} {pure[2]!r}"
                )
            signature.append(c[1].__name__ if c[0] == "raise" else c[1][0])
            if c[0] == "raise":
                signature.append(shape(c[2]))
        return tuple(signature)

    def close(self):
        pass

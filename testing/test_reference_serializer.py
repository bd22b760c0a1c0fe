"""Our serializer against reference execnet 2.1.2, in its own interpreter.

Same bytes for every value the reference can encode, and each side decodes
what the other produces.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import reference
from values import random_value

from execnet import gateway_base

REF_DUMPS = """
import sys, execnet
for line in sys.stdin.read().splitlines():
    try:
        print(execnet.dumps(eval(line)).hex())
    except Exception as e:
        print("error", type(e).__name__)
"""

REF_LOADS = """
import sys, execnet
for line in sys.stdin.read().splitlines():
    print(repr(execnet.loads(bytes.fromhex(line))))
"""


def corpus() -> list[object]:
    rng = random.Random(99)
    values = [random_value(rng) for _ in range(1500)]
    values += [None, 0, -(2**31), 2**31, -(2**31) - 1, -(10**40), "é", b"", (), [], {}]
    return values


def corpus_text() -> bytes:
    return "\n".join(map(repr, corpus())).encode()


@pytest.fixture(scope="module")
def reference_dumps() -> list[str]:
    out = reference.run(REF_DUMPS, corpus_text(), PYTHONHASHSEED="0")
    return out.decode().splitlines()


def our_dumps(backend: str) -> list[str]:
    # Set order follows string hashes: both sides encode with one hash seed.
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("EXECNET_PUREPYTHON", None)
    if backend == "python":
        env["EXECNET_PUREPYTHON"] = "1"
    code = REF_DUMPS + "\nassert execnet.gateway_base.BACKEND == %r" % backend
    # (not from our checkout's root, where "-c" would import the sources)
    proc = subprocess.run(
        [sys.executable, "-c", code], input=corpus_text(), env=env,
        capture_output=True, check=True, timeout=60, cwd=os.path.dirname(__file__),
    )
    return proc.stdout.decode().splitlines()


@pytest.mark.parametrize("backend", ["python", "c"])
def test_same_bytes_as_reference(backend, reference_dumps):
    values = corpus()
    ours = our_dumps(backend)
    assert len(reference_dumps) == len(ours) == len(values)
    encoded = 0
    for value, mine, theirs in zip(values, ours, reference_dumps):
        if theirs.startswith("error"):
            # the reference cannot encode ints below -2**31 (struct.error)
            assert theirs == "error error", (value, theirs)
            # we encode it (as H), and decode it back
            assert gateway_base.loads(bytes.fromhex(mine)) == value
            continue
        assert mine == theirs, value
        encoded += 1
    assert encoded > 1000


def test_we_decode_reference_bytes(serializer, reference_dumps):
    for value, theirs in zip(corpus(), reference_dumps):
        if not theirs.startswith("error"):
            assert serializer.loads(bytes.fromhex(theirs)) == value


def test_reference_decodes_ours(serializer):
    values = corpus()
    ours = "\n".join(serializer.dumps(v).hex() for v in values)
    back = reference.run(REF_LOADS, ours.encode()).decode().splitlines()
    assert [eval(text) for text in back] == values

"""The fuzz harnesses (fuzz/, doc/fuzzing.md): their seed corpus passes, and
each harness reports what it is there to find."""

from __future__ import annotations

import importlib
import os
import pathlib
import sys

import pytest

FUZZ = pathlib.Path(__file__).resolve().parent.parent / "fuzz"


@pytest.fixture
def harness(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(FUZZ))
    opened = []

    def load(name):
        module = importlib.import_module(f"target_{name}")
        target = module.Target(str(tmp_path))
        opened.append(target)
        return module, target

    yield load
    for target in opened:
        target.close()
    for name in ("common", "mutate", "target_loads", "target_frames", "target_rsync"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("name", ["loads", "frames", "rsync"])
def test_corpus_passes(harness, name):
    _, target = harness(name)
    files = sorted((FUZZ / "corpus" / name).iterdir())
    assert files
    for path in files:
        target.run(path.read_bytes())  # raises Finding on a bug


def test_loads_harness_reports_a_mismatch(harness, monkeypatch):
    module, target = harness("loads")
    common = sys.modules["common"]
    target.run(b"\x02F\x00\x00\x00\x01Q")
    # a C decoder that read -0.0 as 0.0 would be caught
    monkeypatch.setitem(common.C, "loads", lambda data, *a: 0.0)
    with pytest.raises(common.Finding, match="C gave ok 0.0, portable ok -0.0"):
        target.run(b"\x02D\x80\x00\x00\x00\x00\x00\x00\x00Q")


def test_rsync_harness_reports_a_write_outside(harness, monkeypatch):
    module, target = harness("rsync")
    common = sys.modules["common"]
    data = common.PURE["dumps_internal"]([{}, [0o40755]])
    target.run(data)

    def escaping(channel):
        open(os.path.join(target.outside, "x"), "w").close()

    monkeypatch.setattr(module.rsync_remote, "serve_rsync", escaping)
    with pytest.raises(common.Finding, match="written outside the destination"):
        target.run(data)


def test_mutations_are_named_by_the_seed(harness):
    harness("loads")
    import random

    from mutate import Mutator

    def run(seed):
        m = Mutator(random.Random(seed), [b"Q"], 64)
        data, out = b"\x02F\x00\x00\x00\x01Q", []
        for _ in range(50):
            data = m.mutate(data, [b"\x02LQ"])
            out.append(data)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert all(len(d) <= 64 for d in run(5))

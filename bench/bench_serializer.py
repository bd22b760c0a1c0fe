#!/usr/bin/env python3
"""Serializer throughput: our execnet vs reference execnet 2.1.2 vs pickle 5.

What it measures: operations per second of ``dumps(obj)`` and of
``loads(data)`` (data = that implementation's own ``dumps(obj)``), for

  ours-c     execnet from this checkout as normally imported: the C backend
             if the extension is built, otherwise its pure-Python fallback
             (the backend actually used is printed and kept in the JSON);
  ours-py    the same package with EXECNET_PUREPYTHON=1 (pure-Python twin);
  ref-2.1.2  execnet 2.1.2 from PyPI, in a venv this script creates on first
             use (default bench/.venv-ref, see --venv);
  pickle5    pickle.dumps(obj, protocol=5) / pickle.loads.

on a pytest-xdist test report, small messages, 1 MiB of bytes and a list of
1,000 ints (see CASES).

How: both packages are called ``execnet``, so every (implementation, case)
pair is measured in a fresh subprocess, ``--worker IMPL CASE``, started with
``python -I`` (no PYTHONPATH, no script or current directory on sys.path)
from a directory outside the checkout; ours and pickle run in an empty venv
of this interpreter (bench/.venv-ours, see _common.py).  A worker calibrates a loop count so
that one timeit batch lasts about budget/10, runs batches until --budget
seconds per operation are spent, and prints the best batch's rate (as timeit
advises: the least disturbed one) as JSON.  The driver runs --rounds rounds;
each measures every case for every implementation, in an order rotated from
round to round, so drifts of a shared machine hit all implementations alike.
It prints per implementation the median over rounds and the spread
((max - min) / median), and ratios as the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

del sys.path[0]

IMPLS = [*C.EXECNET_IMPLS, "pickle5"]

# -- cases ------------------------------------------------------------------

LONGREPR = """\
self = <testing.test_foo.TestBar object at 0x7f3a2c1b9d90>
param = 3, tmp_path = PosixPath('/tmp/pytest-of-ci/pytest-12/test_baz_param_3_0')

    @pytest.mark.parametrize("param", [1, 2, 3, 4])
    def test_baz(self, param, tmp_path):
        config = load_config(tmp_path / "setup.cfg", defaults=DEFAULTS)
        ledger = Ledger.from_config(config)
        for day in range(param):
            ledger.book(day, amount=12.0, currency="EUR")
>       assert ledger.totals() == {"items": 12, "total": 36.0, "currency": "EUR"}
E       AssertionError: assert {'currency': 'EUR', 'items': 12, 'total': 35.99} == \
{'currency': 'EUR', 'items': 12, 'total': 36.0}
E
E         Common items:
E         {'currency': 'EUR', 'items': 12}
E         Differing items:
E         {'total': 35.99} != {'total': 36.0}
E
E         Full diff:
E           {
E               'currency': 'EUR',
E               'items': 12,
E         -     'total': 36.0,
E         ?                ^^
E         +     'total': 35.99,
E         ?                ^^^
E           }

testing/test_foo.py:47: AssertionError

During handling of the above exception, another exception occurred:

    def totals(self):
        rounded = {k: round(v, 2) for k, v in self._sums.items()}
>       return self._check(rounded)

src/ledger/core.py:118:
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _

self = <ledger.core.Ledger object at 0x7f3a2c1ba3d0>
totals = {'currency': 'EUR', 'items': 12, 'total': 35.99}

    def _check(self, totals):
        # compare the rounded totals with what the configuration expects
        if not self.strict:
            log.warning("unchecked totals: %r", totals)
            return totals
        if self.strict and totals["total"] != self.expected:
>           raise LedgerMismatch(totals, self.expected)
E           ledger.errors.LedgerMismatch: booked 35.99 EUR, expected 36.0 EUR
E           (3 bookings of 12.0 EUR each; rounding mode ROUND_HALF_EVEN, precision 2)

src/ledger/core.py:131: LedgerMismatch
"""


def xdist_report():
    """A failed test's report as an xdist worker sends it (the "data" dict)."""
    return {
        "nodeid": "testing/test_foo.py::TestBar::test_baz[param-3]",
        "location": ("testing/test_foo.py", 40, "TestBar.test_baz[param-3]"),
        "keywords": {"test_baz[param-3]": 1, "parametrize": 1, "TestBar": 1,
                     "test_foo.py": 1, "testing": 1, "slow": 1},
        "outcome": "failed",
        "longrepr": LONGREPR,
        "when": "call",
        "user_properties": [],
        "sections": [
            ("Captured stdout setup", "loading config from setup.cfg\n"),
            ("Captured stdout call", "booking 12 items\nday 0\nday 1\nday 2\n"),
            ("Captured log call", "WARNING  ledger.core:core.py:97 rounding total\n"),
        ],
        "duration": 0.013870811462402344,
        "worker_id": "gw1",
        "testrun_uid": "6a0e4d1c9b2f4e8a8d3c5b7a1f9e2d4c",
        "item_index": 1234,
    }


CASES = {
    "xdist_report": xdist_report,
    "runtests": lambda: ("runtests", [3, 4, 5]),
    "short_str": lambda: "collectionfinish",
    "small_int": lambda: 42,
    "none": lambda: None,
    "bytes_1mib": lambda: bytes(range(256)) * 4096,
    "ints_1000": lambda: list(range(1000)),
}

# -- worker: runs in the implementation's own interpreter ---------------------


def best_rate(stmt: str, namespace: dict, budget: float) -> float:
    """Calls per second of stmt: best timeit batch within the time budget."""
    timer = timeit.Timer(stmt, globals=namespace)  # timeit turns gc off
    target, number = budget / 10, 1
    while True:  # calibrate
        elapsed = timer.timeit(number)
        if elapsed >= target:
            break
        number = min(number * 100, max(number + 1, int(number * 1.2 * target / max(elapsed, 1e-9))))
    best, deadline = number / elapsed, time.perf_counter() + budget
    while time.perf_counter() < deadline:
        best = max(best, number / timer.timeit(number))
    return best


def worker(impl: str, case: str, budget: float) -> dict:
    result = C.worker_info(impl, case)
    if impl == "pickle5":
        import pickle

        dumps, loads = pickle.dumps, pickle.loads
        result.update(backend="pickle", module_file=pickle.__file__, version=None)
        dumps_stmt = "dumps(obj, 5)"
    else:
        execnet, info = C.import_execnet(impl)
        dumps, loads = execnet.dumps, execnet.loads
        result.update(info)
        dumps_stmt = "dumps(obj)"
    obj = CASES[case]()
    data = dumps(obj, 5) if impl == "pickle5" else dumps(obj)
    namespace = {"dumps": dumps, "loads": loads, "obj": obj, "data": data}
    return {
        **result,
        "size": len(data), "roundtrip_ok": loads(data) == obj,
        "dumps_ops": best_rate(dumps_stmt, namespace, budget),
        "loads_ops": best_rate("loads(data)", namespace, budget),
    }


# -- driver -------------------------------------------------------------------


def measure(impl: str, case: str, interp: dict, budget: float, cwd: str) -> dict:
    return C.run_worker(__file__, impl, case, ["--budget", str(budget)], interp, cwd,
                        timeout=120 + 40 * budget)


def report(results: dict, cases: list) -> dict:
    """Prints the tables; returns the summary for --json."""
    summary = {}
    pairs = [("ours-c", C.REF), ("ours-c", "pickle5"), ("ours-py", C.REF)]
    for case in cases:
        rows = results[case]
        summary[case] = {"medians": {}, "ratios": {}}
        print(f"\n== {case}")
        print(f"{'impl':10} {'backend':9} {'dumps/s':>12} {'spread':>7} {'loads/s':>12} "
              f"{'spread':>7} {'bytes':>9}")
        for impl in IMPLS:
            ok = [r[impl] for r in rows if "error" not in r[impl]]
            errors = [r[impl]["error"] for r in rows if "error" in r[impl]]
            if not ok:
                print(f"{impl:10} FAILED: {errors[0]}")
                continue
            line, med = f"{impl:10} {'/'.join(sorted({s['backend'] for s in ok})):9}", {}
            for op in ("dumps_ops", "loads_ops"):
                vals = [s[op] for s in ok]
                med[op] = statistics.median(vals)
                line += f" {med[op]:12,.0f} {100 * (max(vals) - min(vals)) / med[op]:6.0f}%"
            line += f" {ok[0]['size']:9,}"
            if errors:
                line += f"  ({len(errors)} failed: {errors[0]})"
            if not all(s["roundtrip_ok"] for s in ok):
                line += "  ROUNDTRIP MISMATCH"
            summary[case]["medians"][impl] = med
            print(line)
        for a, b in pairs:
            d, lo = (C.median_ratio(rows, a, b, op) for op in ("dumps_ops", "loads_ops"))
            summary[case]["ratios"][f"{a}/{b}"] = {"dumps": d, "loads": lo}
            print(f"  {a + ' / ' + b:22}  dumps {C.fmt_ratio(d)}   loads {C.fmt_ratio(lo)}")
    print("\n== summary: ours-c relative to reference and pickle (median of per-round ratios)")
    print(f"{'case':14} {'dumps/ref':>10} {'loads/ref':>10} {'dumps/pickle':>13} "
          f"{'loads/pickle':>13}")
    for case in cases:
        ref, pkl = (summary[case]["ratios"][k] for k in (f"ours-c/{C.REF}", "ours-c/pickle5"))
        print(f"{case:14} {C.fmt_ratio(ref['dumps']):>10} {C.fmt_ratio(ref['loads']):>10} "
              f"{C.fmt_ratio(pkl['dumps']):>13} {C.fmt_ratio(pkl['loads']):>13}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds of interleaved runs (7)")
    ap.add_argument("--budget", type=float, default=0.3,
                    help="seconds of timing per operation in each worker (0.3)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of: %(default)s")
    ap.add_argument("--venv", type=Path, default=C.DEFAULT_VENV,
                    help="reference venv (created if missing; default bench/.venv-ref)")
    ap.add_argument("--json", metavar="OUT", type=Path, help="also save raw numbers here")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.budget)))
        return
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    with C.outside_checkout("bench-serializer-") as cwd:
        drive(args, cases, cwd)


def drive(args, cases: list, cwd: str) -> None:
    venv = args.venv.absolute()
    interp = C.interpreters(venv, cwd)  # implementation -> (interpreter, extra environment)
    interp["pickle5"] = (interp["ours-c"][0], {})
    load_start = os.getloadavg()
    print(f"{C.machine_line()}; {args.rounds} rounds, {args.budget} s per operation")
    t0 = time.perf_counter()
    results, samples = C.interleaved_rounds(
        args.rounds, cases, IMPLS,
        lambda impl, case: measure(impl, case, interp, args.budget, cwd), venv)
    C.backend_warnings(samples)
    summary = report(results, cases)
    print(f"\nload average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; "
          f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        meta = {"rounds": args.rounds, "budget": args.budget, "cases": cases,
                "venv": str(venv), "loadavg_start": load_start, "loadavg_end": os.getloadavg()}
        C.save_json(args.json, meta, summary, samples)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Forked popen gateways (EXECNET_FORK=1) vs started ones vs execnet 2.1.2.

Implementations:

  fork+pytest  this checkout, C core, with EXECNET_FORK=1 and
               EXECNET_FORK_PRELOAD=pytest (what the README tells
               pytest-xdist users to type)
  fork         the same without a preload list (EXECNET_FORK=1)
  ours-c       this checkout, C core, gateways started as usual
  ref-2.1.2  execnet 2.1.2 from PyPI

They run in bench_xdist.py's two venvs (pinned pytest and pytest-xdist; ours
from this checkout through PYTHONPATH).  Cases:

  readyN     N = 1, 8, 32, 64: a master that has imported pytest imports
             execnet, makes N popen gateways in one group and sends each a
             remote_exec; the time from before the import of execnet (where
             a template starts under EXECNET_FORK=1) until the last one has
             answered
  trivial_nK bench_xdist.py's trivial suite (2,000 passing tests) under -n K,
             K = 2, 8: wall time of the whole pytest run
  toolz_n2   a real project's suite: toolz 1.0.0's tests (its sdist from PyPI,
             never kept here; 180 tests) under -n 2

Interleaved rounds, the order of implementations rotated from round to round;
medians over rounds and medians of per-round ratios to the reference.  Every
pytest run must pass all its tests, else it counts as an error.

    python bench/bench_fork.py [--rounds N] [--cases a,b] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_xdist as X  # noqa: E402

del sys.path[0]

IMPLS = ["fork+pytest", "fork", "ours-c", C.REF]
OURS = IMPLS[:3]
TOOLZ = "toolz==1.0.0"
TOOLZ_TESTS = 180

READY_SCRIPT = r"""
import json, sys, time
import pytest  # a master that has imported pytest, as pytest-xdist's has
t0 = time.perf_counter()
import execnet
n = int(sys.argv[1])
group = execnet.Group()
gateways = [group.makegateway("popen") for _ in range(n)]
channels = [gw.remote_exec("channel.send(1)") for gw in gateways]
for channel in channels:
    channel.receive(60)
ready = time.perf_counter() - t0
forked = type(gateways[0]._io.popen).__name__ == "ForkedProcess"
group.terminate(10)
print(json.dumps({"ready": ready, "forked": forked,
                  "backend": getattr(execnet.gateway_base, "BACKEND", "reference")}))
"""

CASES = {
    "ready1": ("ready", 1),
    "ready8": ("ready", 8),
    "ready32": ("ready", 32),
    "ready64": ("ready", 64),
    "trivial_n2": ("trivial", ["-n", "2"]),
    "trivial_n8": ("trivial", ["-n", "8"]),
    "toolz_n2": ("toolz", ["-n", "2", "toolz/tests"]),
}


def fetch_toolz(root: Path, python: str, cwd: str) -> None:
    """toolz's sdist, unpacked as root/toolz (its tests run from there)."""
    C.run([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
           "-d", str(root), TOOLZ], C.clean_env(), cwd).check_returncode()
    (sdist,) = root.glob("toolz-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(root)
    (root / sdist.name[: -len(".tar.gz")]).rename(root / "toolz")
    (root / "toolz" / "pytest.ini").write_text("[pytest]\n")
    X.EXPECTED_PASSED["toolz"] = TOOLZ_TESTS


def ready_time(python: str, env: dict, n: int, cwd: str, timeout: float) -> dict:
    try:
        proc = subprocess.run([python, "-c", READY_SCRIPT, str(n)], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:g} s"}
    if proc.returncode:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall": result["ready"], "forked": result["forked"], "stderr": proc.stderr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds of interleaved runs (7)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of: %(default)s")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", metavar="OUT", type=Path, help="also save raw numbers here")
    args = ap.parse_args()
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    with C.outside_checkout("bench-fork-") as cwd:
        root = Path(cwd)
        X.generate(root)
        print(C.machine_line())
        envs = X.environments(root, cwd)
        python, env = envs["ours-c"]
        envs = {
            "fork+pytest": (python, {**env, "EXECNET_FORK": "1", "EXECNET_FORK_PRELOAD": "pytest"}),
            "fork": (python, {**env, "EXECNET_FORK": "1"}),
            "ours-c": (python, env),
            C.REF: envs[C.REF],
        }
        if any(c.startswith("toolz") for c in cases):
            fetch_toolz(root, envs[C.REF][0], cwd)
        suites = sorted({CASES[c][0] for c in cases} - {"ready"})
        for suite in suites:  # warm-up: bytecode caches
            for impl, (python, env) in envs.items():
                warm = X.run_pytest(python, env, root / suite, ["-n", "2"], args.timeout)
                if "error" in warm:
                    print(f"  warm-up {impl} {suite}: error: {warm['error']}")
        # rows: (case, "wall") and, for pytest runs, (case, "cpu"): the CPU
        # time of pytest and its workers, steadier on a shared machine
        rows = [(case, "wall") for case in cases]
        rows += [(case, "cpu") for case in cases if CASES[case][0] != "ready"]
        results: dict = {key: {impl: [] for impl in IMPLS} for key in rows}
        ratios: dict = {key: {impl: [] for impl in OURS} for key in rows}
        t0 = time.perf_counter()
        for rnd in range(args.rounds):
            for ci, case in enumerate(cases):
                shift = (rnd + ci) % len(IMPLS)
                row: dict = {}
                for impl in IMPLS[shift:] + IMPLS[:shift]:
                    python, env = envs[impl]
                    suite, extra = CASES[case]
                    if suite == "ready":
                        sample = ready_time(python, env, extra, cwd, args.timeout)
                        if impl.startswith("fork") and sample.get("forked") is False:
                            sample = {"error": "not forked: " + sample["stderr"][-300:]}
                    else:
                        sample = X.run_pytest(python, env, root / suite, extra, args.timeout)
                    if "error" in sample:
                        print(f"  {case} {impl}: error: {sample['error']}")
                    else:
                        row[impl] = sample
                for key in rows:
                    if key[0] != case or C.REF not in row:
                        continue
                    for impl, sample in row.items():
                        results[key][impl].append(sample[key[1]])
                        if impl != C.REF:
                            ratios[key][impl].append(sample[key[1]] / row[C.REF][key[1]])
            print(f"round {rnd + 1}/{args.rounds} done, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
        print("\nmedian time over rounds (ms); ratios: median of per-round ratios"
              " to the reference (< 1: faster)")
        print(f"{'case':16}" + "".join(f"{impl:>12}" for impl in IMPLS)
              + "".join(f"{impl + '/ref':>17}" for impl in OURS))
        summary = {}
        for key in rows:
            med = {i: statistics.median(v) for i, v in results[key].items() if v}
            rat = {i: statistics.median(v) for i, v in ratios[key].items() if v}
            label = key[0] if key[1] == "wall" else f"{key[0]} CPU"
            summary[label] = {"medians_s": med, "ratios": rat, "samples": results[key]}
            print(f"{label:16}" + "".join(
                f"{1000 * med[i]:12,.0f}" if i in med else f"{'error':>12}" for i in IMPLS)
                + "".join(f"{rat[i]:17.2f}" if i in rat else f"{'-':>17}" for i in OURS))
        print(f"\nat end: {C.machine_line()}; {time.perf_counter() - t0:.0f} s")
        if args.json:
            args.json.write_text(json.dumps({"rounds": args.rounds, "summary": summary},
                                            indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""pytest-xdist on our execnet vs on execnet 2.1.2: wall time of whole pytest runs.

Implementations (see _common.py): ours-c (this checkout, C backend if built),
ours-py (the same with EXECNET_PUREPYTHON=1, which the workers inherit) and
ref-2.1.2.  They run in two venvs with the same pinned pytest and
pytest-xdist, made on first use: bench/.venv-xdist-ref (with execnet 2.1.2)
and bench/.venv-xdist-ours (without any execnet: ours comes from this
checkout through PYTHONPATH, a directory holding only a link to the package,
and reaches the workers the same way).

Suites, generated in a temporary directory:

  trivial   2,000 tests that pass at once, 50 in each of 40 files
  sleep     200 tests that sleep 10 ms, 20 in each of 10 files
  start8    8 trivial tests in one file, and a conftest that notes when each
            worker reports ready (pytest_testnodeready, in the controller)

Cases: trivial and sleep with -n 0, -n 2 and -n 2 --dist loadfile (wall time
of `python -m pytest -p no:cacheprovider -q ...`, from process start to
exit) and its CPU time (user + system, of pytest and of the workers, which
it reaps), and start8 with -n 8: the same, and the time from process start
until the last of the 8 workers was ready.  On a machine whose cores are
shared with others, the CPU time is the steadier of the two.  Every run must pass all its
tests, else it counts as an error.  One untimed warm-up run per suite and
implementation comes first (bytecode caches); then interleaved rounds, the
order of implementations rotated from round to round; medians over rounds,
with spread, and time ratios ours / reference as medians of per-round ratios
(below 1 means ours is faster).

    python bench/bench_xdist.py [--rounds N] [--cases a,b] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

del sys.path[0]

IMPLS = C.EXECNET_IMPLS
XDIST_VENV_OURS = C.BENCH_DIR / ".venv-xdist-ours"
XDIST_VENV_REF = C.BENCH_DIR / ".venv-xdist-ref"
# the same pins as .ci/xdist-suite; --no-deps, so all of pytest's are listed
PYTEST = ["pytest==8.4.2", "pluggy==1.7.0", "iniconfig==2.3.1", "packaging==26.4",
          "Pygments==2.21.0", "pytest-xdist==3.8.0"]

CASES = {
    "trivial_n0": ("trivial", ["-n", "0"]),
    "trivial_n2": ("trivial", ["-n", "2"]),
    "trivial_n2_loadfile": ("trivial", ["-n", "2", "--dist", "loadfile"]),
    "sleep_n0": ("sleep", ["-n", "0"]),
    "sleep_n2": ("sleep", ["-n", "2"]),
    "sleep_n2_loadfile": ("sleep", ["-n", "2", "--dist", "loadfile"]),
    "start_n8": ("start8", ["-n", "8"]),
}
EXPECTED_PASSED = {"trivial": 2000, "sleep": 200, "start8": 8}

READY_CONFTEST = """\
import json, os, time

_ready = []


def pytest_testnodeready(node):
    _ready.append(time.time())


def pytest_sessionfinish(session):
    if not os.environ.get("PYTEST_XDIST_WORKER") and _ready:
        with open("ready.json", "w") as f:
            json.dump({"last_ready": max(_ready), "workers": len(_ready)}, f)
"""


def generate(root: Path) -> None:
    trivial = root / "trivial"
    trivial.mkdir()
    for i in range(40):
        tests = "".join(f"def test_{j}():\n    pass\n\n\n" for j in range(50))
        (trivial / f"test_trivial_{i:02}.py").write_text(tests)
    sleep = root / "sleep"
    sleep.mkdir()
    for i in range(10):
        tests = "".join(f"def test_{j}():\n    time.sleep(0.01)\n\n\n" for j in range(20))
        (sleep / f"test_sleep_{i:02}.py").write_text("import time\n\n\n" + tests)
    start8 = root / "start8"
    start8.mkdir()
    (start8 / "test_start.py").write_text(
        "".join(f"def test_{j}():\n    pass\n\n\n" for j in range(8)))
    (start8 / "conftest.py").write_text(READY_CONFTEST)
    for suite in (trivial, sleep, start8):
        (suite / "pytest.ini").write_text("[pytest]\n")  # rootdir: here, no ini above


def environments(root: Path, cwd: str) -> dict:
    """implementation -> (python, environment)."""
    base = C.clean_env()
    probe = ("import importlib.util, pytest, xdist; "
             "print(pytest.__version__, xdist.__version__, "
             "importlib.util.find_spec('execnet') is not None)")
    ours = C.ensure_venv_with(XDIST_VENV_OURS, PYTEST, cwd, probe, "8.4.2 3.8.0 False")
    ref = C.ensure_venv_with(XDIST_VENV_REF, [*PYTEST, f"execnet=={C.REF_VERSION}"], cwd,
                             probe, "8.4.2 3.8.0 True")
    link_dir = root / "ours-path"
    link_dir.mkdir()
    (link_dir / "execnet").symlink_to(C.REPO_ROOT / "execnet")
    ours_env = {**base, "PYTHONPATH": str(link_dir)}
    envs = {
        "ours-c": (ours, ours_env),
        "ours-py": (ours, {**ours_env, "EXECNET_PUREPYTHON": "1"}),
        C.REF: (ref, base),
    }
    code = ("import execnet; print(getattr(execnet.gateway_base, 'BACKEND', 'reference'), "
            "execnet.__version__, execnet.__file__)")
    for impl, (python, env) in envs.items():
        out = C.run([python, "-c", code], env, cwd).stdout.split()
        backend, version, where = out if len(out) == 3 else ("?", "?", "?")
        print(f"  {impl:10} backend {backend:9} {version:6} {where}")
        want = {"ours-c": "c", "ours-py": "python", C.REF: "reference"}[impl]
        if backend != want:
            print(f"WARNING: {impl} runs backend {backend}, not {want}")
        if impl == C.REF and version != C.REF_VERSION:
            sys.exit(f"{impl} imports execnet {version} from {where}")
        if impl != C.REF and not Path(where).resolve().is_relative_to(C.REPO_ROOT / "execnet"):
            sys.exit(f"{impl} imports execnet from {where}, not from this checkout")
    return envs


def run_pytest(python: str, env: dict, suite: Path, args: list, timeout: float) -> dict:
    """One timed pytest run in its own session (killed with its workers on timeout)."""
    (suite / "ready.json").unlink(missing_ok=True)
    cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    with tempfile.TemporaryFile("w+") as out:
        t_start = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=suite, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        hung = []
        timer = threading.Timer(timeout, lambda: hung.append(C._kill_group(proc.pid)))
        timer.start()
        try:
            # wait4: the usage of pytest and of the workers it reaped
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if hung:
            return {"error": f"timeout after {timeout:g} s"}
        leftover = C._kill_group(proc.pid)
        out.seek(0)
        text = out.read()
    lines = text.strip().splitlines() or ["(no output)"]
    passed = re.search(r"(\d+) passed", lines[-1])
    expected = EXPECTED_PASSED[suite.name]
    if proc.returncode or not passed or int(passed.group(1)) != expected:
        return {"error": f"exit {proc.returncode}: {lines[-1]}"}
    sample = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime}
    ready = suite / "ready.json"
    if ready.exists():
        info = json.loads(ready.read_text())
        if info["workers"] == 8:
            sample["ready"] = info["last_ready"] - t_start
    if leftover:
        sample["note"] = "left processes behind (killed)"
    return sample


def fmt_ms(v: float) -> str:
    return f"{1000 * v:,.0f} ms"


def report(results: dict, cases: list) -> dict:
    summary = {}
    print("\nValues: median time over rounds, with spread (max - min) / median."
          "\nRatios: median of per-round time ratios ours / reference, < 1 means ours is"
          " faster.")
    print(f"\n{'case':34} {'ours-c':>16} {'ours-py':>16} {IMPLS[2]:>16} "
          f"{'c/ref':>9} {'py/ref':>9}")
    for case in cases:
        rows = results[case]
        suite, args = CASES[case]
        keys = [("wall", f"{suite} {' '.join(args)}"), ("cpu", "  CPU time")]
        if case == "start_n8":
            keys.append(("ready", "  8 workers ready"))
        summary[case] = {}
        for key, label in keys:
            cells, med, ratios = C.metric_row(rows, IMPLS, key, False, fmt_ms)
            print(f"{label:34}{cells}")
            summary[case][key] = {"medians_s": med, "time_ratios": ratios}
        C.report_problems(rows, IMPLS)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds of interleaved runs (7)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of: %(default)s")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds before a pytest run is killed and counted as an error (300)")
    ap.add_argument("--json", metavar="OUT", type=Path, help="also save raw numbers here")
    args = ap.parse_args()
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    with C.outside_checkout("bench-xdist-") as cwd:
        root = Path(cwd)
        generate(root)
        load_start = C.machine_line()
        print(load_start)
        envs = environments(root, cwd)
        t0 = time.perf_counter()
        for suite in sorted({CASES[c][0] for c in cases}):
            for impl, (python, env) in envs.items():
                warm = run_pytest(python, env, root / suite, ["-n", "2"], args.timeout)
                if "error" in warm:
                    print(f"  warm-up {impl} {suite}: error: {warm['error']}")

        def measure(impl, case):
            suite, extra = CASES[case]
            python, env = envs[impl]
            return run_pytest(python, env, root / suite, extra, args.timeout)

        results, samples = C.interleaved_rounds(args.rounds, cases, IMPLS, measure,
                                                XDIST_VENV_REF)
        summary = report(results, cases)
        print(f"\nat end: {C.machine_line()}; {time.perf_counter() - t0:.0f} s")
        if args.json:
            meta = {"rounds": args.rounds, "cases": cases, "timeout": args.timeout,
                    "pinned": PYTEST, "at_start": load_start}
            C.save_json(args.json, meta, summary, samples)


if __name__ == "__main__":
    main()

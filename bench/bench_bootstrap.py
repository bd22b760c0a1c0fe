#!/usr/bin/env python3
"""Exec bootstrap cost: our execnet vs reference execnet 2.1.2.

The exec bootstrap (python=..., ssh, via) sends the worker's whole core as
one line to an interpreter that may not have execnet.  This measures

  bytes        the bootstrap line written to the new interpreter (counted
               by wrapping the IO handed to gateway_bootstrap.sendexec,
               which both implementations call for it), for the first gateway
               (id gw0; the line grows with the length of the id)
  start        makegateway("popen//python=PY"), median ms over iterations
               (each gateway terminated, untimed, before the next one), and
               as a baseline `PY -c pass`, alternating with it; "overhead"
               is the difference of the medians

for two interpreters PY:

  system       /usr/bin/python3 (Debian's; has no execnet of any kind)
  self         the worker's own interpreter (sys.executable of the venv)

and the same bytes and start time (no baseline) for

  via          popen//via=proxy: a gateway through a popen gateway of the
               same group (the proxy is started, untimed, for each gateway)
  socket       socket=127.0.0.1:PORT to the implementation's own socket
               server (its execnet/script/socketserver.py, started once per
               worker)

Implementations, interleaved rounds, medians and ratios as in
bench_gateway.py (see _common.py).  Ratios > 1 mean ours is better
(reference / ours, for bytes and times alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

del sys.path[0]

IMPLS = C.EXECNET_IMPLS
SYSTEM_PYTHON = "/usr/bin/python3"
GROUP_TERMINATE_TIMEOUT = 10.0
# iterations per worker: (full, --quick)
ITERATIONS = (15, 5)

# -- worker side ----------------------------------------------------------------------


def interpreter(case: str) -> str:
    return SYSTEM_PYTHON if case == "system" else sys.executable


def start_socketserver(execnet) -> tuple[subprocess.Popen, int]:
    """The implementation's socket server on a free port: (process, port)."""
    script = os.path.join(os.path.dirname(execnet.__file__), "script", "socketserver.py")
    proc = subprocess.Popen([sys.executable, "-u", script, "127.0.0.1:0"], stdout=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:  # "... Entering Accept loop ('127.0.0.1', PORT)"
        if "Accept loop" in line:
            return proc, int(line.rstrip().rstrip(")").rsplit(",", 1)[1])
    proc.kill()
    raise RuntimeError("the socket server did not start")


def case_start(execnet, case: str, iterations: int) -> dict:
    from execnet import gateway_bootstrap

    sizes = []
    original = gateway_bootstrap.sendexec

    class Counting:
        def __init__(self, io):
            self.io = io

        def write(self, data):
            sizes.append(len(data))
            self.io.write(data)

    def sendexec(io, *sources):
        return original(Counting(io), *sources)

    gateway_bootstrap.sendexec = sendexec
    server = None
    if case == "socket":
        server, port = start_socketserver(execnet)
        spec = f"socket=127.0.0.1:{port}"
    elif case == "via":
        spec = "popen//via=proxy"
    else:
        python = interpreter(case)
        spec = f"popen//python={python}"

    def new_group():
        group = execnet.Group()
        if case == "via":
            group.makegateway("popen//id=proxy")
        return group

    # execnet 2.1.2 waits out the whole timeout for a socket gateway
    timeout = 1.0 if case == "socket" else GROUP_TERMINATE_TIMEOUT
    group = new_group()
    try:
        gw = group.makegateway(spec)  # warm up (file caches), check it works
        if gw.remote_exec("channel.send(6 * 7)").receive(30) != 42:
            raise RuntimeError("the gateway does not work")
        group.terminate(timeout)
        starts, passes = [], []
        for _ in range(iterations):
            group = new_group()
            del sizes[1:]
            t0 = time.perf_counter()
            group.makegateway(spec)
            starts.append(time.perf_counter() - t0)
            group.terminate(timeout)
            if case in ("system", "self"):
                t0 = time.perf_counter()
                subprocess.run([python, "-c", "pass"], check=True)
                passes.append(time.perf_counter() - t0)
    finally:
        group.terminate(timeout)
        gateway_bootstrap.sendexec = original
        if server is not None:
            server.kill()
            server.wait()
    if not sizes:
        raise RuntimeError("gateway_bootstrap.sendexec was not called")
    start = statistics.median(starts) * 1e3
    # the bytes of the timed gateway's line (via: the proxy's comes first)
    result = {"bytes": sizes[-1], "start_ms": start}
    if passes:
        base = statistics.median(passes) * 1e3
        result.update(pass_ms=base, overhead_ms=start - base)
    return result


def worker(impl: str, case: str, iterations: int) -> dict:
    out = C.worker_info(impl, case)
    execnet, info = C.import_execnet(impl)
    out.update(info)
    try:
        out.update(case_start(execnet, case, iterations))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    return out


# -- driver -----------------------------------------------------------------------------

CASES = {
    "system": f"popen//python={SYSTEM_PYTHON}",
    "self": "popen//python=<the venv's python>",
    "via": "popen//via=proxy (a popen gateway)",
    "socket": "socket=127.0.0.1:PORT (the implementation's socket server)",
}
METRICS = [
    ("bytes", "bootstrap line", "bytes"),
    ("start_ms", "makegateway", "ms"),
    ("pass_ms", "python -c pass (baseline)", "ms"),
    ("overhead_ms", "makegateway - baseline", "ms"),
]


def fmt_value(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def report(results: dict, cases: list) -> dict:
    summary = {}
    print("\nValues: median over rounds, with spread (max - min) / median.  Ratios: median of"
          "\nper-round ratios reference / ours, > 1 means ours is smaller or faster.")
    for case in cases:
        rows = results[case]
        summary[case] = {}
        print(f"\n== {CASES[case]}")
        print(f"{'':28} {'unit':>6} {'ours-c':>16} {'ours-py':>16} {IMPLS[2]:>16} "
              f"{'c vs ref':>9} {'py vs ref':>9}")
        # via and socket have no interpreter start to compare with
        for key, label, unit in METRICS if case in ("system", "self") else METRICS[:2]:
            cells, med, ratios = C.metric_row(rows, IMPLS, key, True, fmt_value)
            print(f"{label:28} {unit:>6}{cells}")
            summary[case][key] = {"unit": unit, "medians": med, "ratios_better": ratios}
        C.report_problems(rows, IMPLS)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of interleaved runs (5)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of: %(default)s")
    ap.add_argument("--quick", action="store_true",
                    help=f"{ITERATIONS[1]} instead of {ITERATIONS[0]} starts per worker")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds before a worker is killed and reported as an error (120)")
    ap.add_argument("--venv", type=Path, default=C.DEFAULT_VENV,
                    help="reference venv (created if missing; default bench/.venv-ref)")
    ap.add_argument("--json", metavar="OUT", type=Path, help="also save raw numbers here")
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "CASE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, case, n = args.worker
        C.emit(worker(impl, case, int(n)))
        return
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if "system" in cases and not os.path.exists(SYSTEM_PYTHON):
        print(f"{SYSTEM_PYTHON} does not exist: case 'system' left out", file=sys.stderr)
        cases.remove("system")
    with C.outside_checkout("bench-bootstrap-") as cwd:
        drive(args, cases, cwd)


def drive(args, cases: list, cwd: str) -> None:
    venv = args.venv.absolute()
    interp = C.interpreters(venv, cwd)
    iterations = ITERATIONS[1 if args.quick else 0]
    load_start = C.machine_line()
    print(f"{load_start}; {args.rounds} rounds of {iterations} starts, "
          f"worker timeout {args.timeout:.0f} s")
    t0 = time.perf_counter()

    def measure(impl, case):
        # the worker's third argument: starts per worker
        return C.run_worker(__file__, impl, case, [str(iterations)], interp, cwd, args.timeout)

    results, samples = C.interleaved_rounds(args.rounds, cases, IMPLS, measure, venv)
    C.backend_warnings(samples)
    summary = report(results, cases)
    print(f"\nat end: {C.machine_line()}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        meta = {"rounds": args.rounds, "quick": args.quick, "cases": cases,
                "iterations": iterations, "timeout": args.timeout, "venv": str(venv),
                "at_start": load_start}
        C.save_json(args.json, meta, summary, samples)


if __name__ == "__main__":
    main()

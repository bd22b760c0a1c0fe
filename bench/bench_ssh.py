#!/usr/bin/env python3
"""ssh= gateways: our native transport (libssh2), our ssh-program transport
and reference execnet 2.1.2 (which always runs the ssh program).

The driver starts one throw-away sshd on 127.0.0.1 (testing/sshd.py) and a
client config for it; every implementation reaches it as
``ssh=testhost//ssh_config=CFG//python=/usr/bin/python3`` (the remote
interpreter gets the exec bootstrap on all sides).  Cases:

  start1   makegateway of one gateway, median ms over iterations (each
           group terminated, untimed, before the next)
  start8   makegateway of eight gateways to the host, one after the other,
           total ms (native: one connection; the others: eight ssh processes)
  rtt      a round trip of a small item on one channel, median µs
  bulk     1 MiB random byte strings, 16 each way: MiB/s to the remote
           (sent, then acknowledged) and from it

Implementations (each measurement in a fresh worker process, interleaved
rounds with rotated order as in the other benchmarks, see _common.py):

  native     this checkout, ssh_transport=native (C core)
  program    this checkout, ssh_transport=program (C core, ssh -C ...)
  ref-2.1.2  execnet 2.1.2 from PyPI in bench/.venv-ref

Ratios are reference / ours, > 1 means ours is faster.  Note that the ssh
program runs with -C (compression, as execnet's command line has it):
random payloads make that pure cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

del sys.path[0]

IMPLS = ["native", "program", C.REF]
REMOTE_PYTHON = "/usr/bin/python3"
ITERATIONS = (10, 3)  # starts per worker: (full, --quick)
RTT_COUNT = 2000
BULK_CHUNKS = 16
TERMINATE = 10.0

# -- worker side ----------------------------------------------------------------


def spec_for(impl: str, config: str, python: str) -> str:
    spec = f"ssh=testhost//ssh_config={config}//python={python}"
    if impl in ("native", "program"):
        spec += f"//ssh_transport={impl}"
    return spec


def case_start(execnet, spec: str, count: int, iterations: int) -> dict:
    group = execnet.Group()
    try:
        gw = group.makegateway(spec)  # warm up, and check it works
        if gw.remote_exec("channel.send(6 * 7)").receive(30) != 42:
            raise RuntimeError("the gateway does not work")
    finally:
        group.terminate(TERMINATE)
    times = []
    for _ in range(iterations):
        group = execnet.Group()
        try:
            t0 = time.perf_counter()
            for _ in range(count):
                group.makegateway(spec)
            times.append(time.perf_counter() - t0)
        finally:
            group.terminate(TERMINATE)
    return {"start_ms": statistics.median(times) * 1e3}


ECHO = """
while True:
    item = channel.receive()
    if item is None:
        break
    channel.send(item)
"""

SINK = """
count, size = channel.receive()
for _ in range(count):
    channel.receive()
channel.send("got")
import os
data = os.urandom(size)
for _ in range(count):
    channel.send(data)
"""


def case_transfer(execnet, spec: str) -> dict:
    group = execnet.Group()
    try:
        gw = group.makegateway(spec)
        channel = gw.remote_exec(ECHO)
        for i in range(100):  # warm up
            channel.send(i)
            channel.receive(30)
        t0 = time.perf_counter()
        for i in range(RTT_COUNT):
            channel.send(i)
            channel.receive(30)
        rtt = (time.perf_counter() - t0) / RTT_COUNT
        channel.send(None)
        channel.waitclose(30)

        size = 1 << 20
        data = os.urandom(size)
        channel = gw.remote_exec(SINK)
        channel.send((BULK_CHUNKS, size))
        t0 = time.perf_counter()
        for _ in range(BULK_CHUNKS):
            channel.send(data)
        if channel.receive(120) != "got":
            raise RuntimeError("bulk upload not acknowledged")
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(BULK_CHUNKS):
            channel.receive(120)
        down = time.perf_counter() - t0
        channel.waitclose(30)
    finally:
        group.terminate(TERMINATE)
    mib = BULK_CHUNKS * size / (1 << 20)
    return {"rtt_us": rtt * 1e6, "up_mib_s": mib / up, "down_mib_s": mib / down}


def worker(impl: str, case: str, config: str, iterations: int) -> dict:
    out = C.worker_info(impl, case)
    execnet, info = C.import_execnet("ours-c" if impl in ("native", "program") else impl)
    out.update(info)
    spec = spec_for(impl, config, REMOTE_PYTHON)
    try:
        if case == "start1":
            out.update(case_start(execnet, spec, 1, iterations))
        elif case == "start8":
            out.update(case_start(execnet, spec, 8, max(1, iterations // 2)))
        else:
            out.update(case_transfer(execnet, spec))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    return out


# -- driver -----------------------------------------------------------------------

CASES = {
    "start1": [("start_ms", "makegateway, 1 gateway", "ms", True)],
    "start8": [("start_ms", "makegateway, 8 gateways", "ms", True)],
    "transfer": [
        ("rtt_us", "round trip", "µs", True),
        ("up_mib_s", "bulk to remote", "MiB/s", False),
        ("down_mib_s", "bulk from remote", "MiB/s", False),
    ],
}


def fmt_value(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def report(results: dict, cases: list) -> dict:
    summary = {}
    print("\nValues: median over rounds, with spread (max - min) / median.  Ratios: median"
          "\nof per-round ratios, > 1 means ours is faster than the reference.")
    print(f"\n{'':26} {'unit':>6} {'native':>14} {'program':>14} {C.REF:>14} "
          f"{'nat vs ref':>10} {'prg vs ref':>10}")
    for case in cases:
        rows = results[case]
        for key, label, unit, lower_better in CASES[case]:
            cells, medians, ratios = "", {}, {}
            for impl in IMPLS:
                vals = C.ok_values(rows, impl, key)
                if vals:
                    medians[impl] = statistics.median(vals)
                    cells += f" {fmt_value(medians[impl]) + f' ±{C.spread(vals):.0f}%':>14}"
                else:
                    cells += f" {'error':>14}"
            for impl in IMPLS[:2]:
                ratios[impl] = C.median_ratio(rows, impl, C.REF, key, invert=lower_better)
                cells += f" {C.fmt_ratio(ratios[impl]):>10}"
            print(f"{label:26} {unit:>6}{cells}")
            summary[f"{case}.{key}"] = {"unit": unit, "medians": medians, "ratios": ratios}
        C.report_problems(rows, IMPLS)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of interleaved runs (5)")
    ap.add_argument("--cases", default=",".join(CASES), help="subset of: %(default)s")
    ap.add_argument("--quick", action="store_true", help="fewer starts per worker")
    ap.add_argument("--timeout", type=float, default=300.0, help="worker timeout (300 s)")
    ap.add_argument("--venv", type=Path, default=C.DEFAULT_VENV, help="reference venv")
    ap.add_argument("--json", metavar="OUT", type=Path, help="also save raw numbers here")
    ap.add_argument("--worker", nargs=4, metavar=("IMPL", "CASE", "CFG", "N"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, case, config, n = args.worker
        C.emit(worker(impl, case, config, int(n)))
        return
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    sys.path.insert(0, str(C.REPO_ROOT / "testing"))
    import sshd

    with C.outside_checkout("bench-ssh-") as cwd, tempfile.TemporaryDirectory() as tmp:
        server = sshd.SshServer(tmp)
        try:
            drive(args, cases, cwd, str(server.ssh_config))
        finally:
            server.stop()


def drive(args, cases: list, cwd: str, config: str) -> None:
    venv = args.venv.absolute()
    interp = C.interpreters(venv, cwd)
    interp = {"native": interp["ours-c"], "program": interp["ours-c"], C.REF: interp[C.REF]}
    iterations = ITERATIONS[1 if args.quick else 0]
    load_start = C.machine_line()
    print(f"{load_start}; {args.rounds} rounds, {iterations} starts per worker")
    t0 = time.perf_counter()

    def measure(impl, case):
        return C.run_worker(__file__, impl, case, [config, str(iterations)], interp, cwd,
                            args.timeout)

    results, samples = C.interleaved_rounds(args.rounds, cases, IMPLS, measure, venv)
    summary = report(results, cases)
    print(f"\nat end: {C.machine_line()}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        meta = {"rounds": args.rounds, "cases": cases, "iterations": iterations,
                "at_start": load_start}
        C.save_json(args.json, meta, summary, samples)


if __name__ == "__main__":
    main()

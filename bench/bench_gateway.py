#!/usr/bin/env python3
"""Gateway and channel speed: our execnet vs reference execnet 2.1.2.

Implementations (see _common.py): ours-c (this checkout, C backend if built),
ours-py (EXECNET_PUREPYTHON=1, inherited by the gateway subprocesses too) and
ref-2.1.2 (PyPI, in bench/.venv-ref, created on first use).

Cases, each measured in its own worker process that makes popen gateways in
an execnet.Group of its own and terminates them all before it exits:

  start        makegateway("popen"), median ms over iterations (each gateway
               is terminated, untimed, before the next one starts); the time
               until a first remote_exec("channel.send(1)") answered too
               ("ready"); and, as a baseline, `python -c pass` with the same
               interpreter, alternating with them; "overhead" is ready minus
               baseline, the medians
  group8       a Group, 8 x makegateway("popen"), group.terminate(): total ms
               (and its two parts), median over iterations
  roundtrip    on an echo channel (remote: for x in channel: channel.send(x)),
               send(small int) + receive(): median and 90th percentile in us
  items        N small ints master->worker (the remote counts them and sends
               back the count after a None), and worker->master (the remote
               sends N ints and a None, the master receives them): items/s
  bulk         1 MiB bytes chunks both ways, as items: MiB/s
  remote_exec  gw.remote_exec("channel.send(1)").receive(), repeated: calls/s
  callback     the remote sends N ints, the master counts them in a
               channel.setcallback(cb, endmarker=...) callback and waits for
               the endmarker (delivered when the remote code ends): items/s

Throughput cases (items, bulk, remote_exec, callback) run once untimed to
warm up, then --reps times (3, 1 with --quick); the worker keeps the best
(least disturbed) repetition.  The driver runs --rounds rounds, each every
case for every implementation in an order rotated from round to round, and
prints per case the median over rounds with the spread ((max - min) /
median), and ratios ours / reference as the median of per-round ratios,
oriented so that above 1 means ours is faster (reference time / our time,
our rate / reference rate).  A worker that fails or exceeds --timeout is
reported as "error: ..." for that implementation and case; the rest goes on.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

del sys.path[0]

IMPLS = C.EXECNET_IMPLS
GROUP_TERMINATE_TIMEOUT = 10.0

# sizes per worker: (full, --quick)
SIZES = {
    "start_iterations": (15, 4),
    "group8_iterations": (5, 2),
    "roundtrip_iterations": (5000, 500),
    "items": (200_000, 20_000),
    "bulk_mib": (256, 32),
    "remote_exec_calls": (2000, 200),
    "callback_items": (200_000, 20_000),
    "reps": (3, 1),
}

# -- remote code --------------------------------------------------------------

ECHO = """\
for x in channel:
    channel.send(x)
"""

COUNT_ITEMS = """\
n = 0
while True:
    x = channel.receive()
    if x is None:
        break
    n += 1
channel.send(n)
"""

COUNT_BYTES = """\
n = 0
while True:
    x = channel.receive()
    if x is None:
        break
    n += len(x)
channel.send(n)
"""

SEND_INTS = """\
n = channel.receive()
for i in range(n):
    channel.send(i)
channel.send(None)
"""

SEND_CHUNKS = """\
n = channel.receive()
chunk = bytes(range(256)) * 4096
for i in range(n):
    channel.send(chunk)
channel.send(None)
"""

SEND_INTS_THEN_CLOSE = """\
n = channel.receive()
for i in range(n):
    channel.send(i)
"""

REMOTE_BACKEND = """\
import sys
m = sys.modules.get("execnet.gateway_base")
channel.send(getattr(m, "BACKEND", "reference") if m is not None else "?")
"""

MIB = 1 << 20
CHUNK = bytes(range(256)) * 4096

# -- cases (run in the worker) -----------------------------------------------------


class Mismatch(Exception):
    pass


def expect(got, want, what):
    if got != want:
        raise Mismatch(f"{what}: expected {want!r}, got {got!r}")


def ms(seconds):
    return seconds * 1e3


def best_of(reps, run):
    """run() -> (amount, seconds); the best rate over reps runs."""
    return max(amount / seconds for amount, seconds in (run() for _ in range(reps)))


def one_gateway(group, out):
    gw = group.makegateway("popen")
    out["remote_backend"] = gw.remote_exec(REMOTE_BACKEND).receive()
    return gw


def case_start(execnet, group, size, out):
    group.makegateway("popen")  # warm up (file caches, bytecode)
    group.terminate(GROUP_TERMINATE_TIMEOUT)
    starts, readies, passes = [], [], []
    for _ in range(size["start_iterations"]):
        t0 = time.perf_counter()
        gw = group.makegateway("popen")
        starts.append(time.perf_counter() - t0)
        gw.remote_exec("channel.send(1)").receive()
        readies.append(time.perf_counter() - t0)
        # untimed: exit() the gateway and wait until its process is gone
        group.terminate(GROUP_TERMINATE_TIMEOUT)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        passes.append(time.perf_counter() - t0)
    start, ready = ms(statistics.median(starts)), ms(statistics.median(readies))
    base = ms(statistics.median(passes))
    return {"start_ms": start, "ready_ms": ready, "pass_ms": base, "overhead_ms": ready - base}


def case_group8(execnet, group, size, out):
    group.makegateway("popen")  # warm up
    group.terminate(GROUP_TERMINATE_TIMEOUT)
    totals, makes, terms = [], [], []
    for _ in range(size["group8_iterations"]):
        g = execnet.Group()
        try:
            t0 = time.perf_counter()
            for _ in range(8):
                g.makegateway("popen")
            t1 = time.perf_counter()
            g.terminate()
            t2 = time.perf_counter()
            expect(len(g), 0, "gateways left in the group after terminate()")
        finally:
            g.terminate(GROUP_TERMINATE_TIMEOUT)
        totals.append(t2 - t0)
        makes.append(t1 - t0)
        terms.append(t2 - t1)
    return {"total_ms": ms(statistics.median(totals)), "make_ms": ms(statistics.median(makes)),
            "terminate_ms": ms(statistics.median(terms))}


def case_roundtrip(execnet, group, size, out):
    gw = one_gateway(group, out)
    ch = gw.remote_exec(ECHO)
    for i in range(200):  # warm up
        ch.send(i)
        expect(ch.receive(), i, "echo")
    clock, times = time.perf_counter_ns, []
    for i in range(size["roundtrip_iterations"]):
        t0 = clock()
        ch.send(i)
        x = ch.receive()
        times.append(clock() - t0)
        if x != i:
            expect(x, i, "echo")
    ch.close()
    ch.waitclose(GROUP_TERMINATE_TIMEOUT)
    times.sort()
    return {"rt_us": statistics.median(times) / 1e3,
            "rt_p90_us": times[int(0.9 * (len(times) - 1))] / 1e3}


def to_worker(gw, code, items, item, unit):
    """Send items x item, then None; the remote answers with the total."""
    ch = gw.remote_exec(code)
    t0 = time.perf_counter()
    for _ in range(items):
        ch.send(item)
    ch.send(None)
    total = ch.receive()
    seconds = time.perf_counter() - t0
    expect(total, items * unit, "remote count")
    ch.waitclose(GROUP_TERMINATE_TIMEOUT)
    return items, seconds


def from_worker(gw, code, items, unit):
    """Ask the remote for items items (it ends with None); receive them all."""
    ch = gw.remote_exec(code)
    t0 = time.perf_counter()
    ch.send(items)
    n = total = 0
    while True:
        x = ch.receive()
        if x is None:
            break
        n += 1
        total += len(x) if unit != 1 else 1
    seconds = time.perf_counter() - t0
    expect((n, total), (items, items * unit), "items received")
    ch.waitclose(GROUP_TERMINATE_TIMEOUT)
    return items, seconds


def case_items(execnet, group, size, out):
    gw = one_gateway(group, out)
    n, reps = size["items"], size["reps"]
    res = {}
    to_worker(gw, COUNT_ITEMS, n // 10, 1, 1)  # warm up
    res["m2w_items_s"] = best_of(reps, lambda: to_worker(gw, COUNT_ITEMS, n, 12345, 1))
    from_worker(gw, SEND_INTS, n // 10, 1)
    res["w2m_items_s"] = best_of(reps, lambda: from_worker(gw, SEND_INTS, n, 1))
    return res


def case_bulk(execnet, group, size, out):
    gw = one_gateway(group, out)
    n, reps = size["bulk_mib"], size["reps"]
    res = {}
    to_worker(gw, COUNT_BYTES, max(1, n // 10), CHUNK, MIB)  # warm up
    res["m2w_mib_s"] = best_of(reps, lambda: to_worker(gw, COUNT_BYTES, n, CHUNK, MIB))
    from_worker(gw, SEND_CHUNKS, max(1, n // 10), MIB)
    res["w2m_mib_s"] = best_of(reps, lambda: from_worker(gw, SEND_CHUNKS, n, MIB))
    return res


def case_remote_exec(execnet, group, size, out):
    gw = one_gateway(group, out)

    def run(calls):
        t0 = time.perf_counter()
        for _ in range(calls):
            x = gw.remote_exec("channel.send(1)").receive()
            if x != 1:
                expect(x, 1, "remote_exec result")
        return calls, time.perf_counter() - t0

    calls = size["remote_exec_calls"]
    run(calls // 10)  # warm up
    return {"calls_s": best_of(size["reps"], lambda: run(calls))}


def case_callback(execnet, group, size, out):
    gw = one_gateway(group, out)

    def run(items):
        ch = gw.remote_exec(SEND_INTS_THEN_CLOSE)
        end, done, count = object(), threading.Event(), [0]

        def callback(item):
            if item is end:
                done.set()
            else:
                count[0] += 1

        ch.setcallback(callback, endmarker=end)
        t0 = time.perf_counter()
        ch.send(items)
        if not done.wait(60):
            raise Mismatch(f"no endmarker after 60 s ({count[0]} of {items} items)")
        seconds = time.perf_counter() - t0
        expect(count[0], items, "items delivered to the callback")
        return items, seconds

    n = size["callback_items"]
    run(n // 10)  # warm up
    return {"cb_items_s": best_of(size["reps"], lambda: run(n))}


# name -> (title, function, [(key, label, unit, lower_is_better)])
CASES = {
    "start": ("1. gateway start", case_start, [
        ("start_ms", 'makegateway("popen")', "ms", True),
        ("ready_ms", "  + first remote_exec answered", "ms", True),
        ("pass_ms", "python -c pass (baseline)", "ms", True),
        ("overhead_ms", "ready - baseline", "ms", True),
    ]),
    "group8": ("2. eight gateways in one group", case_group8, [
        ("total_ms", "8 x makegateway + terminate", "ms", True),
        ("make_ms", "  of which 8 x makegateway", "ms", True),
        ("terminate_ms", "  of which group.terminate()", "ms", True),
    ]),
    "roundtrip": ("3. round trip on an echo channel", case_roundtrip, [
        ("rt_us", "send + receive, median", "us", True),
        ("rt_p90_us", "send + receive, 90th percentile", "us", True),
    ]),
    "items": ("4. small items (ints)", case_items, [
        ("m2w_items_s", "master -> worker", "items/s", False),
        ("w2m_items_s", "worker -> master", "items/s", False),
    ]),
    "bulk": ("5. bulk: 1 MiB bytes chunks", case_bulk, [
        ("m2w_mib_s", "master -> worker", "MiB/s", False),
        ("w2m_mib_s", "worker -> master", "MiB/s", False),
    ]),
    "remote_exec": ('6. sequential remote_exec("channel.send(1)").receive()', case_remote_exec, [
        ("calls_s", "remote_exec + receive", "calls/s", False),
    ]),
    "callback": ("7. callback delivery", case_callback, [
        ("cb_items_s", "setcallback(cb, endmarker=...)", "items/s", False),
    ]),
}


def worker(impl: str, case: str, quick: bool) -> dict:
    out = C.worker_info(impl, case)
    execnet, info = C.import_execnet(impl)
    out.update(info)
    size = {k: v[1 if quick else 0] for k, v in SIZES.items()}
    group = execnet.Group()
    try:
        out.update(CASES[case][1](execnet, group, size, out))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    finally:
        try:
            group.terminate(GROUP_TERMINATE_TIMEOUT)
        except Exception as exc:
            out.setdefault("error", f"group.terminate(): {type(exc).__name__}: {exc}")
    return out


# -- driver -------------------------------------------------------------------------


def report(results: dict, cases: list) -> dict:
    """Prints a table per case; returns the summary for --json."""
    summary = {}
    print("\nValues: median over rounds, with spread (max - min) / median.  Ratios: median of"
          "\nper-round ratios, > 1 means ours is faster (reference time / our time, our rate /"
          " reference rate).")
    for case in cases:
        title, _, metrics = CASES[case]
        rows = results[case]
        summary[case] = {}
        print(f"\n== {title}")
        print(f"{'':36} {'unit':>7} {'ours-c':>16} {'ours-py':>16} {IMPLS[2]:>16} "
              f"{'c vs ref':>9} {'py vs ref':>9}")
        for key, label, unit, lower in metrics:
            cells, med, ratios = C.metric_row(rows, IMPLS, key, lower, C.fmt_value)
            print(f"{label:36} {unit:>7}{cells}")
            summary[case][key] = {"unit": unit, "lower_is_better": lower, "medians": med,
                                  "ratios_faster": ratios}
        problems = C.report_problems(rows, IMPLS)
        if problems:
            summary[case]["errors"] = problems
    return summary


def remote_backends(samples: list) -> None:
    seen = {}
    for s in samples:
        if "remote_backend" in s:
            seen.setdefault(s["impl"], set()).add(s["remote_backend"])
    if seen:
        print("\nbackend of the gateways' remote ends: " + ", ".join(
            f"{impl} {'/'.join(sorted(seen[impl]))}" for impl in IMPLS if impl in seen))
    if seen.get("ours-c", {"c"}) != {"c"}:
        print("WARNING: ours-c's remote ends did not run the C backend")
    if seen.get("ours-py", {"python"}) != {"python"}:
        print("WARNING: ours-py's remote ends did not run the pure-Python backend")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of interleaved runs (5)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of: %(default)s")
    ap.add_argument("--quick", action="store_true",
                    help="smaller sizes and one repetition per worker, for a smoke run")
    ap.add_argument("--reps", type=int,
                    help="repetitions of a throughput measurement per worker (3, quick 1)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds before a worker is killed and reported as an error (120)")
    ap.add_argument("--venv", type=Path, default=C.DEFAULT_VENV,
                    help="reference venv (created if missing; default bench/.venv-ref)")
    ap.add_argument("--json", metavar="OUT", type=Path, help="also save raw numbers here")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reps is not None:
        SIZES["reps"] = (args.reps, args.reps)
    if args.worker:
        C.emit(worker(*args.worker, args.quick))
        return
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    with C.outside_checkout("bench-gateway-") as cwd:
        drive(args, cases, cwd)


def drive(args, cases: list, cwd: str) -> None:
    venv = args.venv.absolute()
    interp = C.interpreters(venv, cwd)
    load_start = C.machine_line()
    print(f"{load_start}; {args.rounds} rounds{' (quick sizes)' if args.quick else ''}, "
          f"worker timeout {args.timeout:.0f} s")
    worker_args = (["--quick"] if args.quick else []) + (
        ["--reps", str(args.reps)] if args.reps is not None else [])
    t0 = time.perf_counter()

    def measure(impl, case):
        return C.run_worker(__file__, impl, case, worker_args, interp, cwd, args.timeout)

    results, samples = C.interleaved_rounds(args.rounds, cases, IMPLS, measure, venv)
    C.backend_warnings(samples)
    summary = report(results, cases)
    remote_backends(samples)
    print(f"\nat end: {C.machine_line()}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        meta = {"rounds": args.rounds, "quick": args.quick, "cases": cases,
                "sizes": {k: v[1 if args.quick else 0] for k, v in SIZES.items()},
                "timeout": args.timeout, "venv": str(venv), "at_start": load_start}
        C.save_json(args.json, meta, summary, samples)


if __name__ == "__main__":
    main()

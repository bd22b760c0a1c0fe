#!/usr/bin/env python3
"""The call patterns users write, each timed: our execnet vs execnet 2.1.2.

bench_gateway.py measures the machinery (round trips, throughput); this
script times whole user-level patterns on one popen gateway (or a group of
four), so that a pattern our design handles badly shows up here before a
user finds it.  Every pattern is a unit of work repeated CALLS times after
WARMUP untimed ones, reported in calls per second:

  exec_recv_close      ch = gw.remote_exec("channel.send(1)"); ch.receive();
                       ch.waitclose()
  exec_recv_close_to   the same with receive(10) and waitclose(10)
  exec_func_kwargs     remote_exec(function, x=1, y=2) of a module-level
                       function that sends x + y; receive + waitclose
  roundtrip            send + receive on an echo channel
  roundtrip_to         the same with receive(10)
  callback_end         remote sends 10 ints and ends; setcallback(cb,
                       endmarker=...) collects them; wait for the endmarker
  iterate              remote sends 10 ints and ends; list(channel)
  makefile_r           remote writes 10 lines to makefile("w") and ends; the
                       master reads them with makefile("r").readline()
  makefile_w           the master writes 10 lines to makefile("w") and closes
                       the channel; the remote reads them with
                       makefile("r").readline() and replies with the count
                       on a second channel
  receive_each4        group of 4: mch = group.remote_exec("channel.send(1)");
                       mch.receive_each(); mch.waitclose()
  group_exec4          group of 4: group.remote_exec("pass").waitclose()
  channel_in_channel   a new channel sent over an open one; the remote
                       answers on it; receive + waitclose of the new one
  status_busy          remote_status() of a gateway running a task (blocked
                       in receive()), the task's channel open

Implementations and the interleaved rounds are those of _common.py.  Ratios
are medians of per-round ratios, > 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

del sys.path[0]

IMPLS = C.EXECNET_IMPLS
CALLS, WARMUP = 300, 20
ITEMS = 10

ECHO = "for x in channel:\n    channel.send(x)\n"
SEND_ITEMS = f"for i in range({ITEMS}):\n    channel.send(i)\n"
WRITE_LINES = f"f = channel.makefile('w')\nfor i in range({ITEMS}):\n    f.write('line %d\\n' % i)\n"
READ_LINES = (
    "f = channel.makefile('r')\n"
    "n = 0\n"
    "while f.readline():\n"
    "    n += 1\n"
    "channel.send(n)\n"
)
BLOCKED_TASK = "channel.receive()\n"


class Mismatch(Exception):
    pass


def expect(got, want, what):
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, expected {want!r}")


def add(channel, x, y):
    channel.send(x + y)


# Each pattern: setup(execnet, group) -> (call, cleanup or None); call() does one unit.


def p_exec_recv_close(execnet, group, timeout=None):
    gw = group.makegateway("popen")

    def call():
        ch = gw.remote_exec("channel.send(1)")
        expect(ch.receive(timeout), 1, "result")
        ch.waitclose(timeout)

    return call, None


def p_exec_recv_close_to(execnet, group):
    return p_exec_recv_close(execnet, group, timeout=10)


def p_exec_func_kwargs(execnet, group):
    gw = group.makegateway("popen")

    def call():
        ch = gw.remote_exec(add, x=1, y=2)
        expect(ch.receive(), 3, "result")
        ch.waitclose()

    return call, None


def p_roundtrip(execnet, group, timeout=None):
    gw = group.makegateway("popen")
    ch = gw.remote_exec(ECHO)

    def call():
        ch.send(7)
        expect(ch.receive(timeout), 7, "echo")

    def cleanup():
        ch.close()
        ch.waitclose(10)

    return call, cleanup


def p_roundtrip_to(execnet, group):
    return p_roundtrip(execnet, group, timeout=10)


def p_callback_end(execnet, group):
    gw = group.makegateway("popen")
    end = object()

    def call():
        got, done = [], threading.Event()

        def callback(item):
            if item is end:
                done.set()
            else:
                got.append(item)

        ch = gw.remote_exec(SEND_ITEMS)
        ch.setcallback(callback, endmarker=end)
        if not done.wait(10):
            raise Mismatch("no endmarker within 10 s")
        expect(len(got), ITEMS, "items")

    return call, None


def p_iterate(execnet, group):
    gw = group.makegateway("popen")

    def call():
        expect(list(gw.remote_exec(SEND_ITEMS)), list(range(ITEMS)), "items")

    return call, None


def p_makefile_r(execnet, group):
    gw = group.makegateway("popen")

    def call():
        f = gw.remote_exec(WRITE_LINES).makefile("r")
        n = 0
        while f.readline():
            n += 1
        expect(n, ITEMS, "lines")

    return call, None


def p_makefile_w(execnet, group):
    gw = group.makegateway("popen")
    # the remote reads lines until our close, then answers on a second
    # channel sent along first (a closed channel receives nothing more)
    code = "reply = channel.receive()\n" + READ_LINES.replace("channel.send(n)", "reply.send(n)")

    def call():
        reply = gw.newchannel()
        ch = gw.remote_exec(code)
        ch.send(reply)
        f = ch.makefile("w")
        for i in range(ITEMS):
            f.write(f"line {i}\n")
        ch.close()
        expect(reply.receive(), ITEMS, "lines counted")
        reply.waitclose()

    return call, None


def p_receive_each4(execnet, group):
    for _ in range(4):
        group.makegateway("popen")

    def call():
        mch = group.remote_exec("channel.send(1)")
        expect(mch.receive_each(), [1, 1, 1, 1], "results")
        mch.waitclose()

    return call, None


def p_group_exec4(execnet, group):
    for _ in range(4):
        group.makegateway("popen")

    def call():
        group.remote_exec("pass").waitclose()

    return call, None


def p_channel_in_channel(execnet, group):
    gw = group.makegateway("popen")
    ch = gw.remote_exec("for sub in channel:\n    sub.send(1)\n    sub.close()\n")

    def call():
        sub = gw.newchannel()
        ch.send(sub)
        expect(sub.receive(), 1, "answer on the sent channel")
        sub.waitclose()

    def cleanup():
        ch.close()
        ch.waitclose(10)

    return call, cleanup


def p_status_busy(execnet, group):
    gw = group.makegateway("popen")
    task = gw.remote_exec(BLOCKED_TASK)

    def call():
        status = gw.remote_status()
        expect(status.numexecuting, 1, "tasks executing")

    def cleanup():
        task.send(None)
        task.waitclose(10)

    return call, cleanup


PATTERNS = {
    "exec_recv_close": p_exec_recv_close,
    "exec_recv_close_to": p_exec_recv_close_to,
    "exec_func_kwargs": p_exec_func_kwargs,
    "roundtrip": p_roundtrip,
    "roundtrip_to": p_roundtrip_to,
    "callback_end": p_callback_end,
    "iterate": p_iterate,
    "makefile_r": p_makefile_r,
    "makefile_w": p_makefile_w,
    "receive_each4": p_receive_each4,
    "group_exec4": p_group_exec4,
    "channel_in_channel": p_channel_in_channel,
    "status_busy": p_status_busy,
}


def worker(impl: str, case: str, calls: int) -> dict:
    out = C.worker_info(impl, case)
    execnet, info = C.import_execnet(impl)
    out.update(info)
    group = execnet.Group()
    try:
        call, cleanup = PATTERNS[case](execnet, group)
        for _ in range(WARMUP):
            call()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        out["calls_s"] = calls / (time.perf_counter() - t0)
        if cleanup is not None:
            cleanup()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    finally:
        try:
            group.terminate(10.0)
        except Exception as exc:
            out.setdefault("error", f"group.terminate(): {type(exc).__name__}: {exc}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of interleaved runs (5)")
    ap.add_argument("--patterns", default=",".join(PATTERNS),
                    help="comma-separated subset of: %(default)s")
    ap.add_argument("--calls", type=int, default=CALLS, help=f"timed calls per worker ({CALLS})")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds before a worker is killed and reported as an error (120)")
    ap.add_argument("--venv", type=Path, default=C.DEFAULT_VENV,
                    help="reference venv (created if missing; default bench/.venv-ref)")
    ap.add_argument("--json", metavar="OUT", type=Path, help="also save raw numbers here")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        C.emit(worker(*args.worker, args.calls))
        return
    cases = args.patterns.split(",")
    if unknown := set(cases) - set(PATTERNS):
        ap.error(f"unknown patterns: {', '.join(sorted(unknown))}")
    with C.outside_checkout("bench-patterns-") as cwd:
        drive(args, cases, cwd)


def drive(args, cases: list, cwd: str) -> None:
    venv = args.venv.absolute()
    interp = C.interpreters(venv, cwd)
    load_start = C.machine_line()
    print(f"{load_start}; {args.rounds} rounds, {args.calls} calls per worker")
    t0 = time.perf_counter()

    def measure(impl, case):
        return C.run_worker(__file__, impl, case, ["--calls", str(args.calls)], interp, cwd,
                            args.timeout)

    results, samples = C.interleaved_rounds(args.rounds, cases, IMPLS, measure, venv)
    C.backend_warnings(samples)
    print("\ncalls/s: median over rounds, with spread (max - min) / median; ratios: median of"
          "\nper-round ratios, > 1 means ours is faster")
    print(f"{'pattern':22} {'ours-c':>16} {'ours-py':>16} {IMPLS[2]:>16} "
          f"{'c vs ref':>9} {'py vs ref':>9}")
    summary = {}
    for case in cases:
        cells, med, ratios = C.metric_row(results[case], IMPLS, "calls_s", False, C.fmt_value)
        print(f"{case:22}{cells}")
        summary[case] = {"medians": med, "ratios_faster": ratios}
        problems = C.report_problems(results[case], IMPLS)
        if problems:
            summary[case]["errors"] = problems
    print(f"\nat end: {C.machine_line()}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        meta = {"rounds": args.rounds, "calls": args.calls, "cases": cases, "venv": str(venv),
                "at_start": load_start}
        C.save_json(args.json, meta, summary, samples)


if __name__ == "__main__":
    main()

"""Channel figures of a popen gateway with output forwarding off and on.

Forwarded output has pipes and a thread of its own; this checks that the
channel does not pay for it.  For each mode, in interleaved rounds, a fresh
gateway is made and timed on:

  start      makegateway() and a first remote_exec round trip
  roundtrip  send a small item, receive the worker's echo
  bulk       1 MiB byte strings to the worker, one acknowledgement per 32

Modes: ``off`` (output=discard), ``forward`` (output=forward, the worker
writes nothing), ``forward-busy`` (output=forward while a thread of the
worker prints a line every millisecond, which this process copies to a
file it writes fd 1 to).  Prints medians over rounds and each mode's
median ratio to ``off``.

Run with the interpreter whose execnet you measure (an installed package,
or this checkout with its extension built in place), e.g.

    /tmp/venv/bin/python bench/bench_output.py --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import execnet

ECHO = """
import sys, threading, time
if channel.receive():
    def chatter():
        i = 0
        while True:
            print("chatter line %d from the worker, of a typical length" % i)
            i += 1
            time.sleep(0.001)
    threading.Thread(target=chatter, daemon=True).start()
channel.send("ready")
while True:
    item = channel.receive()
    if item is None:
        break
    if isinstance(item, bytes):
        n = 1
        while n < 32:
            channel.receive()
            n += 1
        channel.send(n)
    else:
        channel.send(item)
"""

MODES = {
    "off": ("output=discard", False),
    "forward": ("output=forward", False),
    "forward-busy": ("output=forward", True),
}


def measure(mode: str, roundtrips: int, bulk_batches: int) -> dict[str, float]:
    key, busy = MODES[mode]
    group = execnet.Group()
    try:
        t0 = time.perf_counter()
        gw = group.makegateway("popen//" + key)
        channel = gw.remote_exec(ECHO)
        channel.send(busy)
        assert channel.receive() == "ready"
        start = time.perf_counter() - t0

        t0 = time.perf_counter()
        for i in range(roundtrips):
            channel.send(i)
            channel.receive()
        roundtrip = (time.perf_counter() - t0) / roundtrips

        blob = b"b" * (1 << 20)
        t0 = time.perf_counter()
        for _ in range(bulk_batches):
            for _ in range(32):
                channel.send(blob)
            assert channel.receive() == 32
        seconds = time.perf_counter() - t0
        bulk = bulk_batches * 32 / seconds  # MiB/s

        channel.send(None)
        channel.waitclose(10)
    finally:
        group.terminate(timeout=10)
    return {"start_ms": start * 1e3, "roundtrip_us": roundtrip * 1e6, "bulk_MiBps": bulk}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--roundtrips", type=int, default=5000)
    parser.add_argument("--bulk-batches", type=int, default=16)
    args = parser.parse_args()

    # forwarded lines go to our fd 1: a scratch file, not the terminal
    report = os.fdopen(os.dup(1), "w", 1)
    sink = tempfile.TemporaryFile()
    os.dup2(sink.fileno(), 1)
    os.environ.pop("EXECNET_FORWARD_OUTPUT", None)

    report.write(
        "execnet %s from %s, %s core, Python %s, %d rounds\n"
        % (
            execnet.__version__,
            os.path.dirname(execnet.__file__),
            execnet.backend_info().backend,
            sys.version.split()[0],
            args.rounds,
        )
    )
    modes = list(MODES)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(args.rounds):
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        for mode in order:
            results[mode].append(measure(mode, args.roundtrips, args.bulk_batches))
    figures = ("start_ms", "roundtrip_us", "bulk_MiBps")
    report.write("%-14s" % "mode" + "".join("%16s" % f for f in figures) + "\n")
    for mode in modes:
        medians = [statistics.median(x[f] for x in results[mode]) for f in figures]
        report.write("%-14s" % mode + "".join("%16.2f" % v for v in medians) + "\n")
    for mode in modes[1:]:
        ratios = [
            statistics.median(a[f] / b[f] for a, b in zip(results[mode], results["off"]))
            for f in figures
        ]
        report.write("%-14s" % (mode + "/off") + "".join("%16.3f" % v for v in ratios) + "\n")
    report.write("(ratios: of times for start and roundtrip, of throughput for bulk)\n")
    sink.seek(0, 2)
    report.write("forwarded output copied: %d bytes\n" % sink.tell())
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How soon waiters raise when a popen worker dies: seconds, median and max.

  receive    threads blocked in receive(); the worker is killed (SIGKILL):
             from the kill to the last waiter's EOFError
  send       a 100 MB send() blocked writing into a stopped worker's pipe;
             the worker is killed: from the kill to the OSError
  rsync      RSync.send() to the gateway; the worker is killed from the
             first progress callback: from the kill to send() raising
  truncated  the worker writes the header of a 1000-byte item, 10 bytes of
             it, and exits: from asking it to do so to the EOFError

Runs the execnet this interpreter imports (the C core unless
EXECNET_PUREPYTHON=1).  Usage:

    python bench/bench_faults.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time

import execnet

WAIT = 30.0


def run_in_thread(call):
    """(thread, box): box gets 'raised_at' and 'error' when call() ends."""
    box: dict = {"started": threading.Event()}

    def run():
        box["native_id"] = threading.get_native_id()
        box["started"].set()
        try:
            call()
        except BaseException as exc:
            box["error"] = exc
        box["raised_at"] = time.perf_counter()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    box["started"].wait(WAIT)
    return thread, box


def wait_blocked(box):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with open(f"/proc/self/task/{box['native_id']}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("S", "D"):
                return
        time.sleep(0.001)
    raise RuntimeError("never blocked")


def finish(thread, box, since):
    thread.join(WAIT)
    if thread.is_alive() or "error" not in box:
        raise RuntimeError(f"the waiter did not raise: {box}")
    return box["raised_at"] - since


def case_receive(group):
    gw = group.makegateway("popen")
    channel = gw.remote_exec("import os; channel.send(os.getpid()); channel.receive()")
    pid = channel.receive(WAIT)
    waiters = [run_in_thread(channel.receive) for _ in range(3)]
    for _, box in waiters:
        wait_blocked(box)
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    return max(finish(thread, box, killed) for thread, box in waiters)


def case_send(group):
    gw = group.makegateway("popen")
    pid = gw.remote_exec("import os; channel.send(os.getpid())").receive(WAIT)
    channel = gw.remote_exec("channel.receive()")
    data = b"y" * (100 * 1024 * 1024)
    os.kill(pid, signal.SIGSTOP)
    try:
        thread, box = run_in_thread(lambda: channel.send(data))
        wait_blocked(box)
    finally:
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
    return finish(thread, box, killed)


def case_rsync(group):
    gw = group.makegateway("popen")
    pid = gw.remote_exec("import os; channel.send(os.getpid())").receive(WAIT)
    killed = []
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "source")
        os.mkdir(source)
        for i in range(50):
            with open(os.path.join(source, f"file{i}"), "wb") as f:
                f.write(os.urandom(1000) * (i + 1))

        def callback(kind, size, channel):
            if not killed:
                killed.append(time.perf_counter())
                os.kill(pid, signal.SIGKILL)

        rsync = execnet.RSync(source, callback=callback, verbose=False)
        rsync.add_target(gw, os.path.join(tmp, "dest"))
        thread, box = run_in_thread(rsync.send)
        thread.join(WAIT)
        return finish(thread, box, killed[0])


def case_truncated(group):
    gw = group.makegateway("popen")
    channel = gw.remote_exec(
        "import os, struct\n"
        "channel.receive()\n"
        "fd = channel.gateway._io.outfile.fileno()\n"
        "os.write(fd, struct.pack('!bii', 4, channel.id, 1000) + b'0123456789')\n"
        "os._exit(0)\n"
    )
    thread, box = run_in_thread(channel.receive)
    wait_blocked(box)
    asked = time.perf_counter()
    channel.send(None)
    return finish(thread, box, asked)


CASES = {"receive": case_receive, "send": case_send, "rsync": case_rsync,
         "truncated": case_truncated}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    core = "python" if os.environ.get("EXECNET_PUREPYTHON") else "c"
    print(f"core: {core}, {args.rounds} rounds; seconds until the waiters raised")
    for name, case in CASES.items():
        times = []
        for _ in range(args.rounds):
            group = execnet.Group()
            try:
                times.append(case(group))
            finally:
                group.terminate(timeout=WAIT)
        print(f"  {name:10} median {statistics.median(times):.4f}  max {max(times):.4f}")


if __name__ == "__main__":
    main()

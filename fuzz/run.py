"""The fuzz driver: runs harnesses for a number of inputs or a time, each
in a child process watched for crashes and hangs.

    python fuzz/run.py                       # every target, 10**5 inputs, seed 1
    python fuzz/run.py frames --count 5000
    python fuzz/run.py --seconds 3600 --seed random --jobs 3
    python fuzz/run.py --replay loads fuzz/findings/loads-1a2b3c...

See doc/fuzzing.md.
"""

import argparse
import gc
import hashlib
import json
import mmap
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["loads", "frames", "rsync"]
# the child's progress and its current input, shared with the parent: an
# input counter (8 bytes), the input's length (4) and the input
STATE = struct.Struct("<QI")
STATE_SIZE = STATE.size + (1 << 20)  # inputs are smaller
# a child whose counter stands still this long is hung (each input takes
# milliseconds; the frames harness's own waits time out after 10 s)
HANG_SECONDS = 60
# the rsync harness makes and removes a directory per input: on tmpfs
WORKDIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
# inputs that gave a new outcome are kept for mutation, up to this many
POOL_MAX = 4000
# findings beyond this many per target are saved without a message
MAX_SHOWN = 10


def corpus_files(target):
    directory = os.path.join(HERE, "corpus", target)
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory))]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def load_target(name, workdir):
    module = __import__(f"target_{name}")
    return module, module.Target(workdir)


def save_finding(findings, target, data, why, quiet=False):
    os.makedirs(findings, exist_ok=True)
    path = os.path.join(findings, f"{target}-{hashlib.sha1(data).hexdigest()}")
    with open(path, "wb") as f:
        f.write(data)
    if not quiet:
        print(f"FINDING {target}: {why}\n  input saved as {path}", file=sys.stderr, flush=True)
    return path


# -- the child: one target's loop ---------------------------------------------


def child(args):
    with open(args.state, "r+b") as f:
        state = mmap.mmap(f.fileno(), STATE_SIZE)
    workdir = args.workdir  # the parent's, removed by it
    module, target = load_target(args.child, workdir)
    rng = random.Random(args.seed)
    from mutate import Mutator

    mutator = Mutator(rng, getattr(module, "TOKENS", ()), module.MAX_SIZE)
    mutate = getattr(target, "mutate", None)
    corpus = [read(p)[: module.MAX_SIZE] for p in corpus_files(args.child)]
    pool = list(corpus)
    seen = set()
    findings = 0
    fds = None
    deadline = time.monotonic() + args.seconds if args.seconds else None
    count = 0
    while True:
        if deadline is None:
            if count >= args.count:
                break
        elif count % 256 == 0 and time.monotonic() > deadline:
            break
        if count < len(corpus):
            data = corpus[count]
        elif mutate is not None:
            data = mutate(rng, rng.choice(pool), pool)[: module.MAX_SIZE]
        else:
            data = mutator.mutate(rng.choice(pool), pool)
        state[STATE.size : STATE.size + len(data)] = data
        state[: STATE.size] = STATE.pack(count, len(data))
        try:
            signature = target.run(data)
        except Exception as exc:  # a Finding, or the harness itself failed
            findings += 1
            save_finding(args.findings, args.child, data, f"{type(exc).__name__}: {exc}",
                         quiet=findings > MAX_SHOWN)
            signature = None
        count += 1
        if signature not in seen:
            seen.add(signature)
            if len(pool) < POOL_MAX:
                pool.append(data)
        if count % 1000 == 0:
            # descriptors must not pile up (each frames input opens four);
            # those of garbage in reference cycles are freed by a collection
            gc.collect()
            n = len(os.listdir("/proc/self/fd"))
            if fds is None:
                fds = n
            elif n > fds + 64:
                findings += 1
                save_finding(args.findings, args.child, data, f"{n - fds} descriptors leaked")
                fds = n
    state[: STATE.size] = STATE.pack(count, 0)
    target.close()
    print("RESULT " + json.dumps({"inputs": count, "findings": findings, "outcomes": len(seen)}))
    return 0


# -- the parent: starts and watches the children -----------------------------


def watch(target, args, seed):
    """Run one target's child; returns (inputs, findings, outcomes)."""
    workdir = tempfile.mkdtemp(prefix=f"xn-fuzz-{target}-", dir=args.workdir)
    try:
        return watch_child(target, args, seed, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def watch_child(target, args, seed, workdir):
    with tempfile.NamedTemporaryFile(prefix="xn-fuzz-state-") as f:
        f.truncate(STATE_SIZE)
        f.flush()
        state = mmap.mmap(f.fileno(), STATE_SIZE)
        command = [sys.executable, __file__, "--child", target, "--seed", str(seed),
                   "--workdir", workdir,
                   "--count", str(args.count), "--seconds", str(args.seconds or 0),
                   "--findings", args.findings, "--state", f.name]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        last, last_change = -1, time.monotonic()
        while True:
            try:
                out, _ = proc.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                counter = STATE.unpack(state[: STATE.size])[0]
                if counter != last:
                    last, last_change = counter, time.monotonic()
                elif time.monotonic() - last_change > HANG_SECONDS:
                    proc.kill()
                    proc.wait()
                    return crashed(target, args, state, f"hang at input {counter}")
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            return crashed(target, args, state, f"the child ended with {proc.returncode}")
        result = json.loads(lines[-1][len("RESULT ") :])
        return result["inputs"], result["findings"], result["outcomes"]


def crashed(target, args, state, why):
    counter, length = STATE.unpack(state[: STATE.size])
    data = bytes(state[STATE.size : STATE.size + length])
    save_finding(args.findings, target, data, why)
    return counter, 1, None


def replay(args):
    workdir = tempfile.mkdtemp(prefix="xn-fuzz-replay-", dir=args.workdir)
    _, target = load_target(args.replay, workdir)
    bad = 0
    for path in args.files:
        try:
            print(f"{path}: {target.run(read(path))!r}")
        except Exception as exc:
            bad += 1
            print(f"{path}: FINDING {type(exc).__name__}: {exc}")
    target.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bad else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"of {TARGETS} (default: all)")
    parser.add_argument("--count", type=int, default=10**5, help="inputs per target")
    parser.add_argument("--seconds", type=float, help="run each target this long instead")
    parser.add_argument("--jobs", type=int, default=1, help="targets run at once")
    parser.add_argument("--seed", default="1", help="an integer, or 'random'")
    parser.add_argument("--findings", default=os.path.join(HERE, "findings"))
    parser.add_argument("--workdir", default=WORKDIR, help="for the rsync harness's files")
    parser.add_argument("--replay", metavar="TARGET", help="run the given input files once")
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.seed = int(args.seed)
        return child(args)
    if args.replay:
        args.files = args.targets + args.files
        return replay(args)
    targets = args.targets or TARGETS
    for target in targets:
        if target not in TARGETS:
            parser.error(f"unknown target {target!r}")
    seed = random.SystemRandom().randrange(2**32) if args.seed == "random" else int(args.seed)
    def run_target(target):
        start = time.monotonic()
        inputs, findings, outcomes = watch(target, args, seed)
        print(f"{target}: {inputs} inputs, {findings} findings, {outcomes or '?'} distinct outcomes, "
              f"seed {seed}, {time.monotonic() - start:.0f} s", flush=True)
        return findings

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        total = sum(pool.map(run_target, targets))
    print(f"fuzz: {total} findings")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""RSync speed: our execnet vs reference execnet 2.1.2, cp -a and rsync -a.

The tree: 2,000 files of 200 MiB in total (20 files of 5 MiB, the rest
between a few bytes and ~100 KiB) in 40 directories, made once in
--tree (default /tmp/xn-bench-rsync/src) and reused while its manifest
matches.

Implementations, each measured in a worker process of its own (see
_common.py for ours-c, ours-py and ref-2.1.2):

  ours-c       our RSync; the receiver, on the same machine, copies files
               from the source directory itself (copy_file_range)
  ours-c-pipe  the same with EXECNET_RSYNC_LOCAL=0: all content through the
               channel, as to a remote host
  ours-py      EXECNET_PUREPYTHON=1 (pure Python on both ends)
  ref-2.1.2    execnet 2.1.2's RSync
  cp-a         `cp -a SRC DEST`
  rsync-a      `rsync -a SRC/ DEST/`

Cases:

  full    sync into a destination that does not exist
  resync  the destination is a complete copy (made untimed by the same
          implementation); 1 % of the files (20) then change in the source,
          10 with the same size and 10 with another one, all with new
          mtimes; timed: the sync that brings the destination up to date
          (cp -a copies everything again; that is what it does)

Destinations go to --work: by default /dev/shm/xn-bench-rsync-work (tmpfs,
where writing a file costs what copying memory costs, so that the numbers
compare the implementations rather than the disk; on the project's virtual
machine, writing 200 MiB of new files to its ext4 disk costs every tool,
cp -a included, 0.1-0.65 s depending on the minute), or next to the tree
where /dev/shm is missing or has less than 1 GiB free.

The execnet implementations sync to a `popen//chdir=DIR` gateway with
destination "dest" (relative, so inside DIR); the gateway is started and
warmed up before the clock starts, and terminated after it stopped.
os.sync() runs before every timed sync so that no earlier run's writeback
competes with it.  Each worker deletes its destination when it is done;
with --recycle the next worker deletes it instead, just before its timed
sync (on the project's virtual machine, writing new files right after
200 MiB were deleted is often much faster than after a pause: see
README.md).  After every sync the destination is checked (file count,
total size, and the content of the changed files).  The driver runs --rounds
rounds, every case for every implementation, in an order rotated from round
to round, and prints medians with their spread and the median of per-round
ratios reference time / implementation time (above 1: faster than the
reference).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

del sys.path[0]

REF = C.REF
EXECNET_IMPLS = ["ours-c", "ours-c-pipe", "ours-py", REF]
TOOLS = ["cp-a", "rsync-a"]
IMPLS = EXECNET_IMPLS + TOOLS
CASES = ["full", "resync"]
MIB = 1 << 20
NFILES = 2000
TOTAL = 200 * MIB
NBIG, BIG = 20, 5 * MIB
CHANGED = 20  # 1 % of the files
SIZE_STEP = 4096  # how much a size-changing modification adds or removes


# -- the tree ------------------------------------------------------------------------


def tree_plan() -> list:
    """[(relative path, size)] of the tree, the same every time."""
    rng = random.Random(2000)
    small_total = TOTAL - NBIG * BIG
    nsmall = NFILES - NBIG
    weights = [rng.random() for _ in range(nsmall)]
    scale = small_total / sum(weights)
    sizes = [int(w * scale) for w in weights]
    sizes[-1] += small_total - sum(sizes)
    sizes = [BIG] * NBIG + sizes
    rng.shuffle(sizes)
    return [(f"dir{i % 8}/sub{i % 5}/file{i:04d}.bin", size) for i, size in enumerate(sizes)]


def make_tree(root: Path) -> None:
    plan = tree_plan()
    manifest = root / ".." / (root.name + ".manifest")
    if manifest.exists() and json.loads(manifest.read_text()) == plan and root.is_dir():
        return
    print(f"making the tree in {root} ({NFILES} files, {TOTAL // MIB} MiB) ...", file=sys.stderr)
    shutil.rmtree(root, ignore_errors=True)
    for rel, size in plan:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    manifest.write_text(json.dumps(plan))


def change_files(root: Path, seed: int) -> dict:
    """Rewrite 1 % of the files (half keep their size); returns their
    relative path -> new MD5."""
    rng = random.Random(seed)
    plan = tree_plan()
    picked = rng.sample(plan, CHANGED)
    changed = {}
    for i, (rel, size) in enumerate(picked):
        path = root / rel
        if i % 2:  # another size: toggle between the planned size and one step more
            size = size + SIZE_STEP if path.stat().st_size == size else size
        data = os.urandom(size)
        path.write_bytes(data)
        mtime = time.time() + rng.random()
        os.utime(path, (mtime, mtime))
        changed[rel] = hashlib.md5(data).hexdigest()
    return changed


def check_dest(src: Path, dest: Path, changed: dict) -> None:
    """Raise unless dest has src's files and sizes and the changed files' content."""
    def listing(root):
        found = {}
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                found[os.path.relpath(path, root)] = os.lstat(path).st_size
        return found

    want, got = listing(src), listing(dest)
    if want != got:
        missing = sorted(set(want) - set(got))[:3]
        raise RuntimeError(f"destination differs ({len(got)} of {len(want)} files; "
                           f"missing e.g. {missing})")
    for rel, digest in changed.items():
        if hashlib.md5((dest / rel).read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"{rel}: stale content")


# -- worker side ---------------------------------------------------------------------


def timed(run, work: Path, keep: Path, recycle: bool) -> float:
    if recycle:  # the previous worker's destination goes just now
        for entry in work.iterdir():
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
    os.sync()
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def worker(impl: str, case: str, src: str, work: str, seed: int, recycle: bool) -> dict:
    out = C.worker_info(impl, case)
    src_path, base = Path(src), Path(work) / impl
    dest = base / "dest"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    group = None
    try:
        if impl in TOOLS:
            def sync():
                if impl == "cp-a":
                    subprocess.run(["cp", "-a", f"{src}/.", str(dest)], check=True)
                else:
                    subprocess.run(["rsync", "-a", f"{src}/", f"{dest}/"], check=True)
        else:
            # ours-c-pipe is ours-c with another environment
            execnet, info = C.import_execnet("ours-c" if impl == "ours-c-pipe" else impl)
            out.update(info)
            group = execnet.Group()
            gw = group.makegateway(f"popen//chdir={base}")
            out["remote_backend"] = gw.remote_exec(
                "import sys\n"
                "m = sys.modules.get('execnet.gateway_base')\n"
                "channel.send(getattr(m, 'BACKEND', 'reference'))"
            ).receive()

            def sync():
                rs = execnet.RSync(src, verbose=False)
                rs.add_target(gw, "dest")
                rs.send()

        if case == "full":
            out["seconds"] = timed(sync, Path(work), base, recycle)
            check_dest(src_path, dest, {})
        else:
            sync()  # untimed: a complete copy
            changed = change_files(src_path, seed)
            out["seconds"] = timed(sync, Path(work), base, recycle)
            check_dest(src_path, dest, changed)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    finally:
        if group is not None:
            group.terminate(10.0)
        if not recycle or "error" in out:
            shutil.rmtree(base, ignore_errors=True)
    return out


# -- driver --------------------------------------------------------------------------


def report(results: dict, impls: list) -> dict:
    summary = {}
    print("\nSeconds: median over rounds (spread = (max - min) / median).  vs ref: median of"
          "\nper-round ratios reference time / implementation time (> 1: faster than it).")
    for case in CASES:
        rows = results[case]
        summary[case] = {}
        print(f"\n== {case} ({NFILES} files, {TOTAL // MIB} MiB"
              f"{f', {CHANGED} changed' if case == 'resync' else ''})")
        print(f"{'':12} {'seconds':>9} {'spread':>7} {'vs ref':>8}")
        for impl in impls:
            vals = C.ok_values(rows, impl, "seconds")
            if not vals:
                print(f"{impl:12} {'error':>9}")
            else:
                med = statistics.median(vals)
                ratio = C.median_ratio(rows, REF, impl, "seconds")
                print(f"{impl:12} {med:9.3f} {C.spread(vals):6.0f}% {C.fmt_ratio(ratio):>8}")
                summary[case][impl] = {"median_s": med, "ref_over_impl": ratio}
        problems = C.report_problems(rows, impls)
        if problems:
            summary[case]["errors"] = problems
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of interleaved runs (5)")
    ap.add_argument("--impls", default=",".join(IMPLS), help="subset of: %(default)s")
    ap.add_argument("--tree", type=Path, default=Path("/tmp/xn-bench-rsync/src"),
                    help="where the source tree is made (default /tmp/xn-bench-rsync/src)")
    ap.add_argument("--work", type=Path,
                    help="where the destinations go (default /dev/shm/xn-bench-rsync-work "
                         "if /dev/shm has 1 GiB free, else next to the tree)")
    ap.add_argument("--recycle", action="store_true",
                    help="delete each destination just before the next timed sync "
                         "(instead of at the end of its own worker)")
    ap.add_argument("--timeout", type=float, default=300.0, help="worker timeout, s (300)")
    ap.add_argument("--venv", type=Path, default=C.DEFAULT_VENV,
                    help="reference venv (created if missing; default bench/.venv-ref)")
    ap.add_argument("--json", metavar="OUT", type=Path, help="also save raw numbers here")
    ap.add_argument("--worker", nargs=6,
                    metavar=("IMPL", "CASE", "SRC", "WORK", "SEED", "RECYCLE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, case, src, work, seed, recycle = args.worker
        C.emit(worker(impl, case, src, work, int(seed), recycle == "1"))
        return
    impls = args.impls.split(",")
    if unknown := set(impls) - set(IMPLS):
        ap.error(f"unknown implementations: {', '.join(sorted(unknown))}")
    tree = args.tree.absolute()
    tree.parent.mkdir(parents=True, exist_ok=True)
    make_tree(tree)
    with C.outside_checkout("bench-rsync-") as cwd:
        drive(args, impls, tree, cwd)


def default_work(tree: Path) -> Path:
    """tmpfs if there is room (see the module's docstring), else next to the tree."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize >= 1 << 30:
            return shm / "xn-bench-rsync-work"
    except OSError:
        pass
    return tree.parent / "work"


def drive(args, impls: list, tree: Path, cwd: str) -> None:
    venv = args.venv.absolute()
    interp = C.interpreters(venv, cwd)
    ours_python = interp["ours-c"][0]
    interp["ours-c-pipe"] = (ours_python, {"EXECNET_RSYNC_LOCAL": "0"})
    for tool in TOOLS:
        interp[tool] = (ours_python, {})
    load_start = C.machine_line()
    work = (args.work or default_work(tree)).absolute()
    print(f"{load_start}; {args.rounds} rounds; tree {tree}, destinations in {work}"
          f"{', recycled' if args.recycle else ''}")
    seeds = iter(range(1, 1_000_000))
    t0 = time.perf_counter()

    def measure(impl, case):
        return C.run_worker(__file__, impl, case,
                            [str(tree), str(work), str(next(seeds)), str(int(args.recycle))],
                            interp, cwd, args.timeout)

    work.mkdir(parents=True, exist_ok=True)
    try:
        results, samples = C.interleaved_rounds(args.rounds, CASES, impls, measure, venv)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for s in samples:
        if s["impl"] in ("ours-c", "ours-c-pipe") and s.get("backend", "c") != "c":
            print(f"WARNING: {s['impl']} ran with backend {s['backend']}")
    summary = report(results, impls)
    print(f"\nat end: {C.machine_line()}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        meta = {"rounds": args.rounds, "impls": impls, "tree": str(tree), "at_start": load_start}
        C.save_json(args.json, meta, summary, samples)


if __name__ == "__main__":
    main()

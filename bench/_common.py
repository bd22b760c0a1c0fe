"""Helpers shared by the benchmark scripts in this folder (standard library only).

Every benchmark compares the same implementations:

  ours-c     execnet from this checkout as normally imported (the C backend
             if the extension is built, otherwise its pure-Python fallback),
             run by an empty venv of the driver's interpreter (bench/.venv-ours,
             made on first use) so that both sides start interpreters with an
             empty site-packages;
  ours-py    the same package with EXECNET_PUREPYTHON=1;
  ref-2.1.2  execnet 2.1.2 from PyPI, in a venv created on first use
             (default bench/.venv-ref).

All are called ``execnet``, so each measurement runs in a fresh worker
subprocess (``SCRIPT --worker IMPL CASE ...``) started with ``python -I``
from a directory outside the checkout, in an environment without PYTHON*
variables; the worker puts the checkout on sys.path itself for ours.  The
driver runs interleaved rounds (every case for every implementation, in an
order rotated from round to round) and reports medians over rounds and
medians of per-round ratios.

A benchmark script imports this module with its own folder put on sys.path
for the import only (workers run with -I, which leaves it out).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REF_VERSION = "2.1.2"
REF = f"ref-{REF_VERSION}"
OURS = ("ours-c", "ours-py")
EXECNET_IMPLS = [*OURS, REF]
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_VENV = BENCH_DIR / ".venv-ref"
DEFAULT_OURS_VENV = BENCH_DIR / ".venv-ours"

# -- worker side ----------------------------------------------------------------


def import_execnet(impl: str):
    """Import the execnet of impl (inside a worker); returns (module, description)."""
    if impl in OURS:
        sys.path.insert(0, str(REPO_ROOT))
    import execnet

    info = {
        "backend": getattr(execnet.gateway_base, "BACKEND", "reference"),
        "module_file": execnet.__file__,
        "version": getattr(execnet, "__version__", None),
    }
    return execnet, info


def worker_info(impl: str, case: str) -> dict:
    """The fields every worker result starts with."""
    return {"impl": impl, "case": case, "python": sys.executable,
            "python_version": sys.version.split()[0]}


def emit(result: dict) -> None:
    """A worker's result: one JSON line, the last one on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# -- driver side: environment, reference venv, workers ----------------------------


def clean_env(extra: dict | None = None) -> dict:
    """Our environment without PYTHON* (PYTHONDONTWRITEBYTECODE, PYTHONPATH, ...)."""
    drop = ("EXECNET_PUREPYTHON", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k not in drop}
    env.update(extra or {})
    return env


def run(cmd: list, env: dict, cwd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def outside_checkout(prefix: str):
    """A temporary working directory for the workers, outside the checkout."""
    with tempfile.TemporaryDirectory(prefix=prefix) as cwd:
        yield cwd


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _probe(exe: Path, cwd: str, code: str) -> str:
    if not exe.exists():
        return ""
    return run([str(exe), "-I", "-c", code], clean_env(), cwd).stdout.strip()


def _setup(steps: list, cwd: str) -> None:
    for cmd in steps:
        proc = run(cmd, clean_env(), cwd)
        if proc.returncode:
            sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


VERSION_PROBE = "import sys; print(sys.version)"


def ensure_reference(venv: Path, cwd: str) -> str:
    """The reference venv's python, creating the venv and installing into it if needed."""
    exe = _venv_python(venv)
    probe = "import importlib.metadata as m; print(m.version('execnet'))"
    if _probe(exe, cwd, probe) != REF_VERSION:
        print(f"setting up the reference venv in {venv} (execnet=={REF_VERSION}) ...",
              file=sys.stderr)
        steps = [] if exe.exists() else [[sys.executable, "-m", "venv", str(venv)]]
        steps.append([str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                      f"execnet=={REF_VERSION}"])
        _setup(steps, cwd)
        if _probe(exe, cwd, probe) != REF_VERSION:
            sys.exit(f"{exe}: execnet {REF_VERSION} is not importable after installing it")
    if _probe(exe, cwd, VERSION_PROBE) != sys.version:
        print(f"WARNING: {exe} is not this interpreter's version ({sys.version.split()[0]}); "
              f"remove {venv} to have it made anew", file=sys.stderr)
    return str(exe)


def ensure_plain_venv(venv: Path, cwd: str) -> str:
    """The python of an empty venv of this interpreter (made, or remade, if needed).

    Ours runs in it, not in this interpreter itself, so that both sides start
    interpreters with the same (empty) site-packages: .pth files of the base
    installation would otherwise slow down every gateway start of ours only.
    """
    exe = _venv_python(venv)
    if _probe(exe, cwd, VERSION_PROBE) != sys.version:
        print(f"setting up an empty venv for ours in {venv} ...", file=sys.stderr)
        _setup([[sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)]], cwd)
    return str(exe)


def ensure_venv_with(venv: Path, packages: list, cwd: str, probe: str, expect: str) -> str:
    """The python of venv with packages installed (pip, with --no-deps: list them all).

    probe is code whose output must be expect once they are; the venv is
    (re)made and the packages installed when it is not.
    """
    exe = _venv_python(venv)
    if _probe(exe, cwd, VERSION_PROBE) != sys.version or _probe(exe, cwd, probe) != expect:
        print(f"setting up {venv} ({' '.join(packages)}) ...", file=sys.stderr)
        _setup([[sys.executable, "-m", "venv", "--clear", str(venv)],
                [str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "--no-deps", *packages]], cwd)
        if _probe(exe, cwd, probe) != expect:
            sys.exit(f"{exe}: {probe!r} does not print {expect!r} after installing")
    return str(exe)


def interpreters(venv: Path, cwd: str, ours_venv: Path = DEFAULT_OURS_VENV) -> dict:
    """implementation -> (interpreter, extra environment variables)."""
    ours = ensure_plain_venv(ours_venv, cwd)
    return {
        "ours-c": (ours, {}),
        "ours-py": (ours, {"EXECNET_PUREPYTHON": "1"}),
        REF: (ensure_reference(venv, cwd), {}),
    }


def _kill_group(pgid: int) -> bool:
    """SIGKILL process group pgid; True if it had members."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        raise
    return True


def run_worker(script: str, impl: str, case: str, args: list, interp: dict, cwd: str,
               timeout: float) -> dict:
    """Run ``script --worker impl case *args`` in impl's interpreter; its JSON result.

    The worker gets a session (process group) of its own, so that whatever it
    started (gateway subprocesses) can be killed with it: on timeout, and if
    anything of it is still alive once it has exited (noted as "leftover").
    Failures come back as {"impl", "case", "error": message}.
    """
    python, extra = interp[impl]
    cmd = [python, "-I", str(Path(script).resolve()), "--worker", impl, case, *args]
    # files, not pipes: a leftover subprocess holding a pipe open can't delay us
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        proc = subprocess.Popen(cmd, env=clean_env(extra), cwd=cwd, stdout=fout, stderr=ferr,
                                start_new_session=True)
        try:
            proc.wait(timeout)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
            _kill_group(proc.pid)
            proc.wait()
        except BaseException:  # Ctrl-C: the worker's own session did not get it
            _kill_group(proc.pid)
            proc.wait()
            raise
        # the group id stays reserved while members live, so this hits only ours
        leftover = _kill_group(proc.pid)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    result = None
    lines = out.strip().splitlines()
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    if not isinstance(result, dict):
        if hung:
            msg = f"timeout after {timeout:g} s"
        elif proc.returncode:
            msg = f"exit {proc.returncode}: {(err.strip().splitlines() or ['?'])[-1]}"
        else:
            msg = f"bad output {out[-200:]!r}"
        tail = err.strip().splitlines()[-1:] if hung else []
        result = {"error": msg + (f" (last stderr: {tail[0]})" if tail else "")}
    result.update({"impl": impl, "case": case})
    notes = []
    if hung:
        notes.append(f"worker hung after its result, killed after {timeout:g} s")
    elif leftover or proc.returncode:
        notes.append("left processes behind (killed)" if leftover
                     else f"exit status {proc.returncode}")
    if notes and "error" not in result:
        result["note"] = "; ".join(notes)
    if err.strip() and "error" in result:
        result["stderr_tail"] = err.strip().splitlines()[-5:]
    return result


def check_module(sample: dict, venv: Path) -> None:
    """The reference must come from its venv, ours from this checkout: else stop."""
    if "module_file" not in sample:
        return
    where = Path(sample["module_file"]).resolve()
    if sample["impl"] == REF:
        ok = where.is_relative_to(venv.resolve()) and sample["version"] == REF_VERSION
    elif sample["impl"] in OURS:
        ok = where.is_relative_to(REPO_ROOT / "execnet")
    else:
        ok = True
    if not ok:
        sys.exit(f"{sample['impl']} imported the wrong execnet: {where} ({sample['version']})")


def interleaved_rounds(rounds: int, cases: list, impls: list, measure, venv: Path):
    """Run measure(impl, case) for all, rounds times, rotating the order of impls.

    Returns ({case: [ {impl: sample} per round ]}, [all samples]).  Prints the
    backend and module file of each implementation the first time it is seen,
    and progress on stderr.
    """
    results = {case: [] for case in cases}
    samples, seen, t0 = [], set(), time.perf_counter()
    for rnd in range(rounds):
        for ci, case in enumerate(cases):
            shift = (rnd + ci) % len(impls)
            row = {}
            for pos, impl in enumerate(impls[shift:] + impls[:shift]):
                s = measure(impl, case)
                s.update({"round": rnd, "position": pos})
                check_module(s, venv)
                if "module_file" in s:
                    key = (impl, s["backend"], s["module_file"])
                    if key not in seen:
                        seen.add(key)
                        print(f"  {impl:10} backend {s['backend']:9} {s['module_file']}")
                row[impl] = s
                samples.append(s)
            results[case].append(row)
        print(f"round {rnd + 1}/{rounds} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return results, samples


def backend_warnings(samples: list) -> None:
    """Say so if ours-c did not run the C backend, or ours-py not the Python one."""
    def backends(impl):
        return {s["backend"] for s in samples if s["impl"] == impl and "backend" in s}

    got = backends("ours-c")
    if got and got != {"c"}:
        print(f"WARNING: ours-c ran with backend {'/'.join(sorted(got))} "
              "(C extension not built or not importable): its numbers are not the C backend's")
    if backends("ours-py") - {"python"}:
        print("WARNING: ours-py did not run the pure-Python backend")


# -- statistics and formatting -------------------------------------------------------


def ok_values(rows: list, impl: str, key: str) -> list:
    return [r[impl][key] for r in rows if impl in r and "error" not in r[impl]]


def errors(rows: list, impl: str) -> list:
    return [r[impl]["error"] for r in rows if impl in r and "error" in r[impl]]


def report_problems(rows: list, impls) -> dict:
    """Print, under a table, each implementation's distinct errors (with in
    how many rounds they came) and notes; return impl -> errors, where any."""
    found = {}
    for impl in impls:
        errs = errors(rows, impl)
        for msg in dict.fromkeys(errs):  # distinct, in order
            print(f"  {impl}: error: {msg} ({errs.count(msg)} of {len(rows)} rounds)")
        for note in sorted({r[impl]["note"] for r in rows if "note" in r.get(impl, {})}):
            print(f"  {impl}: note: {note}")
        if errs:
            found[impl] = errs
    return found


def spread(values: list) -> float:
    """(max - min) / median, in percent."""
    return 100 * (max(values) - min(values)) / statistics.median(values)


def median_ratio(rows: list, a: str, b: str, key: str, invert: bool = False):
    """Median over rounds of a/b (b/a with invert), each pair from the same round."""
    ratios = []
    for r in rows:
        if "error" in r.get(a, {"error": 1}) or "error" in r.get(b, {"error": 1}):
            continue
        x, y = r[a][key], r[b][key]
        if invert:
            x, y = y, x
        if y:
            ratios.append(x / y)
    return statistics.median(ratios) if ratios else None


def fmt_ratio(x) -> str:
    return "   n/a" if x is None else f"{x:6.2f}x"


def machine_line() -> str:
    return (f"python {sys.version.split()[0]} ({sys.executable}), {os.cpu_count()} cpus, "
            f"load average {os.getloadavg()[0]:.2f}")


def save_json(path: Path, meta: dict, summary: dict, samples: list) -> None:
    meta = {"python": sys.version, "cpus": os.cpu_count(), **meta}
    path.write_text(json.dumps({"meta": meta, "summary": summary, "samples": samples}, indent=1))
    print(f"raw numbers saved to {path}")


def fmt_value(v: float) -> str:
    """A measured value for a table cell: no decimals from 100 on."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def metric_row(rows: list, impls, key: str, invert: bool, fmt_value) -> tuple:
    """The cells of one metric: (text of the medians and ratio columns,
    medians by implementation, ratios ours/reference by implementation).
    invert: lower is better (ratios reference / ours)."""
    text, medians = "", {}
    for impl in impls:
        vals = ok_values(rows, impl, key)
        if vals:
            medians[impl] = statistics.median(vals)
            cell = f"{fmt_value(medians[impl])} ±{spread(vals):3.0f}%"
        else:
            cell = "error"
        text += f" {cell:>16}"
    ratios = {f"{a}/{impls[2]}": median_ratio(rows, a, impls[2], key, invert=invert) for a in OURS}
    text += "".join(f" {fmt_ratio(r):>9}" for r in ratios.values())
    return text, medians, ratios

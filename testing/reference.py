"""Reference execnet 2.1.2 from PyPI, in a virtual environment of its own.

Both packages are named ``execnet``, so the reference always runs in a
separate interpreter.  The environment is created once and reused; set
EXECNET_REFERENCE_VENV to choose where.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REFERENCE_VERSION = "2.1.2"


def venv_dir() -> Path:
    default = Path.home() / ".cache" / f"execnet-reference-{REFERENCE_VERSION}"
    return Path(os.environ.get("EXECNET_REFERENCE_VENV", default))


def python() -> str:
    """Path of the reference venv's interpreter, creating the venv if needed."""
    venv = venv_dir()
    exe = venv / "bin" / "python"
    marker = venv / "installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(exe), "-m", "pip", "install", "-q", f"execnet=={REFERENCE_VERSION}"],
            check=True,
        )
        marker.write_text(REFERENCE_VERSION)
    return str(exe)


def run(code: str, stdin: bytes = b"", timeout: float = 60, **environ: str) -> bytes:
    """Run code in the reference interpreter, outside our checkout; return stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("EXECNET_PUREPYTHON", None)
    env.update(environ)
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [python(), "-c", code],
            input=stdin,
            capture_output=True,
            cwd=cwd,
            env=env,
            timeout=timeout,
        )
    if proc.returncode:
        raise RuntimeError(proc.stderr.decode(errors="replace"))
    return proc.stdout

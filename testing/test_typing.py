"""mypy with the project's configuration ([tool.mypy] in pyproject.toml,
execnet 2.1.2's own settings) finds no issue in execnet/.

mypy comes with the ``testing`` extra on Python 3.9 and newer; where it is
missing the test fails saying so (``.ci/pythons`` deselects it there).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600


def mypy_available() -> bool:
    proc = subprocess.run([sys.executable, "-c", "import mypy"], capture_output=True,
                          timeout=TIMEOUT)
    return proc.returncode == 0


def test_mypy_with_the_project_configuration_finds_no_issue(tmp_path: Path) -> None:
    config = ROOT / "pyproject.toml"
    assert config.is_file(), f"no pyproject.toml in {ROOT}: run the tests from the source tree"
    assert mypy_available(), (
        f"mypy is not installed for {sys.executable}: pip install '.[testing]' (Python 3.9+)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MYPY"))}
    # no file arguments: the files to check are the configuration's
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config),
           "--cache-dir", str(tmp_path / "mypy-cache")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    found = re.search(r"^Success: no issues found in (\d+) source files?$", proc.stdout, re.M)
    assert found, output
    # every module of the package was checked, the stubs of the C extensions
    # included (a stub stands for its extension: ours ship as source only)
    expected = sorted(p.relative_to(ROOT).as_posix()
                      for p in (ROOT / "execnet").rglob("*.py*")
                      if p.suffix in (".py", ".pyi"))
    assert any(name.endswith(".pyi") for name in expected)
    assert int(found.group(1)) == len(expected), (expected, output)

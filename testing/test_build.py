"""The build's fallback to the portable core, and backend_info()."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv

import pytest
from runtime_util import run_python

import execnet
from execnet import gateway_base

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a pip install into a fresh environment: building and installing take
# 10-40 s on a busy machine
INSTALL_TIMEOUT = 300


def test_backend_info_matches_backend():
    info = execnet.backend_info()
    assert info.backend == gateway_base.BACKEND
    assert tuple(info) == (info.backend, info.reason)
    assert (info.reason == "") == (info.backend == "c")
    assert str(info) == (info.backend if info.backend == "c" else f"python: {info.reason}")


def test_backend_info_for_execmodels():
    for name in ("thread", "main_thread_only"):
        assert execnet.backend_info(name).backend == gateway_base.BACKEND
    info = execnet.backend_info("gevent")
    assert info.backend == "python"
    if gateway_base.BACKEND == "c":
        assert info.reason == "the gevent execmodel runs gateways on the portable core"
    with pytest.raises(ValueError, match="unknown execmodel"):
        execnet.backend_info("nope")


def _info_in_child(prelude: str = "", **env) -> str:
    environ = dict(os.environ, **env)
    result = run_python(prelude + "import execnet; print(execnet.backend_info())", env=environ, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def test_reason_purepython_variable():
    assert _info_in_child(EXECNET_PUREPYTHON="1") == "python: EXECNET_PUREPYTHON is set"


def test_reason_failed_import():
    environ = {k: v for k, v in os.environ.items() if k != "EXECNET_PUREPYTHON"}
    result = run_python(
        "import sys; sys.modules['execnet._execnet'] = None\n"
        "import execnet; print(execnet.backend_info())",
        env=environ,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(
        "python: the C extension failed to import: import of execnet._execnet halted"
    )


@pytest.fixture(scope="module")
def build_venv(tmp_path_factory):
    """A fresh environment with setuptools and wheel (from pip's cache),
    and a copy of the checkout without build products."""
    root = tmp_path_factory.mktemp("build")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = str(root / "venv" / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "setuptools>=64", "wheel"],
        check=True,
        timeout=INSTALL_TIMEOUT,
    )
    source = root / "src"
    shutil.copytree(
        CHECKOUT,
        source,
        ignore=shutil.ignore_patterns(".git", "build", "*.so", "_build_info", "__pycache__", "*.egg-info"),
    )
    return python, source


def _pip_install(python, source, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EXECNET_")}
    environ.update(env)
    return subprocess.run(
        [python, "-m", "pip", "install", "-v", "--no-build-isolation", "--force-reinstall", "--no-deps", str(source)],
        capture_output=True,
        timeout=INSTALL_TIMEOUT,
        env=environ,
        cwd=str(source.parent),
    )


def test_install_without_compiler_gives_portable_core(build_venv):
    python, source = build_venv
    result = _pip_install(python, source, CC="false")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"execnet: WARNING: building execnet._execnet failed" in result.stdout + result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECNET_")}
    shown = subprocess.run(
        [python, "-c", "import execnet; print(execnet.BACKEND); print(execnet.backend_info())"],
        capture_output=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    assert shown.returncode == 0, shown.stderr
    backend, info = shown.stdout.decode().splitlines()
    assert backend == "python"
    assert info.startswith("python: the C extension was not built (execnet._execnet: ")
    assert "false" in info  # the failing command's exit is named


def test_install_without_compiler_fails_when_required(build_venv):
    python, source = build_venv
    result = _pip_install(python, source, CC="false", EXECNET_REQUIRE_EXTENSION="1")
    assert result.returncode != 0
    assert b"EXECNET_REQUIRE_EXTENSION is set" in result.stdout + result.stderr

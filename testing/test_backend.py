"""The choice of core, made once by execnet/backend.py, and the portable
core standing on its own."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES

import pytest
from runtime_util import REMOTE_PYTHONS
from runtime_util import TIMEOUT
from runtime_util import require_interpreter
from runtime_util import run_python

import execnet
from execnet import backend
from execnet import gateway_base


class _Extension:
    """Stands for the extension module that an import_extension returns."""


def _importer(error: ImportError | None = None):
    calls = []

    def import_extension():
        calls.append(1)
        if error is not None:
            raise error
        return _Extension

    return import_extension, calls


def test_purepython_variable_chooses_the_portable_core(tmp_path):
    load, calls = _importer()
    chosen = backend.choose({"EXECNET_PUREPYTHON": "1"}, load, str(tmp_path))
    assert chosen == (None, "EXECNET_PUREPYTHON is set")
    assert calls == []  # the extension is not even imported


def test_empty_purepython_variable_is_not_set(tmp_path):
    load, calls = _importer()
    assert backend.choose({"EXECNET_PUREPYTHON": ""}, load, str(tmp_path)) == (_Extension, "")
    assert calls == [1]


def test_extension_that_loads_is_chosen(tmp_path):
    load, _ = _importer()
    assert backend.choose({}, load, str(tmp_path)) == (_Extension, "")


def test_extension_not_installed(tmp_path):
    load, _ = _importer(ImportError("No module named 'execnet._execnet'"))
    chosen = backend.choose({}, load, str(tmp_path))
    assert chosen == (None, "the C extension execnet._execnet is not installed")


def test_extension_not_built_gives_the_builds_reason(tmp_path):
    # setup.py leaves the compiler's complaint in _build_info
    (tmp_path / "_build_info").write_text("command 'false' failed\n\n  exit status 1\n")
    load, _ = _importer(ImportError("No module named 'execnet._execnet'"))
    chosen = backend.choose({}, load, str(tmp_path))
    assert chosen == (
        None,
        "the C extension was not built (command 'false' failed; exit status 1)",
    )


def test_empty_build_info_says_not_installed(tmp_path):
    (tmp_path / "_build_info").write_text("\n \n")
    load, _ = _importer(ImportError("nope"))
    chosen = backend.choose({}, load, str(tmp_path))
    assert chosen == (None, "the C extension execnet._execnet is not installed")


def test_extension_that_fails_to_import(tmp_path):
    (tmp_path / ("_execnet" + EXTENSION_SUFFIXES[0])).write_bytes(b"not a shared object")
    (tmp_path / "_build_info").write_text("ignored: the file is there\n")
    load, _ = _importer(ImportError("undefined symbol: xn_nothing"))
    chosen = backend.choose({}, load, str(tmp_path))
    assert chosen == (None, "the C extension failed to import: undefined symbol: xn_nothing")


def test_choice_of_this_process():
    wanted = "python" if os.environ.get("EXECNET_PUREPYTHON") else "c"
    assert backend.BACKEND == execnet.BACKEND == wanted
    assert (backend.core is None) == (wanted == "python")
    # the compatibility names that code written for execnet reads
    assert gateway_base.BACKEND == backend.BACKEND
    assert gateway_base.BACKEND_REASON == backend.BACKEND_REASON
    assert tuple(execnet.backend_info()) == (backend.BACKEND, backend.BACKEND_REASON)
    if wanted == "c":
        from execnet import _native

        assert backend.BaseGateway is _native.NativeBaseGateway
        assert backend.serve is _native.serve
        assert issubclass(execnet.Gateway, _native.NativeBaseGateway)
    else:
        assert backend.BaseGateway is gateway_base.BaseGateway
        assert backend.serve is gateway_base.serve
        assert "execnet._native" not in sys.modules
    assert issubclass(execnet.Gateway, gateway_base.BaseGateway)


CHILD_CHOICE = """
import sys
import execnet
from execnet import backend, gateway_base
gw = execnet.makegateway("popen")
try:
    remote = gw.remote_exec(
        "from execnet import backend; channel.send(backend.BACKEND)"
    ).receive(30)
finally:
    gw.exit()
print(backend.BACKEND, gateway_base.BACKEND, remote, "execnet._execnet" in sys.modules)
print(backend.BACKEND_REASON)
"""


def _run_choice(env, cwd) -> list[str]:
    # (not in the checkout, whose execnet/ would shadow the installed one)
    result = run_python(CHILD_CHOICE, env=env, timeout=2 * TIMEOUT, cwd=str(cwd))
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().splitlines()


def test_purepython_in_a_child_gives_the_portable_core(tmp_path):
    env = dict(os.environ, EXECNET_PUREPYTHON="1")
    # its popen worker inherits the variable
    assert _run_choice(env, tmp_path) == ["python python python False", "EXECNET_PUREPYTHON is set"]


def test_child_without_the_variable_runs_the_c_core(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EXECNET_PUREPYTHON"}
    assert _run_choice(env, tmp_path) == ["c c c True", ""]


STANDALONE = """
import sys
sys.path.insert(0, {directory!r})
import gateway_base
assert gateway_base.__file__.startswith({directory!r}), gateway_base.__file__
data = gateway_base.dumps([1, "two", (3.0, None)])
assert gateway_base.loads(data) == [1, "two", (3.0, None)]
print(gateway_base.BACKEND)
print(gateway_base.BACKEND_REASON)
print(sorted(name for name in sys.modules if name.startswith("execnet")))
"""


@pytest.mark.parametrize("python", REMOTE_PYTHONS[:1] + [sys.executable])
def test_portable_core_runs_alone(tmp_path, python):
    # as a remote interpreter gets it: one file, no package, no extension
    require_interpreter(python)
    shutil.copy(gateway_base.__file__, tmp_path / "gateway_base.py")
    source = STANDALONE.format(directory=str(tmp_path))
    result = subprocess.run(
        [python, "-I", "-c", source], capture_output=True, timeout=TIMEOUT, cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "python",
        "this is the portable core sent as source to a remote interpreter",
        "[]",
    ]


def test_portable_core_imports_only_the_standard_library():
    with open(gateway_base.__file__, encoding="utf-8") as f:
        source = f.read()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, ast.dump(node)  # nothing of the package
            imported.add((node.module or "").split(".")[0])
    imported.discard("__future__")
    imported -= {"eventlet", "gevent"}  # by their execmodels, when asked for
    imported.discard("msvcrt")  # on Windows only
    stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
    outside = []
    for name in sorted(imported - set(sys.builtin_module_names)):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin not in ("built-in", "frozen") and not str(origin).startswith(stdlib):
            outside.append((name, origin))
    assert outside == []
    assert "_execnet" not in source

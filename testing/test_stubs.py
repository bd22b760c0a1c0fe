"""The stubs of the C extensions (execnet/_execnet.pyi, execnet/_ssh.pyi)
agree with the modules built from csrc/.

An introspection test of our own compares names and kinds (it needs only
the built extensions); mypy's stubtest compares signatures too (it needs
mypy, from the ``testing`` extra on Python 3.9+, and fails saying so where
it is missing).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import BuiltinFunctionType

import pytest

import execnet

PACKAGE = Path(execnet.__file__).resolve().parent
MODULES = ["execnet._execnet", "execnet._ssh"]
TIMEOUT = 600

# What stubtest may not check: nothing (an entry here would be a stub
# that disagrees with its module and is accepted anyway).
STUBTEST_ALLOWLIST = ""


def runtime_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{name} is not built ({exc}): its stub cannot be compared", pytrace=False)


def stub_tree(name: str) -> ast.Module:
    path = PACKAGE / (name.rsplit(".", 1)[1] + ".pyi")
    return ast.parse(path.read_text(), str(path))


def simple_name(node: ast.expr) -> str:
    """The text of a plain name, else a dump of the expression (ast.unparse
    is 3.9+)."""
    return node.id if isinstance(node, ast.Name) else ast.dump(node)


def decorator_names(node: ast.FunctionDef | ast.ClassDef) -> set[str]:
    return {simple_name(d) for d in node.decorator_list}


def stub_names(tree: ast.Module) -> dict[str, str]:
    """Module-level names of a stub: name -> "class", "function" or the
    annotation of a constant."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = "class"
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = "function"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = simple_name(node.annotation)
    return names


def stub_class(tree: ast.Module, name: str) -> ast.ClassDef:
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    return node


def stub_members(node: ast.ClassDef) -> dict[str, str]:
    """A stub class's own members other than its constructor: name ->
    "property" or "method"."""
    members = {}
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name not in ("__new__", "__init__"):
            members[item.name] = "property" if "property" in decorator_names(item) else "method"
    return members


def runtime_members(cls: type) -> dict[str, str]:
    members = {}
    for name, value in vars(cls).items():
        if name.startswith("__") and name.endswith("__"):
            continue
        members[name] = "property" if inspect.isdatadescriptor(value) else "method"
    return members


def public_runtime_names(module) -> dict[str, object]:
    # _install is private by name but exported all the same: it is in the stub
    return {n: v for n, v in vars(module).items() if not (n.startswith("__") and n.endswith("__"))}


def test_stubs_and_py_typed_ship_with_the_package() -> None:
    for name in ("_execnet.pyi", "_ssh.pyi", "py.typed"):
        assert (PACKAGE / name).is_file(), f"{name} is not installed in {PACKAGE}"


@pytest.mark.parametrize("name", MODULES)
def test_stub_names_are_the_runtime_names(name: str) -> None:
    module = runtime_module(name)
    tree = stub_tree(name)
    in_stub = stub_names(tree)
    at_runtime = public_runtime_names(module)
    assert sorted(in_stub) == sorted(at_runtime)
    for attr, kind in in_stub.items():
        value = at_runtime[attr]
        if kind == "class":
            assert isinstance(value, type), attr
        elif kind == "function":
            assert isinstance(value, BuiltinFunctionType), attr
        else:
            assert type(value).__name__ == kind, (attr, kind, value)


@pytest.mark.parametrize("name", MODULES)
def test_stub_classes_have_the_runtime_members(name: str) -> None:
    module = runtime_module(name)
    tree = stub_tree(name)
    classes = [n for n, kind in stub_names(tree).items() if kind == "class"]
    assert classes
    for cls_name in classes:
        node = stub_class(tree, cls_name)
        cls = getattr(module, cls_name)
        if issubclass(cls, BaseException):
            # an exception class made with PyErr_NewException: no own members
            assert [simple_name(b) for b in node.bases] == [b.__name__ for b in cls.__bases__]
            continue
        assert stub_members(node) == runtime_members(cls), cls_name
        # a class that cannot be subclassed at run time is @final in the stub
        can_subclass = bool(cls.__flags__ & (1 << 10))  # Py_TPFLAGS_BASETYPE
        assert ("final" in decorator_names(node)) is not can_subclass, cls_name


def test_stubtest_agrees_with_the_extensions(tmp_path: Path) -> None:
    for name in MODULES:
        runtime_module(name)
    found = subprocess.run([sys.executable, "-c", "import mypy.stubtest"], capture_output=True,
                           timeout=TIMEOUT)
    assert found.returncode == 0, (
        f"mypy is not installed for {sys.executable}: pip install '.[testing]' (Python 3.9+)"
    )
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text(STUBTEST_ALLOWLIST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MYPY"))}
    # run outside the source tree, so that both the modules and their stubs
    # are the installed ones
    cmd = [sys.executable, "-m", "mypy.stubtest", "--allowlist", str(allowlist),
           "--mypy-config-file", os.devnull, *MODULES]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found in 2 modules" in proc.stdout, proc.stdout


def stub_methods(tree: ast.Module, cls_name: str) -> dict[str, ast.arguments]:
    node = stub_class(tree, cls_name)
    return {item.name: item.args for item in node.body
            if isinstance(item, ast.FunctionDef) and item.name not in ("__new__", "__init__")
            and "property" not in decorator_names(item)}


def runtime_instances(stack: list) -> dict[str, object]:
    """One instance of each C type, made without any IO (the connection is
    not started, the session does no handshake)."""
    from execnet import _execnet
    from execnet import _ssh

    rfd, wfd = os.pipe()  # owned by the connection from here on
    a, b = socket.socketpair()
    stack.append(b)
    instances = {
        "Event": _execnet.Event(),
        "ItemQueue": _execnet.ItemQueue(),
        "Connection": _execnet.Connection(rfd, wfd, lambda *args: None),
        "SshSession": _ssh.SshSession(a.detach(), 1.0),
    }
    stack.append(instances)
    return instances


def test_stub_parameter_kinds_hold_for_methods_without_runtime_signature() -> None:
    """stubtest cannot read the signature of a C method without a signature
    line in its docstring: what the stub says of its parameters is checked
    by calls that fail before the method runs."""
    trees = {name.rsplit(".", 1)[1]: stub_tree(name) for name in MODULES}
    for name in MODULES:
        runtime_module(name)
    stack: list = []
    try:
        instances = runtime_instances(stack)
        checked = 0
        for cls_name, obj in instances.items():
            module = "_ssh" if cls_name == "SshSession" else "_execnet"
            for method, args in stub_methods(trees[module], cls_name).items():
                bound = getattr(obj, method)
                params = [a.arg for a in args.posonlyargs + args.args][1:]  # without self
                # each call is refused before the method does anything:
                # more arguments than any method takes, or a keyword that
                # none has
                if not params:
                    with pytest.raises(TypeError, match="takes no arguments"):
                        bound(*[None] * 7)
                else:
                    with pytest.raises(TypeError) as refused:
                        bound(*[None] * 7)
                    assert "takes no arguments" not in str(refused.value), method
                    if args.posonlyargs[1:]:
                        with pytest.raises(TypeError, match="takes no keyword arguments"):
                            bound(no_such_parameter=None)
                    else:
                        with pytest.raises(TypeError, match="(unexpected|invalid) keyword"):
                            bound(no_such_parameter=None)
                checked += 1
        assert checked == sum(len(stub_methods(trees[m], c)) for m, c in
                              [("_execnet", "Event"), ("_execnet", "ItemQueue"),
                               ("_execnet", "Connection"), ("_ssh", "SshSession")])
    finally:
        for item in stack:
            if isinstance(item, socket.socket):
                item.close()
        stack.clear()

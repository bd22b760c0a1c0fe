"""The one place that chooses the core the package runs on, once, at import.

``BACKEND`` is ``"c"`` when the C extension ``execnet._execnet`` loads (the
classes below then come from ``execnet._native``), else ``"python"`` (the
portable core, ``execnet.gateway_base``, alone); ``BACKEND_REASON`` says why
it is ``"python"`` (empty on the C core).  The rest of the package takes the
serializer, the gateway classes and the worker's entry points from here.
``EXECNET_PUREPYTHON=1`` in the environment chooses the portable core.
"""

from __future__ import annotations

import os

from . import gateway_base

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any
    from typing import Callable
    from typing import Mapping

_HERE = os.path.dirname(os.path.abspath(__file__))

PUREPYTHON_REASON = "EXECNET_PUREPYTHON is set"
NOT_INSTALLED_REASON = "the C extension execnet._execnet is not installed"


def _import_extension() -> ModuleType:
    import importlib

    return importlib.import_module("execnet._execnet")


def _extension_file_exists(directory: str) -> bool:
    from importlib.machinery import EXTENSION_SUFFIXES

    return any(
        os.path.exists(os.path.join(directory, "_execnet" + suffix))
        for suffix in EXTENSION_SUFFIXES
    )


def _not_built_reason(directory: str) -> str:
    """Why the extension is missing: the build's own words if it left them
    (setup.py writes them to ``_build_info`` in the package directory)."""
    try:
        with open(os.path.join(directory, "_build_info")) as f:
            recorded = "; ".join(line.strip() for line in f if line.strip())
    except OSError:
        recorded = ""
    if recorded:
        return f"the C extension was not built ({recorded})"
    return NOT_INSTALLED_REASON


def choose(
    environ: Mapping[str, str] = os.environ,
    import_extension: Callable[[], ModuleType] = _import_extension,
    directory: str = _HERE,
) -> tuple[ModuleType | None, str]:
    """``(extension, "")`` if the C core can run, else ``(None, reason)``.

    :param environ: where ``EXECNET_PUREPYTHON`` is looked up.
    :param import_extension: imports the extension (raises ImportError
        when it cannot).
    :param directory: the package directory, where the extension's file
        and the build's ``_build_info`` are.
    """
    if environ.get("EXECNET_PUREPYTHON"):
        return None, PUREPYTHON_REASON
    try:
        extension = import_extension()
    except ImportError as exc:
        if not _extension_file_exists(directory):
            return None, _not_built_reason(directory)
        return None, f"the C extension failed to import: {exc}"
    return extension, ""


core, BACKEND_REASON = choose()
BACKEND = "python" if core is None else "c"

# the classes and functions of the chosen core
BaseGateway: type[gateway_base.BaseGateway] = gateway_base.BaseGateway
WorkerGateway: type[gateway_base.WorkerGateway] = gateway_base.WorkerGateway
dump = gateway_base.dump
dumps: Callable[[object], bytes] = gateway_base.dumps
dumps_internal: Callable[[object], bytes] = gateway_base.dumps_internal
get_execmodel = gateway_base.get_execmodel
init_popen_io = gateway_base.init_popen_io
load = gateway_base.load
loads: Callable[..., Any] = gateway_base.loads
loads_internal: Callable[..., Any] = gateway_base.loads_internal
serve = gateway_base.serve
if core is not None:
    from . import _native

    BaseGateway = _native.NativeBaseGateway
    WorkerGateway = _native.NativeWorkerGateway
    dump = _native.dump
    dumps = _native.dumps
    dumps_internal = _native.dumps_internal
    get_execmodel = _native.get_execmodel
    init_popen_io = _native.init_popen_io
    load = _native.load
    loads = _native.loads
    loads_internal = _native.loads_internal
    serve = _native.serve

# what code written for execnet reads from gateway_base
gateway_base.BACKEND = BACKEND
gateway_base.BACKEND_REASON = BACKEND_REASON

"""Fixtures shared by the whole suite: the two cores, side by side.

The package runs on the core that ``execnet.backend`` chose at import (the
C core, or the portable one under ``EXECNET_PUREPYTHON=1``); these fixtures
give a test the other one too, whichever was chosen.
"""

from __future__ import annotations

import types

import pytest

import execnet
from execnet import gateway_base


def _c_serializer() -> types.SimpleNamespace:
    try:
        # importing it binds the extension to gateway_base, whichever core
        # the package chose
        from execnet import _native
    except ImportError as e:  # the C backend is part of the package: no skip
        pytest.fail(f"the C extension does not import: {e}")
    return _serializer_of("c", _native)


def _pure_serializer() -> types.SimpleNamespace:
    return _serializer_of("python", gateway_base)


def _serializer_of(name: str, module) -> types.SimpleNamespace:
    """A core's four serializer functions, as the fixtures hand them out."""
    functions = ("dumps", "loads", "dumps_internal", "loads_internal")
    return types.SimpleNamespace(name=name, **{f: getattr(module, f) for f in functions})


@pytest.fixture(params=["python", "c"])
def serializer(request) -> types.SimpleNamespace:
    """The serializer functions of one core: dumps, loads, *_internal."""
    return _pure_serializer() if request.param == "python" else _c_serializer()


@pytest.fixture
def both_serializers() -> tuple[types.SimpleNamespace, types.SimpleNamespace]:
    """The portable core's serializer and the C core's."""
    return _pure_serializer(), _c_serializer()


@pytest.fixture
def portable_master(monkeypatch) -> None:
    """Gateways made from now on run the portable core on our side (Python
    receiver thread, queues and serializer); their workers still import the
    package and run the core it chooses (the C core, unless
    EXECNET_PUREPYTHON is set, which this fixture unsets)."""
    monkeypatch.delenv("EXECNET_PUREPYTHON", raising=False)
    # the C core's gateway class runs the portable core without extension;
    # under EXECNET_PUREPYTHON=1 the class is the portable one already
    monkeypatch.setattr(execnet.gateway.Gateway, "_c_core", None, raising=False)

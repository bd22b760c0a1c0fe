"""Fixtures shared by the whole suite."""

from __future__ import annotations

import types

import pytest

from execnet import gateway_base


def _c_serializer() -> types.SimpleNamespace:
    try:
        from execnet import _execnet
    except ImportError as e:  # the C backend is part of the package: no skip
        pytest.fail(f"the C extension does not import: {e}")
    # Under EXECNET_PUREPYTHON=1 gateway_base did not bind the extension;
    # binding it here is harmless either way.
    _execnet._install(gateway_base.__dict__)
    return types.SimpleNamespace(
        name="c",
        dumps=_execnet.dumps,
        loads=_execnet.loads,
        dumps_internal=_execnet.dumps_internal,
        loads_internal=_execnet.loads_internal,
    )


def _pure_serializer() -> types.SimpleNamespace:
    return types.SimpleNamespace(name="python", **gateway_base.PURE_PYTHON_SERIALIZER)


@pytest.fixture(params=["python", "c"])
def serializer(request) -> types.SimpleNamespace:
    """The serializer functions of one backend: dumps, loads, *_internal."""
    return _pure_serializer() if request.param == "python" else _c_serializer()


@pytest.fixture
def both_serializers() -> tuple[types.SimpleNamespace, types.SimpleNamespace]:
    return _pure_serializer(), _c_serializer()

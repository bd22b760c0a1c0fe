"""Fixtures for the runtime tests: groups and gateways that clean up.

Loaded with ``pytest_plugins = ["conftest_runtime"]`` by the test modules
that need it.
"""

from __future__ import annotations

import shlex
import sys

import pytest

import execnet

EXECMODELS = ["thread", "main_thread_only"]
# The import bootstrap (the worker runs the master's backend), the exec
# bootstrap (the worker runs the portable core it is sent) and a portable
# master with a worker running the C core.
BOOTSTRAPS = {
    "import": "popen",
    "exec": "popen//python=" + shlex.quote(sys.executable),
    "portable-master": "popen",
}


@pytest.fixture
def group():
    """A Group whose gateways are all terminated at teardown."""
    group = execnet.Group()
    yield group
    group.terminate(timeout=2.0)
    assert not group


@pytest.fixture(params=EXECMODELS)
def execmodel(request) -> str:
    """The remote exec model of the gateways made by makegateway."""
    return request.param


@pytest.fixture
def makegateway(group, execmodel):
    def makegateway(spec: str = "popen"):
        return group.makegateway(f"execmodel={execmodel}//{spec}")

    return makegateway


@pytest.fixture(params=sorted(BOOTSTRAPS))
def gw(request, makegateway):
    """A popen gateway, for each exec model and each bootstrap."""
    if request.param == "portable-master":
        request.getfixturevalue("portable_master")
    return makegateway(BOOTSTRAPS[request.param])


@pytest.fixture
def thread_gw(group):
    """A popen gateway whose worker may run tasks concurrently."""
    return group.makegateway("popen//execmodel=thread")

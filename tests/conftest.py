"""Session-wide test setup: the leak check every session ends with (see tests/leakcheck.py)."""

from __future__ import annotations

import os

import pytest

from tests.leakcheck import LeakCheckPlugin

_PLUGIN_NAME = "skiff-leakcheck"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("SKIFF_LEAKCHECK", "1") != "0" and not config.pluginmanager.has_plugin(_PLUGIN_NAME):
        config.pluginmanager.register(LeakCheckPlugin(config), _PLUGIN_NAME)


@pytest.fixture(scope="session")
def leakcheck(pytestconfig: pytest.Config) -> LeakCheckPlugin | None:
    """The session's leak checker (None when SKIFF_LEAKCHECK=0)."""
    return pytestconfig.pluginmanager.get_plugin(_PLUGIN_NAME)


@pytest.fixture(scope="session", autouse=True)
def _leakcheck_watches_tmp(leakcheck: LeakCheckPlugin | None, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Processes whose cwd, root or command line is inside the session's temp dirs are the session's.
    if leakcheck is not None:
        leakcheck.add_tmp_dir(tmp_path_factory.getbasetemp())

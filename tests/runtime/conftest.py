"""Fixtures for testing OCI runtimes side by side: Skiff's and runc, each with its own --root.

``runtime`` is parametrized over the selected runtimes (``SKIFF_TEST_RUNTIMES=runc,skiff``, default
both; test ids carry the name, so ``-k runc`` or ``-k skiff`` picks one side). ``peer`` is runc when
the runtime under test is another one and runc is installed, else None: differential tests compare
against it. Every container a test makes is force-deleted afterwards and the test fails if its
state, cgroup or listing remains.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.runtime.bundle import make_busybox_bundle
from tests.leakcheck import remove_marker_cgroups
from tests.runtime.harness import (
    DEFAULT_TIMEOUT,
    BundleFactory,
    ConsoleSocket,
    Runtime,
    runtime_commands,
    selected_runtimes,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="running containers needs root")
    for item in items:
        if "runtime" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _remove_cgroup_parents() -> Iterator[None]:
    """Runtimes leave the parents of a cgroupsPath behind (runc does): drop the empty /skiff-test dirs."""
    yield
    remove_marker_cgroups()


def _make_runtime(name: str, root: Path) -> Runtime:
    cmd = runtime_commands()[name]
    if cmd is None:
        pytest.skip(f"{name} is not installed")
    return Runtime(name, cmd, root)


def _finish(rt: Runtime) -> None:
    problems = rt.cleanup()
    assert not problems, "containers left behind:\n" + "\n".join(problems)


@pytest.fixture(params=selected_runtimes())
def runtime(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """The runtime under test, with its own --root; its containers are force-deleted afterwards."""
    rt = _make_runtime(request.param, tmp_path_factory.mktemp(f"root-{request.param}"))
    yield rt
    _finish(rt)


@pytest.fixture
def peer(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime | None]:
    """runc to compare with, when the runtime under test is not runc itself (None otherwise)."""
    if runtime.name == "runc" or runtime_commands()["runc"] is None:
        yield None
        return
    rt = _make_runtime("runc", tmp_path_factory.mktemp("root-peer-runc"))
    yield rt
    _finish(rt)


@pytest.fixture
def bundle(tmp_path: Path) -> BundleFactory:
    """``bundle(args, terminal=False, **spec_overrides) -> Path``: a fresh busybox bundle."""
    counter = iter(range(1, 1_000_000))

    def make(args: list[str] | None = None, *, terminal: bool = False, **overrides: Any) -> Path:
        path = tmp_path / f"bundle{next(counter)}"
        return Path(make_busybox_bundle(path, args, terminal=terminal, **overrides))

    return make


@pytest.fixture
def run_container() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_container(runtime, bundle, id=None, timeout=60) -> CompletedProcess`` (foreground run)."""

    def run(rt: Runtime, bundle_path: Path, cid: str | None = None, *,
            timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return rt.run(bundle_path, cid, timeout=timeout)

    return run


@pytest.fixture
def console_socket() -> Iterator[Callable[[], ConsoleSocket]]:
    """``console_socket()`` -> a ConsoleSocket receiving a pty master; closed after the test."""
    made: list[ConsoleSocket] = []

    def make() -> ConsoleSocket:
        made.append(ConsoleSocket())
        return made[-1]

    yield make
    for cs in made:
        cs.close()

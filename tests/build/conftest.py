"""Fixtures for the build tests: the engine tests' daemons with the busybox test image loaded as
``busybox:latest`` (a docker-archive written by skopeo, loaded with the real docker CLI), a context
directory factory, and a check that a build left nothing behind."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engine.conftest import (  # noqa: F401  (re-exported fixtures)
    DockerRunner,
    EngineProcess,
    cgroup_parents,
    docker,
    docker_client,
    docker_runner,
    engine,
    engines,
    module_engines,
    remove_cgroup_parents,
)
from tests.image import testimages

BUSYBOX = "busybox:latest"


@pytest.fixture(scope="module", autouse=True)
def _cgroup_parents() -> Iterator[None]:
    before = cgroup_parents()
    yield
    remove_cgroup_parents(cgroup_parents() - before)


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.geteuid() != 0:
        pytest.skip("building images runs containers and mounts overlays: root only")
    try:
        return testimages.busybox_docker_archive(str(tmp_path_factory.mktemp("img") / "busybox.tar"), BUSYBOX)
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))


def load_busybox(daemon: EngineProcess, archive: str, config_dir: Path) -> None:
    docker_runner(daemon.host, config_dir)("load", "-i", archive, check=True, timeout=120)


@pytest.fixture(scope="module")
def builder_engine(engine: EngineProcess, busybox_archive: str,  # noqa: F811
                   tmp_path_factory: pytest.TempPathFactory) -> EngineProcess:
    """The module's engine, with busybox loaded."""
    load_busybox(engine, busybox_archive, tmp_path_factory.mktemp("cfg"))
    return engine


ContextFactory = Callable[..., Path]


@pytest.fixture
def make_context(tmp_path: Path) -> ContextFactory:
    """``make_context(dockerfile, **files)``: a directory with the Dockerfile and the files (``"dir/name"`` keys
    allowed; bytes or text); returns its path."""
    counter = iter(range(1000))

    def make(dockerfile: str, files: dict[str, str | bytes] | None = None, name: str = "Dockerfile") -> Path:
        root = tmp_path / f"ctx{next(counter)}"
        root.mkdir()
        (root / name).write_text(dockerfile)
        for rel, data in (files or {}).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                path.write_bytes(data)
            else:
                path.write_text(data)
        return root

    return make


def build_leftovers(daemon: EngineProcess) -> dict[str, list[str]]:
    """What builds could leave behind: active build snapshots, mount points and unpacked contexts."""
    db = daemon.data_root / "image" / "snapshots" / "metadata.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        snapshots = [row[0] for row in conn.execute("SELECT key FROM snapshots WHERE kind != 'committed'")
                     if row[0].startswith("build-")]
    build_dir = daemon.data_root / "build"
    return {"snapshots": snapshots,
            "mounts": sorted(os.listdir(build_dir / "mnt")) if (build_dir / "mnt").is_dir() else [],
            "contexts": sorted(os.listdir(build_dir / "contexts")) if (build_dir / "contexts").is_dir() else []}

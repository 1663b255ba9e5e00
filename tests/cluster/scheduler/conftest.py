"""Fixtures for the scheduler's integration tests: a real ``skiff server`` (scheduler inside, as by default),
a ``skiff hollow-nodes`` process registering five nodes against it, and the real kubectl 1.32.

Every process is started here and stopped by pid (SIGTERM, then SIGKILL) at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.api.conftest import KUBECTL, REPO, KubectlRun, ServerProcess, make_kubectl, wait_for

HOLLOW_COUNT = 5


class HollowNodesProcess:
    """One ``skiff hollow-nodes`` child process against ``server``."""

    def __init__(self, server: ServerProcess, root: Path, count: int, *extra: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.log = root / "hollow.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "skiff.cli.main", "hollow-nodes", "--kubeconfig", str(server.kubeconfig),
                 "--count", str(count), "--lease-interval", "2", *extra],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=root, start_new_session=True)

    def wait_registered(self, timeout: float = 30.0) -> None:
        def registered() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"hollow-nodes exited: {self.log.read_text()[-2000:]}")
            return "registered" in self.log.read_text()
        wait_for(registered, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("scheduler-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hollow_nodes(api_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HollowNodesProcess]:
    nodes = HollowNodesProcess(api_server, tmp_path_factory.mktemp("hollow"), HOLLOW_COUNT)
    try:
        nodes.wait_registered()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def kubectl(api_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> KubectlRun:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    return make_kubectl(api_server, tmp_path_factory.mktemp("kubectl-cache"))

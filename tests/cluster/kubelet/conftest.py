"""Fixtures for the kubelet tests: a real ``skiff server``, a real ``skiff engine`` with the busybox test image,
and a real ``skiff agent`` process joining them as node ``n1`` with the node's own credentials (a static token
of user system:node:n1 in group system:nodes, and the cluster CA).

- ``agent``: the module's agent (``AgentProcess``: ``.start()``, ``.stop()``, ``.kill()``, ``.log_tail()``);
  short intervals (1 s lease, 1 s back-off base, 2 s resync) so tests see restarts quickly.
- ``api(method, path, body=None)``: the API with the admin certificate, decoded JSON.
- ``engine_api``: docker-py's low-level client on the engine (what the agent drives).

Images: only ``skiff-test/busybox:test`` exists, and every pod names a non-``latest`` tag, so the default pull
policy (IfNotPresent) never reaches for a registry. Every container the agent made is removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.cluster.kubelet import podegress
from tests.cluster.api.conftest import (  # noqa: F401 - fixtures
    REPO,
    KubectlRun,
    ServerProcess,
    api_server,
    kubectl,
    kubectl_cache,
    wait_for,
)
from tests.engine.conftest import EngineProcess, docker_runner, engine, module_engines  # noqa: F401 - fixtures
from tests.image import testimages

IMAGE = "skiff-test/busybox:test"
NODE = "n1"
NODE_TOKEN = "node-token"  # tests/cluster/api/conftest.py's TOKENS: system:node:n1, group system:nodes
IMPORT_CHANGES = (f"ENV {testimages.PATH_ENV}", 'CMD ["sh"]')


class AgentProcess:
    """``skiff agent`` as a child process; ``start()`` again after ``stop()``/``kill()`` reuses its data dir."""

    def __init__(self, root: Path, server: ServerProcess, node_engine: EngineProcess) -> None:
        self.root = root
        self.server = server
        self.engine = node_engine
        self.data_dir = root / "data"
        self.token_file = root / "token"
        self.token_file.write_text(NODE_TOKEN + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "skiff.cli.main", "agent", "--server", self.server.url,
                "--token-file", str(self.token_file), "--ca-file", str(self.server.data_dir / "tls" / "ca.crt"),
                "--node-name", NODE, "--node-ip", "127.0.0.1", "--data-dir", str(self.data_dir),
                "--engine", self.engine.host, "--pause-image", IMAGE, "--pause-command", "sleep 2147483647",
                "--backoff-base", "1", "--backoff-max", "8", "--lease-interval", "1", "--resync-interval", "2",
                "--housekeeping-interval", "2",
                "--log-level", "info", "--address", "127.0.0.1", "--kubelet-port", "0", "--disable-proxy"]

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(self.root / "agent.log", "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            env=env, cwd=self.root)
        deadline = time.monotonic() + 30
        while b"registered" not in self._log():
            if self.process.poll() is not None:
                raise RuntimeError(f"skiff agent exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"skiff agent did not register: {self.log_tail()}")
            time.sleep(0.05)

    def _log(self) -> bytes:
        try:
            return (self.root / "agent.log").read_bytes()
        except OSError:
            return b""

    def log_tail(self, size: int = 4000) -> str:
        return self._log()[-size:].decode(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def busybox_engine(engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:  # noqa: F811
    """The module's engine with the busybox image; every container on it is removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("the engine needs root")
    scratch = tmp_path_factory.mktemp("img")
    try:
        rootfs = testimages.busybox_rootfs_tar(str(scratch / "busybox.tar"))
    except testimages.TestImageUnavailable as exc:
        pytest.skip(str(exc))
    docker = docker_runner(engine.host, scratch / "cfg")
    docker("import", *[a for c in IMPORT_CHANGES for a in ("-c", c)], rootfs, IMAGE, check=True)
    yield engine
    for container in engine.request("GET", "/containers/json?all=1").json():
        engine.request("DELETE", f"/containers/{container['Id']}?force=1")


@contextlib.contextmanager
def started(process: AgentProcess) -> Iterator[AgentProcess]:
    """``process`` started; afterwards stopped, with what an agent leaves behind on purpose removed too (the
    tmpfs mounts of a killed agent's emptyDirs, the pod network's masquerade table)."""
    process.start()
    try:
        yield process
    finally:
        process.stop()
        unmount_below(process.data_dir)
        remove_pod_network_leftovers()


@pytest.fixture(scope="module")
def agent(api_server: ServerProcess, busybox_engine: EngineProcess,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with started(AgentProcess(tmp_path_factory.mktemp("agent"), api_server, busybox_engine)) as process:
        yield process


def unmount_below(directory: Path) -> None:
    """Whatever the agent left mounted in its data dir (a killed agent's tmpfs emptyDirs)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(directory))), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_pod_network_leftovers() -> None:
    """The masquerade table an agent with a pod CIDR keeps after it stops (as its routes; a node's teardown
    removes them): the suite's agents run in the host's namespace, so their fixtures remove it."""
    subprocess.run(["nft", "delete", "table", "ip", podegress.TABLE], capture_output=True, check=False)


Api = Callable[..., Any]


@pytest.fixture(scope="module")
def api(api_server: ServerProcess) -> Api:  # noqa: F811
    def call(method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body)
        response = api_server.request(method, path, data, {"Content-Type": content_type} if data else None)
        if response.status >= 400:
            raise AssertionError(f"{method} {path}: {response.status} {response.body[:500]!r}")
        return response.json()
    return call


@pytest.fixture
def engine_api(busybox_engine: EngineProcess) -> Iterator[Any]:
    import docker

    client = docker.APIClient(base_url=busybox_engine.host, version="auto", timeout=60)
    yield client
    client.close()


def pod_manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """A pod bound to the test node (no scheduler needed), its containers on the busybox image."""
    for container in containers:
        container.setdefault("image", IMAGE)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": NODE, "containers": containers, "terminationGracePeriodSeconds": 2, **spec}}


def pod_path(name: str, namespace: str = "default") -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def get_pod(api: Api, name: str) -> dict[str, Any]:
    return api("GET", pod_path(name))


def container_status(pod: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if name is None or status["name"] == name:
            return status
    return {}


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return c.get("status")
    return None


def wait_pod(api: Api, name: str, predicate: Callable[[dict[str, Any]], Any], timeout: float = 30.0,
             agent: AgentProcess | None = None) -> dict[str, Any]:
    """Poll the pod until ``predicate(pod)``; the pod (AssertionError with its last state otherwise)."""
    last: dict[str, Any] = {}

    def check() -> Any:
        nonlocal last
        last = get_pod(api, name)
        return predicate(last)

    try:
        wait_for(check, timeout=timeout, interval=0.2)
    except AssertionError:
        tail = agent.log_tail() if agent else ""
        raise AssertionError(f"pod {name}: condition not met; status:\n{json.dumps(last.get('status'), indent=1)}"
                             f"\n--- agent log ---\n{tail}") from None
    return last


def delete_pod(api: Api, name: str) -> None:
    api("DELETE", pod_path(name))

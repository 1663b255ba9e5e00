"""Fixtures for the API server tests: a real ``skiff server`` process on a temp data dir and a free loopback
port, the real kubectl 1.32 and the official ``kubernetes`` Python client pointed at it.

- ``api_server``: one server per test module (``ServerProcess``: ``.url``, ``.kubeconfig``, ``.kill()``,
  ``.start()``, ``.stop()``, ``.request(...)`` for raw HTTPS with the admin certificate), with the namespace
  and serviceaccount controllers beside it (``ServerProcess(controllers=...)`` runs ``skiff controller-manager``).
- ``kubectl(*args, input=None, check=True, kubeconfig=None)``: runs kubectl with its own ``--cache-dir`` in the
  session's temp dir (discovery is never cached across sessions).
- ``k8s``: a ``kubernetes.client.ApiClient`` on ``api_server``.
- ``private_etcd``: an etcd for one module's etcd-backed servers.
- ``TOKENS``: the static tokens every server gets (``jane`` is authenticated but has no RBAC permission).

Each server is stopped by pid (SIGTERM, then SIGKILL) at the end; the session's leak check confirms it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from skiff.cluster.store.etcd_process import EtcdProcess, etcd_binary, free_port

REPO = Path(__file__).resolve().parents[3]
KUBECTL = "/usr/bin/kubectl"
START_TIMEOUT = 30.0
TOKENS = {"jane-token": ("jane", "1001", "dev"), "node-token": ("system:node:n1", "1002", "system:nodes")}


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ServerProcess:
    """One ``skiff server`` child process; ``start()`` again after ``kill()`` reuses its data dir."""

    def __init__(self, root: Path, *extra: str, agent: bool = False, controllers: str = "",
                 manager_flags: tuple[str, ...] = ()) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.kubeconfig = root / "kubeconfig"
        self.token_file = root / "tokens.csv"
        self.port = free_port()
        # no node agent unless asked for: it would register this host as a Node and look for its engine
        self.extra = list(extra) if agent else [*extra, "--disable-agent"]
        self.process: subprocess.Popen[bytes] | None = None
        # ``skiff controller-manager --controllers <these>`` beside a server started with --disable-controllers;
        # it outlives a kill() of the server (and reconnects), and stop() ends it too
        self.controllers = controllers
        self.manager_flags = list(manager_flags)  # more flags for that controller manager
        self.manager: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text("".join(f'{t},{u},{uid},"{g}"\n' for t, (u, uid, g) in TOKENS.items()))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "skiff.cli.main", "server", "--data-dir", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}", "--write-kubeconfig", str(self.kubeconfig),
                "--token-file", str(self.token_file), *self.extra]

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        with log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            env=env, cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"skiff server exited with {self.process.returncode}: {self.log_tail()}")
            if self.kubeconfig.exists() and self._ready():
                if self.controllers and (self.manager is None or self.manager.poll() is not None):
                    self._start_manager(env)
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"skiff server did not become ready: {self.log_tail()}")

    def _start_manager(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "skiff.cli.main", "controller-manager", "--kubeconfig",
                   str(self.data_dir / "cred" / "controller-manager.kubeconfig"), "--controllers", self.controllers,
                   *self.manager_flags]
        with open(self.root / "controller-manager.log", "ab") as log:
            self.manager = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                            cwd=self.root, start_new_session=True)

    def _ready(self) -> bool:
        try:
            return self.request("GET", "/readyz", cert=False).status == 200
        except OSError:
            return False

    def ssl_context(self, cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.data_dir / "tls" / "ca.crt"))
        if cert:
            context.load_cert_chain(self.data_dir / "tls" / "admin.crt", self.data_dir / "tls" / "admin.key")
        return context

    def request(self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
                cert: bool = True, timeout: float = 30.0) -> Response:
        """One HTTPS request (with the admin client certificate unless ``cert`` is False)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.ssl_context(cert))
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        try:
            self._signal(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.manager is not None:
            if self.manager.poll() is None:
                self.manager.terminate()
                try:
                    self.manager.wait(15)
                except subprocess.TimeoutExpired:
                    self.manager.kill()
                    self.manager.wait()
            self.manager = None

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(15)
        self.process = None

    def log_tail(self, size: int = 3000) -> str:
        try:
            return (self.root / "server.log").read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def running_server(root: Path, *extra: str, **options: Any) -> Iterator[ServerProcess]:
    """A started ``ServerProcess`` (``ServerProcess``'s arguments), stopped at the end: a module's server fixture."""
    server = ServerProcess(root, *extra, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The API server without the scheduler and the workload controllers: these tests check what the API does
    with each write, which those (tested on their own) would otherwise write over (a Deployment's status, a
    pod's binding). The namespace and service-account controllers run beside it (``skiff controller-manager``):
    without them a deleted namespace would stay Terminating and a new one would have no ``default``
    ServiceAccount, as in kube."""
    server = ServerProcess(tmp_path_factory.mktemp("apiserver"), "--disable-controllers", "--disable-scheduler",
                           controllers="namespace,serviceaccount")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def private_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """An etcd of this module's own: API servers write under /registry/, so they never share one."""
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    etcd = EtcdProcess(tmp_path_factory.mktemp("etcd"))
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture(scope="session")
def kubectl_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kubectl-cache")


KubectlRun = Callable[..., subprocess.CompletedProcess[str]]


def make_kubectl(server: ServerProcess, cache: Path) -> KubectlRun:
    def run(*args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [KUBECTL, "--kubeconfig", str(kubeconfig or server.kubeconfig), "--cache-dir", str(cache), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                                env=dict(os.environ, HOME=str(cache)))
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}"
                                 f"{result.stderr}\n--- server log ---\n{server.log_tail()}")
        return result
    return run


@pytest.fixture(scope="module")
def kubectl(api_server: ServerProcess, kubectl_cache: Path) -> KubectlRun:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    return make_kubectl(api_server, kubectl_cache)


@pytest.fixture(scope="module")
def k8s(api_server: ServerProcess) -> Iterator[Any]:
    from kubernetes import config

    api_client = config.new_client_from_config(str(api_server.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)

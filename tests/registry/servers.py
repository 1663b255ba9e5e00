"""Registry servers as subprocesses for tests and the benchmark: Skiff's and the CNCF distribution one.

Each runs on a loopback port in its own data directory, and is stopped by pid (SIGTERM, then SIGKILL).
Skiff's is started on port 0 and reports the port it got; ``docker-registry`` needs a port chosen in
advance, found by binding port 0 and releasing it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER_REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
START_TIMEOUT = 15.0


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        try:
            return [e["code"] for e in self.json()["errors"]]
        except (ValueError, KeyError, TypeError):
            return []


@dataclass
class RegistryProcess:
    """A running registry: ``host`` is ``127.0.0.1:PORT`` as image references spell it."""

    kind: str
    process: subprocess.Popen
    host: str
    data: Path
    log: Path
    auth: tuple[str, str] | None = field(default=None)
    tls: ssl.SSLContext | None = field(default=None)  # set: speak HTTPS, verifying with this context

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                auth: tuple[str, str] | None = None) -> Response:
        return request(self.host, method, path, body, headers, auth or self.auth, self.tls)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaps."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


def request(host: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            auth: tuple[str, str] | None = None, tls: ssl.SSLContext | None = None) -> Response:
    """One HTTP(S) request on a fresh connection (so a server-side close never confuses the next)."""
    headers = dict(headers or {})
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    conn = (http.client.HTTPSConnection(host, timeout=30, context=tls) if tls
            else http.client.HTTPConnection(host, timeout=30))
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        try:
            body = resp.read()
        except http.client.IncompleteRead as e:  # docker-registry's 416s announce a body they never send
            body = e.partial
        return Response(resp.status, resp.headers, body)
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_skiff(data: Path, *extra: str, log_level: str = "info", tls: ssl.SSLContext | None = None) -> RegistryProcess:
    """``skiff registry`` on a free loopback port; returns once it is listening. Pass ``tls`` (a client
    context trusting its certificate) along with ``--tls-cert``/``--tls-key`` in ``extra``."""
    log = data.with_name(data.name + ".log")
    cmd = [sys.executable, "-m", "skiff.registry.cli", "--listen", "127.0.0.1:0", "--data", str(data),
           "--log-level", log_level, *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=data.parent, env=env)
    try:
        line = _read_line(proc, START_TIMEOUT)
    except BaseException:
        _reap(proc)
        raise
    prefix = f"listening on {'https' if tls else 'http'}://"
    if not line.startswith(prefix):
        _reap(proc)
        raise RuntimeError(f"skiff registry did not start: {line!r}; log:\n{log.read_text()}")
    return RegistryProcess("skiff", proc, line.removeprefix(prefix), data, log, tls=tls)


def start_docker_registry(data: Path, htpasswd: Path | None = None) -> RegistryProcess:
    """The distribution registry (Debian's docker-registry) on a free loopback port."""
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(data)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "skiff-tests"},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
    config_path = data.with_name(data.name + ".yml")
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log = data.with_name(data.name + ".log")
    with open(log, "ab") as err:
        proc = subprocess.Popen([DOCKER_REGISTRY, "serve", str(config_path)], stdout=subprocess.DEVNULL,
                                stderr=err, cwd=data.parent)
    registry = RegistryProcess("docker-registry", proc, f"127.0.0.1:{port}", data, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()}")
        try:
            request(registry.host, "GET", "/v2/")
            return registry
        except OSError:
            time.sleep(0.05)
    registry.kill()
    raise RuntimeError("docker-registry did not start")


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError("registry did not report its address in time")
    return proc.stdout.readline().decode().strip()


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout:
        proc.stdout.close()

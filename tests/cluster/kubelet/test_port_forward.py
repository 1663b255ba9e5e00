"""``kubectl port-forward`` through the API server to the agent's kubelet API, with the real kubectl 1.32 (SPDY/3.1
tunnelled in a WebSocket, ``SPDY/3.1+portforward.k8s.io``) and the official Python client (WebSocket
``v4.channel.k8s.io``), into a real pod on a real engine.

The pod serves on its loopback only (``httpd -p 127.0.0.1:8080``): what answers was reached from inside the pod's
network namespace, as port-forward does, not through the pod's address.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.api.conftest import KUBECTL, REPO, ServerProcess, k8s  # noqa: F401 - a fixture
from tests.cluster.kubelet.conftest import AgentProcess, Api, pod_manifest, wait_pod
from tests.cluster.kubelet.test_logs_exec import agent, create  # noqa: F401 - a fixture (its own agent here)
from tests.cluster.kubelet.test_logs_exec import running as ready

# /www/index.html is a large page (a pattern of 1 MB), /www/hostname the pod's name; httpd on the loopback only.
SERVE = ("mkdir -p /www && hostname > /www/hostname && "
         "i=0; while [ $i -lt 16384 ]; do echo 0123456789abcdef0123456789abcdef0123456789abcdef012345678901234; "
         "i=$((i+1)); done > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www")
PAGE = b"0123456789abcdef0123456789abcdef0123456789abcdef012345678901234\n" * 16384


@pytest.fixture(scope="module")
def web(agent: AgentProcess, api: Api) -> str:  # noqa: F811
    create(api, pod_manifest("web", [{"name": "httpd", "command": ["sh", "-c", SERVE]}]))
    wait_pod(api, "web", ready, agent=agent)
    return "web"


class PortForward:
    """``kubectl port-forward`` running in the background; ``local[remote port]`` is where it listens."""

    def __init__(self, server: ServerProcess, cache: Path, *args: str) -> None:
        self.process = subprocess.Popen([KUBECTL, "--kubeconfig", str(server.kubeconfig), "--cache-dir", str(cache),
                                         "port-forward", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()  # type: ignore[arg-type]
        self.local: dict[int, int] = {}
        wanted = sum(1 for a in args if a.startswith(":"))
        timer = threading.Timer(30, self.process.terminate)  # a stuck start fails the test instead of hanging it
        timer.start()
        try:
            while len(self.local) < wanted:
                line = self.process.stdout.readline()  # type: ignore[union-attr]
                assert line, f"kubectl port-forward ended; stderr: {''.join(self.stderr)}"
                if found := re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line):
                    self.local[int(found.group(2))] = int(found.group(1))
        finally:
            timer.cancel()

    def get(self, path: str, remote: int = 8080) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.local[remote]}{path}", timeout=30) as response:
            return response.read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process.stdout.close()  # type: ignore[union-attr]


@pytest.fixture
def forward(api_server: ServerProcess, tmp_path: Path) -> Iterator[Any]:
    made: list[PortForward] = []

    def start(*args: str) -> PortForward:
        made.append(PortForward(api_server, tmp_path, *args))
        return made[-1]

    yield start
    for one in made:
        one.stop()


def test_kubectl_port_forward_reaches_the_pods_loopback(web: str, forward: Any) -> None:
    tunnel = forward(f"pod/{web}", ":8080")
    assert tunnel.get("/hostname") == b"web\n"
    assert tunnel.get("/index.html") == PAGE  # 1 MB, in many DATA frames
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(tunnel.get("/hostname"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [b"web\n"] * 8  # eight connections side by side, one session


def test_a_port_nobody_listens_on_is_reported_and_ends_the_forward(web: str, forward: Any) -> None:
    """As with kube: the kubelet's error reaches kubectl on the request's error stream, and kubectl ends."""
    tunnel = forward(f"pod/{web}", ":9")
    with pytest.raises(OSError):
        tunnel.get("/", remote=9)
    assert tunnel.process.wait(timeout=20) != 0
    assert "failed to connect to localhost:9 inside the pod" in "".join(tunnel.stderr)
    assert forward(f"pod/{web}", ":8080").get("/hostname") == b"web\n"  # the kubelet serves on


def test_port_forward_of_a_missing_pod_is_a_not_found(agent: AgentProcess, api_server: ServerProcess,  # noqa: F811
                                                      tmp_path: Path) -> None:
    result = subprocess.run([KUBECTL, "--kubeconfig", str(api_server.kubeconfig), "--cache-dir", str(tmp_path),
                             "port-forward", "pod/nosuch", ":80"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and 'pods "nosuch" not found' in result.stderr


def test_python_client_port_forward_over_v4(web: str, k8s: Any) -> None:  # noqa: F811
    from kubernetes import client
    from kubernetes.stream import portforward

    api = client.CoreV1Api(k8s)
    session = portforward(api.connect_get_namespaced_pod_portforward, web, "default", ports="8080")
    try:
        sock = session.socket(8080)
        sock.setblocking(True)
        sock.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.") and answer.endswith(b"\r\n\r\nweb\n")
        sock.close()
        assert session.error(8080) is None
    finally:
        session.close()


def test_skiff_kubectl_port_forward_reaches_the_pod_and_reports_a_closed_port(web: str,
                                                                               api_server: ServerProcess) -> None:
    """``skiff kubectl port-forward`` (kubectl's output lines; the v4 channel protocol per connection)."""
    command = [sys.executable, "-m", "skiff.cli.main", "kubectl", "--kubeconfig", str(api_server.kubeconfig),
               "port-forward", f"pod/{web}", ":8080", "0:9"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        ports = {}
        for _ in range(2):
            found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$", process.stdout.readline().strip())  # type: ignore[union-attr]
            assert found
            ports[int(found.group(2))] = int(found.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[8080]}/index.html", timeout=30) as response:
            assert response.read() == PAGE
        assert process.stdout.readline() == f"Handling connection for {ports[8080]}\n"  # type: ignore[union-attr]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{ports[9]}/", timeout=20).read()
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=10)
    assert "failed to connect to localhost:9 inside the pod" in errors

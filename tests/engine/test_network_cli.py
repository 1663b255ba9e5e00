"""``skiff network ...``, ``skiff port`` and run's network flags: the skiff CLI (a client of the Engine API)
against a real ``skiff engine``, with what it prints compared to the docker CLI's on the same daemon."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.engine.conftest import DOCKER, EngineProcess, docker_runner
from tests.image.testimages import BUSYBOX, TestImageUnavailable, busybox_docker_archive

REPO = Path(__file__).resolve().parents[2]
SKIFF = [sys.executable, "-m", "skiff.cli.main"]
Runner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def skiff(engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    if os.geteuid() != 0:
        pytest.skip("networks need root")
    env = dict(os.environ, DOCKER_CONFIG=str(tmp_path_factory.mktemp("cfg")), PYTHONPATH=str(REPO))
    env.pop("SKIFF_HOST", None)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*SKIFF, "-H", engine.host, *args], capture_output=True, text=True, timeout=60,
                                env=env, cwd=REPO, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            pytest.fail(f"skiff {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    try:
        archive = busybox_docker_archive(str(tmp_path_factory.mktemp("busybox") / "busybox.tar"))
    except TestImageUnavailable as e:
        pytest.skip(str(e))
    run("load", "-i", archive)
    return run


def test_network_verbs_and_port(skiff: Runner, engine: EngineProcess, tmp_path: Path) -> None:
    subnet = engine.net.subnet(1)
    net_id = skiff("network", "create", "--subnet", subnet, "--label", "k=v", "clinet").stdout.strip()
    assert len(net_id) == 64
    assert "clinet" in skiff("network", "ls").stdout
    assert skiff("network", "ls", "-q", "--filter", "label=k=v").stdout.strip() == net_id[:12]
    assert skiff("network", "inspect", "clinet", "--format", "{{.IPAM.Config}}").returncode == 0
    dup = skiff("network", "create", "clinet", check=False)
    assert dup.returncode == 1 and "network with name clinet already exists" in dup.stderr
    ip = subnet.replace(".0/24", ".9")
    cid = skiff("run", "-d", "--name", "web", "--network", "clinet", "--network-alias", "www", "--ip", ip,
                "-p", "127.0.0.1::80", "--expose", "81", "-P", BUSYBOX, "httpd", "-f", "-p", "80", "-h",
                "/etc").stdout.strip()
    try:
        bindings = json.loads(skiff("inspect", "web").stdout)[0]["NetworkSettings"]["Ports"]
        port = int(bindings["80/tcp"][0]["HostPort"])
        lines = skiff("port", "web").stdout.splitlines()
        assert f"80/tcp -> 127.0.0.1:{port}" in lines and any(line.startswith("81/tcp -> 0.0.0.0:") for line in lines)
        assert skiff("port", "web", "80").stdout.strip() == f"127.0.0.1:{port}"
        if os.path.exists(DOCKER):  # the same answer as docker's own verb
            docker = docker_runner(engine.host, tmp_path / "docker-config")
            assert docker("port", "web").stdout == skiff("port", "web").stdout
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/hostname")
        assert conn.getresponse().read().decode().strip() == cid[:12]
        conn.close()
        out = skiff("run", "--rm", "--network", "clinet", BUSYBOX, "sh", "-c", "wget -qO- http://www/hostname").stdout
        assert out.strip() == cid[:12]
        skiff("network", "connect", "bridge", "web")
        assert "bridge" in json.loads(skiff("inspect", "web").stdout)[0]["NetworkSettings"]["Networks"]
        skiff("network", "disconnect", "bridge", "web")
        busy = skiff("network", "rm", "clinet", check=False)
        assert busy.returncode == 1 and "has active endpoints" in busy.stderr
    finally:
        skiff("rm", "-f", "web")
    assert "clinet" in skiff("network", "prune", "-f").stdout
    assert "clinet" not in skiff("network", "ls").stdout

"""The bridge driver options a pod network needs: ``enable_ip_masquerade=false`` and Docker 27's
``gateway_mode_ipv4=routed``. A container's traffic to another host leaves with its own address instead of the
host's (seen by a server in a network namespace of the test's own, joined to the host by a veth), a routed
network accepts what that host routes to it, and bad values are refused with a 400."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.engine.conftest import DockerRunner, EngineProcess
from tests.engine.test_networks import (  # noqa: F401 - fixtures
    IMAGE,
    _clean,
    image,
    inspect,
    nft_rules,
    ok,
    rootfs_tar,
    run_d,
)

MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
GATEWAY_MODE = "com.docker.network.bridge.gateway_mode_ipv4"
PORT = 8099
WGET = ("timeout", "5", "wget", "-qO-")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def outside(engine: EngineProcess) -> Iterator[str]:
    """Another "host": a namespace on a veth from the host, with a route back to the engine's networks; its
    address. Removed at the end."""
    prefix, k = engine.net.prefix, engine.net.k
    ns, host_end, subnet = f"sktout{k}", f"sktoh{k}", f"{prefix}.150"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{subnet}.1/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "-n", ns, "addr", "add", f"{subnet}.2/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", f"{prefix}.0.0/16", "via", f"{subnet}.1")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
print("listening", flush=True)
server.settimeout(20)
conn, peer = server.accept()
conn.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nok\\n")
conn.close()
print(peer[0], flush=True)
"""


def peer_seen_from(ns: str, address: str, connect: Callable[[], object]) -> str:
    """Listen on ``address:PORT`` inside ``ns`` (a process of the test's own), run ``connect()``; the source
    address the connection came from."""
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER, address, str(PORT)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening", server.stderr.read() if server.stderr else ""
        connect()
        out, err = server.communicate(timeout=25)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, f"no connection arrived: {err}"
    return out.strip()


def container_address(docker: DockerRunner, name: str, network: str) -> str:
    return inspect(docker, name)["NetworkSettings"]["Networks"][network]["IPAddress"]


@pytest.mark.parametrize("option", [f"{MASQUERADE}=false", f"{GATEWAY_MODE}=routed"])
def test_traffic_leaves_with_the_containers_own_address(docker: DockerRunner, engine: EngineProcess,
                                                        outside: str, option: str) -> None:
    subnet = engine.net.subnet(7)
    ok(docker("network", "create", "--subnet", subnet, "-o", option, "nonat"))
    run_d(docker, "--name", "client", "--network", "nonat", IMAGE, "sleep", "60")
    address = container_address(docker, "client", "nonat")
    target = f"{engine.net.prefix}.150.2"
    source = peer_seen_from(outside, target, lambda: docker("exec", "client", *WGET,
                                                            f"http://{target}:{PORT}/"))
    assert source == address
    rules = nft_rules(engine)
    assert f"ip saddr {subnet} oifname != " not in rules  # no masquerade of the network's own traffic
    if "routed" in option:
        assert f'iifname != @bridges oifname "{inspect_bridge(docker, "nonat")}" accept' in rules


def inspect_bridge(docker: DockerRunner, network: str) -> str:
    doc = json.loads(ok(docker("network", "inspect", network)))[0]
    return "br-" + doc["Id"][:12]


def test_the_default_is_still_masquerade(docker: DockerRunner, engine: EngineProcess, outside: str) -> None:
    ok(docker("network", "create", "--subnet", engine.net.subnet(8), "natted"))
    run_d(docker, "--name", "client", "--network", "natted", IMAGE, "sleep", "60")
    target = f"{engine.net.prefix}.150.2"
    source = peer_seen_from(outside, target, lambda: docker("exec", "client", *WGET,
                                                            f"http://{target}:{PORT}/"))
    assert source == f"{engine.net.prefix}.150.1"  # the host's address on the way out


def test_a_routed_network_is_reached_by_routing_from_another_host(docker: DockerRunner, engine: EngineProcess,
                                                                  outside: str) -> None:
    ok(docker("network", "create", "--subnet", engine.net.subnet(9), "-o", f"{GATEWAY_MODE}=routed", "routed"))
    run_d(docker, "--name", "web", "--network", "routed", IMAGE, "httpd", "-f", "-p", "80", "-h", "/etc")
    address = container_address(docker, "web", "routed")
    out = subprocess.run(["ip", "netns", "exec", outside, "timeout", "5", "busybox", "wget", "-qO-",
                          f"http://{address}/hostname"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == inspect(docker, "web")["Config"]["Hostname"]


@pytest.mark.parametrize("option", [f"{MASQUERADE}=maybe", f"{GATEWAY_MODE}=teleport"])
def test_bad_option_values_are_refused(docker: DockerRunner, engine: EngineProcess, option: str) -> None:
    result = docker("network", "create", "--subnet", engine.net.subnet(10), "-o", option, "bad")
    assert result.returncode != 0
    assert "invalid value" in result.stderr
    response = engine.request("POST", "/networks/create", f'{{"Name": "bad", "Options": {{"{option.split("=")[0]}":'
                              f' "{option.split("=")[1]}"}}}}', {"Content-Type": "application/json"})
    assert response.status == 400 and b"invalid value" in response.body
    assert "bad" not in ok(docker("network", "ls", "--format", "{{.Name}}")).split()

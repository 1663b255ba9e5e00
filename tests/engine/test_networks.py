"""Networks, port publishing and the embedded DNS, driven with the real docker CLI and docker-py against a real
``skiff engine`` (each test engine has its own bridge, 10.K.0.0/16 block and nftables table: conftest.NetBlock).

Traffic goes only to loopback and to addresses inside the bridges these tests' engines made.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.conftest import DockerRunner, EngineProcess, Engines, docker_runner
from tests.image import testimages

IMAGE = "busybox"
IMPORT_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["sh"]')
HTTPD = ["httpd", "-f", "-p", "80", "-h", "/etc"]  # serves /etc/hostname: the container's short id


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.geteuid() != 0:
        pytest.skip("networks need root")
    try:
        return testimages.busybox_rootfs_tar(str(tmp_path_factory.mktemp("img") / "busybox.tar"))
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))


def import_busybox(run: DockerRunner, tar: str) -> None:
    args = [a for change in IMPORT_CHANGES for a in ("-c", change)]
    run("import", *args, tar, IMAGE, check=True)


@pytest.fixture(scope="module")
def image(engine: EngineProcess, rootfs_tar: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    import_busybox(docker_runner(engine.host, tmp_path_factory.mktemp("cfg")), rootfs_tar)
    return IMAGE


def remove_everything(engine: EngineProcess) -> None:
    for c in engine.request("GET", "/containers/json?all=1").json():
        engine.request("DELETE", f"/containers/{c['Id']}?force=1")
    for n in engine.request("GET", "/networks").json():
        if n["Name"] not in ("bridge", "host", "none"):
            engine.request("DELETE", f"/networks/{n['Id']}")


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    if not {"docker", "engine", "docker_client"} & set(request.fixturenames):
        yield
        return
    engine = request.getfixturevalue("engine")
    request.getfixturevalue("image")
    yield
    remove_everything(engine)
    assert not sandboxes(engine), "a removed container left its sandbox"


# ---------------------------------------------------------------------------------------------- helpers


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def inspect(docker: DockerRunner, name: str) -> dict:
    return json.loads(ok(docker("inspect", name)))[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def http_get(host: str, port: int, path: str = "/hostname", timeout: float = 10.0) -> str:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, response.status
        return response.read().decode().strip()
    finally:
        conn.close()


def unreachable(host: str, port: int) -> bool:
    try:
        http_get(host, port, timeout=2)
    except (OSError, AssertionError):
        return True
    return False


def sandboxes(engine: EngineProcess) -> list[str]:
    """Namespace files and sandbox records the engine holds now."""
    netns = engine.exec_root / "netns"
    records = engine.data_root / "network" / "sandboxes"
    return [p.name for d in (netns, records) if d.is_dir() for p in d.iterdir()]


def nft_rules(engine: EngineProcess) -> str:
    return subprocess.run(["nft", "list", "table", "ip", engine.net.nft_table], capture_output=True,
                          text=True, check=False).stdout


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def wget(url: str, seconds: int = 3) -> list[str]:
    """A command fetching ``url`` with a time limit. Under sh: as a container's PID 1, wget would ignore the
    SIGTERM of busybox's timeout (and busybox wget's own -T crashes)."""
    return ["sh", "-c", f"timeout {seconds} wget -qO- {url}; exit $?"]  # not exec'd: sh stays PID 1


def run_d(docker: DockerRunner, *args: str) -> str:
    return ok(docker("run", "-d", *args)).strip()


# ---------------------------------------------------------------------------------------------- default bridge


def test_the_default_bridge_gives_an_address_a_route_and_etc_files(docker: DockerRunner, engine: EngineProcess
                                                                    ) -> None:
    out = ok(docker("run", "--rm", "--add-host", "gw:host-gateway", IMAGE, "sh", "-c",
                    "ip -4 -o addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts"))
    prefix = engine.net.prefix
    assert re.search(rf"inet {prefix}\.0\.\d+/24", out), out
    assert f"default via {prefix}.0.1 dev eth0" in out
    assert "127.0.0.11" not in out  # no embedded DNS on the default bridge, as Docker
    assert f"{prefix}.0.1\tgw" in out  # host-gateway is the bridge's address
    cid = run_d(docker, IMAGE, "sleep", "60")
    doc = inspect(docker, cid)
    settings = doc["NetworkSettings"]
    bridge = settings["Networks"]["bridge"]
    assert settings["IPAddress"] == bridge["IPAddress"] and bridge["IPAddress"].startswith(prefix + ".0.")
    assert settings["Gateway"] == bridge["Gateway"] == f"{prefix}.0.1"
    assert bridge["IPPrefixLen"] == 24 and re.fullmatch(r"[0-9a-f]{64}", bridge["EndpointID"])
    assert bridge["MacAddress"] == "02:42:" + ":".join(f"{int(b):02x}" for b in bridge["IPAddress"].split("."))
    assert settings["SandboxKey"] == str(engine.exec_root / "netns" / cid)
    hosts = Path(doc["HostsPath"]).read_text()
    assert f"{bridge['IPAddress']}\t{cid[:12]}" in hosts
    network = json.loads(ok(docker("network", "inspect", "bridge")))[0]
    assert network["Containers"][cid]["IPv4Address"] == bridge["IPAddress"] + "/24"
    assert network["Options"]["com.docker.network.bridge.name"] == engine.net.bridge


def test_network_ls_shows_the_predefined_networks(docker: DockerRunner) -> None:
    rows = ok(docker("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}")).splitlines()
    assert sorted(rows) == ["bridge bridge local", "host host local", "none null local"]


# ---------------------------------------------------------------------------------------------- user networks


def test_containers_on_a_user_network_reach_each_other_by_name_and_alias(docker: DockerRunner,
                                                                          engine: EngineProcess) -> None:
    ok(docker("network", "create", "--subnet", engine.net.subnet(1), "front"))
    web = run_d(docker, "--name", "web", "--network", "front", "--network-alias", "www", IMAGE, *HTTPD)
    out = ok(docker("run", "--rm", "--network", "front", IMAGE, "sh", "-c",
                    "cat /etc/resolv.conf; ping -c1 -W2 web && nslookup web && wget -qO- http://www/hostname && "
                    "wget -qO- http://web.front/hostname"))
    assert "nameserver 127.0.0.11" in out and "options ndots:0" in out
    assert "1 packets received" in out
    ip = inspect(docker, "web")["NetworkSettings"]["Networks"]["front"]["IPAddress"]
    assert f"Address: {ip}" in out
    assert out.count(web[:12]) == 2
    settings = inspect(docker, "web")["NetworkSettings"]
    front = settings["Networks"]["front"]
    assert settings["IPAddress"] == ""  # the legacy top-level fields are the default bridge's only
    assert front["Aliases"] == ["www"] and front["DNSNames"] == ["web", web[:12], "www"]
    assert front["NetworkID"] == json.loads(ok(docker("network", "inspect", "front")))[0]["Id"]
    assert ip.startswith(engine.net.subnet(1).rsplit(".", 2)[0]) and front["Gateway"].endswith(".1")
    assert ok(docker("ps", "--filter", "network=front", "--format", "{{.Names}} {{.Networks}}")).split() == [
        "web", "front"]


def test_an_alias_shared_by_several_containers_answers_with_all_of_them_in_turn(docker: DockerRunner,
                                                                                engine: EngineProcess) -> None:
    ok(docker("network", "create", "--subnet", engine.net.subnet(2), "pool"))
    for name in ("a1", "a2"):
        run_d(docker, "--name", name, "--network", "pool", "--network-alias", "svc", IMAGE, "sleep", "60")
    ips = {inspect(docker, n)["NetworkSettings"]["Networks"]["pool"]["IPAddress"] for n in ("a1", "a2")}
    out = ok(docker("run", "--rm", "--network", "pool", IMAGE, "sh", "-c",
                    "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do nslookup svc | grep '^Address' | grep -v ':53' "
                    "| head -1; done"))
    firsts = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert len(firsts) == 12 and set(firsts) == ips  # both answered first at some point: round robin


def test_different_user_networks_are_isolated(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("network", "create", "--subnet", engine.net.subnet(3), "blue"))
    ok(docker("network", "create", "--subnet", engine.net.subnet(4), "green"))
    run_d(docker, "--name", "b1", "--network", "blue", IMAGE, *HTTPD)
    ip = inspect(docker, "b1")["NetworkSettings"]["Networks"]["blue"]["IPAddress"]
    same = docker("run", "--rm", "--network", "blue", IMAGE, *wget(f"http://{ip}/hostname", 3))
    assert same.returncode == 0
    other = docker("run", "--rm", "--network", "green", IMAGE, "sh", "-c",
                   f"timeout 2 wget -qO- http://{ip}/hostname; echo wget=$?; nslookup b1; echo ns=$?")
    assert "wget=1" in other.stdout and "ns=1" in other.stdout, other.stdout + other.stderr
    default = docker("run", "--rm", IMAGE, *wget(f"http://{ip}/hostname", 2))
    assert default.returncode != 0


def test_an_internal_network_reaches_nothing_outside(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("network", "create", "--internal", "--subnet", engine.net.subnet(5), "vault"))
    run_d(docker, "--name", "v1", "--network", "vault", IMAGE, *HTTPD)
    out = ok(docker("run", "--rm", "--network", "vault", IMAGE, "sh", "-c",
                    f"ip route; timeout 3 wget -qO- http://v1/hostname; ping -c1 -W1 {engine.net.prefix}.0.1; "
                    "echo ping=$?"))
    assert "default" not in out  # no route out
    assert inspect(docker, "v1")["Id"][:12] in out  # but the neighbour, by name
    assert "ping=1" in out
    assert json.loads(ok(docker("network", "inspect", "vault")))[0]["Internal"] is True
    rules = nft_rules(engine)
    bridge = json.loads(ok(docker("network", "inspect", "vault")))[0]["Options"].get(
        "com.docker.network.bridge.name") or "br-" + json.loads(ok(docker("network", "inspect", "vault")))[0]["Id"][:12]
    assert f'iifname "{bridge}" oifname != "{bridge}" drop' in rules
    assert f'oifname != "{bridge}" masquerade' not in rules


def test_connect_and_disconnect_a_running_container(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("network", "create", "--subnet", engine.net.subnet(6), "n1"))
    ok(docker("network", "create", "--subnet", engine.net.subnet(7), "n2"))
    run_d(docker, "--name", "srv", "--network", "n1", IMAGE, *HTTPD)
    probe = ["run", "--rm", "--network", "n2", IMAGE, *wget("http://srv/hostname", 3)]
    assert docker(*probe).returncode != 0
    ok(docker("network", "connect", "--alias", "api", "--ip", engine.net.subnet(7).replace(".0/24", ".50"), "n2",
              "srv"))
    assert ok(docker(*probe)).strip() == inspect(docker, "srv")["Id"][:12]
    n2 = inspect(docker, "srv")["NetworkSettings"]["Networks"]["n2"]
    assert n2["IPAddress"] == engine.net.subnet(7).replace(".0/24", ".50") and n2["Aliases"] == ["api"]
    assert set(re.findall(r"\beth\d+", ok(docker("exec", "srv", "ip", "-o", "link")))) == {"eth0", "eth1"}
    ok(docker("network", "disconnect", "n2", "srv"))
    assert docker(*probe).returncode != 0
    assert "n2" not in inspect(docker, "srv")["NetworkSettings"]["Networks"]
    assert set(re.findall(r"\beth\d+", ok(docker("exec", "srv", "ip", "-o", "link")))) == {"eth0"}


def test_network_modes_host_none_and_another_container(docker: DockerRunner, engine: EngineProcess) -> None:
    none = ok(docker("run", "--rm", "--network", "none", IMAGE, "ip", "-o", "link"))
    assert "eth0" not in none and "lo" in none
    host = ok(docker("run", "--rm", "--network", "host", IMAGE, "ip", "-o", "link"))
    assert engine.net.bridge in host
    run_d(docker, "--name", "owner", IMAGE, *HTTPD)
    joined = ok(docker("run", "--rm", "--network", "container:owner", IMAGE, "wget", "-qO-", "http://127.0.0.1/hostname"))
    assert joined.strip() == inspect(docker, "owner")["Id"][:12]


def test_hostname_dns_and_mac_options(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("network", "create", "--subnet", engine.net.subnet(8), "opts"))
    out = ok(docker("run", "--rm", "--network", "opts", "--hostname", "box", "--mac-address", "02:42:aa:bb:cc:dd",
                    "--dns", "192.0.2.53", "--ip", engine.net.subnet(8).replace(".0/24", ".77"), IMAGE, "sh", "-c",
                    "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; cat /etc/resolv.conf "
                    "/etc/hosts"))
    assert out.splitlines()[0] == "box" and "02:42:aa:bb:cc:dd" in out
    assert engine.net.subnet(8).replace(".0/24", ".77/24") in out
    assert "nameserver 127.0.0.11" in out and "192.0.2.53" not in out  # --dns is the resolver's upstream
    assert f"{engine.net.subnet(8).replace('.0/24', '.77')}\tbox" in out


# ---------------------------------------------------------------------------------------------- published ports


def test_published_ports_are_reachable_from_the_host_and_go_away_at_stop(docker: DockerRunner,
                                                                       engine: EngineProcess) -> None:
    loopback_port, any_port = free_port(), free_port()
    cid = run_d(docker, "--name", "pub", "-p", f"127.0.0.1:{loopback_port}:80", "-p", f"{any_port}:80", IMAGE, *HTTPD)
    assert http_get("127.0.0.1", loopback_port) == cid[:12]
    assert http_get("127.0.0.1", any_port) == cid[:12]
    gateway = f"{engine.net.prefix}.0.1"
    assert http_get(gateway, any_port) == cid[:12]  # the host's own address: DNAT in the output hook
    assert unreachable(gateway, loopback_port)  # published on 127.0.0.1 only
    ports = sorted(ok(docker("port", "pub")).splitlines())
    assert ports == sorted([f"80/tcp -> 127.0.0.1:{loopback_port}", f"80/tcp -> 0.0.0.0:{any_port}"])
    row = ok(docker("ps", "--filter", "name=pub", "--format", "{{.Ports}}")).strip()
    assert f"127.0.0.1:{loopback_port}->80/tcp" in row and f"0.0.0.0:{any_port}->80/tcp" in row
    assert f"dport {any_port} dnat to" in nft_rules(engine)
    ok(docker("stop", "-t", "1", "pub"))
    assert unreachable("127.0.0.1", any_port) and unreachable("127.0.0.1", loopback_port)
    assert f"dport {any_port}" not in nft_rules(engine)
    assert inspect(docker, "pub")["NetworkSettings"]["Ports"] == {}
    with socket.socket() as s:  # the port is free again (for a listener: closed connections linger in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", any_port))


def test_publish_all_picks_ephemeral_ports_for_exposed_ones(docker: DockerRunner) -> None:
    cid = run_d(docker, "--name", "all", "--expose", "80", "--expose", "9/udp", "-P", IMAGE, *HTTPD)
    bindings = inspect(docker, "all")["NetworkSettings"]["Ports"]
    port = int(bindings["80/tcp"][0]["HostPort"])
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert low <= port <= high and bindings["80/tcp"][0]["HostIp"] == "0.0.0.0"
    assert "9/udp" in bindings
    assert http_get("127.0.0.1", port) == cid[:12]


def test_a_port_taken_already_is_a_clear_conflict(docker: DockerRunner, engine: EngineProcess) -> None:
    port = free_port()
    run_d(docker, "--name", "first", "-p", f"{port}:80", IMAGE, *HTTPD)
    second = docker("run", "-d", "--name", "second", "-p", f"{port}:80", IMAGE, *HTTPD)
    assert second.returncode == 125
    assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in second.stderr
    assert inspect(docker, "second")["State"]["Status"] == "created"
    cid = inspect(docker, "second")["Id"]
    assert cid not in sandboxes(engine)  # nothing half-made
    start = engine.request("POST", f"/containers/{cid}/start")
    assert start.status == 409 and "port is already allocated" in start.json()["message"]


def test_a_container_on_the_default_bridge_reaches_a_published_port_of_another(docker: DockerRunner,
                                                                                engine: EngineProcess) -> None:
    port = free_port()
    cid = run_d(docker, "-p", f"{port}:80", IMAGE, *HTTPD)
    ok(docker("network", "create", "--subnet", engine.net.subnet(9), "elsewhere"))
    for network in ("bridge", "elsewhere"):
        url = f"http://{engine.net.prefix}.0.1:{port}/hostname"
        out = ok(docker("run", "--rm", "--network", network, IMAGE, *wget(url)))
        assert out.strip() == cid[:12]


def test_udp_ports_are_published_too(docker: DockerRunner) -> None:
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("the UDP echo server runs the host's /usr/bin/python3 (busybox has no UDP server)")
    port = free_port()
    echo = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 5353))\n"
            "while True:\n    data, peer = s.recvfrom(100); s.sendto(b'pong ' + data, peer)")
    run_d(docker, "--name", "udp", "-p", f"127.0.0.1:{port}:5353/udp", "-v", "/:/host:ro", IMAGE,
          "chroot", "/host", "/usr/bin/python3", "-c", echo)
    deadline = time.monotonic() + 10
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        while True:
            s.sendto(b"ping\n", ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(100)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "no UDP answer through the proxy"
    assert data == b"pong ping\n"


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_network_input_gets_dockers_errors(docker: DockerRunner, engine: EngineProcess) -> None:
    def create(body: dict) -> tuple[int, str]:
        r = engine.request("POST", "/networks/create", json.dumps(body), {"Content-Type": "application/json"})
        return r.status, r.json()["message"] if r.status >= 400 else ""

    subnet = engine.net.subnet(10)
    ok(docker("network", "create", "--subnet", subnet, "taken"))
    assert create({"Name": "x", "IPAM": {"Config": [{"Subnet": subnet.replace(".0/24", ".128/25")}]}}) == (
        403, "Pool overlaps with other one on this address space")
    assert create({"Name": "x", "IPAM": {"Config": [{"Subnet": "10.1.300.0/24"}]}}) == (
        400, "invalid network config:\ninvalid subnet 10.1.300.0/24: invalid CIDR block notation")
    assert create({"Name": "x", "IPAM": {"Config": [{"Subnet": engine.net.subnet(11),
                                                      "Gateway": "192.0.2.1"}]}}) == (
        400, "invalid network config:\ninvalid gateway 192.0.2.1: it must be within the subnet")
    assert create({"Name": "taken"}) == (409, "network with name taken already exists")
    dup = docker("network", "create", "taken")
    assert dup.returncode == 1 and "network with name taken already exists" in dup.stderr
    unknown = docker("run", "--rm", "--network", "nope", IMAGE, "true")
    assert unknown.returncode == 125 and "network nope not found" in unknown.stderr
    outside = docker("run", "--rm", "--network", "taken", "--ip", "192.0.2.9", IMAGE, "true")
    assert outside.returncode == 125
    assert "no configured subnet or ip-range contain the IP address 192.0.2.9" in outside.stderr
    on_default = docker("run", "--rm", "--ip", f"{engine.net.prefix}.0.9", IMAGE, "true")
    assert "user specified IP address is supported on user defined networks only" in on_default.stderr
    predefined = engine.request("DELETE", "/networks/bridge")
    assert (predefined.status, predefined.json()["message"]) == (
        403, "bridge is a pre-defined network and cannot be removed")
    run_d(docker, "--network", "taken", IMAGE, "sleep", "60")
    in_use = docker("network", "rm", "taken")
    assert in_use.returncode == 1 and "has active endpoints" in in_use.stderr
    assert engine.request("GET", "/networks/nope").status == 404
    assert engine.request("GET", "/_ping").status == 200  # and the daemon keeps serving
    assert [n["Name"] for n in engine.request("GET", "/networks").json()].count("x") == 0


def test_network_list_filters_and_prune(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("network", "create", "--label", "team=a", "--subnet", engine.net.subnet(12), "lab-a"))
    ok(docker("network", "create", "--subnet", engine.net.subnet(13), "lab-b"))
    run_d(docker, "--network", "lab-b", IMAGE, "sleep", "60")
    names = lambda *f: sorted(ok(docker("network", "ls", "--format", "{{.Name}}", *f)).split())  # noqa: E731
    assert names("--filter", "label=team=a") == ["lab-a"]
    assert names("--filter", "type=custom") == ["lab-a", "lab-b"]
    assert names("--filter", "dangling=true") == ["lab-a"]
    assert names("--filter", "name=lab-") == ["lab-a", "lab-b"]
    assert names("--filter", "driver=null") == ["none"]
    pruned = ok(docker("network", "prune", "-f"))
    assert "lab-a" in pruned and "lab-b" not in pruned
    assert names("--filter", "type=custom") == ["lab-b"]


def test_a_subnet_is_picked_for_a_network_created_without_one(docker: DockerRunner, engine: EngineProcess) -> None:
    ok(docker("network", "create", "auto1"))
    ok(docker("network", "create", "auto2"))
    subnets = [json.loads(ok(docker("network", "inspect", n)))[0]["IPAM"]["Config"][0]["Subnet"]
               for n in ("auto1", "auto2")]
    assert subnets[0] != subnets[1]
    assert all(s.startswith(f"{engine.net.prefix}.") and s.endswith("/24") for s in subnets)


# ---------------------------------------------------------------------------------------------- docker-py


def test_docker_py_networks_and_ports(docker_client, engine: EngineProcess) -> None:  # type: ignore[no-untyped-def]
    import docker as docker_py

    ipam = docker_py.types.IPAMConfig(pool_configs=[docker_py.types.IPAMPool(subnet=engine.net.subnet(14))])
    net = docker_client.networks.create("pynet", driver="bridge", ipam=ipam, labels={"by": "py"})
    assert docker_client.networks.get(net.id).name == "pynet"
    assert [n.name for n in docker_client.networks.list(names=["pynet"])] == ["pynet"]
    port = free_port()
    web = docker_client.containers.run(IMAGE, HTTPD, detach=True, name="pyweb", network="pynet",
                                       ports={"80/tcp": ("127.0.0.1", port)})
    web.reload()
    assert web.ports == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert http_get("127.0.0.1", port) == web.id[:12]
    net.reload()
    assert [c.id for c in net.containers] == [web.id]
    with pytest.raises(docker_py.errors.APIError) as conflict:
        docker_client.containers.run(IMAGE, HTTPD, detach=True, ports={"80/tcp": ("127.0.0.1", port)})
    assert conflict.value.status_code == 409
    with pytest.raises(docker_py.errors.APIError) as busy:
        net.remove()
    assert busy.value.status_code == 403
    web.remove(force=True)
    net.remove()
    with pytest.raises(docker_py.errors.NotFound):
        docker_client.networks.get("pynet")


# ---------------------------------------------------------------------------------------------- restarts, leaks


def test_a_killed_daemon_comes_back_with_networks_ports_and_dns(engines: Engines, rootfs_tar: str,
                                                               tmp_path: Path) -> None:
    engine = engines.start()
    docker = docker_runner(engine.host, tmp_path / "cfg")
    import_busybox(docker, rootfs_tar)
    ok(docker("network", "create", "--subnet", engine.net.subnet(1), "keep"))
    port = free_port()
    web = run_d(docker, "--name", "web", "--network", "keep", "-p", f"{port}:80", IMAGE, *HTTPD)
    client = run_d(docker, "--name", "client", "--network", "keep", IMAGE, "sleep", "300")
    assert http_get("127.0.0.1", port) == web[:12]
    os.kill(engine.pid, signal.SIGKILL)
    engine.process.wait()  # type: ignore[union-attr]
    assert http_get(f"{engine.net.prefix}.0.1", port) == web[:12]  # the kernel's DNAT serves meanwhile
    engine.start()
    assert http_get("127.0.0.1", port) == web[:12]  # the proxy is back
    assert ok(docker("exec", client, *wget("http://web/hostname", 3))).strip() == web[:12]
    assert "keep" in ok(docker("network", "ls", "--format", "{{.Name}}")).split()
    assert ok(docker("port", "web")).strip() == f"80/tcp -> 0.0.0.0:{port}"
    # a container that exited while the daemon was away gives its sandbox back at restart
    client_pid = inspect(docker, client)["State"]["Pid"]
    os.kill(engine.pid, signal.SIGKILL)
    engine.process.wait()  # type: ignore[union-attr]
    os.kill(client_pid, signal.SIGKILL)
    time.sleep(0.5)
    engine.start()
    assert client not in sandboxes(engine)
    assert http_get("127.0.0.1", port) == web[:12]
    remove_everything(engine)
    assert not sandboxes(engine)


def test_teardown_leaves_no_bridge_veth_netns_or_table(engines: Engines, rootfs_tar: str, tmp_path: Path) -> None:
    engine = engines.start()
    docker = docker_runner(engine.host, tmp_path / "cfg")
    import_busybox(docker, rootfs_tar)
    net_id = ok(docker("network", "create", "--subnet", engine.net.subnet(1), "tmpnet")).strip()
    run_d(docker, "--network", "tmpnet", "-p", f"{free_port()}:80", IMAGE, *HTTPD)
    run_d(docker, IMAGE, "sleep", "60")
    records = (engine.data_root / "network" / "sandboxes").glob("*.json")
    veths = {e["host_ifname"] for r in records for e in json.loads(r.read_text())["endpoints"]}
    made = {engine.net.bridge, f"br-{net_id[:12]}", *veths}
    assert len(veths) == 2 and made <= links()
    remove_everything(engine)
    assert engine.stop() == 0
    assert made & links() == set()  # only this engine's: other sessions on the host make links of their own
    assert nft_rules(engine) == ""
    assert not sandboxes(engine)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(engine.exec_root / "netns") not in mounts

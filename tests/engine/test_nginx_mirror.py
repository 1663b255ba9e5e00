"""The issue's own check, with the real docker CLI: ``docker run -d -p 8080:80 nginx``, where ``nginx`` is the
bare Docker Hub name and the engine pulls it from a registry mirror (``skiff engine --registry-mirror URL``).

The mirror is Debian's docker-registry holding the offline nginx image (Debian's nginx-light, built by
``tests/image/testimages.py``) as ``library/nginx:latest``, which is where Docker Hub keeps official images.

Everything runs in a network namespace this module makes (the *sealed* namespace): the engine, the registry,
curl and skopeo. It has loopback and one dead-end interface holding the default route, and an nftables rule
that counts and rejects every packet a process there sends out of that interface. So an engine that went
past the mirror to Docker Hub (``registry-1.docker.io``, whose name it would first ask the host's resolver
for) is seen by the counter and stopped there: nothing leaves the namespace, and the test fails.
``test_the_guard_sees_a_pull_that_goes_past_the_mirror`` shows that the guard does see such a pull.
Port 8080 is always free in a fresh namespace, so the check uses the issue's port as it is.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import pytest

from skiff.image.archive import export_oci_layout
from skiff.image.content import ContentStore
from skiff.image.store import ImageStore
from tests.engine.conftest import DockerRunner, EngineProcess, Engines, docker_runner
from tests.image import testimages
from tests.registry.servers import RegistryProcess, start_docker_registry

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("skopeo") and shutil.which("nsenter")),
                       reason="needs docker-registry, skopeo and nsenter"),
]

CLONE_NEWNET = 0x40000000
# The sealed namespace's default route goes out of WAN, one end of a veth pair whose other end is in the same
# namespace (the kernel here has no dummy driver): a dead end, and the guard refuses packets before they get there.
WAN, WAN_PEER = "wan0", "wan1"
WAN_ADDRESS = "192.0.2.1"         # TEST-NET-1 (RFC 5737): an address of the namespace's own, not loopback
GUARD_TABLE = "skiff_nginx_guard"
WELCOME = "<title>Welcome to nginx!</title>"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- the sealed netns


class SealedNetns:
    """A named network namespace whose only way out is a counted, rejecting dead end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def create(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        for command in (["ip", "link", "set", "lo", "up"],
                        ["ip", "link", "add", WAN, "type", "veth", "peer", "name", WAN_PEER],
                        ["ip", "addr", "add", f"{WAN_ADDRESS}/24", "dev", WAN],
                        ["ip", "link", "set", WAN_PEER, "up"],
                        ["ip", "link", "set", WAN, "up"],
                        ["ip", "route", "add", "default", "via", "192.0.2.254", "dev", WAN]):
            self.run(*command)
        # The output hook of this namespace only: what its processes send out of WAN is counted and refused at once
        # (a TCP reset or an ICMP error), so a pull that goes past the mirror fails fast and shows here. TCP and
        # UDP only: the kernel's own IPv6 neighbour discovery on WAN is no process's traffic.
        self.run("nft", "-f", "-", input=f"""
            table inet {GUARD_TABLE} {{
                chain out {{
                    type filter hook output priority 0; policy accept;
                    oifname "{WAN}" meta l4proto {{ tcp, udp }} counter reject
                }}
            }}""")

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)

    def run(self, *command: str, input: str | None = None, timeout: float = 60) -> str:
        """A command in the namespace (``nsenter --net``: its network namespace only, the host's mounts)."""
        proc = subprocess.run(["nsenter", f"--net={self.path}", *command], capture_output=True, text=True,
                              input=input, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}: {proc.stderr}"
        return proc.stdout

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a fresh thread that entered the namespace; whatever it starts (a daemon) is born there.

        setns(2) moves only the calling thread, so the test's own threads never change namespace."""
        outcome: dict[str, object] = {}

        def body() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if libc().setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns({self.path})")
                finally:
                    os.close(fd)
                outcome["value"] = fn()
            except BaseException as e:  # handed to the caller's thread
                outcome["error"] = e

        thread = threading.Thread(target=body, name=f"in-{self.name}")
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]

    def escapes(self) -> int:
        """Packets the namespace's processes tried to send out of WAN so far."""
        doc = json.loads(self.run("nft", "-j", "list", "table", "inet", GUARD_TABLE))
        return sum(e["counter"]["packets"] for item in doc["nftables"] if "rule" in item
                   for e in item["rule"]["expr"] if "counter" in e)

    def http_get(self, url: str) -> str:
        return self.run("curl", "-sS", "--fail", "--max-time", "10", url)


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sealed() -> Iterator[SealedNetns]:
    netns = SealedNetns(f"sknginx{os.getpid()}")
    try:
        netns.create()
        yield netns
    finally:
        netns.delete()


@pytest.fixture(scope="module")
def nginx_layout(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An OCI layout holding the offline nginx image, tagged ``latest``."""
    try:
        testimages.nginx_rootfs_tar()
    except testimages.TestImageUnavailable as e:
        pytest.skip(str(e))
    store, layout = tmp_path_factory.mktemp("nginx-store"), tmp_path_factory.mktemp("nginx-layout")
    content = ContentStore(str(store / "content"))
    images = ImageStore(str(store / "images"), content)
    try:
        testimages.nginx_image(content, images, "nginx:latest")
        export_oci_layout("nginx:latest", str(layout), content, images)
    finally:
        images.db.close()
    shutil.rmtree(store)
    return str(layout)


@pytest.fixture(scope="module")
def mirror(sealed: SealedNetns, nginx_layout: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RegistryProcess]:
    """docker-registry on the sealed namespace's loopback, holding nginx as Docker Hub names it."""
    registry = sealed.call(lambda: start_docker_registry(tmp_path_factory.mktemp("mirror") / "data"))
    try:
        sealed.run("skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", f"oci:{nginx_layout}:latest",
                   f"docker://{registry.host}/library/nginx:latest", timeout=300)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def mirrored(sealed: SealedNetns, mirror: RegistryProcess, module_engines: Engines) -> EngineProcess:
    """A ``skiff engine`` in the sealed namespace with the registry as its Docker Hub mirror."""
    engine = module_engines.create("--registry-mirror", mirror.url)
    return sealed.call(engine.start)


@pytest.fixture
def docker(mirrored: EngineProcess, tmp_path: Path) -> Iterator[DockerRunner]:
    run = docker_runner(mirrored.host, tmp_path / "docker-config")
    yield run
    for cid in run("ps", "-aq").stdout.split():
        run("rm", "-f", cid)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


# ---------------------------------------------------------------------------------------------- the check


def test_docker_run_p_8080_80_nginx_pulls_from_the_mirror_and_serves_the_page(
        docker: DockerRunner, sealed: SealedNetns, mirror: RegistryProcess, mirrored: EngineProcess) -> None:
    docker("rmi", "-f", "nginx")  # pulled by another test already: this one shows the pull
    before = sealed.escapes()
    run = docker("run", "-d", "-p", "8080:80", "nginx", timeout=300)
    cid = ok(run).strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", cid), run.stdout
    # The CLI's own words when the image is not there yet: it asked the daemon to pull ``nginx``.
    assert "Unable to find image 'nginx:latest' locally" in run.stderr
    assert "latest: Pulling from library/nginx" in run.stderr
    assert "Status: Downloaded newer image for nginx:latest" in run.stderr
    assert sealed.escapes() == before, "the engine went past the mirror (towards Docker Hub)"

    # The image is Docker Hub's nginx by name, and its digest is the mirror's.
    manifest_digest = mirror_digest(sealed, mirror)
    [image] = json.loads(ok(docker("image", "inspect", "nginx")))
    assert image["RepoTags"] == ["nginx:latest"] and image["RepoDigests"] == [f"nginx@{manifest_digest}"]

    table = ok(docker("ps")).splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    [row] = [line for line in table[1:] if line.startswith(cid[:12])]
    assert re.search(r'\bnginx\s+"nginx -g \'daemon of…"\s.*\bUp\b.*\s0\.0\.0\.0:8080->80/tcp\s', row), row
    assert ok(docker("ps", "--format", "{{.Image}} {{.Ports}}")).strip() == "nginx 0.0.0.0:8080->80/tcp"
    assert ok(docker("port", cid)).strip() == "80/tcp -> 0.0.0.0:8080"
    assert ok(docker("port", cid, "80")).strip() == "0.0.0.0:8080"

    page = sealed.http_get("http://localhost:8080")  # loopback: the userland proxy
    assert WELCOME in page
    assert sealed.http_get(f"http://{WAN_ADDRESS}:8080/") == page  # the host's own address: nftables DNAT
    ip = json.loads(ok(docker("inspect", cid)))[0]["NetworkSettings"]["IPAddress"]
    assert sealed.http_get(f"http://{ip}:80/") == page  # and the container itself
    assert sealed.escapes() == before

    ok(docker("rm", "-f", cid))
    with pytest.raises(AssertionError, match="exited 7"):  # curl's "could not connect": the proxy is gone
        sealed.http_get("http://127.0.0.1:8080/")
    assert "dport 8080" not in sealed.run("nft", "list", "table", "ip", mirrored.net.nft_table)


def test_the_guard_sees_a_pull_that_goes_past_the_mirror(docker: DockerRunner, sealed: SealedNetns) -> None:
    """A name the mirror does not hold sends the engine on to Docker Hub, as dockerd does: the guard counts
    the attempt (the resolver's query for registry-1.docker.io) and refuses it inside the namespace."""
    before = sealed.escapes()
    result = docker("pull", "skiff-test-absent-from-the-mirror", timeout=120)
    assert result.returncode == 1 and "registry-1.docker.io" in result.stderr, result.stderr
    assert sealed.escapes() > before


def test_bad_input_to_the_mirrored_engine_keeps_it_serving(docker: DockerRunner, sealed: SealedNetns,
                                                            mirrored: EngineProcess) -> None:
    taken = docker("run", "-d", "-p", "8080:80", "-p", "8080:81", "nginx", timeout=300)
    assert taken.returncode == 125 and "Bind for 0.0.0.0:8080 failed: port is already allocated" in taken.stderr
    bad = docker("run", "-d", "-p", "80800:80", "nginx")
    assert bad.returncode == 125 and "80800" in bad.stderr
    # A port some other program of the host listens on: the same clear conflict, and nothing half-made.
    with sealed.call(lambda: socket.create_server(("0.0.0.0", 8090))):
        busy = docker("run", "-d", "--name", "busy", "-p", "8090:80", "nginx")
        assert busy.returncode == 125 and "Bind for 0.0.0.0:8090 failed: port is already allocated" in busy.stderr
    assert json.loads(ok(docker("inspect", "busy")))[0]["State"]["Status"] == "created"
    assert "dport 8090" not in sealed.run("nft", "list", "table", "ip", mirrored.net.nft_table)
    assert not (mirrored.exec_root / "netns" / json.loads(ok(docker("inspect", "busy")))[0]["Id"]).exists()
    assert mirrored.request("GET", "/_ping").status == 200


def test_a_host_port_range_takes_a_free_port_and_publish_all_uses_the_images_expose(
        docker: DockerRunner, sealed: SealedNetns) -> None:
    ok(docker("run", "-d", "--name", "first", "-p", "8080:80", "nginx", timeout=300))
    ok(docker("run", "-d", "--name", "ranged", "-p", "8080-8082:80", "nginx"))
    assert ok(docker("port", "ranged")).strip() == "80/tcp -> 0.0.0.0:8081"  # 8080 is taken: the next one
    assert WELCOME in sealed.http_get("http://127.0.0.1:8081/")
    ok(docker("run", "-d", "--name", "all", "-P", "nginx"))  # the image's EXPOSE 80/tcp, on a port the kernel picks
    [binding] = json.loads(ok(docker("inspect", "all")))[0]["NetworkSettings"]["Ports"]["80/tcp"]
    low, high = (int(x) for x in sealed.run("cat", "/proc/sys/net/ipv4/ip_local_port_range").split())
    assert binding["HostIp"] == "0.0.0.0" and low <= int(binding["HostPort"]) <= high
    assert WELCOME in sealed.http_get(f"http://{WAN_ADDRESS}:{binding['HostPort']}/")  # through DNAT


def test_ps_filters_on_published_and_exposed_ports(docker: DockerRunner, mirrored: EngineProcess) -> None:
    """dockerd's ``publish`` filter matches the *container* ports of ``-p`` (its PortBindings' keys, as its docs'
    example ``--filter publish=80`` listing ``0.0.0.0:32768->80/tcp``), ``expose`` those of EXPOSE/``--expose``;
    a bare port is tcp, and ranges are allowed."""
    ok(docker("pull", "nginx", timeout=300))  # the image's EXPOSE 80/tcp
    ok(docker("run", "-d", "--name", "plain", "nginx"))
    ok(docker("run", "-d", "--name", "pub", "-p", "8081:80", "nginx"))
    ok(docker("run", "-d", "--name", "dns", "--expose", "53/udp", "-p", "127.0.0.1:8053:53/udp", "nginx"))

    def names(*filters: str) -> list[str]:
        args = [a for f in filters for a in ("--filter", f)]
        return sorted(ok(docker("ps", "--format", "{{.Names}}", *args)).split())

    assert names("publish=80") == names("publish=80/tcp") == names("publish=79-81") == ["pub"]
    assert names("publish=8081") == []  # a host port is not what the filter looks at
    assert names("publish=53/udp") == names("publish=53/udp", "expose=53/udp") == ["dns"]
    assert names("publish=53") == []  # tcp
    assert names("expose=80") == ["dns", "plain", "pub"]
    assert names("expose=53/udp") == ["dns"] and names("expose=53-54/udp", "publish=80") == []
    assert names("publish=80", "publish=53/udp") == ["dns", "pub"]  # values of one key: any of them

    for bad, words in (("publish=8081:80", "filter for 'publish' should not contain ':': 8081:80"),
                       ("expose=http", "error while looking up for expose http"),
                       ("publish=90-80", "error while looking up for publish 90-80")):
        result = docker("ps", "--filter", bad)
        assert result.returncode == 1 and words in result.stderr, result.stderr
    assert mirrored.request("GET", "/containers/json?filters=" + quote('{"expose":["0"]}')).status == 400
    assert mirrored.request("GET", "/_ping").status == 200


def mirror_digest(sealed: SealedNetns, mirror: RegistryProcess) -> str:
    """The digest of ``library/nginx:latest`` as the mirror serves it (from inside the namespace: its loopback)."""
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    resp = sealed.call(lambda: mirror.request("HEAD", "/v2/library/nginx/manifests/latest", headers={"Accept": accept}))
    assert resp.status == 200, resp.status
    return resp.headers["Docker-Content-Digest"]

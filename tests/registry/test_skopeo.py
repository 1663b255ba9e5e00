"""Real clients and a real peer: skopeo copies images into and out of ``skiff registry`` and the CNCF
distribution server (Debian's ``docker-registry``), and both must end up with the same digests.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import ssl
import subprocess
import tarfile
from pathlib import Path

import bcrypt
import pytest

from tests.registry import images
from tests.registry.conftest import Servers, Skopeo
from tests.registry.servers import RegistryProcess

pytestmark = pytest.mark.peer
ACCEPT = ", ".join(("application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"))


def manifest_digest(reg: RegistryProcess, repo: str, tag: str) -> str:
    r = reg.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
    assert r.status == 200, r.body
    return r.headers["Docker-Content-Digest"]


def oci_blobs(layout: Path) -> dict[str, bytes]:
    return {"sha256:" + p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


def docker_archive_contents(archive: Path) -> tuple[bytes, list[bytes]]:
    """(config bytes, uncompressed layer tars) of a docker-archive."""
    with tarfile.open(archive) as tar:
        entry = json.load(tar.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = tar.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        layers = []
        for name in entry["Layers"]:
            data = tar.extractfile(name).read()  # type: ignore[union-attr]
            layers.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return config, layers


@pytest.fixture(scope="module")
def docker_archive(busybox_archive: Path) -> Path:
    """The busybox image as a docker-archive, made by skopeo from the oci-archive."""
    out = busybox_archive.with_name("busybox.docker.tar")
    subprocess.run(["skopeo", "--insecure-policy", "copy", f"oci-archive:{busybox_archive}",
                    f"docker-archive:{out}:test/busybox:1"], check=True, capture_output=True, timeout=120)
    return out


@pytest.mark.parametrize("kind", ["skiff", "docker-registry"])
def test_oci_archive_in_oci_layout_out(kind: str, registries: Servers, skopeo: Skopeo, tmp_path: Path,
                                       busybox_image: images.Image, busybox_archive: Path) -> None:
    reg = registries.skiff() if kind == "skiff" else registries.docker_registry()
    skopeo("copy", f"oci-archive:{busybox_archive}", f"docker://{reg.host}/test/busybox:1")
    assert manifest_digest(reg, "test/busybox", "1") == busybox_image.manifest
    skopeo("copy", f"docker://{reg.host}/test/busybox:1", f"oci:{tmp_path / 'out'}:1")
    pulled = oci_blobs(tmp_path / "out")
    original = oci_blobs(busybox_image.layout)
    for digest in [busybox_image.manifest, busybox_image.config, *busybox_image.layers]:
        assert pulled[digest] == original[digest]


@pytest.mark.parametrize("kind", ["skiff", "docker-registry"])
def test_docker_archive_in_and_out(kind: str, registries: Servers, skopeo: Skopeo, tmp_path: Path,
                                   busybox_image: images.Image, docker_archive: Path) -> None:
    reg = registries.skiff() if kind == "skiff" else registries.docker_registry()
    skopeo("copy", f"docker-archive:{docker_archive}", f"docker://{reg.host}/from/docker:1")
    r = reg.request("GET", "/v2/from/docker/manifests/1", headers={"Accept": ACCEPT})
    assert r.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    out = tmp_path / "out.tar"
    skopeo("copy", f"docker://{reg.host}/from/docker:1", f"docker-archive:{out}:from/docker:1")
    config, layers = docker_archive_contents(out)
    assert config == busybox_image.blob(busybox_image.config)
    assert [images.sha256(t) for t in layers] == busybox_image.diff_ids


def test_same_digests_as_distribution(registries: Servers, skopeo: Skopeo, busybox_archive: Path,
                                      docker_archive: Path) -> None:
    """The same copies into both registries leave the same manifests (byte-identical digests)."""
    digests = {}
    for reg in (registries.skiff(), registries.docker_registry()):
        skopeo("copy", f"oci-archive:{busybox_archive}", f"docker://{reg.host}/same/oci:1")
        skopeo("copy", f"docker-archive:{docker_archive}", f"docker://{reg.host}/same/docker:1")
        skopeo("copy", f"docker://{reg.host}/same/oci:1", f"docker://{reg.host}/same/copied:1")
        digests[reg.kind] = [manifest_digest(reg, f"same/{name}", "1") for name in ("oci", "docker", "copied")]
        tags = json.loads(skopeo("list-tags", f"docker://{reg.host}/same/oci").stdout)
        assert tags["Tags"] == ["1"]
    assert digests["skiff"] == digests["docker-registry"]


def test_multi_platform_index(registries: Servers, skopeo: Skopeo, tmp_path: Path) -> None:
    """``copy --all`` of an image index: children first, then the index, which must find them."""
    layout = tmp_path / "multi"
    index_digest, variants = images.write_multi_platform_layout(layout, images.busybox_layers()[1:], "m")
    accept = {"Accept": images.OCI_INDEX}
    for reg in (registries.skiff(), registries.docker_registry()):
        skopeo("copy", "--all", f"oci:{layout}:m", f"docker://{reg.host}/multi:m")
        r = reg.request("GET", "/v2/multi/manifests/m", headers=accept)
        assert (r.status, r.headers["Content-Type"]) == (200, images.OCI_INDEX)
        assert r.headers["Docker-Content-Digest"] == index_digest
        for image in variants:
            got = reg.request("GET", f"/v2/multi/manifests/{image.manifest}", headers={"Accept": ACCEPT})
            assert got.body == image.blob(image.manifest)
        out = tmp_path / f"out-{reg.kind}"
        skopeo("copy", "--all", f"docker://{reg.host}/multi:m", f"oci:{out}:m")
        assert oci_blobs(out) == oci_blobs(layout)


def test_concurrent_pushes(registries: Servers, skopeo: Skopeo, busybox_image: images.Image,
                           busybox_archive: Path) -> None:
    """Several clients pushing the same blobs at once, into one repository and into others."""
    from concurrent.futures import ThreadPoolExecutor

    reg = registries.skiff()
    targets = ["conc/a", "conc/a", "conc/b", "conc/c"]
    with ThreadPoolExecutor(len(targets)) as pool:
        list(pool.map(lambda repo: skopeo("copy", f"oci-archive:{busybox_archive}", f"docker://{reg.host}/{repo}:1"),
                      targets))
    for repo in set(targets):
        assert manifest_digest(reg, repo, "1") == busybox_image.manifest
        for digest in busybox_image.layers:
            assert reg.request("GET", f"/v2/{repo}/blobs/{digest}").body == busybox_image.blob(digest)
    assert os.listdir(reg.data / "uploads") == [] and os.listdir(reg.data / "tmp") == []


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes in the ``$2y$`` form ``htpasswd -B`` writes."""
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        lines.append(f"{user}:{hashed.replace('$2b$', '$2y$', 1)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["skiff", "docker-registry"])
def test_basic_auth(kind: str, registries: Servers, skopeo: Skopeo, tmp_path: Path, busybox_archive: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret", "bob": "other"})
    reg = (registries.skiff("--htpasswd", str(htpasswd), "--realm", "test") if kind == "skiff"
           else registries.docker_registry(htpasswd))
    r = reg.request("GET", "/v2/")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="test"'
    assert r.error_codes() == ["UNAUTHORIZED"]
    assert reg.request("GET", "/v2/", auth=("alice", "wrong")).status == 401
    assert reg.request("GET", "/v2/", auth=("nobody", "s3cret")).status == 401
    assert reg.request("GET", "/v2/_catalog", auth=("alice", "wrong")).status == 401
    assert reg.request("GET", "/v2/", auth=("alice", "s3cret")).status == 200
    target = f"docker://{reg.host}/private/busybox:1"
    denied = skopeo("copy", "--dest-creds", "alice:wrong", f"oci-archive:{busybox_archive}", target, check=False)
    assert denied.returncode != 0
    assert "401" in denied.stderr or "unauthorized" in denied.stderr.lower()
    skopeo("copy", "--dest-creds", "alice:s3cret", f"oci-archive:{busybox_archive}", target)
    skopeo("copy", "--src-creds", "bob:other", target, f"oci:{tmp_path / 'out'}:1")
    assert reg.request("GET", "/v2/private/busybox/tags/list", auth=("bob", "other")).json()["tags"] == ["1"]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = directory / "registry.crt", directory / "registry.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls(registries: Servers, skopeo: Skopeo, tmp_path: Path, busybox_image: images.Image,
             busybox_archive: Path) -> None:
    """HTTPS with a certificate skopeo verifies (its cert dir holds our CA), no insecure flags."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = make_certificate(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    reg = registries.skiff("--tls-cert", str(cert), "--tls-key", str(key), tls=trust)
    assert reg.request("GET", "/v2/").status == 200
    certs = tmp_path / "certs"  # skopeo trusts a cert dir's *.crt (and takes *.key for client auth)
    certs.mkdir()
    (certs / "ca.crt").write_bytes(cert.read_bytes())
    skopeo("copy", "--dest-cert-dir", str(certs), f"oci-archive:{busybox_archive}",
           f"docker://{reg.host}/secure/busybox:1", tls_verify=True)
    assert manifest_digest(reg, "secure/busybox", "1") == busybox_image.manifest
    untrusted = skopeo("inspect", "--raw", f"docker://{reg.host}/secure/busybox:1", check=False, tls_verify=True)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr

"""The registry client against real peers: Debian's docker-registry (the CNCF distribution server) on
loopback, skopeo to seed and read back images, and a token server written here for the Bearer flow.

Images are built offline in Python (a config and gzip layers, one holding busybox-static). Nothing here
talks to any address but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field

import aiohttp.web
import pytest

from skiff.errors import NotFound, SystemFailure
from skiff.image import distribution
from skiff.image import manifest as mf
from skiff.image.auth import Credentials, load_docker_config, parse_challenges
from skiff.image.content import ContentStore, DigestMismatch, digest_of
from skiff.image.distribution import RegistryAccessDenied, RegistryClient, plan_endpoint
from skiff.image.store import ImageStore

REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")
pytestmark = pytest.mark.skipif(not (REGISTRY and SKOPEO), reason="needs docker-registry and skopeo")


# ---------------------------------------------------------------------------------------------- images

def _tar(files: dict[str, bytes]) -> bytes:
    """A deterministic tar of ``files`` (path -> bytes; a value starting with b'->' is a symlink target)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p in files if os.path.dirname(p)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            if data.startswith(b"->"):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:].decode()
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class Built:
    """An image made here: its exact bytes, for comparing with what comes back from a registry."""

    config: bytes
    layers: list[bytes]
    manifest: bytes
    media_type: str = mf.OCI_MANIFEST

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def descriptor(self) -> dict:
        return mf.descriptor(self.media_type, self.digest, len(self.manifest))

    def blobs(self) -> dict[str, bytes]:
        return {digest_of(b): b for b in [self.config, *self.layers, self.manifest]}


def build_image(layer_files: list[dict[str, bytes]], arch: str = "amd64") -> Built:
    tars = [_tar(files) for files in layer_files]
    layers = [gzip.compress(t, compresslevel=1, mtime=0) for t in tars]
    config = json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(t) for t in tars]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
        "config": mf.descriptor(mf.OCI_CONFIG, digest_of(config), len(config)),
        "layers": [mf.descriptor(mf.OCI_LAYER_GZIP, digest_of(b), len(b)) for b in layers],
    }, indent=2).encode()  # indented on purpose: stored bytes must be these, not a re-serialisation
    return Built(config, layers, manifest)


def busybox_image(tag_text: str, arch: str = "amd64", extra: bytes = b"") -> Built:
    with open("/bin/busybox", "rb") as f:
        busybox = f.read()
    return build_image([{"bin/busybox": busybox, "bin/sh": b"->busybox"},
                        {"etc/hello": f"hello from {tag_text}\n".encode()},
                        {"srv/data": extra or os.urandom(4096)}], arch)


def build_index(entries: list[tuple[Built, str]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {**b.descriptor, "platform": {"os": "linux", "architecture": arch}} for b, arch in entries]}).encode()


def write_layout(root: str, tag: str, top: bytes, media_type: str, blobs: dict[str, bytes]) -> None:
    """An OCI image layout holding ``top`` (a manifest or index) under ``tag``, for skopeo to copy."""
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    for digest, data in {**blobs, digest_of(top): top}.items():
        with open(os.path.join(root, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    index = {"schemaVersion": 2, "manifests": [{**mf.descriptor(media_type, digest_of(top), len(top)),
                                                "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(index, f)


def skopeo(*args: str) -> None:
    subprocess.run([SKOPEO, "--insecure-policy", *args], check=True, capture_output=True, timeout=60)


def seed(tmp: str, registry: Registry, name: str, top: bytes, media_type: str, blobs: dict[str, bytes],
         creds: str | None = None) -> None:
    """Put an image (or index) in ``registry`` with skopeo, byte for byte."""
    layout = os.path.join(tmp, f"layout-{digest_of(top)[7:19]}")
    write_layout(layout, "t", top, media_type, blobs)
    auth = ["--dest-creds", creds] if creds else []
    skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false", *auth, f"oci:{layout}:t",
           f"docker://{registry.host}/{name}")


# ---------------------------------------------------------------------------------------------- peers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str
    root: str
    log: str
    proc: subprocess.Popen = field(repr=False)

    def blob_file(self, digest: str) -> str:
        hexd = digest[7:]
        return os.path.join(self.root, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")

    def requests(self) -> list[str]:
        with open(self.log, errors="replace") as f:
            return [line for line in f if '"' in line and "HTTP/1.1" in line]


def start_registry(tmp: str, auth: str = "", tls: str = "") -> Registry:
    """docker-registry on a free loopback port with a temp storage root; its access log is kept."""
    port = free_port()
    root = os.path.join(tmp, f"registry-{port}")
    os.makedirs(root)
    config = os.path.join(tmp, f"registry-{port}.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\n"
                f"storage: {{filesystem: {{rootdirectory: {root}}}, delete: {{enabled: true}}}}\n"
                f"http: {{addr: 127.0.0.1:{port}{tls}}}\n{auth}")
    log = os.path.join(tmp, f"registry-{port}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY, "serve", config], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return Registry(f"127.0.0.1:{port}", root, log, proc)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    with open(log) as f:
        raise RuntimeError(f"docker-registry did not start: {f.read()[-2000:]}")


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    """A factory of registries for the module; every one is stopped by its pid at the end."""
    tmp = str(tmp_path_factory.mktemp("registries"))
    started: list[Registry] = []

    def start(auth: str = "", tls: str = "") -> Registry:
        started.append(start_registry(tmp, auth, tls))
        return started[-1]

    start.tmp = tmp  # type: ignore[attr-defined]
    yield start
    for r in started:
        r.proc.terminate()
    for r in started:
        try:
            r.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


@pytest.fixture(scope="module")
def registry(peers) -> Registry:
    return peers()


@dataclass
class Local:
    """A fresh content store and image store, as an engine has them."""

    content: ContentStore
    images: ImageStore
    root: str

    def client(self, **kwargs) -> RegistryClient:
        kwargs.setdefault("config_path", os.path.join(self.root, "no-config.json"))
        return RegistryClient(self.content, self.images, **kwargs)


def make_local(root: str) -> Local:
    content = ContentStore(os.path.join(root, "content"))
    return Local(content, ImageStore(os.path.join(root, "images"), content), root)


@pytest.fixture
def local(tmp_path) -> Local:
    return make_local(str(tmp_path))


def run(coro):
    return asyncio.run(coro)


async def pull(local: Local, ref: str, **kwargs) -> tuple[object, list[dict]]:
    events: list[dict] = []
    client_args = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("platform", "credentials")}
    async with local.client(**client_args) as client:
        image = await client.pull(ref, progress=events.append, **kwargs)
    return image, events


async def push(local: Local, ref: str, **client_args) -> tuple[str, list[dict]]:
    events: list[dict] = []
    async with local.client(**client_args) as client:
        digest = await client.push(ref, progress=events.append)
    return digest, events


def statuses(events: list[dict]) -> list[str]:
    return [e.get("status", "") for e in events]


def store_image(local: Local, name: str, built: Built) -> None:
    for digest, data in built.blobs().items():
        local.content.put(data, expected=digest)
    local.images.set(name, built.descriptor)


# ---------------------------------------------------------------------------------------------- pure rules

def test_plain_http_only_for_loopback_and_insecure_registries():
    assert plan_endpoint("registry.example.com").urls == ("https://registry.example.com",)
    assert plan_endpoint("registry.example.com").verify_tls
    for host in ("127.0.0.1:5000", "127.9.9.9", "localhost:5000", "[::1]:5000"):
        assert plan_endpoint(host).urls == (f"https://{host}", f"http://{host}"), host
        assert not plan_endpoint(host).verify_tls
    assert plan_endpoint("10.1.2.3:5000", ["10.0.0.0/8"]).urls[-1] == "http://10.1.2.3:5000"
    assert plan_endpoint("myreg:5000", ["myreg:5000"]).urls[-1] == "http://myreg:5000"
    assert plan_endpoint("myreg:5000", ["other:5000"]).urls == ("https://myreg:5000",)


def test_docker_hub_mirrors_come_first_and_must_be_https_unless_insecure(local):
    client = local.client(mirrors=["https://mirror.example.com", "http://127.0.0.1:5001"])
    assert [e.urls for e in client.endpoints("docker.io")] == [
        ("https://mirror.example.com",), ("http://127.0.0.1:5001",), ("https://registry-1.docker.io",)]
    assert [e.urls for e in client.endpoints("quay.io")] == [("https://quay.io",)]
    client.sources.close()
    with pytest.raises(distribution.InvalidArgument, match="plain http"):
        local.client(mirrors=["http://mirror.example.com"])


def test_challenges_and_docker_config_parse_like_docker(tmp_path):
    bearer, basic = parse_challenges([
        'Basic realm="Registry Realm"',
        'Bearer realm="https://auth.example.com/token",service="reg, x",scope="repository:a/b:pull,push"'])
    assert (basic.scheme, basic.params) == ("basic", {"realm": "Registry Realm"})
    assert bearer.params == {"realm": "https://auth.example.com/token", "service": "reg, x",
                             "scope": "repository:a/b:pull,push"}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pa:ss").decode()},
        "https://reg.example.com:5000/v1/": {"username": "u", "password": "p"},
        "other.example.com": {"identitytoken": "refresh"}}}))
    creds = load_docker_config(str(config))
    assert creds["https://index.docker.io/v1/"] == Credentials("hub", "pa:ss")
    assert creds["reg.example.com:5000"] == Credentials("u", "p")
    assert creds["other.example.com"].identity_token == "refresh"
    header = base64.urlsafe_b64encode(json.dumps({"username": "a", "password": "b"}).encode()).decode().rstrip("=")
    assert Credentials.from_x_registry_auth(header) == Credentials("a", "b")


# ---------------------------------------------------------------------------------------------- pull

@pytest.fixture(scope="module")
def seeded(peers, registry):
    """The plain registry holding one image and one two-platform index, put there by skopeo."""
    amd, arm = busybox_image("amd64"), busybox_image("arm64", "arm64")
    seed(peers.tmp, registry, "seed/app:v1", amd.manifest, mf.OCI_MANIFEST, amd.blobs())
    index = build_index([(amd, "amd64"), (arm, "arm64")])
    seed(peers.tmp, registry, "seed/multi:v1", index, mf.OCI_INDEX, {**amd.blobs(), **arm.blobs()})
    return {"amd": amd, "arm": arm, "index": index}


def test_pull_by_tag_stores_exact_bytes_and_names_the_image(registry, seeded, local):
    amd: Built = seeded["amd"]
    image, events = run(pull(local, f"{registry.host}/seed/app:v1"))
    assert image.name == f"{registry.host}/seed/app:v1"
    assert image.target == amd.descriptor and image.repo_digest == amd.digest
    for digest, data in amd.blobs().items():
        assert local.content.read(digest) == data
    ids = {digest_of(b)[7:19] for b in amd.layers}
    assert {e["id"] for e in events if e.get("status") == "Pull complete"} == ids
    assert any(e.get("status") == "Downloading" and e["progressDetail"]["total"] > 0 for e in events)
    assert events[0] == {"status": "Pulling from seed/app", "id": "v1"}
    assert statuses(events)[-2:] == [f"Digest: {amd.digest}",
                                     f"Status: Downloaded newer image for {registry.host}/seed/app:v1"]
    _image, again = run(pull(local, f"{registry.host}/seed/app:v1"))
    assert statuses(again)[1:] == [f"Digest: {amd.digest}",
                                   f"Status: Image is up to date for {registry.host}/seed/app:v1"]


def test_pull_by_digest_and_already_existing_layers(registry, seeded, local):
    amd: Built = seeded["amd"]
    image, _ = run(pull(local, f"{registry.host}/seed/app@{amd.digest}"))
    assert image.name == f"{registry.host}/seed/app@{amd.digest}" and image.config_digest == digest_of(amd.config)
    _image, events = run(pull(local, f"{registry.host}/seed/app:v1"))
    assert [e["status"] for e in events if e.get("id") and e["status"] != "Pulling from seed/app"] == \
        ["Already exists"] * 3
    async def resolve():
        async with local.client() as client:
            return await client.resolve(f"{registry.host}/seed/app:v1")
    assert run(resolve()) == (mf.OCI_MANIFEST, amd.digest, len(amd.manifest))

    async def tags_and_blob():
        async with make_local(os.path.join(local.root, "other")).client() as client:
            blob = digest_of(amd.layers[1])
            assert await client.fetch_blob(f"{registry.host}/seed/app", blob) == blob
            assert client.content.read(blob) == amd.layers[1]
            return await client.tags(f"{registry.host}/seed/app")
    assert run(tags_and_blob()) == ["v1"]


def test_pull_of_an_index_selects_the_platform(registry, seeded, local):
    index, amd, arm = seeded["index"], seeded["amd"], seeded["arm"]
    image, _ = run(pull(local, f"{registry.host}/seed/multi:v1"))
    assert image.target == amd.descriptor and image.repo_digest == digest_of(index)
    assert local.content.read(digest_of(index)) == index
    image, _ = run(pull(local, f"{registry.host}/seed/multi:v1", platform="linux/arm64"))
    assert image.target == arm.descriptor and image.config["architecture"] == "arm64"
    assert local.content.read(digest_of(arm.config)) == arm.config
    with pytest.raises(NotFound, match="no matching manifest"):
        run(pull(local, f"{registry.host}/seed/multi:v1", platform="linux/s390x"))
    with pytest.raises(NotFound, match="does not match the specified platform"):
        run(pull(local, f"{registry.host}/seed/app:v1", platform="linux/arm64"))


def test_missing_things_and_dead_registries_fail_clearly(registry, seeded, local):
    with pytest.raises(NotFound, match="manifest unknown"):
        run(pull(local, f"{registry.host}/seed/app:nope"))
    with pytest.raises(NotFound):
        run(pull(local, f"{registry.host}/no/such:v1"))
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(SystemFailure, match=f"cannot reach registry {dead}: connection refused"):
        run(pull(local, f"{dead}/x:v1"))


def test_a_loopback_registry_speaking_tls_is_used_over_https_unverified(peers, local, tmp_path):
    key, cert = str(tmp_path / "tls.key"), str(tmp_path / "tls.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=skiff-test-registry"], check=True, capture_output=True)
    registry = peers(tls=f", tls: {{certificate: {cert}, key: {key}}}")
    built = busybox_image("tls")
    seed(peers.tmp, registry, "tls/app:v1", built.manifest, mf.OCI_MANIFEST, built.blobs())
    image, _ = run(pull(local, f"{registry.host}/tls/app:v1"))  # https first: this registry refuses plain http
    assert image.target == built.descriptor


def test_a_mirror_serves_docker_hub_names(registry, peers, local, monkeypatch):
    built = busybox_image("mirrored")
    seed(peers.tmp, registry, "library/mirrored:v1", built.manifest, mf.OCI_MANIFEST, built.blobs())
    # Were the mirror to fail, the client would go on to Docker Hub: point that at a closed loopback port.
    monkeypatch.setattr(distribution, "HUB_HOST", f"127.0.0.1:{free_port()}")
    image, _ = run(pull(local, "mirrored:v1", mirrors=[f"http://{registry.host}"]))
    assert image.name == "docker.io/library/mirrored:v1" and image.target == built.descriptor


def test_corrupt_blobs_and_manifests_are_refused_and_nothing_is_kept(registry, peers, local):
    built = busybox_image("corrupt")
    seed(peers.tmp, registry, "corrupt/app:v1", built.manifest, mf.OCI_MANIFEST, built.blobs())
    victim = digest_of(built.layers[2])
    path = registry.blob_file(victim)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(b"\0" * size)  # same size, wrong bytes: only the digest can tell
    with pytest.raises(DigestMismatch):
        run(pull(local, f"{registry.host}/corrupt/app:v1"))
    assert not local.content.has(victim) and os.listdir(local.content.ingest) == []
    assert not local.content.has(built.digest)
    with pytest.raises(NotFound):
        local.images.get(f"{registry.host}/corrupt/app:v1")
    with open(registry.blob_file(built.digest), "r+b") as f:
        # Still valid JSON of the same size, but its bytes no longer hash to the digest the tag points at.
        f.write(built.manifest.replace(b"\n", b" ", 1))
    with pytest.raises(DigestMismatch, match="Docker-Content-Digest"):
        run(pull(local, f"{registry.host}/corrupt/app:v1"))


# ---------------------------------------------------------------------------------------------- push

def test_push_then_push_again_then_mount_into_another_repository(registry, local):
    built = busybox_image("pushed")
    name = f"{registry.host}/pushed/app:v1"
    store_image(local, name, built)
    digest, events = run(push(local, name))
    layer_ids = [digest_of(b)[7:19] for b in built.layers]
    assert digest == built.digest
    assert events[0] == {"status": f"The push refers to repository [{registry.host}/pushed/app]"}
    assert sorted(e["id"] for e in events if e.get("status") == "Pushed") == sorted(layer_ids)
    assert any(e.get("status") == "Pushing" for e in events)
    assert events[-2] == {"status": f"v1: digest: {digest} size: {len(built.manifest)}"}
    assert events[-1]["aux"] == {"Tag": "v1", "Digest": digest, "Size": len(built.manifest)}

    _digest, again = run(push(local, name))
    assert sorted(e["id"] for e in again if e.get("status") == "Layer already exists") == sorted(layer_ids)

    other = f"{registry.host}/elsewhere/app:v2"
    local.images.set(other, built.descriptor)
    _digest, mounted = run(push(local, other))
    assert [e["status"] for e in mounted if e.get("id") and e["status"] not in ("Preparing",)] == \
        ["Mounted from pushed/app"] * 3
    assert any('"POST /v2/elsewhere/app/blobs/uploads/?mount=' in line and "from=pushed/app" in line
               and '" 201 ' in line for line in registry.requests())

    fresh = make_local(os.path.join(local.root, "fresh"))
    image, _ = run(pull(fresh, other))
    assert all(fresh.content.read(d) == data for d, data in built.blobs().items()) and image.target == built.descriptor


def test_large_layers_go_up_in_chunks_and_come_back_byte_identical(registry, local, tmp_path):
    built = build_image([{"big": os.urandom(3 << 20)}, {"small": b"x"}])
    name = f"{registry.host}/chunked/app:v1"
    store_image(local, name, built)
    before = len(registry.requests())
    run(push(local, name, chunk_threshold=1 << 20, chunk_size=256 << 10))
    patches = [line for line in registry.requests()[before:] if '"PATCH /v2/chunked/app/blobs/uploads/' in line]
    assert len(patches) == -(-len(built.layers[0]) // (256 << 10))  # the big layer in 256 KiB pieces; small: one PUT
    out = str(tmp_path / "out")
    skopeo("copy", "--src-tls-verify=false", "--preserve-digests", f"docker://{name}", f"oci:{out}:v1")
    for digest, data in built.blobs().items():
        with open(os.path.join(out, "blobs", "sha256", digest[7:]), "rb") as f:
            assert f.read() == data


# ---------------------------------------------------------------------------------------------- auth

def htpasswd_line(user: str, password: str) -> str:
    bcrypt = pytest.importorskip("bcrypt")
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"


def write_docker_config(path: str, host: str, user: str, password: str) -> str:
    with open(path, "w") as f:
        json.dump({"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}, f)
    return path


def test_basic_auth_with_config_json_and_clear_failures(peers, local, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", "s3cret"))
    registry = peers(f"auth: {{htpasswd: {{realm: skiff-test, path: {htpasswd}}}}}\n")
    built = busybox_image("basic")
    name = f"{registry.host}/private/app:v1"
    store_image(local, name, built)
    good = write_docker_config(str(tmp_path / "good.json"), registry.host, "alice", "s3cret")
    bad = write_docker_config(str(tmp_path / "bad.json"), registry.host, "alice", "wrong")

    with pytest.raises(RegistryAccessDenied, match="no credentials"):
        run(push(local, name))
    with pytest.raises(RegistryAccessDenied, match="unauthorized"):
        run(push(local, name, config_path=bad))
    assert run(push(local, name, config_path=good))[0] == built.digest
    fresh = make_local(str(tmp_path / "fresh"))
    image, _ = run(pull(fresh, name, config_path=good))
    assert image.target == built.descriptor

    async def login(password: str) -> dict:
        async with local.client() as client:
            return await client.login(registry.host, "alice", password)
    assert run(login("s3cret"))["Status"] == "Login Succeeded"
    with pytest.raises(RegistryAccessDenied):
        run(login("nope"))


class TokenServer:
    """A Docker token server: issues RS256 JWTs, signed with openssl, for users it knows by basic auth."""

    def __init__(self, tmp: str, users: dict[str, str]) -> None:
        self.users, self.requests = users, []
        self.key, self.cert = os.path.join(tmp, "token.key"), os.path.join(tmp, "token.crt")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
                        "-out", self.cert, "-days", "2", "-subj", "/CN=skiff-test-token"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.port = free_port()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def _user(self, request: aiohttp.web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == password else ""

    def _sign(self, claims: dict) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")
        head = b64(json.dumps({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}).encode())
        body = b64(json.dumps(claims).encode())
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key], input=f"{head}.{body}".encode(),
                                   check=True, capture_output=True).stdout
        return f"{head}.{body}.{b64(signature)}"

    async def token(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        user = self._user(request)
        scopes = request.query.getall("scope", [])
        self.requests.append((user, scopes))
        if user == "":
            return aiohttp.web.json_response({"details": "incorrect username or password"}, status=401)
        offline = request.query.get("offline_token") == "true" and user
        return self._grant(user, scopes, request.query.get("service", ""), f"refresh-{user}" if offline else "")

    async def oauth(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        """The OAuth2 refresh-token grant that identity tokens use."""
        form = await request.post()
        user = str(form.get("refresh_token", "")).removeprefix("refresh-")
        scopes = str(form.get("scope", "")).split()
        self.requests.append((f"oauth:{user}", scopes))
        if form.get("grant_type") != "refresh_token" or user not in self.users:
            return aiohttp.web.json_response({"error": "invalid_grant"}, status=401)
        return self._grant(user, scopes, str(form.get("service", "")), "", key="access_token")

    def _grant(self, user: str | None, scopes: list[str], service: str, refresh: str,
               key: str = "token") -> aiohttp.web.Response:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",") if user else []})
        now = int(time.time())
        claims = {"iss": "test", "sub": user or "", "aud": service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": hashlib.sha256(os.urandom(8)).hexdigest(), "access": access}
        answer = {key: self._sign(claims), "expires_in": 300}
        return aiohttp.web.json_response({**answer, "refresh_token": refresh} if refresh else answer)

    @contextlib.asynccontextmanager
    async def serving(self):
        app = aiohttp.web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_post("/token", self.oauth)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()


def test_bearer_tokens_anonymous_then_challenge_then_token(peers, local, tmp_path):
    tokens = TokenServer(str(tmp_path), {"bob": "hunter2"})
    registry = peers(f"auth: {{token: {{realm: {tokens.realm}, service: test, issuer: test, "
                     f"rootcertbundle: {tokens.cert}}}}}\n")
    built = busybox_image("bearer")
    name = f"{registry.host}/team/app:v1"
    store_image(local, name, built)
    config = write_docker_config(str(tmp_path / "config.json"), registry.host, "bob", "hunter2")

    async def scenario():
        async with tokens.serving():
            await push(local, name, config_path=config)
            pushes = list(tokens.requests)
            fresh = make_local(str(tmp_path / "fresh"))
            image, _ = await pull(fresh, name, config_path=config)
            pulls = tokens.requests[len(pushes):]
            with pytest.raises(RegistryAccessDenied):
                await pull(make_local(str(tmp_path / "anon")), name)
            async with local.client() as client:
                login = await client.login(registry.host, "bob", "hunter2")
                with pytest.raises(RegistryAccessDenied, match="incorrect username or password"):
                    await client.login(registry.host, "bob", "wrong")
            # What docker login saves when the token server hands out a refresh token: pulls exchange it.
            with open(config, "w") as f:
                json.dump({"auths": {registry.host: {"identitytoken": login["IdentityToken"]}}}, f)
            await pull(make_local(str(tmp_path / "identity")), name, config_path=config)
            return pushes, pulls, image, login

    pushes, pulls, image, login = run(scenario())
    assert image.target == built.descriptor and login == {"Status": "Login Succeeded", "IdentityToken": "refresh-bob"}
    assert tokens.requests[-1] == ("oauth:bob", ["repository:team/app:pull"])
    # One token per scope set, cached across every blob request: not one per request.
    assert pushes == [("bob", ["repository:team/app:pull,push"])]
    assert pulls == [("bob", ["repository:team/app:pull"])]
    first = next(line for line in registry.requests() if "/v2/team/app/" in line)
    assert '" 401 ' in first  # the very first request went out anonymously and was challenged

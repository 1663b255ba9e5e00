"""Pull and unpack an image from a local registry: Skiff's registry client against skopeo.

    .venv/bin/python bench/image_pull.py [--runs N] [--generated]

The image is a Debian bookworm rootfs with nginx-light, made by ``mmdebstrap --variant=minbase
--include=nginx-light bookworm`` (Debian's mirror is needed once; the result is cached under
``~/.cache/skiff/images/``) and cut into three gzip layers. Without mmdebstrap, or with ``--generated``,
a generated image of similar size (three layers, ~80 MB compressed) is used instead; the output says
which. A ``docker-registry`` on a free loopback port is seeded with it by skopeo.

Each run starts from empty stores: Skiff pulls with ``RegistryClient.pull`` in this process (as it runs
inside the engine daemon); the peer is ``skopeo copy docker://... oci:DIR`` (a process per copy, as a
CLI is used). Skiff unpacks with its overlay snapshotter (every layer checked against its diff_id, into
its own snapshot, as ``ImageService.pull`` does); the peer's layers are extracted by GNU tar (which
pipes them through gzip) into one directory, one after the other, as a shell script would.

Fairness: the same image from the same registry, each side verifying what it downloads. Stores,
registry and rootfs live on tmpfs (``/dev/shm``) by default: this host's disk takes seconds of metadata
work per rootfs, which would drown the difference being measured. Caches are equally warm for both: the
registry's blobs sit on tmpfs, and run 0 (which warms the registry itself) is not counted; every run then
writes into fresh directories. Runs alternate which goes first. Printed: medians with their spread of
pull and pull+unpack (wall clock), the CPU time each side spent (user+system: this process for Skiff,
skopeo + tar + gzip for the peer; the registry's is in neither), and the ratios Skiff/skopeo. The CPU
figure is the steadier one on a busy machine. Goal: Skiff no slower than skopeo.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skiff.image import manifest as mf  # noqa: E402
from skiff.image.content import ContentStore, digest_of  # noqa: E402
from skiff.image.distribution import RegistryClient  # noqa: E402
from skiff.image.snapshot import OverlaySnapshotter  # noqa: E402
from skiff.image.store import ImageStore  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "skiff" / "images"
GOAL = 1.0
NAME = "bench/nginx:latest"


# ---------------------------------------------------------------------------------------------- the image

def _gzip_layer(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _layers_from_rootfs(tar_path: Path) -> list[bytes]:
    """Cut a rootfs tarball in three layers (usr/lib, usr/share, the rest), as image builds stack them."""
    groups: dict[str, list] = {"rest": [], "usr/lib": [], "usr/share": []}
    with tarfile.open(tar_path) as tar:
        for info in tar:
            path = info.name.removeprefix("./")
            key = next((k for k in ("usr/lib", "usr/share") if path.startswith(k + "/")), "rest")
            data = tar.extractfile(info).read() if info.isreg() else None
            groups[key].append((info, data))
    return [_gzip_layer(groups[k]) for k in ("rest", "usr/lib", "usr/share")]


def _generated_layers() -> list[bytes]:
    """~80 MB compressed in three layers: files of incompressible data and text, like binaries and docs."""
    rng = random.Random(42)
    layers = []
    for n, size in enumerate((25 << 20, 55 << 20, 40 << 20)):
        members = []
        for i in range(size // (256 << 10)):
            data = rng.randbytes(176 << 10) + (f"line {i} of layer {n}\n" * 6000).encode()[: 80 << 10]
            info = tarfile.TarInfo(f"layer{n}/file{i:05d}")
            info.size, info.mode = len(data), 0o644
            members.append((info, data))
        layers.append(_gzip_layer(members))
    return layers


def _write_layout(root: Path, layers: list[bytes], tars_digests: list[str]) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["nginx", "-g", "daemon off;"]},
                         "rootfs": {"type": "layers", "diff_ids": tars_digests}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                           "config": mf.descriptor(mf.OCI_CONFIG, digest_of(config), len(config)),
                           "layers": [mf.descriptor(mf.OCI_LAYER_GZIP, digest_of(b), len(b)) for b in layers]}).encode()
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for data in [config, manifest, *layers]:
        (blobs / digest_of(data)[7:]).write_bytes(data)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {**mf.descriptor(mf.OCI_MANIFEST, digest_of(manifest), len(manifest)),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


def image_layout(generated: bool) -> tuple[Path, str]:
    """The cached OCI layout of the benchmark image, made on first use; and what it is."""
    use_debian = not generated and shutil.which("mmdebstrap")
    kind = "debian-bookworm-nginx" if use_debian else "generated"
    layout = CACHE / f"{kind}-oci"
    if (layout / "index.json").exists():
        return layout, kind
    CACHE.mkdir(parents=True, exist_ok=True)
    if use_debian:
        rootfs = CACHE / "debian-bookworm-nginx.tar"
        if not rootfs.exists():
            print("building the Debian nginx rootfs with mmdebstrap (once; needs Debian's mirror)...", flush=True)
            subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=nginx-light", "bookworm",
                            f"{rootfs}.tmp"], check=True)
            os.rename(f"{rootfs}.tmp", rootfs)
        layers = _layers_from_rootfs(rootfs)
    else:
        layers = _generated_layers()
    partial = Path(tempfile.mkdtemp(dir=CACHE))
    _write_layout(partial, layers, [digest_of(gzip.decompress(b)) for b in layers])
    os.rename(partial, layout)
    return layout, kind


# ---------------------------------------------------------------------------------------------- the peers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = work / "registry.yml"
    config.write_text(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {work}/reg}}}}\n"
                      f"http: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise SystemExit("docker-registry did not start")


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", *args], check=True, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------- the work

def gnu_tar_unpack(blob_paths: list[str], dest: Path) -> None:
    """The peer's unpack: each layer extracted over the last by GNU tar, as a shell script would."""
    dest.mkdir()
    for path in blob_paths:
        subprocess.run(["tar", "-xf", path, "-C", str(dest), "--numeric-owner"], check=True)


Sample = tuple[float, float, float]  # seconds: pull, pull+unpack, CPU (user+system) of pull+unpack


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def skiff_pull(host: str, work: Path) -> Sample:
    content = ContentStore(str(work / "content"))
    images = ImageStore(str(work / "images"), content)

    async def pull():
        async with RegistryClient(content, images, config_path=str(work / "none.json")) as client:
            return await client.pull(f"{host}/{NAME}")

    cpu, started = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    image = asyncio.run(pull())
    pulled = time.perf_counter()
    snapshotter = OverlaySnapshotter(str(work / "snapshots"))
    try:
        snapshotter.unpack(image, content)  # each layer into its own snapshot, as containers use them
    finally:
        snapshotter.close()
    return pulled - started, time.perf_counter() - started, _cpu(resource.RUSAGE_SELF) - cpu


def skopeo_pull(host: str, work: Path) -> Sample:
    cpu, started = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()  # skopeo, tar and tar's gzip
    skopeo("copy", "--src-tls-verify=false", f"docker://{host}/{NAME}", f"oci:{work}/oci:latest")
    pulled = time.perf_counter()
    index = json.loads((work / "oci" / "index.json").read_text())
    blobs = work / "oci" / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    gnu_tar_unpack([str(blobs / d["digest"][7:]) for d in manifest["layers"]], work / "rootfs")
    return pulled - started, time.perf_counter() - started, _cpu(resource.RUSAGE_CHILDREN) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--generated", action="store_true", help="use the generated image, not Debian's")
    parser.add_argument("--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where stores, registry and rootfs go (default: tmpfs, so disk noise stays out)")
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (scripts/install.sh installs it)")
    layout, kind = image_layout(args.generated)
    blob_bytes = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    print(f"image: {kind} ({blob_bytes / 1e6:.1f} MB of blobs, 3 gzip layers) from {layout}")
    print("unpack: Skiff's overlay snapshotter (a snapshot per layer) vs GNU tar over one directory")
    print(f"work directory: {args.workdir or tempfile.gettempdir()}")
    with tempfile.TemporaryDirectory(prefix="skiff-bench-pull-", dir=args.workdir) as tmp:
        proc, host = start_registry(Path(tmp))
        try:
            skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout}:latest",
                   f"docker://{host}/{NAME}")
            results = measure(host, Path(tmp), args.runs)
        finally:
            proc.terminate()
            proc.wait()
    report(results)


def measure(host: str, tmp: Path, runs: int) -> dict[str, list[Sample]]:
    subjects: dict[str, Callable[[str, Path], Sample]] = {"skiff": skiff_pull, "skopeo": skopeo_pull}
    results: dict[str, list[Sample]] = {name: [] for name in subjects}
    for run in range(runs + 1):  # run 0 warms the registry's page cache and is not counted
        order = list(subjects) if run % 2 == 0 else list(reversed(subjects))
        for name in order:
            work = tmp / f"{name}-{run}"
            work.mkdir()
            sample = subjects[name](host, work)
            shutil.rmtree(work)
            if run:
                results[name].append(sample)
    return results


def report(results: dict[str, list[Sample]]) -> None:
    med = {name: [statistics.median(s[i] for s in samples) for i in range(3)] for name, samples in results.items()}
    print(f"runs: {len(results['skiff'])} each, interleaved; medians (min-max), wall clock and CPU (user+system):")
    for name, samples in results.items():
        spread = [f"({min(s[i] for s in samples) * 1000:.0f}-{max(s[i] for s in samples) * 1000:.0f})"
                  for i in range(3)]
        pull, total, cpu = (f"{med[name][i] * 1000:6.0f} ms {spread[i]:<11}" for i in range(3))
        print(f"  {name:>6}: pull {pull}  pull+unpack {total}  CPU {cpu}")
    ratios = [med["skiff"][i] / med["skopeo"][i] for i in range(3)]
    pairs = sorted(a[1] / b[1] for a, b in zip(results["skiff"], results["skopeo"], strict=True))
    print(f"ratio skiff/skopeo: pull {ratios[0]:.2f}   pull+unpack {ratios[1]:.2f} (per interleaved run: "
          f"{pairs[0]:.2f}-{pairs[-1]:.2f})   CPU {ratios[2]:.2f}")
    for what, ratio in (("pull", ratios[0]), ("pull+unpack", ratios[1])):
        verdict = "met" if ratio <= GOAL else "NOT met"
        print(f"goal: Skiff no slower than the peer ({what} ratio <= {GOAL:.1f}): {verdict}")


if __name__ == "__main__":
    main()

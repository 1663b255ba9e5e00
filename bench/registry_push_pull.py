"""Image push and pull time: ``skiff registry`` against the CNCF distribution server (docker-registry).

    python bench/registry_push_pull.py [--runs N] [--layers N] [--layer-mb MB] [--cache DIR]

Builds one image once (cached): an OCI layout with N gzip layers of MB megabytes of random-ish data
each (three quarters random bytes, one quarter text, so gzip has something to do). Each run starts both
registries fresh (new data directory, new port, so no blob is already there and skopeo's blob cache has
nothing to mount), then times ``skopeo copy oci:... docker://...`` (push) and ``skopeo copy docker://...
oci:...`` (pull into an empty layout). Runs alternate which registry goes first. Prints medians and the
ratio skiff/docker-registry for push and pull. Loopback only.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.registry import images, servers  # noqa: E402

BLOCK = 64 * 1024


def random_ish(seed: int, size: int) -> bytes:
    """Deterministic bytes: each block three quarters random, one quarter repeated text."""
    rng = random.Random(seed)
    text = (b"skiff registry benchmark layer %d " % seed) * (BLOCK // 128)
    blocks = []
    for _ in range(size // BLOCK):
        blocks.append(rng.randbytes(BLOCK * 3 // 4))
        blocks.append(text[: BLOCK // 4])
    return b"".join(blocks)


def build_image(cache: Path, layers: int, layer_mb: int) -> Path:
    """The benchmark image's OCI layout, built once per shape."""
    layout = cache / f"layout-{layers}x{layer_mb}mb"
    if (layout / "index.json").exists():
        return layout
    shutil.rmtree(layout, ignore_errors=True)
    tars = [images.tar_files({f"data/layer{i}.bin": random_ish(i, layer_mb << 20)}) for i in range(layers)]
    images.write_layout(layout, tars, tag="bench", compresslevel=1)
    return layout


class Subject:
    """One registry kind, restarted fresh for every run; collects push and pull times."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind, self.work = kind, work
        self.push: list[float] = []
        self.pull: list[float] = []

    def run_once(self, layout: Path, n: int) -> None:
        data = self.work / f"{self.kind}-{n}"
        reg = (servers.start_skiff(data, log_level="warning") if self.kind == "skiff"
               else servers.start_docker_registry(data))
        try:
            target = f"docker://{reg.host}/bench/image:bench"
            self.push.append(timed(["copy", f"oci:{layout}:bench", target]))
            out = self.work / f"pulled-{self.kind}-{n}"
            self.pull.append(timed(["copy", target, f"oci:{out}:bench"]))
            shutil.rmtree(out)
        finally:
            reg.stop()
            shutil.rmtree(data, ignore_errors=True)


def timed(args: list[str]) -> float:
    cmd = ["skopeo", "--insecure-policy", args[0], "--src-tls-verify=false", "--dest-tls-verify=false", *args[1:]]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def report(subjects: list[Subject], total_mb: float) -> None:
    for what in ("push", "pull"):
        medians = {}
        for s in subjects:
            samples = getattr(s, what)
            medians[s.kind] = statistics.median(samples)
            print(f"{what:4} {s.kind:16} median {medians[s.kind] * 1000:7.0f} ms  "
                  f"min {min(samples) * 1000:7.0f} ms  {total_mb / medians[s.kind]:6.0f} MB/s  (n={len(samples)})")
        if "docker-registry" in medians:
            print(f"{what:4} ratio skiff/docker-registry: {medians['skiff'] / medians['docker-registry']:.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--layer-mb", type=int, default=20)
    p.add_argument("--cache", type=Path, default=Path("/var/tmp/skiff-bench/registry"))
    args = p.parse_args()
    if shutil.which("skopeo") is None:
        print("skopeo is not installed", file=sys.stderr)
        return 1
    args.cache.mkdir(parents=True, exist_ok=True)
    layout = build_image(args.cache, args.layers, args.layer_mb)
    total_mb = sum(f.stat().st_size for f in (layout / "blobs" / "sha256").iterdir()) / 1e6
    kinds = ["skiff"] + (["docker-registry"] if Path(servers.DOCKER_REGISTRY).exists() else [])
    if len(kinds) == 1:
        print("docker-registry is not installed: measuring skiff alone")
    print(f"image: {args.layers} layers x {args.layer_mb} MB ({total_mb:.1f} MB compressed), {args.runs} runs each")
    with tempfile.TemporaryDirectory(prefix="skiff-bench-registry-") as tmp:
        subjects = [Subject(kind, Path(tmp)) for kind in kinds]
        for s in subjects:  # warm-up (page cache, skopeo), not recorded
            s.run_once(layout, -1)
            s.push.clear()
            s.pull.clear()
        for n in range(args.runs):
            for s in subjects if n % 2 == 0 else reversed(subjects):
                s.run_once(layout, n)
        report(subjects, total_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())

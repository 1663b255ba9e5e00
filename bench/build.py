"""Dockerfile builds, Skiff against dockerd's legacy builder, through the same docker CLI.

    python bench/build.py [--rounds N] [--dockerd PATH] [--docker PATH] [--no-peer]
    python bench/build.py --record      # print the legacy builder's configs for tests/build's DOCKERFILES

Starts ``skiff engine`` and (when one is found: ``--dockerd``, PATH, ``/tmp/dockerpkg/root``) a private dockerd
on temporary roots and sockets, loads the offline busybox test image into both, then for each Dockerfile below
measures, round after round and alternating which daemon goes first:

1. cold build: ``docker build --no-cache`` (every step runs; the base image is present),
2. cached rebuild: the same build again (every step from the cache).

Builds run with ``--network none`` on both sides (the bench's dockerd has no bridge). Prints medians, the
spread, and the ratio skiff/dockerd for each; the goal is at most 1.0x for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.engine import Daemon, Dockerd, Skiff, find_dockerd, remove_cgroups, unmount_under  # noqa: E402
from tests.image.testimages import busybox_docker_archive  # noqa: E402

GOAL = 1.0
NETWORK = ("--network", "none")

# name -> (Dockerfile, files); files given as (count, size) make that many generated files of that size.
DOCKERFILES: dict[str, tuple[str, dict[str, str | tuple[int, int]]]] = {
    "app": ("""\
FROM busybox
ENV APP=/srv/app LANG=C.UTF-8
WORKDIR /srv/app
COPY src/ ./src/
COPY config.json ./
RUN mkdir -p out && for f in src/*; do wc -c "$f" >> out/sizes; done && cat config.json > out/config
EXPOSE 8080
USER nobody
CMD ["cat", "/srv/app/out/sizes"]
""", {"src": (200, 2048), "config.json": '{"name": "bench"}\n'}),
    "multistage": ("""\
FROM busybox AS build
WORKDIR /work
COPY data.bin .
RUN sha256sum data.bin > digest && gzip -k data.bin
FROM busybox
COPY --from=build /work/digest /work/data.bin.gz /out/
LABEL stage=final
CMD ["cat", "/out/digest"]
""", {"data.bin": (1, 4 << 20)}),
}


def make_context(root: Path, dockerfile: str, files: dict[str, str | tuple[int, int]]) -> Path:
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, spec in files.items():
        if isinstance(spec, str):
            (root / name).write_text(spec)
        elif spec[0] == 1:
            (root / name).write_bytes(os.urandom(spec[1]))
        else:
            (root / name).mkdir()
            for i in range(spec[0]):
                (root / name / f"f{i:04d}.txt").write_bytes(os.urandom(spec[1] // 2).hex().encode()[:spec[1]])
    return root


def docker_build(daemon: Daemon, docker: str, context: Path, *flags: str, cached: bool = False) -> float:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(daemon.config), "DOCKER_HOST": daemon.host,
           "DOCKER_CONFIG": str(daemon.config), "DOCKER_CLI_HINTS": "false", "DOCKER_BUILDKIT": "0"}
    started = time.perf_counter()
    result = subprocess.run([docker, "build", *NETWORK, *flags, str(context)], capture_output=True, text=True,
                            env=env, timeout=600, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"[{daemon.name}] docker build failed:\n{result.stdout}\n{result.stderr}")
    if cached and result.stdout.count("Using cache") < result.stdout.count("Step ") - 2:  # (FROMs: no cache)
        raise RuntimeError(f"[{daemon.name}] a rebuild that should be cached was not:\n{result.stdout}")
    return elapsed


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else samples * 9
    return f"median {statistics.median(samples) * 1000:7.1f} ms  (p10 {q[0] * 1000:.1f}, p90 {q[-1] * 1000:.1f})"


def bench(daemons: list[Daemon], docker: str, contexts: dict[str, Path], rounds: int) -> dict:
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, context in contexts.items():
        per = results.setdefault(name, {})
        for d in daemons:  # warm-up: page cache, first pull of the base image's layers into snapshots
            docker_build(d, docker, context, "-t", f"bench-{name}")
        for r in range(rounds):
            order = daemons if r % 2 == 0 else list(reversed(daemons))
            for d in order:
                cold = docker_build(d, docker, context, "--no-cache", "-t", f"bench-{name}")
                cached = docker_build(d, docker, context, "-t", f"bench-{name}", cached=True)
                per.setdefault(d.name, {"cold": [], "cached": []})
                per[d.name]["cold"].append(cold)
                per[d.name]["cached"].append(cached)
    return results


def report(results: dict, rounds: int) -> None:
    print(f"\nDockerfile builds through the docker CLI (legacy builder), {rounds} rounds, interleaved")
    verdicts = []
    for name, per in results.items():
        for kind in ("cold", "cached"):
            print(f"\n[{name}] {kind} build")
            for daemon, samples in per.items():
                print(f"  {daemon:8s} {summary(samples[kind])}")
            if "dockerd" in per and "skiff" in per:
                ratio = statistics.median(per["skiff"][kind]) / statistics.median(per["dockerd"][kind])
                print(f"  ratio skiff/dockerd: {ratio:.2f}x  (goal <= {GOAL:.1f}x)")
                verdicts.append((f"{name} {kind}", ratio))
    if verdicts:
        print("\nGoals:")
        for what, ratio in verdicts:
            print(f"  {what:24s} {ratio:.2f}x  {'met' if ratio <= GOAL else 'NOT met'}")
    else:
        print("\n(no dockerd found: Skiff's figures only)")


CONFIG_FIELDS = ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels", "Healthcheck",
                 "StopSignal", "Shell", "OnBuild")


def compare_configs(daemons: list[Daemon], names: list[str]) -> bool:
    """The images both daemons built from the same Dockerfiles: their configs must be the same."""
    print("\nImage configs, skiff vs dockerd (the same Dockerfiles):")
    same = True
    for name in names:
        configs = [json.loads(d.docker("image", "inspect", f"bench-{name}").stdout)[0]["Config"] for d in daemons]
        differing = [k for k in CONFIG_FIELDS if configs[0].get(k) != configs[1].get(k)]
        same = same and not differing
        print(f"  [{name}] {'same' if not differing else 'DIFFERENT: ' + ', '.join(differing)}")
    return same


def record(daemon: Daemon, docker: str, work: Path) -> None:
    """Build tests/build's DOCKERFILES with dockerd and print the configs and histories it gives."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_builder", REPO / "tests/build/test_builder.py")
    assert spec is not None and spec.loader is not None
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    recorded = {}
    for name, (dockerfile, files) in tests.DOCKERFILES.items():
        context = make_context(work / f"rec-{name}", dockerfile, dict(files))
        docker_build(daemon, docker, context, "-t", f"rec-{name}")
        config = json.loads(daemon.docker("image", "inspect", f"rec-{name}").stdout)[0]["Config"]
        created = daemon.docker("history", "--no-trunc", "--format", "{{json .CreatedBy}}", f"rec-{name}").stdout
        recorded[name] = {"config": {k: config.get(k) for k in tests.CONFIG_FIELDS},
                          "history": [json.loads(line) for line in created.splitlines()]}
    print(json.dumps(recorded, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--docker", default=shutil.which("docker") or "/usr/local/bin/docker")
    p.add_argument("--dockerd", help="the peer dockerd (default: PATH, then /tmp/dockerpkg/root/usr/sbin/dockerd)")
    p.add_argument("--no-peer", action="store_true", help="measure Skiff alone")
    p.add_argument("--record", action="store_true", help="print dockerd's configs for tests/build's DOCKERFILES")
    a = p.parse_args()
    if os.geteuid() != 0:
        print("bench/build.py needs root (daemons, overlay mounts, cgroups)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="skiff-bench-build-"))
    daemons: list[Daemon] = []
    try:
        archive = busybox_docker_archive(str(work / "busybox.tar"), "busybox:latest")
        dockerd = None if a.no_peer else find_dockerd(a.dockerd)
        if a.record:
            if dockerd is None:
                print("--record needs a dockerd", file=sys.stderr)
                return 2
            daemons.append(Dockerd(work / "d", a.docker, dockerd).start())
            daemons[0].docker("load", "-i", archive)
            record(daemons[0], a.docker, work)
            return 0
        daemons.append(Skiff(work / "s", a.docker).start())
        if dockerd:
            daemons.append(Dockerd(work / "d", a.docker, dockerd).start())
        for d in daemons:
            d.docker("load", "-i", archive)
        contexts = {name: make_context(work / f"ctx-{name}", dockerfile, files)
                    for name, (dockerfile, files) in DOCKERFILES.items()}
        report(bench(daemons, a.docker, contexts, a.rounds), a.rounds)
        if len(daemons) == 2 and not compare_configs(daemons, list(contexts)):
            return 1
        return 0
    finally:
        for d in daemons:
            d.stop()
        unmount_under(work)
        remove_cgroups()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

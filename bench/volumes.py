"""Volumes and mounts against dockerd, through the real docker CLI: what each kind of mount adds to a run.

    python bench/volumes.py [--runs N] [--warmup N] [--dockerd PATH] [--docker PATH] [--no-peer]

Starts ``skiff engine`` (and dockerd, when one is found: see ``bench/engine.py``) on temporary roots, loads the
offline busybox into each, then times ``docker run --rm busybox true`` end to end (the CLI's wall time) with:

- nothing (the baseline), ``-v named:/data`` (an existing named volume), ``-v /anon`` (an anonymous volume made
  and removed with the container), ``--tmpfs /run:size=1m``, ``--mount type=bind`` of a host directory,
- ``-v fresh-N:/bin`` (a new named volume each run: the image's /bin, ~400 entries, copied up into it).

Runs alternate between the daemons; medians, p90 and the ratio skiff/dockerd are printed, and each kind's cost
over its daemon's baseline. Every container, volume, daemon, temp root and cgroup is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.engine import (  # noqa: E402
    IMAGE,
    Daemon,
    Dockerd,
    Skiff,
    find_dockerd,
    percentile,
    remove_cgroups,
    unmount_under,
)
from tests.engine.conftest import NetBlock, reserve_net_block  # noqa: E402
from tests.image.testimages import busybox_docker_archive  # noqa: E402

KINDS = ("plain", "named", "anonymous", "tmpfs", "bind", "copy-up")


class ScratchSkiff(Skiff):
    """The engine with its default network in a scratch block (never the host-wide skiff0)."""

    def __init__(self, root: Path, docker: str, block: NetBlock) -> None:
        super().__init__(root, docker)
        self.block = block

    def command(self) -> list[str]:
        return [*super().command(), *self.block.flags()]


def run_args(kind: str, n: int, bind_dir: Path) -> list[str]:
    return {
        "plain": [],
        "named": ["-v", "named:/data"],
        "anonymous": ["-v", "/anon"],
        "tmpfs": ["--tmpfs", "/run:size=1m"],
        "bind": ["--mount", f"type=bind,src={bind_dir},dst=/host"],
        "copy-up": ["-v", f"fresh-{n}:/bin"],
    }[kind]


def timed(d: Daemon, kind: str, n: int, bind_dir: Path) -> float:
    started = time.perf_counter()
    d.docker("run", "--rm", *run_args(kind, n, bind_dir), IMAGE, "true")
    return time.perf_counter() - started


def measure(daemons: list[Daemon], runs: int, warmup: int, bind_dir: Path) -> dict[tuple[str, str], list[float]]:
    samples: dict[tuple[str, str], list[float]] = {(d.name, k): [] for d in daemons for k in KINDS}
    for d in daemons:
        d.docker("volume", "create", "named")
        for i in range(warmup):
            timed(d, "plain", -1 - i, bind_dir)
    for i in range(runs):
        for kind in KINDS:
            for d in daemons if i % 2 == 0 else reversed(daemons):
                samples[(d.name, kind)].append(timed(d, kind, i, bind_dir))
    return samples


def report(daemons: list[Daemon], samples: dict[tuple[str, str], list[float]], note: str) -> None:
    names = [d.name for d in daemons]
    print(f"docker run --rm busybox true, by mount kind ({len(samples[(names[0], 'plain')])} runs each; {note})")
    header = f"{'kind':<10}" + "".join(f"{n + ' median':>16}{n + ' p90':>13}{'+base':>9}" for n in names)
    print(header + (f"{'ratio':>8}" if len(names) == 2 else ""))
    base = {n: statistics.median(samples[(n, "plain")]) * 1000 for n in names}
    for kind in KINDS:
        line = f"{kind:<10}"
        medians = []
        for n in names:
            s = samples[(n, kind)]
            median = statistics.median(s) * 1000
            medians.append(median)
            line += f"{median:>13.1f} ms{percentile(s, 90) * 1000:>10.1f} ms{median - base[n]:>+7.1f}ms"
        if len(medians) == 2:
            line += f"{medians[0] / medians[1]:>7.2f}x"
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="timed runs per kind and daemon (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unrecorded plain runs per daemon first (default 2)")
    p.add_argument("--docker", default=shutil.which("docker") or "/usr/local/bin/docker", help="the docker CLI")
    p.add_argument("--dockerd", help="the peer dockerd (default: PATH, then bench/engine.py's unpacked package)")
    p.add_argument("--no-peer", action="store_true", help="measure skiff alone")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("volumes: needs root (containers, mounts and cgroups)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))  # short: unix socket paths fit in 108 bytes
    daemons: list[Daemon] = []
    block: NetBlock | None = None
    had_run_containerd = os.path.exists("/run/containerd")
    try:
        archive = busybox_docker_archive(str(work / "busybox.tar"), IMAGE)
        bind_dir = work / "bind"
        bind_dir.mkdir()
        block = reserve_net_block()
        daemons.append(ScratchSkiff(work / "s", a.docker, block).start())
        dockerd = None if a.no_peer else find_dockerd(a.dockerd)
        if dockerd:
            daemons.append(Dockerd(work / "d", a.docker, dockerd).start())
        note = f"peer: {dockerd}" if dockerd else "no dockerd ran"
        for d in daemons:
            d.docker("load", "-i", archive, timeout=300)
        report(daemons, measure(daemons, a.runs, a.warmup, bind_dir), note)
        return 0
    finally:
        for d in reversed(daemons):
            try:
                with contextlib.suppress(Exception):
                    d.docker("volume", "prune", "-af", timeout=120, check=False)
                d.stop()
            except Exception as e:  # keep cleaning up
                print(f"volumes: stopping {d.name}: {e}", file=sys.stderr)
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
        remove_cgroups()
        if block is not None:
            block.release()
        if not had_run_containerd:
            for leftover in ("/run/containerd/s", "/run/containerd"):
                with contextlib.suppress(OSError):
                    os.rmdir(leftover)


if __name__ == "__main__":
    sys.exit(main())

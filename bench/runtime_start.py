"""Container start-up time: ``skiff-runtime run`` against ``runc run`` on the same busybox bundle.

    python bench/runtime_start.py [--runs N] [--runtime-cmd "CMD ..."] [--runc PATH]

Builds one bundle (``true``), then runs it N times under each runtime, alternating so both see the
same machine state. Each sample is the wall time of one ``run`` (create, start, wait, delete: the
container is gone when ``run`` returns). Prints the median and p90 of each and the ratio skiff/runc.
Needs root. The peer is skipped (with a note) when runc is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skiff.runtime.bundle import make_busybox_bundle  # noqa: E402
from tests.runtime.harness import skiff_command  # noqa: E402  (the same runtime the tests drive)

CGROUP_PARENT = "skiff-bench"
GOAL = 1.5


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Subject:
    def __init__(self, name: str, cmd: list[str], root: Path) -> None:
        self.name, self.cmd, self.root = name, cmd, root
        self.samples: list[float] = []
        self.env = dict(os.environ)
        if cmd[1:3] == ["-m", "skiff.runtime.cli"]:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))

    def run_once(self, bundle: Path, cid: str, *, record: bool = True) -> None:
        config = bundle / "config.json"
        spec = json.loads(config.read_text())
        spec.setdefault("linux", {})["cgroupsPath"] = f"/{CGROUP_PARENT}/{cid}"
        config.write_text(json.dumps(spec))
        argv = [*self.cmd, "--root", str(self.root), "run", "--bundle", str(bundle), cid]
        started = time.perf_counter()
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=self.env, timeout=120)
        elapsed = time.perf_counter() - started
        # Belt and braces: run deletes the container itself; make sure, outside the timing.
        subprocess.run([*self.cmd, "--root", str(self.root), "delete", "--force", cid], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env, timeout=60)
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace").strip()
            raise SystemExit(f"{self.name} run {cid} exited {r.returncode}: {err}")
        if record:
            self.samples.append(elapsed)

    def summary(self) -> str:
        ms = [s * 1000 for s in self.samples]
        return (f"{self.name:>6}: median {statistics.median(ms):7.1f} ms   p90 {percentile(ms, 90):7.1f} ms   "
                f"min {min(ms):7.1f} ms   n={len(ms)}")


def remove_cgroup_parents() -> None:
    base = "/sys/fs/cgroup"
    candidates = [os.path.join(base, CGROUP_PARENT)]
    if os.path.isdir(base):
        candidates += [os.path.join(base, d, CGROUP_PARENT) for d in os.listdir(base)]
    for path in candidates:
        try:
            os.rmdir(path)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=40, help="runs per runtime (default 40)")
    p.add_argument("--runtime-cmd", help="the Skiff runtime command (default: skiff-runtime beside this python)")
    p.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc", help="the peer runc binary")
    p.add_argument("--warmup", type=int, default=2, help="unrecorded runs per runtime first (default 2)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("runtime_start: needs root (containers and cgroups)", file=sys.stderr)
        return 2

    skiff_cmd = shlex.split(a.runtime_cmd) if a.runtime_cmd else skiff_command()
    work = Path(tempfile.mkdtemp(prefix="skiff-bench-"))
    try:
        bundle = Path(make_busybox_bundle(work / "bundle", ["true"]))
        subjects = [Subject("skiff", skiff_cmd, work / "root-skiff")]
        if a.runc and os.access(a.runc, os.X_OK):
            subjects.append(Subject("runc", [a.runc], work / "root-runc"))
        else:
            print("runtime_start: runc is not installed; measuring skiff alone (no ratio)")
        tag = f"{os.getpid()}"
        for i in range(a.warmup):
            for s in subjects:
                s.run_once(bundle, f"bench-{tag}-{s.name}-w{i}", record=False)
        for i in range(a.runs):
            for s in subjects if i % 2 == 0 else reversed(subjects):
                s.run_once(bundle, f"bench-{tag}-{s.name}-{i}")
        print(f"container start-up: `run` of a busybox `true`, {a.runs} runs each, alternating")
        for s in subjects:
            print("  " + s.summary())
        if len(subjects) == 2:
            skiff, runc = subjects
            ratio = statistics.median(skiff.samples) / statistics.median(runc.samples)
            p90 = percentile(skiff.samples, 90) / percentile(runc.samples, 90)
            print(f"  ratio skiff/runc: median {ratio:.2f}x   p90 {p90:.2f}x")
            print(f"goal: median <= {GOAL}x runc -> {'met' if ratio <= GOAL else 'NOT met'} ({ratio:.2f}x)")
        else:
            print(f"goal: median <= {GOAL}x runc -> not measured (no runc)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        remove_cgroup_parents()


if __name__ == "__main__":
    sys.exit(main())

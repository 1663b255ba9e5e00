"""What the API server → kubelet → engine path costs `kubectl logs` and `kubectl exec`, against the docker CLI on
the same engine (the same containers, no API server or kubelet in between).

    python bench/logs_exec.py [--runs 20] [--megabytes 20]

1. exec round trip: `kubectl exec P -- true` vs `docker exec C true`, p50 and p90 of `--runs` runs each.
2. logs: `kubectl logs P -c big` vs `docker logs C` of a container that wrote `--megabytes` MB (MB/s).
3. exec stdin: `kubectl exec -i P -- wc -c` vs `docker exec -i C wc -c` with `--megabytes` MB piped in (MB/s).
4. resource use: `kubectl top pod P --containers` (the metrics API, from the kubelet's last readings) vs
   `docker stats --no-stream C C` (two samples the engine takes on the spot), p50 of `--runs` runs each.

A private `skiff engine` (the test fixtures' `Engines`: its own roots, socket, bridge and address block), a
`skiff server` and a `skiff agent` serving its kubelet API on 127.0.0.1 with a CA-signed certificate (as in
tests/cluster/kubelet/test_logs_exec.py). Everything is removed at the end, also after a SIGTERM to the bench
alone (a signal to its whole process group stops the engine first, leaving the pod's containers). Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.api.conftest import KUBECTL, ServerProcess  # noqa: E402
from tests.cluster.kubelet.conftest import IMAGE, IMPORT_CHANGES, unmount_below  # noqa: E402
from tests.cluster.kubelet.test_logs_exec import ServingAgent  # noqa: E402
from tests.engine.conftest import DOCKER, Engines  # noqa: E402
from tests.image import testimages  # noqa: E402

LINE = "0123456789012345678901234567890123456789"


def timed(command: list[str], env: dict[str, str], stdin: bytes | None = None) -> tuple[float, bytes]:
    start = time.perf_counter()
    result = subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=600,
                            stdin=None if stdin is not None else subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... exited {result.returncode}: {result.stderr[-500:]!r}")
    return elapsed, result.stdout


def pod_ready(server: ServerProcess, name: str) -> bool:
    pod = server.request("GET", f"/api/v1/namespaces/default/pods/{name}").json()
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return len(statuses) == 2 and all("running" in (s.get("state") or {}) for s in statuses)


def remove_containers(docker_env: dict[str, str]) -> None:
    ids = subprocess.run([DOCKER, "ps", "-aq"], capture_output=True, text=True, env=docker_env).stdout.split()
    if ids:
        subprocess.run([DOCKER, "rm", "-f", *ids], capture_output=True, env=docker_env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="exec round trips timed per client (default 20)")
    p.add_argument("--megabytes", type=int, default=20, help="log and stdin volume in MB (default 20)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("logs_exec: needs root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a SIGTERM (`timeout`) still cleans up below
    work = Path(tempfile.mkdtemp(prefix="sle-", dir="/tmp"))
    cleanups: list[Callable[[], None]] = []
    try:
        engines = Engines(work / "engines")
        (work / "engines").mkdir()
        cleanups.append(engines.stop_all)
        engine = engines.start()
        docker_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "DOCKER_HOST": engine.host,
                      "DOCKER_CONFIG": str(work / "docker"), "DOCKER_CLI_HINTS": "false"}
        cleanups.append(lambda: remove_containers(docker_env))
        rootfs = testimages.busybox_rootfs_tar(str(work / "busybox.tar"))
        timed([DOCKER, "import", *[a for c in IMPORT_CHANGES for a in ("-c", c)], rootfs, IMAGE], docker_env)
        server = ServerProcess(work / "server", "--disable-controllers", "--disable-scheduler")
        server.start()
        cleanups.append(server.stop)
        (work / "agent").mkdir()
        agent = ServingAgent(work / "agent", server, engine)
        agent.start()
        cleanups.append(lambda: (agent.stop(), unmount_below(agent.data_dir)))
        lines = args.megabytes * 1_000_000 // (len(LINE) + 1)  # whole lines: a partial one stays unlogged
        size = lines * (len(LINE) + 1)
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bench"}, "spec": {
            "nodeName": "n1", "terminationGracePeriodSeconds": 1, "containers": [
                {"name": "sh", "image": IMAGE, "command": ["sleep", "3600"]},
                {"name": "big", "image": IMAGE, "command": ["sh", "-c", f"yes {LINE} | head -n {lines}; sleep 3600"]}]}}
        server.request("POST", "/api/v1/namespaces/default/pods", json.dumps(manifest),
                       {"Content-Type": "application/json"})
        deadline = time.monotonic() + 60
        while not pod_ready(server, "bench"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pod did not start: {agent.log_tail()}")
            time.sleep(0.2)
        ids = {}
        for name in ("sh", "big"):
            found = subprocess.run([DOCKER, "ps", "-q", "--no-trunc", "--filter", f"name=k8s_{name}_bench_"],
                                   capture_output=True, text=True, env=docker_env).stdout.split()
            ids[name] = found[0]
        kube_env = dict(os.environ, HOME=str(work / "kubectl"))
        kubectl = [KUBECTL, "--kubeconfig", str(server.kubeconfig), "--cache-dir", str(work / "kubectl")]
        # the log is complete once docker sees all of it
        deadline = time.monotonic() + 120
        while (seen := len(timed([DOCKER, "logs", ids["big"]], docker_env)[1])) < size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker logs shows {seen} bytes of the {size} written")
            time.sleep(0.5)
        timed([*kubectl, "exec", "bench", "-c", "sh", "--", "true"], kube_env)  # warm kubectl's discovery cache

        rows = []
        exec_true = [*kubectl, "exec", "bench", "-c", "sh", "--", "true"]
        kube_exec = [timed(exec_true, kube_env)[0] for _ in range(args.runs)]
        docker_exec = [timed([DOCKER, "exec", ids["sh"], "true"], docker_env)[0] for _ in range(args.runs)]
        rows.append(("exec round trip p50 (ms)", 1000 * statistics.median(kube_exec),
                     1000 * statistics.median(docker_exec)))
        rows.append(("exec round trip p90 (ms)", 1000 * statistics.quantiles(kube_exec, n=10)[-1],
                     1000 * statistics.quantiles(docker_exec, n=10)[-1]))
        kube_logs, out = timed([*kubectl, "logs", "bench", "-c", "big"], kube_env)
        assert len(out) == size, len(out)
        docker_logs, out = timed([DOCKER, "logs", ids["big"]], docker_env)
        rows.append(("logs (MB/s)", size / 1e6 / kube_logs, size / 1e6 / docker_logs))
        payload = b"x" * size
        kube_in, out = timed([*kubectl, "exec", "-i", "bench", "-c", "sh", "--", "wc", "-c"], kube_env, payload)
        assert out.strip() == str(size).encode(), out
        docker_in, out = timed([DOCKER, "exec", "-i", ids["sh"], "wc", "-c"], docker_env, payload)
        rows.append(("exec stdin (MB/s)", size / 1e6 / kube_in, size / 1e6 / docker_in))
        top = [*kubectl, "top", "pod", "bench", "--containers"]
        timed(top, kube_env)  # the kubelet's first pair of readings
        kube_top = [timed(top, kube_env)[0] for _ in range(args.runs)]
        docker_top = [timed([DOCKER, "stats", "--no-stream", ids["sh"], ids["big"]], docker_env)[0]
                      for _ in range(args.runs)]
        rows.append(("top / stats p50 (ms)", 1000 * statistics.median(kube_top), 1000 * statistics.median(docker_top)))

        print(f"{'':28} {'kubectl via skiff':>18} {'docker CLI':>12} {'ratio':>7}")
        for label, kube, docker in rows:
            print(f"{label:28} {kube:18.1f} {docker:12.1f} {kube / docker:7.2f}")
        return 0
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep cleaning up
                print(f"logs_exec: cleanup: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Namespace deletion and service-account token authentication, measured on a real ``skiff server``.

    python bench/namespaces_tokens.py [--objects 300] [--rounds 3] [--requests 2000] [--keep-temp]

* **namespace deletion**: a namespace holding ``--objects`` ConfigMaps, a tenth as many Secrets, a Role and a
  RoleBinding and a 20-replica Deployment (its ReplicaSet and pods: no scheduler, so the pods are unbound
  and go at once) is deleted; the time from the DELETE to the namespace's 404 (the server marks it, the
  namespace controller empties it and finalizes it, the server removes it), per round;
* **token authentication**: ``--requests`` sequential GETs of one ConfigMap over a keep-alive connection,
  with a static token (user in system:masters) and with a service account's token from the TokenRequest API
  (RBAC allowed through a RoleBinding to ``view``), in interleaved rounds: the per-request wall time and
  server CPU time (``/proc/PID/stat``; steadier than wall time on a loaded host) of each and their ratio,
  which is the cost of verifying the JWT (remembered after its first use) and checking that its
  ServiceAccount still exists.

There is no kube-apiserver on this machine, so the figures stand alone (the static-token path is the peer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skiff.cluster.client import (  # noqa: E402 - after the path is set
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    SECRETS,
    SERVICE_ACCOUNTS,
    ApiClient,
    ApiStatusError,
    ClusterConfig,
    load_kubeconfig,
)

STATIC_TOKEN = "bench-static-token"
ROUNDS = 10
ROLES = "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], Path]:
    tokens = root / "tokens.csv"
    tokens.write_text(f'{STATIC_TOKEN},bench,1000,"system:masters"\n')
    kubeconfig = root / "kubeconfig"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(root / "server.log", "wb")  # noqa: SIM115 - the child keeps writing to it
    process = subprocess.Popen([sys.executable, "-m", "skiff.cli.main", "server", "--data-dir", str(root / "data"),
                                "--listen", f"127.0.0.1:{port}", "--write-kubeconfig", str(kubeconfig),
                                "--token-file", str(tokens), "--disable-scheduler", "--disable-agent"],
                               stdout=log, stderr=log, env=env, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 60
    while not kubeconfig.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return process, kubeconfig


async def wait_gone(client: ApiClient, name: str) -> None:
    while True:
        try:
            await client.get(NAMESPACES, name)
        except ApiStatusError as exc:
            if exc.not_found:
                return
            raise
        await asyncio.sleep(0.02)


async def fill(client: ApiClient, ns: str, objects: int) -> None:
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    for i in range(0, objects, 50):
        await asyncio.gather(*(client.create(CONFIGMAPS, {"metadata": {"name": f"c{j}"}, "data": {"k": "v"}}, ns)
                               for j in range(i, min(i + 50, objects))))
    await asyncio.gather(*(client.create(SECRETS, {"metadata": {"name": f"s{j}"}, "stringData": {"p": "x"}}, ns)
                           for j in range(max(1, objects // 10))))
    await client.request("POST", ROLES.format(ns=ns, plural="roles"), body={
        "metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    await client.request("POST", ROLES.format(ns=ns, plural="rolebindings"), body={
        "metadata": {"name": "rb"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "default"}]})
    labels = {"app": "web"}
    await client.create(DEPLOYMENTS, {"metadata": {"name": "web"}, "spec": {
        "replicas": 20, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}, ns)
    await asyncio.sleep(2)  # the controllers make the ReplicaSet and its pods


async def namespace_deletion(client: ApiClient, objects: int, rounds: int) -> None:
    times = []
    for r in range(rounds):
        ns = f"bench-{r}"
        await fill(client, ns, objects)
        started = time.perf_counter()
        await client.delete(NAMESPACES, ns)
        await wait_gone(client, ns)
        times.append(time.perf_counter() - started)
    print(f"namespace deletion ({objects} ConfigMaps, {max(1, objects // 10)} Secrets, Role, RoleBinding, "
          f"20-replica Deployment): " + ", ".join(f"{t:.2f} s" for t in times))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_gets(client: ApiClient, requests: int, server_pid: int) -> tuple[float, float]:
    """Wall time and server CPU time per request."""
    cpu, started = cpu_seconds(server_pid), time.perf_counter()
    for _ in range(requests):
        await client.get(CONFIGMAPS, "target", "default")
    return (time.perf_counter() - started) / requests, (cpu_seconds(server_pid) - cpu) / requests


async def token_authentication(admin: ApiClient, base: ClusterConfig, requests: int, server_pid: int) -> None:
    await admin.create(CONFIGMAPS, {"metadata": {"name": "target"}, "data": {"k": "v"}}, "default")
    await admin.request("POST", ROLES.format(ns="default", plural="rolebindings"), body={
        "metadata": {"name": "bench-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]})
    while True:
        try:
            await admin.get(SERVICE_ACCOUNTS, "default", "default")
            break
        except ApiStatusError:
            await asyncio.sleep(0.1)
    answer = await admin.create_subresource(SERVICE_ACCOUNTS, "default", "token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}, "default")
    await asyncio.sleep(0.5)  # the RoleBinding reaches the server's RBAC mirror
    clients = [ApiClient(ClusterConfig(base.server, ca_pem=base.ca_pem, token=token), pool_size=1)
               for token in (STATIC_TOKEN, answer["status"]["token"])]
    try:
        for client in clients:
            await client.get(CONFIGMAPS, "target", "default")  # warm: connection, and the token verified once
        static, account = [], []
        for _ in range(ROUNDS):  # interleaved: the host's load varies from second to second
            static.append(await timed_gets(clients[0], requests // ROUNDS, server_pid))
            account.append(await timed_gets(clients[1], requests // ROUNDS, server_pid))
    finally:
        for client in clients:
            await client.close()
    for what, index in (("wall", 0), ("server CPU", 1)):
        mine, theirs = (statistics.median(r[index] for r in runs) for runs in (account, static))
        print(f"GET of one ConfigMap ({requests} sequential, {ROUNDS} interleaved rounds), {what} per request: "
              f"static token {theirs * 1e6:.0f} µs, service-account token {mine * 1e6:.0f} µs "
              f"(ratio {mine / theirs:.2f})")


async def main_async(kubeconfig: Path, args: argparse.Namespace, server_pid: int) -> None:
    config = load_kubeconfig(kubeconfig)
    async with ApiClient(config) as admin:
        await namespace_deletion(admin, args.objects, args.rounds)
        await token_authentication(admin, config, args.requests, server_pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="skiff-bench-ns-"))
    process, kubeconfig = start_server(root)
    try:
        asyncio.run(main_async(kubeconfig, args, process.pid))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if not args.keep_temp:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

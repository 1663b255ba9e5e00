"""The Service proxy's sync latency: from an EndpointSlice write to the new DNAT rule in the kernel.

    python bench/proxy_sync.py [--services 1,100,1000] [--rounds 30]

A real ``skiff server`` (temp data dir, loopback port), ``--services`` Services with 2 endpoints each, and
``ServiceProxy`` in this process writing its table with real ``nft`` into a private network namespace (no
traffic: only the rules are looked at). Each round replaces one Service's EndpointSlice with a new endpoint
address, then polls ``nft list chain`` of the Service's chain until the new address is there. Printed: the
median and 90th percentile of that write-to-kernel time; the proxy's own part (informer event to nft commit,
``ServiceProxy.last_latency``); and, as the floor to compare with, ``nft -f`` applying the same full ruleset
by itself (what one sync costs the kernel and nft, whoever computes it).

The peer: there is no kube-proxy on this machine. For orientation: kube-proxy batches changes for at least
``--min-sync-period`` (1 s by default in nftables mode), so its write-to-rule time is 1 s or more by design;
Skiff's proxy batches for ``min_sync_interval`` = 0.1 s after each sync.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from skiff.cluster.client import ENDPOINT_SLICES, SERVICES, ApiClient, SharedInformers, load_kubeconfig  # noqa: E402
from skiff.cluster.proxy.model import service_ports  # noqa: E402
from skiff.cluster.proxy.proxier import ProxyOptions, ServiceProxy  # noqa: E402
from skiff.cluster.proxy.rules import ruleset, service_chain  # noqa: E402
from tests.cluster.api.conftest import ServerProcess  # noqa: E402

NETNS = "skiff-bench-proxy"
TABLE = "skiff-bench"


def slice_body(service: str, ips: list[str], rv: str | None = None) -> dict:
    meta: dict = {"name": f"{service}-bench", "labels": {"kubernetes.io/service-name": service}}
    if rv:
        meta["resourceVersion"] = rv
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


async def create_services(client: ApiClient, count: int, start: int) -> None:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            name = f"s{i}"
            await client.create(SERVICES, {"metadata": {"name": name}, "spec": {"ports": [
                {"name": "http", "port": 80, "targetPort": 8080}]}}, "default")
            await client.create(ENDPOINT_SLICES, slice_body(name, [f"10.200.{i // 250}.{i % 250 + 1}",
                                                                   f"10.201.{i // 250}.{i % 250 + 1}"]), "default")

    await asyncio.gather(*(one(i) for i in range(start, count)))


def nft_list_chain(chain: str) -> str:
    return subprocess.run(["ip", "netns", "exec", NETNS, "nft", "list", "chain", "ip", TABLE, chain],
                          capture_output=True, text=True).stdout


async def measure(client: ApiClient, proxy: ServiceProxy, rounds: int) -> tuple[list[float], list[float]]:
    total, own = [], []
    [port] = [p for p in service_ports(proxy.services.list(), proxy.slices.list()) if p.name == "s0"]
    chain = service_chain(port)
    for r in range(rounds):
        new_ip = f"10.250.{r // 250}.{r % 250 + 1}"
        live = await client.get(ENDPOINT_SLICES, "s0-bench", "default")
        body = slice_body("s0", [new_ip, "10.251.0.1"], live["metadata"]["resourceVersion"])
        body["metadata"]["namespace"] = "default"
        started = time.perf_counter()
        await client.replace(ENDPOINT_SLICES, body)
        while f"__{new_ip}/8080" not in await asyncio.to_thread(nft_list_chain, chain):  # the endpoint's chain
            pass
        total.append(time.perf_counter() - started)
        own.append(proxy.last_latency or 0.0)
        await asyncio.sleep(0.2)
    return total, own


def nft_floor(proxy: ServiceProxy, rounds: int = 10) -> float:
    ports = service_ports(proxy.services.list(), proxy.slices.list())
    script, _ = ruleset(TABLE + "-floor", ports, full=True)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", NETNS, "nft", "-f", "-"], input=script, text=True, check=True)
        times.append(time.perf_counter() - started)
    subprocess.run(["ip", "netns", "exec", NETNS, "nft", "delete", "table", "ip", TABLE + "-floor"], check=True)
    return statistics.median(times)


def ms(values: list[float], q: float) -> float:
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace, server: ServerProcess) -> None:
    async with ApiClient.from_config(load_kubeconfig(server.kubeconfig)) as client:
        made = 0
        print(f"{'services':>8} {'write->kernel p50':>18} {'p90':>8} {'proxy event->commit p50':>24} "
              f"{'nft -f full ruleset':>20} {'ratio p50/nft':>14}")
        for count in args.services:
            await create_services(client, count, made)
            made = count
            informers = SharedInformers(client)
            proxy = ServiceProxy(informers.informer(SERVICES), informers.informer(ENDPOINT_SLICES),
                                 ProxyOptions("bench", table=TABLE, nft_command=["ip", "netns", "exec", NETNS, "nft"]))
            await proxy.start()
            try:
                total, own = await measure(client, proxy, args.rounds)
                floor = nft_floor(proxy)
            finally:
                await proxy.stop()
                await informers.stop()
            p50 = ms(total, 0.5)
            print(f"{count:>8} {p50:>15.1f} ms {ms(total, 0.9):>5.1f} ms {ms(own, 0.5):>21.1f} ms "
                  f"{floor * 1000:>17.1f} ms {p50 / (floor * 1000):>13.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", default="1,100,1000", help="comma-separated Service counts")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    args.services = [int(n) for n in args.services.split(",")]
    root = Path(tempfile.mkdtemp(prefix="skiff-bench-proxy-"))
    server = ServerProcess(root, "--disable-controllers", "--disable-scheduler")
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        server.start()
        asyncio.run(run(args, server))
    finally:
        server.stop()
        subprocess.run(["ip", "netns", "delete", NETNS], check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()

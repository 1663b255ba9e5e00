"""``ServiceProxy`` end to end in a private network: Services and EndpointSlices written to a real ``skiff
server``, the proxy's table applied by real ``nft`` in the lab's node namespace, busybox ``wget`` from a
client namespace on the node's bridge to busybox ``httpd`` backends in namespaces of their own on that bridge.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from skiff.cluster.client import ENDPOINT_SLICES, SERVICES, ApiClient, SharedInformers
from skiff.cluster.proxy.proxier import ProxyOptions, ServiceProxy
from tests.cluster.proxy.conftest import make_service, ready, set_endpoints
from tests.cluster.proxy.netlab import GATEWAY, NetLab

pytestmark = pytest.mark.asyncio
TABLE = "skiff-proxytest"
HTTP = [{"name": "http", "port": 8080, "protocol": "TCP"}]


@pytest.fixture(scope="module")
def web(lab: NetLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two backends answering their own name on :8080, and a client: all on the node's bridge."""
    hosts = {name: lab.add_host(name) for name in ("be1", "be2", "client")}
    root = tmp_path_factory.mktemp("www")
    for name in ("be1", "be2"):
        lab.http_server(name, name, root / name)
    yield hosts


@pytest_asyncio.fixture
async def proxy(informers: SharedInformers, lab: NetLab) -> AsyncIterator[ServiceProxy]:
    options = ProxyOptions("n1", table=TABLE, nft_command=["ip", "netns", "exec", lab.node, "nft"])
    p = ServiceProxy(informers.informer(SERVICES), informers.informer(ENDPOINT_SLICES), options)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def table(lab: NetLab) -> str:
    result = lab.run("node", "nft", "list", "table", "ip", TABLE, check=False)
    return result.stdout if result.returncode == 0 else ""


async def until_table(lab: NetLab, *texts: str, absent: tuple[str, ...] = ()) -> None:
    async def check() -> bool:
        listed = await asyncio.to_thread(table, lab)
        return all(t in listed for t in texts) and not any(t in listed for t in absent)

    deadline = asyncio.get_running_loop().time() + 10
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the table never showed {texts} without {absent}:\n{table(lab)}")
        await asyncio.sleep(0.05)


async def fetch_many(lab: NetLab, where: str, url: str, n: int) -> collections.Counter[str | None]:
    bodies = [await asyncio.to_thread(lab.fetch, where, url) for _ in range(n)]
    return collections.Counter(bodies)


async def test_cluster_ip_balances_over_ready_endpoints_and_follows_changes(
        client: ApiClient, proxy: ServiceProxy, lab: NetLab, web: dict[str, str]) -> None:
    svc = await make_service(client, "web", [{"name": "http", "port": 80, "targetPort": 8080}])
    vip = svc["spec"]["clusterIP"]
    url = f"http://{vip}/"
    await set_endpoints(client, "web", ready(web["be1"], web["be2"]), HTTP)
    await until_table(lab, f"dnat to {web['be1']}:8080", f"dnat to {web['be2']}:8080")
    counts = await fetch_many(lab, "client", url, 30)
    assert set(counts) == {"be1", "be2"}, counts  # every request answered, by both backends
    # an endpoint that is no longer ready gets no more traffic
    not_ready = {"addresses": [web["be1"]], "conditions": {"ready": False}}
    await set_endpoints(client, "web", [*ready(web["be2"]), not_ready], HTTP)
    await until_table(lab, f"dnat to {web['be2']}:8080", absent=(f"dnat to {web['be1']}:8080",))
    assert await fetch_many(lab, "client", url, 10) == {"be2": 10}
    # the hairpin: a backend reaching its own Service lands on itself, and the answer comes back; with
    # br_netfilter (the DNAT on the bridge, the port in hairpin mode) and without (routed by the node: the
    # masquerade brings the reply back through it)
    assert await asyncio.to_thread(lab.fetch, "be2", url) == "be2"
    if lab.br_netfilter(False):
        try:
            assert await asyncio.to_thread(lab.fetch, "be2", url) == "be2"
            assert await fetch_many(lab, "client", url, 3) == {"be2": 3}
        finally:
            lab.br_netfilter(True)
    # processes of the node itself (the output hook)
    assert await asyncio.to_thread(lab.fetch, "node", url) == "be2"
    # no endpoint left: refused at once (TCP reset), as kube-proxy rejects
    await set_endpoints(client, "web", [], HTTP)
    await until_table(lab, f"{vip} . tcp . 80 : goto reject-chain")
    result = await asyncio.to_thread(lab.wget, "client", url)
    assert result.returncode != 0 and "refused" in result.stderr, result.stderr
    # a port the Service does not have is rejected too
    result = await asyncio.to_thread(lab.wget, "client", f"http://{vip}:81/")
    assert result.returncode != 0 and "refused" in result.stderr, result.stderr
    assert proxy.last_latency is not None


async def test_client_ip_affinity_sticks_to_one_endpoint(client: ApiClient, proxy: ServiceProxy, lab: NetLab,
                                                         web: dict[str, str]) -> None:
    svc = await make_service(client, "sticky", [{"name": "http", "port": 80, "targetPort": 8080}],
                             sessionAffinity="ClientIP",
                             sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    await set_endpoints(client, "sticky", ready(web["be1"], web["be2"]), HTTP)
    await until_table(lab, "affinity-", f"{svc['spec']['clusterIP']} . tcp . 80")
    counts = await fetch_many(lab, "client", f"http://{svc['spec']['clusterIP']}/", 12)
    assert len(counts) == 1 and None not in counts, counts
    [chosen] = counts
    assert f"elements = {{ {web['client']} " in table(lab)  # the client's entry, in the chosen endpoint's set
    # a second client is balanced on its own, and sticks as well
    assert len(await fetch_many(lab, "be1", f"http://{svc['spec']['clusterIP']}/", 6)) == 1
    assert chosen in ("be1", "be2")


async def test_node_port_on_the_node_addresses(client: ApiClient, proxy: ServiceProxy, lab: NetLab,
                                               web: dict[str, str]) -> None:
    svc = await make_service(client, "np", [{"name": "http", "port": 80, "targetPort": 8080}], type="NodePort")
    node_port = svc["spec"]["ports"][0]["nodePort"]
    await set_endpoints(client, "np", ready(web["be1"]), HTTP)
    await until_table(lab, f"tcp . {node_port} : goto service-")
    assert await asyncio.to_thread(lab.fetch, "client", f"http://{GATEWAY}:{node_port}/") == "be1"
    assert await asyncio.to_thread(lab.fetch, "node", f"http://{GATEWAY}:{node_port}/") == "be1"
    # not on loopback (kube's nftables mode neither: route_localnet stays off)
    assert await asyncio.to_thread(lab.fetch, "node", f"http://127.0.0.1:{node_port}/", 2) is None


async def test_full_resync_replaces_a_stale_table_and_stop_removes_it(
        client: ApiClient, informers: SharedInformers, lab: NetLab, web: dict[str, str]) -> None:
    lab.run("node", "nft", "add", "table", "ip", TABLE)
    lab.run("node", "nft", "add", "chain", "ip", TABLE, "left-behind")
    options = ProxyOptions("n1", table=TABLE, nft_command=["ip", "netns", "exec", lab.node, "nft"])
    p = ServiceProxy(informers.informer(SERVICES), informers.informer(ENDPOINT_SLICES), options)
    await p.start()
    try:
        listed = table(lab)
        assert "left-behind" not in listed and "chain services" in listed
    finally:
        await p.stop()
    assert TABLE not in lab.run("node", "nft", "list", "tables").stdout


async def test_load_balancer_ingress_addresses(client: ApiClient, proxy: ServiceProxy, lab: NetLab,
                                               web: dict[str, str]) -> None:
    """What ServiceLB writes (the node's address in status.loadBalancer.ingress) is DNAT-ed on the port."""
    await make_service(client, "lb", [{"name": "http", "port": 8081, "targetPort": 8080}], type="LoadBalancer")
    await client.patch(SERVICES, "lb", {"status": {"loadBalancer": {"ingress": [{"ip": GATEWAY}]}}},
                       namespace="default", subresource="status")
    await set_endpoints(client, "lb", ready(web["be2"]), HTTP)
    await until_table(lab, f"{GATEWAY} . tcp . 8081 : goto service-")
    assert await asyncio.to_thread(lab.fetch, "client", f"http://{GATEWAY}:8081/") == "be2"

"""``ApiClient`` against a real ``skiff server``: every verb, errors caught by meaning, watches, credentials."""

from __future__ import annotations

import asyncio

import pytest

from skiff import errors
from skiff.cluster.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    ApiClient,
    ApiStatusError,
    ClusterConfig,
    ConfigError,
    load_kubeconfig,
    resource_for,
)

pytestmark = pytest.mark.asyncio


def _cm(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"suite": "client"}},
            "data": data}


async def test_create_get_list_replace_delete(client: ApiClient) -> None:
    made = await client.create(CONFIGMAPS, _cm("c-a", one="1"), "default")
    assert made["metadata"]["uid"] and made["data"] == {"one": "1"}
    assert (await client.get(CONFIGMAPS, "c-a", "default"))["metadata"]["uid"] == made["metadata"]["uid"]
    listed = await client.list(CONFIGMAPS, "default", label_selector="suite=client")
    assert listed["kind"] == "ConfigMapList" and [i["metadata"]["name"] for i in listed["items"]] == ["c-a"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(made["metadata"]["resourceVersion"])
    made["data"] = {"one": "2"}
    replaced = await client.replace(CONFIGMAPS, made)
    assert replaced["data"] == {"one": "2"}
    with pytest.raises(errors.Conflict) as stale:  # made still carries the old resourceVersion
        await client.replace(CONFIGMAPS, made)
    assert isinstance(stale.value, ApiStatusError) and stale.value.conflict and stale.value.status_code == 409
    await client.delete(CONFIGMAPS, "c-a", "default")
    with pytest.raises(errors.NotFound) as missing:
        await client.get(CONFIGMAPS, "c-a", "default")
    assert missing.value.not_found and missing.value.reason == "NotFound"  # type: ignore[attr-defined]


async def test_errors_by_meaning(client: ApiClient) -> None:
    await client.create(CONFIGMAPS, _cm("c-dup"), "default")
    with pytest.raises(errors.AlreadyExists) as exists:
        await client.create(CONFIGMAPS, _cm("c-dup"), "default")
    assert exists.value.already_exists and exists.value.conflict  # type: ignore[attr-defined]
    with pytest.raises(errors.InvalidArgument) as invalid:
        await client.create(CONFIGMAPS, _cm("Not_A_Name"), "default")
    assert invalid.value.status_code == 422 and invalid.value.details["name"] == "Not_A_Name"  # type: ignore
    with pytest.raises(errors.NotFound):
        await client.delete(CONFIGMAPS, "c-missing", "default")
    with pytest.raises(errors.Conflict):  # a precondition that does not hold
        await client.delete(CONFIGMAPS, "c-dup", "default", preconditions={"uid": "not-its-uid"})
    await client.delete(CONFIGMAPS, "c-dup", "default")


async def test_patch_types(client: ApiClient) -> None:
    await client.create(CONFIGMAPS, _cm("c-p", a="1"), "default")
    merged = await client.patch(CONFIGMAPS, "c-p", {"data": {"b": "2"}}, namespace="default")
    assert merged["data"] == {"a": "1", "b": "2"}
    strategic = await client.patch(CONFIGMAPS, "c-p", {"data": {"c": "3"}}, namespace="default",
                                   patch_type="strategic")
    assert strategic["data"] == {"a": "1", "b": "2", "c": "3"}
    jsonpatch = await client.patch(CONFIGMAPS, "c-p", [{"op": "remove", "path": "/data/a"}], namespace="default",
                                   patch_type="json")
    assert jsonpatch["data"] == {"b": "2", "c": "3"}
    applied = await client.patch(CONFIGMAPS, "c-applied", {**_cm("c-applied", x="1")}, namespace="default",
                                 patch_type="apply", field_manager="skiff-test", force=True)
    assert applied["data"] == {"x": "1"}
    assert any(m["manager"] == "skiff-test" for m in applied["metadata"]["managedFields"])
    with pytest.raises(ValueError):
        await client.patch(CONFIGMAPS, "c-p", {}, namespace="default", patch_type="yaml")
    for name in ("c-p", "c-applied"):
        await client.delete(CONFIGMAPS, name, "default")


async def test_status_subresource_and_binding(client: ApiClient) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c-pod"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    await client.create(PODS, pod, "default")
    for _ in range(10):  # the scheduler may write the pod's status meanwhile: read, change, write, as clients do
        live = await client.get(PODS, "c-pod", "default")
        live["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        try:
            updated = await client.replace_status(PODS, live)
            break
        except errors.Conflict:
            continue
    assert updated["status"]["phase"] == "Running"
    patched = await client.patch(PODS, "c-pod", {"status": {"podIP": "10.42.0.9"}}, namespace="default",
                                 subresource="status")
    assert patched["status"]["podIP"] == "10.42.0.9" and patched["status"]["phase"] == "Running"
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "c-pod"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}}
    await client.create_subresource(PODS, "c-pod", "binding", binding, "default")
    assert (await client.get(PODS, "c-pod", "default"))["spec"]["nodeName"] == "node-a"
    await client.delete(PODS, "c-pod", "default", grace_period_seconds=0)


async def test_cluster_scoped_and_resource_for(client: ApiClient) -> None:
    names = [n["metadata"]["name"] for n in (await client.list(NAMESPACES))["items"]]
    assert {"default", "kube-system"} <= set(names)
    assert resource_for("apps/v1", "Deployment") == DEPLOYMENTS
    assert resource_for("v1", "Namespace") == NAMESPACES and not NAMESPACES.namespaced
    with pytest.raises(errors.NotFound):
        resource_for("example.com/v1", "Widget")


async def test_list_pages(client: ApiClient) -> None:
    for i in range(5):
        await client.create(CONFIGMAPS, {**_cm(f"c-page-{i}"), "metadata": {"name": f"c-page-{i}",
                                                                            "labels": {"suite": "pages"}}}, "default")
    names, token = [], None
    while True:
        page = await client.list(CONFIGMAPS, "default", label_selector="suite=pages", limit=2, continue_=token)
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert names == [f"c-page-{i}" for i in range(5)]
    for name in names:
        await client.delete(CONFIGMAPS, name, "default")


async def test_watch_from_resource_version(client: ApiClient) -> None:
    since = (await client.list(CONFIGMAPS, "default"))["metadata"]["resourceVersion"]
    await client.create(CONFIGMAPS, {**_cm("c-w"), "metadata": {"name": "c-w", "labels": {"suite": "watch"}}},
                        "default")
    await client.patch(CONFIGMAPS, "c-w", {"data": {"k": "v"}}, namespace="default")
    await client.delete(CONFIGMAPS, "c-w", "default")
    seen = []
    events = client.watch(CONFIGMAPS, "default", resource_version=since, label_selector="suite=watch",
                          timeout_seconds=5)
    async for event_type, obj in events:
        seen.append((event_type, obj["metadata"]["name"]))
        if len(seen) == 3:
            break
    await events.aclose()  # type: ignore[attr-defined]
    assert seen == [("ADDED", "c-w"), ("MODIFIED", "c-w"), ("DELETED", "c-w")]


async def test_watch_ends_with_its_timeout(client: ApiClient) -> None:
    rv = (await client.list(CONFIGMAPS, "default"))["metadata"]["resourceVersion"]
    seen = [e async for e in client.watch(CONFIGMAPS, "default", resource_version=rv, timeout_seconds=1,
                                          label_selector="suite=nothing-matches", allow_bookmarks=False)]
    assert seen == []


async def test_many_concurrent_requests_share_the_pool(client: ApiClient) -> None:
    answers = await asyncio.gather(*(client.get(NAMESPACES, "default") for _ in range(200)))
    assert {a["metadata"]["name"] for a in answers} == {"default"}


async def test_token_credentials_and_rbac(api_server, config: ClusterConfig) -> None:
    jane = ClusterConfig(server=config.server, ca_pem=config.ca_pem, token="jane-token")
    async with ApiClient.from_config(jane) as api:
        with pytest.raises(ApiStatusError) as denied:
            await api.list(PODS, "default")
        assert denied.value.forbidden and 'User "jane" cannot list resource "pods"' in denied.value.message
    wrong = ClusterConfig(server=config.server, ca_pem=config.ca_pem, token="no-such-token")
    async with ApiClient.from_config(wrong) as api:
        with pytest.raises(ApiStatusError) as anonymous:
            await api.get(NAMESPACES, "default")
        assert anonymous.value.status_code == 401


async def test_load_kubeconfig(api_server, tmp_path, monkeypatch) -> None:
    config = load_kubeconfig(api_server.kubeconfig)
    assert config.server == api_server.url and config.cert_pem and config.key_pem and config.ca_pem
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{api_server.kubeconfig}")
    assert load_kubeconfig().server == api_server.url  # the first file that exists and names the context
    with pytest.raises(ConfigError, match='context "nope" does not exist'):
        load_kubeconfig(api_server.kubeconfig, context="nope")
    with pytest.raises(ConfigError, match="no kubeconfig found"):
        load_kubeconfig(tmp_path / "missing")
    (tmp_path / "bad").write_text("clusters: [")
    with pytest.raises(errors.InvalidArgument, match="not a kubeconfig"):
        load_kubeconfig(tmp_path / "bad")


async def test_more_requests_than_connections_wait_their_turn(config: ClusterConfig) -> None:
    async with ApiClient.from_config(config, pool_size=3) as api:
        answers = await asyncio.gather(*(api.get(NAMESPACES, "default") for _ in range(60)))
        assert len(answers) == 60 and api._pool._open <= 3  # the pool never opened more


async def test_connections_closed_by_a_restarted_server_are_replaced(tmp_path) -> None:
    from tests.cluster.api.conftest import ServerProcess

    server = ServerProcess(tmp_path / "server")
    server.start()
    try:
        async with ApiClient.from_config(load_kubeconfig(server.kubeconfig), pool_size=4) as api:
            await asyncio.gather(*(api.get(NAMESPACES, "default") for _ in range(4)))  # four idle connections
            server.kill()
            with pytest.raises(OSError):
                await api.get(NAMESPACES, "default")  # nobody listening: a plain connection error
            # more requests than connections, none can connect: every one fails, none waits for ever
            failed = await asyncio.wait_for(asyncio.gather(*(api.get(NAMESPACES, "default") for _ in range(12)),
                                                           return_exceptions=True), 30)
            assert all(isinstance(f, OSError) for f in failed)
            await asyncio.to_thread(server.start)
            answers = await asyncio.gather(*(api.get(NAMESPACES, "default") for _ in range(12)))
            assert {a["metadata"]["name"] for a in answers} == {"default"}
    finally:
        server.stop()


async def test_chunked_bodies() -> None:
    from skiff.cluster.client.http import _dechunk

    assert _dechunk(bytearray(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")) == b"hello world"
    assert _dechunk(bytearray(b"5\r\nhello\r\n6\r\n wor")) is None  # not all there yet
    assert _dechunk(bytearray(b"5\r\nhello\r\n0\r\n")) is None

"""``Informer`` and the ``Controller`` harness against a real ``skiff server``.

The cache follows creates, updates and deletes; indexes follow changes; handlers hear everything; a server
that compacts away the informer's resourceVersion makes it relist, and a deletion it missed meanwhile still
reaches ``on_delete``; a server SIGKILLed and restarted is re-watched without a gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from skiff.cluster.client import CONFIGMAPS, ApiClient, Controller, Informer, load_kubeconfig, split_key
from tests.cluster.api.conftest import ServerProcess

pytestmark = pytest.mark.asyncio


def _cm(name: str, suite: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"suite": suite}},
            "data": data}


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Recorder:
    def __init__(self, informer: Informer) -> None:
        self.events: list[tuple[str, str]] = []
        informer.on_add(lambda o: self.events.append(("add", o["metadata"]["name"])))
        informer.on_update(lambda old, new: self.events.append(("update", new["metadata"]["name"])))
        informer.on_delete(lambda o: self.events.append(("delete", o["metadata"]["name"])))


async def test_cache_follows_the_server(client: ApiClient) -> None:
    await client.create(CONFIGMAPS, _cm("i-before", "inf", v="1"), "default")
    informer = Informer(client, CONFIGMAPS, "default", label_selector="suite=inf", page_size=1)
    informer.add_index("by-v", lambda o: [o.get("data", {}).get("v", "")])
    recorder = Recorder(informer)
    informer.start()
    try:
        await asyncio.wait_for(informer.wait_synced(), 10)
        assert informer.get("default", "i-before")["data"] == {"v": "1"}
        await client.create(CONFIGMAPS, _cm("i-after", "inf", v="1"), "default")
        await until(lambda: informer.get("default", "i-after") is not None)
        assert {o["metadata"]["name"] for o in informer.by_index("by-v", "1")} == {"i-before", "i-after"}
        await client.patch(CONFIGMAPS, "i-after", {"data": {"v": "2"}}, namespace="default")
        await until(lambda: informer.get("default", "i-after")["data"] == {"v": "2"})
        assert [o["metadata"]["name"] for o in informer.by_index("by-v", "1")] == ["i-before"]
        await client.delete(CONFIGMAPS, "i-before", "default")
        await until(lambda: informer.get("default", "i-before") is None)
        assert informer.by_index("by-v", "1") == [] and len(informer) == 1
        assert informer.list("default")[0]["kind"] == "ConfigMap"
        assert recorder.events == [("add", "i-before"), ("add", "i-after"), ("update", "i-after"),
                                   ("delete", "i-before")]
        late = []
        informer.on_add(lambda o: late.append(o["metadata"]["name"]))  # a late handler hears what is cached
        assert late == ["i-after"]
    finally:
        await informer.stop()
        await client.delete(CONFIGMAPS, "i-after", "default")


async def test_the_cache_holds_no_managed_fields_and_writing_back_keeps_the_servers(client: ApiClient) -> None:
    created = await client.create(CONFIGMAPS, _cm("i-trim", "trim", v="1"), "default")
    assert created["metadata"]["managedFields"]  # the server records who wrote what
    informer = Informer(client, CONFIGMAPS, "default", label_selector="suite=trim")
    untrimmed = Informer(client, CONFIGMAPS, "default", label_selector="suite=trim", transform=None)
    for one in (informer, untrimmed):
        one.start()
    try:
        await asyncio.wait_for(asyncio.gather(informer.wait_synced(), untrimmed.wait_synced()), 10)
        cached = informer.get("default", "i-trim")
        assert "managedFields" not in cached["metadata"]
        assert untrimmed.get("default", "i-trim")["metadata"]["managedFields"]
        changed = {**cached, "data": {"v": "2"}}  # a controller's write of what it read from its cache
        await client.replace(CONFIGMAPS, changed)
        await until(lambda: informer.get("default", "i-trim")["data"] == {"v": "2"})
        assert "managedFields" not in informer.get("default", "i-trim")["metadata"]  # watch events are trimmed too
        stored = await client.get(CONFIGMAPS, "i-trim", "default")
        assert {e["manager"] for e in stored["metadata"]["managedFields"]} >= \
            {e["manager"] for e in created["metadata"]["managedFields"]}
    finally:
        for one in (informer, untrimmed):
            await one.stop()
        await client.delete(CONFIGMAPS, "i-trim", "default")


async def test_controller_harness_retries_until_sync_succeeds(client: ApiClient) -> None:
    class Stamper(Controller):
        """Copies each ConfigMap's data.v into an annotation; the first attempt per key fails."""
        name = "stamper"

        def __init__(self, api: ApiClient) -> None:
            self.maps = Informer(api, CONFIGMAPS, "default", label_selector="suite=ctl")
            super().__init__(api, [self.maps])
            self.maps.on_add(lambda o: self.enqueue(f"default/{o['metadata']['name']}"))
            self.maps.on_update(lambda old, new: self.enqueue(f"default/{new['metadata']['name']}"))
            self.attempts: dict[str, int] = {}

        async def sync(self, key: str) -> None:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            if self.attempts[key] == 1:
                raise RuntimeError("first attempt fails")
            namespace, name = split_key(key)
            obj = self.maps.get(namespace, name)
            if obj is None:
                return
            value = obj.get("data", {}).get("v", "")
            if (obj["metadata"].get("annotations") or {}).get("stamp") != value:
                await self.client.patch(CONFIGMAPS, name, {"metadata": {"annotations": {"stamp": value}}},
                                        namespace=namespace)

    for name in ("s1", "s2"):
        await client.create(CONFIGMAPS, _cm(name, "ctl", v=name), "default")
    controller = Stamper(client)
    task = asyncio.create_task(controller.run())
    try:
        async def stamps() -> dict[str, str]:
            listed = await client.list(CONFIGMAPS, "default", label_selector="suite=ctl")
            return {i["metadata"]["name"]: (i["metadata"].get("annotations") or {}).get("stamp") for i in
                    listed["items"]}
        for _ in range(200):
            if await stamps() == {"s1": "s1", "s2": "s2"}:
                break
            await asyncio.sleep(0.05)
        assert await stamps() == {"s1": "s1", "s2": "s2"}
        assert controller.attempts["default/s1"] >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await controller.maps.stop()
        for name in ("s1", "s2"):
            await client.delete(CONFIGMAPS, name, "default")


@pytest.fixture(scope="module")
def compacting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that keeps only the last few revisions, compacting every 0.2 s."""
    server = ServerProcess(tmp_path_factory.mktemp("compacting"), "--compact-interval", "0.2",
                           "--compact-retain", "3")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_relists_when_its_resource_version_is_compacted(compacting_server: ServerProcess) -> None:
    async with ApiClient.from_config(load_kubeconfig(compacting_server.kubeconfig)) as api:
        await api.create(CONFIGMAPS, _cm("gone-1", "rl"), "default")
        await api.create(CONFIGMAPS, _cm("kept", "rl"), "default")
        informer = Informer(api, CONFIGMAPS, "default", label_selector="suite=rl")
        recorder = Recorder(informer)
        informer.start()
        await asyncio.wait_for(informer.wait_synced(), 10)
        await informer.stop()  # disconnected: what happens now it can learn only by relisting
        stale = informer.resource_version
        await api.delete(CONFIGMAPS, "gone-1", "default")
        await api.patch(CONFIGMAPS, "kept", {"data": {"k": "v"}}, namespace="default")
        for i in range(6):
            await api.create(CONFIGMAPS, _cm(f"filler-{i}", "other"), "default")
        await asyncio.sleep(0.6)  # a compaction or two
        with pytest.raises(Exception) as gone:
            async for _ in api.watch(CONFIGMAPS, "default", resource_version=stale):
                pass
        assert gone.value.gone  # type: ignore[attr-defined]
        informer.start()  # resumes from `stale`: 410, so it relists
        try:
            await until(lambda: informer.get("default", "gone-1") is None
                        and informer.get("default", "kept").get("data") == {"k": "v"})
            assert recorder.events[-2:] == [("delete", "gone-1"), ("update", "kept")]
            assert int(informer.resource_version) > int(stale)
        finally:
            await informer.stop()


async def test_rewatches_after_the_server_is_killed_and_restarted(tmp_path) -> None:
    server = ServerProcess(tmp_path / "server")
    server.start()
    try:
        async with ApiClient.from_config(load_kubeconfig(server.kubeconfig)) as api:
            informer = Informer(api, CONFIGMAPS, "default", label_selector="suite=restart")
            recorder = Recorder(informer)
            informer.start()
            await asyncio.wait_for(informer.wait_synced(), 10)
            server.kill()
            await asyncio.get_running_loop().run_in_executor(None, server.start)
            await api.create(CONFIGMAPS, _cm("after-restart", "restart"), "default")
            try:
                await until(lambda: informer.get("default", "after-restart") is not None, timeout=40)
                assert recorder.events == [("add", "after-restart")]
            finally:
                await informer.stop()
    finally:
        server.stop()

"""A generated name that is already taken is drawn again (kube 1.32's RetryGenerateName), on both stores."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from skiff.cluster.api import rest
from skiff.cluster.api.allocators import ServiceAllocator
from skiff.cluster.api.resources import BY_PATH
from skiff.cluster.api.status import ApiError
from skiff.cluster.store import Store

CONFIGMAPS = BY_PATH[("", "v1", "configmaps")]
NAMESPACES = BY_PATH[("", "v1", "namespaces")]
pytestmark = pytest.mark.asyncio


def drawing(monkeypatch: pytest.MonkeyPatch, suffixes: list[str]) -> Iterator[str]:
    """Make ``generate_name`` hand out ``suffixes`` in order; the names drawn so far."""
    drawn: list[str] = []

    def fake(prefix: str) -> str:
        drawn.append(prefix + suffixes[len(drawn)])
        return drawn[-1]

    monkeypatch.setattr(rest, "generate_name", fake)
    return drawn  # type: ignore[return-value]


async def registry_with_namespace(store: Store) -> tuple[rest.Registry, str]:
    """A registry on ``store`` and a namespace of its own (the etcd store is shared by the tests)."""
    registry = rest.Registry(store, ServiceAllocator(store, "10.43.0.0/16"))
    namespace = f"gen-{uuid.uuid4().hex[:8]}"
    await registry.create(NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    return registry, namespace


def config_map(**meta: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": dict(meta)}


async def test_a_taken_generated_name_is_drawn_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, namespace = await registry_with_namespace(store)
    drawn = drawing(monkeypatch, ["aaaaa", "aaaaa", "aaaaa", "bbbbb"])
    first = await registry.create(CONFIGMAPS, namespace, config_map(generateName="web-"))
    second = await registry.create(CONFIGMAPS, namespace, config_map(generateName="web-"))
    assert (first["metadata"]["name"], second["metadata"]["name"]) == ("web-aaaaa", "web-bbbbb")
    assert drawn == ["web-aaaaa", "web-aaaaa", "web-aaaaa", "web-bbbbb"]


async def test_after_eight_taken_names_the_conflict_is_reported(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, namespace = await registry_with_namespace(store)
    drawn = drawing(monkeypatch, ["aaaaa"] * (1 + rest.GENERATE_NAME_ATTEMPTS))
    await registry.create(CONFIGMAPS, namespace, config_map(generateName="web-"))
    with pytest.raises(ApiError) as caught:
        await registry.create(CONFIGMAPS, namespace, config_map(generateName="web-"))
    assert caught.value.code == 409 and len(drawn) == 1 + rest.GENERATE_NAME_ATTEMPTS


async def test_an_explicit_name_that_is_taken_is_not_retried(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, namespace = await registry_with_namespace(store)
    drawn = drawing(monkeypatch, [])
    await registry.create(CONFIGMAPS, namespace, config_map(name="fixed", generateName="web-"))
    with pytest.raises(ApiError) as caught:
        await registry.create(CONFIGMAPS, namespace, config_map(name="fixed", generateName="web-"))
    assert caught.value.code == 409 and drawn == []

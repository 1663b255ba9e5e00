"""The official ``kubernetes`` Python client against a real ``skiff server``: create, patch (strategic, JSON),
replace with a stale resourceVersion (409), list and watch resumed from a resourceVersion, delete.
"""

from __future__ import annotations

import pytest
from kubernetes import client, watch


def _cm(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"suite": "py"}},
            "data": data}


def test_create_patch_delete(k8s) -> None:
    core = client.CoreV1Api(k8s)
    made = core.create_namespaced_config_map("default", _cm("py-a", one="1"))
    assert made.metadata.uid and int(made.metadata.resource_version) > 0
    patched = core.patch_namespaced_config_map("py-a", "default", {"data": {"two": "2"}})
    assert patched.data == {"one": "1", "two": "2"}
    patched = core.patch_namespaced_config_map("py-a", "default", [{"op": "remove", "path": "/data/one"}])
    assert patched.data == {"two": "2"}
    core.delete_namespaced_config_map("py-a", "default")
    with pytest.raises(client.ApiException) as missing:
        core.read_namespaced_config_map("py-a", "default")
    assert missing.value.status == 404


def test_conflicts_are_409(k8s) -> None:
    core = client.CoreV1Api(k8s)
    made = core.create_namespaced_config_map("default", _cm("py-b", v="1"))
    with pytest.raises(client.ApiException) as exists:
        core.create_namespaced_config_map("default", _cm("py-b"))
    assert exists.value.status == 409 and "AlreadyExists" in exists.value.body
    core.patch_namespaced_config_map("py-b", "default", {"data": {"v": "2"}})
    made.data = {"v": "stale"}
    with pytest.raises(client.ApiException) as stale:
        core.replace_namespaced_config_map("py-b", "default", made)  # carries the old resourceVersion
    assert stale.value.status == 409 and "the object has been modified" in stale.value.body
    assert core.read_namespaced_config_map("py-b", "default").data == {"v": "2"}
    core.delete_namespaced_config_map("py-b", "default")


def test_list_then_watch_resumes_from_resource_version(k8s) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_config_map("default", _cm("py-w1"))
    listed = core.list_namespaced_config_map("default", label_selector="suite=py")
    assert [i.metadata.name for i in listed.items] == ["py-w1"]
    since = listed.metadata.resource_version
    core.create_namespaced_config_map("default", _cm("py-w2"))
    core.patch_namespaced_config_map("py-w1", "default", {"data": {"k": "v"}})
    core.delete_namespaced_config_map("py-w2", "default")
    seen = []
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_config_map, "default", label_selector="suite=py",
                               resource_version=since, timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 3:
            stream.stop()
    assert seen == [("ADDED", "py-w2"), ("MODIFIED", "py-w1"), ("DELETED", "py-w2")]
    core.delete_namespaced_config_map("py-w1", "default")


def test_watch_from_zero_replays_current_state(k8s) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_config_map("default", _cm("py-z"))
    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_config_map, "default", label_selector="suite=py", timeout_seconds=1)]
    assert events == [("ADDED", "py-z")]
    core.delete_namespaced_config_map("py-z", "default")


def test_deployments_scale_and_status_subresources(k8s) -> None:
    apps = client.AppsV1Api(k8s)
    body = {"metadata": {"name": "py-d"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "py-d"}},
        "template": {"metadata": {"labels": {"app": "py-d"}},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
    made = apps.create_namespaced_deployment("default", body)
    assert made.metadata.generation == 1 and made.spec.template.spec.restart_policy == "Always"
    scale = apps.patch_namespaced_deployment_scale("py-d", "default", {"spec": {"replicas": 4}})
    assert scale.spec.replicas == 4 and scale.status.selector == "app=py-d"
    after = apps.read_namespaced_deployment("py-d", "default")
    assert after.spec.replicas == 4 and after.metadata.generation == 2
    # status writes touch status only; spec writes ignore status
    apps.patch_namespaced_deployment_status("py-d", "default", {"status": {"replicas": 3, "observedGeneration": 2},
                                                                "spec": {"replicas": 9}})
    after = apps.read_namespaced_deployment("py-d", "default")
    assert (after.status.replicas, after.spec.replicas, after.metadata.generation) == (3, 4, 2)
    apps.patch_namespaced_deployment("py-d", "default", {"status": {"replicas": 7}, "metadata": {"labels": {"x": "y"}}})
    after = apps.read_namespaced_deployment("py-d", "default")
    assert after.status.replicas == 3 and after.metadata.labels == {"x": "y"} and after.metadata.generation == 2
    apps.delete_namespaced_deployment("py-d", "default")

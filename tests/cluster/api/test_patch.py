"""Tests of skiff.cluster.api.patch: JSON patch, merge patch, strategic merge patch, server-side apply.

The three patch types are checked against kubectl itself: ``kubectl patch --local`` applies a patch with the
strategic-merge metadata compiled into kubectl (the same Go structs kube-apiserver uses), so every case here,
and the hypothesis-generated ones, compare Skiff's answer with the real implementation's. Server-side apply
has no local peer; its cases follow kube's documented semantics (field ownership, conflicts, removal of fields
a manager stops applying).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skiff.cluster.api import patch
from skiff.cluster.api.patch import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    ApplyConflict,
    PatchError,
    UnsupportedPatchType,
)

DEPLOYMENT = ("apps", "v1", "Deployment")
POD = ("", "v1", "Pod")
SERVICE = ("", "v1", "Service")


def _kubectl() -> str | None:
    versioned = Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
    if versioned.exists():
        return str(versioned)  # skip the dispatcher: it would look for a server to pick a version
    return shutil.which("kubectl")


KUBECTL = _kubectl()
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
_KUBECTL_TYPES = {JSON_PATCH: "json", MERGE_PATCH: "merge", STRATEGIC_MERGE_PATCH: "strategic"}


def kubectl_patch(obj: dict, body: Any, content_type: str) -> dict | str:
    """kubectl's own result of patching ``obj`` locally: the patched object, or its error message."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch, "object.json")
        source.write_text(json.dumps(obj))
        result = subprocess.run(
            [KUBECTL, "patch", "--local", "-f", str(source), "--type", _KUBECTL_TYPES[content_type],
             "-p", json.dumps(body), "-o", "json"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": "/dev/null"},
        )
    if result.returncode != 0:
        return result.stderr.strip()
    return json.loads(result.stdout)


def skiff_patch(obj: dict, body: Any, content_type: str, gvk: tuple[str, str, str]) -> dict | str:
    try:
        return patch.apply_patch(obj, json.dumps(body).encode(), content_type, gvk)
    except PatchError as error:
        return f"error: {error}"


def assert_same_as_kubectl(obj: dict, body: Any, content_type: str, gvk: tuple[str, str, str]) -> dict:
    ours = skiff_patch(obj, body, content_type, gvk)
    theirs = kubectl_patch(obj, body, content_type)
    if isinstance(theirs, str):
        assert isinstance(ours, str), f"kubectl refused ({theirs}) but Skiff produced {ours}"
    else:
        assert ours == theirs
    return ours


def deployment(containers: list[dict] | None = None, **spec: Any) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers or [{"name": "nginx", "image": "nginx:1.25"}]},
            },
            **spec,
        },
    }


def pod(**spec: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}], **spec},
    }


def containers_of(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"]["containers"]


# --- JSON patch -----------------------------------------------------------------------------------------

JSON_PATCH_CASES = [
    [{"op": "replace", "path": "/spec/replicas", "value": 3}],
    [{"op": "add", "path": "/metadata/annotations", "value": {"a/b": "1", "c~d": "2"}},
     {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "x"},
     {"op": "remove", "path": "/metadata/annotations/c~0d"}],
    [{"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "side", "image": "busybox"}}],
    [{"op": "add", "path": "/spec/template/spec/containers/0", "value": {"name": "init", "image": "busybox"}}],
    [{"op": "remove", "path": "/spec/template/spec/containers/0/image"}],
    [{"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"}],
    [{"op": "move", "from": "/metadata/labels", "path": "/metadata/annotations"}],
    [{"op": "test", "path": "/spec/replicas", "value": 1}, {"op": "replace", "path": "/spec/replicas", "value": 2}],
    [{"op": "test", "path": "/spec/replicas", "value": 5}],
    [{"op": "remove", "path": "/spec/missing"}],
    [{"op": "replace", "path": "/spec/missing", "value": 1}],
    [{"op": "add", "path": "/spec/missing/deeper", "value": 1}],
    [{"op": "add", "path": "/spec/template/spec/containers/5", "value": {}}],
    # rollout undo: replace the template and the annotations wholesale
    [{"op": "replace", "path": "/spec/template", "value": {"metadata": {"labels": {"app": "web"}},
                                                           "spec": {"containers": [{"name": "n", "image": "x"}]}}},
     {"op": "replace", "path": "/metadata/labels", "value": {"rev": "2"}}],
]


@needs_kubectl
@pytest.mark.parametrize("operations", JSON_PATCH_CASES, ids=range(len(JSON_PATCH_CASES)))
def test_json_patch_matches_kubectl(operations: list[dict]) -> None:
    assert_same_as_kubectl(deployment(), operations, JSON_PATCH, DEPLOYMENT)


def test_json_patch_errors_are_422_and_leave_live_untouched() -> None:
    live = deployment()
    before = copy.deepcopy(live)
    with pytest.raises(PatchError) as failed:
        patch.apply_patch(live, b'[{"op":"test","path":"/spec/replicas","value":9}]', JSON_PATCH, DEPLOYMENT)
    assert failed.value.bad_request is False
    assert "testing value /spec/replicas failed" in str(failed.value)
    with pytest.raises(PatchError) as missing:
        patch.apply_patch(live, b'[{"op":"remove","path":"/nope"}]', JSON_PATCH, DEPLOYMENT)
    assert missing.value.bad_request is False
    with pytest.raises(PatchError) as unknown_op:
        patch.apply_patch(live, b'[{"op":"frobnicate","path":"/spec"}]', JSON_PATCH, DEPLOYMENT)
    assert unknown_op.value.bad_request is False
    assert live == before


@pytest.mark.parametrize("body", [b"{", b'{"op":"add"}', b'["add"]', b"\xff"])
def test_unparseable_patches_are_bad_requests(body: bytes) -> None:
    for content_type in (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        if content_type != JSON_PATCH and body.startswith(b'{"op"'):
            continue  # an object is a valid merge patch
        with pytest.raises(PatchError) as failed:
            patch.apply_patch(deployment(), body, content_type, DEPLOYMENT)
        assert failed.value.bad_request is True


def test_json_patch_applied_successively_is_sequential() -> None:
    result = patch.apply_patch(
        {"a": [1, 2, 3]},
        b'[{"op":"remove","path":"/a/0"},{"op":"add","path":"/a/1","value":9},{"op":"move","from":"/a/0","path":"/b"}]',
        JSON_PATCH, POD,
    )
    assert result == {"a": [9, 3], "b": 2}


def test_unknown_content_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedPatchType):
        patch.apply_patch(deployment(), b"{}", "application/xml", DEPLOYMENT)


# --- merge patch ----------------------------------------------------------------------------------------

MERGE_PATCH_CASES = [
    {"spec": {"replicas": 5}},  # kubectl scale
    {"metadata": {"labels": {"tier": "web", "app": None}}},  # kubectl label tier=web app-
    {"metadata": {"annotations": {"note": "x"}}},  # kubectl annotate
    {"spec": {"template": {"spec": {"containers": [{"name": "only"}]}}}},  # lists are replaced
    {"spec": None},
    {},
]


@needs_kubectl
@pytest.mark.parametrize("body", MERGE_PATCH_CASES, ids=range(len(MERGE_PATCH_CASES)))
def test_merge_patch_matches_kubectl(body: dict) -> None:
    assert_same_as_kubectl(deployment(), body, MERGE_PATCH, DEPLOYMENT)


# --- strategic merge patch ------------------------------------------------------------------------------


def test_kubectl_reapply_patch_updates_the_image_and_keeps_the_rest() -> None:
    # The exact patch kubectl 1.32 sends on a re-apply that changes the image (kubectl-api-notes.md).
    live = deployment([{"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "imagePullPolicy": "IfNotPresent"}])
    live["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{...old...}"}
    body = {
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...new...}"}},
        "spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "nginx"}],
                                       "containers": [{"image": "nginx:1.27", "name": "nginx"}]}}},
    }
    result = patch.apply_patch(live, json.dumps(body).encode(), STRATEGIC_MERGE_PATCH, DEPLOYMENT)
    assert containers_of(result) == [{"name": "nginx", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
                                      "ports": [{"containerPort": 80, "protocol": "TCP"}]}]
    assert result["metadata"]["annotations"] == {"kubectl.kubernetes.io/last-applied-configuration": "{...new...}"}
    assert result["spec"]["replicas"] == 1
    assert "$setElementOrder/containers" not in json.dumps(result)


STRATEGIC_CASES: list[tuple[str, dict, dict]] = [
    ("add a container: new items go first", deployment(),
     {"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "busybox"}]}}}}),
    ("set element order places a new container", deployment(),
     {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "nginx"}, {"name": "side"}],
                                     "containers": [{"name": "side", "image": "busybox"}]}}}}),
    ("set element order with server-only items",
     deployment([{"name": n, "image": n} for n in ("a", "b", "c", "d")]),
     {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "d"}, {"name": "b"}]}}}}),
    ("delete a container with $patch: delete",
     deployment([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]),
     {"spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}}}),
    ("replace the containers with $patch: replace",
     deployment([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]),
     {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "c"}, {"$patch": "replace"}]}}}}),
    ("replace a map with $patch: replace", deployment(),
     {"metadata": {"labels": {"$patch": "replace", "only": "this"}}}),
    ("delete a map with $patch: delete", deployment(), {"metadata": {"labels": {"$patch": "delete"}}}),
    ("null deletes a key", deployment(), {"spec": {"replicas": None}, "metadata": {"labels": {"app": None}}}),
    ("env merges by name",
     deployment([{"name": "a", "image": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]),
     {"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "3"},
                                                                          {"name": "Z", "value": "4"}]}]}}}}),
    ("ports merge by containerPort",
     deployment([{"name": "a", "image": "a", "ports": [{"containerPort": 80, "name": "http"}]}]),
     {"spec": {"template": {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 443}]}]}}}}),
    ("volumeMounts merge by mountPath",
     deployment([{"name": "a", "image": "a", "volumeMounts": [{"name": "v", "mountPath": "/data"}]}]),
     {"spec": {"template": {"spec": {"containers": [{"name": "a", "volumeMounts": [
         {"name": "w", "mountPath": "/data", "readOnly": True}, {"name": "c", "mountPath": "/cache"}]}]}}}}),
    ("args are replaced, not merged",
     deployment([{"name": "a", "image": "a", "args": ["x", "y"]}]),
     {"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["z"]}]}}}}),
    ("tolerations are replaced", deployment(tolerations=None),
     {"spec": {"template": {"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}}}),
    ("volumes merge by name",
     deployment(),
     {"spec": {"template": {"spec": {"volumes": [{"name": "data", "emptyDir": {}}]}}}}),
    ("retainKeys clears the other member of a union",
     deployment(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}),
     {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
    ("rollout restart annotation", deployment(),
     {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}}),
    ("kubectl set image", deployment(),
     {"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}}}),
    ("new list item carries its directives away", deployment(),
     {"spec": {"template": {"spec": {"initContainers": [{"name": "i", "image": "i"}, {"name": "x", "$patch": "delete"}]
                                     }}}}),
    ("delete a container that is not there", deployment(),
     {"spec": {"template": {"spec": {"containers": [{"name": "ghost", "$patch": "delete"}]}}}}),
    ("set element order that contradicts the patch list",
     deployment([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]),
     {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                                     "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}}),
    ("unknown directive", deployment(), {"metadata": {"labels": {"$patch": "frobnicate"}}}),
    ("keyed item without its merge key", deployment(),
     {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
]


@needs_kubectl
@pytest.mark.parametrize(("description", "live", "body"), STRATEGIC_CASES, ids=[c[0] for c in STRATEGIC_CASES])
def test_strategic_merge_patch_matches_kubectl(description: str, live: dict, body: dict) -> None:
    assert_same_as_kubectl(live, body, STRATEGIC_MERGE_PATCH, DEPLOYMENT)


POD_STRATEGIC_CASES: list[tuple[str, dict, dict]] = [
    ("finalizers merge as a set", {**pod(), "metadata": {"name": "p", "finalizers": ["a", "b"]}},
     {"metadata": {"finalizers": ["b", "c"]}}),
    ("$deleteFromPrimitiveList removes finalizers", {**pod(), "metadata": {"name": "p", "finalizers": ["a", "b"]}},
     {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "zz"]}}),
    ("ownerReferences merge by uid",
     {**pod(), "metadata": {"name": "p", "ownerReferences": [{"uid": "1", "kind": "ReplicaSet", "name": "r",
                                                              "apiVersion": "apps/v1"}]}},
     {"metadata": {"ownerReferences": [{"uid": "2", "kind": "Node", "name": "n", "apiVersion": "v1"}]}}),
    ("conditions merge by type",
     {**pod(), "status": {"conditions": [{"type": "Ready", "status": "False"},
                                         {"type": "PodScheduled", "status": "True"}]}},
     {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    ("hostAliases merge by ip", pod(hostAliases=[{"ip": "1.2.3.4", "hostnames": ["a"]}]),
     {"spec": {"hostAliases": [{"ip": "1.2.3.4", "hostnames": ["b"]}, {"ip": "5.6.7.8", "hostnames": ["c"]}]}}),
    ("imagePullSecrets merge by name", pod(imagePullSecrets=[{"name": "a"}]),
     {"spec": {"imagePullSecrets": [{"name": "b"}]}}),
    ("ephemeral containers merge by name", pod(),
     {"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox"}]}}),
    ("readinessGates are replaced", pod(readinessGates=[{"conditionType": "a"}]),
     {"spec": {"readinessGates": [{"conditionType": "b"}]}}),
]


@needs_kubectl
@pytest.mark.parametrize(("description", "live", "body"), POD_STRATEGIC_CASES, ids=[c[0] for c in POD_STRATEGIC_CASES])
def test_strategic_merge_patch_on_pods_matches_kubectl(description: str, live: dict, body: dict) -> None:
    assert_same_as_kubectl(live, body, STRATEGIC_MERGE_PATCH, POD)


@needs_kubectl
def test_service_ports_merge_by_port() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}
    body = {"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443, "targetPort": 8443}]}}
    result = assert_same_as_kubectl(service, body, STRATEGIC_MERGE_PATCH, SERVICE)
    assert {p["port"]: p["targetPort"] for p in result["spec"]["ports"]} == {80: 9090, 443: 8443}


def test_strategic_merge_patch_on_a_custom_resource_is_unsupported() -> None:
    foo = {"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": "x"}, "spec": {"a": 1}}
    with pytest.raises(UnsupportedPatchType):
        patch.apply_patch(foo, b'{"spec":{"b":2}}', STRATEGIC_MERGE_PATCH, ("example.com", "v1", "Foo"))
    # merge patch works for them
    assert patch.apply_patch(foo, b'{"spec":{"b":2}}', MERGE_PATCH, ("example.com", "v1", "Foo"))["spec"] == {
        "a": 1, "b": 2}


@needs_kubectl
def test_malformed_directives_are_bad_requests() -> None:
    live = deployment(strategy={"type": "RollingUpdate"})
    for body in ({"metadata": {"labels": {"$patch": "frobnicate"}}},
                 {"metadata": {"$deleteFromPrimitiveList": ["a"]}},
                 {"spec": {"strategy": {"$retainKeys": "type", "type": "Recreate"}}},
                 {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "other": 1}}}):
        assert isinstance(kubectl_patch(live, body, STRATEGIC_MERGE_PATCH), str), body
        with pytest.raises(PatchError) as failed:
            patch.apply_patch(live, json.dumps(body).encode(), STRATEGIC_MERGE_PATCH, DEPLOYMENT)
        assert failed.value.bad_request is True, body


# --- property tests -------------------------------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c", "d/e", "f~g"])
_scalars = st.one_of(st.integers(-3, 3), st.booleans(), st.text("xyz", max_size=3))
_json = st.recursive(
    _scalars | st.lists(_scalars, max_size=3),
    lambda children: st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)
_objects = st.dictionaries(_keys, _json, max_size=4)


_pointer_tokens = st.sampled_from(["a", "b", "c/d", "e~f", "0", "1", "2", "-", "-1", "-3", "01", "7", "+1"])
_pointers = st.builds(
    lambda root, rest: "/".join([root, *(t.replace("~", "~0").replace("/", "~1") for t in rest)]),
    st.sampled_from(["/x", "/y"]), st.lists(_pointer_tokens, max_size=2),
)
_operations = st.one_of(
    st.builds(lambda p, v: {"op": "add", "path": p, "value": v}, _pointers, _json),
    st.builds(lambda p: {"op": "remove", "path": p}, _pointers),
    st.builds(lambda p, v: {"op": "replace", "path": p, "value": v}, _pointers, _json),
    st.builds(lambda p, f: {"op": "move", "from": f, "path": p}, _pointers, _pointers),
    st.builds(lambda p, f: {"op": "copy", "from": f, "path": p}, _pointers, _pointers),
    st.builds(lambda p, v: {"op": "test", "path": p, "value": v}, _pointers, _json),
)
_documents = st.fixed_dictionaries({
    "x": st.lists(_json, max_size=3),
    "y": st.dictionaries(st.sampled_from(["a", "b", "c/d", "e~f", "0"]), _json, max_size=3),
})


@needs_kubectl
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents, st.lists(_operations, min_size=1, max_size=3))
def test_json_patch_fuzz_matches_kubectl(document: dict, operations: list[dict]) -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, **document}
    assert_same_as_kubectl(obj, operations, JSON_PATCH, ("", "v1", "ConfigMap"))


@needs_kubectl
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents, st.dictionaries(st.sampled_from(["x", "y", "z"]), st.none() | _json, max_size=3))
def test_merge_patch_fuzz_matches_kubectl(document: dict, body: dict) -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, **document}
    assert_same_as_kubectl(obj, body, MERGE_PATCH, ("", "v1", "ConfigMap"))


@given(_objects, _objects)
def test_merge_patch_of_a_diff_turns_a_into_b(a: dict, b: dict) -> None:
    diff = patch.create_merge_patch(a, b)
    assert patch.apply_patch(a, json.dumps(diff).encode(), MERGE_PATCH, ("example.com", "v1", "Foo")) == b


@given(_objects, _keys, _json)
def test_json_patch_add_then_remove_is_identity(obj: dict, key: str, value: Any) -> None:
    pointer = "/" + key.replace("~", "~0").replace("/", "~1")
    if key in obj:
        return
    body = json.dumps([{"op": "add", "path": pointer, "value": value}, {"op": "remove", "path": pointer}])
    assert patch.apply_patch(obj, body.encode(), JSON_PATCH, POD) == obj


@given(_objects, _objects)
def test_strategic_merge_without_lists_is_a_merge_patch(live: dict, body: dict) -> None:
    # On a kind without merge keys (a ConfigMap here) strategic merge degenerates to RFC 7386.
    def no_directives(value: Any) -> bool:
        return not isinstance(value, dict) or all(not k.startswith("$") and no_directives(v) for k, v in value.items())

    if not no_directives(body):
        return
    expected = patch.apply_patch(live, json.dumps(body).encode(), MERGE_PATCH, ("", "v1", "ConfigMap"))
    assert patch.apply_patch(live, json.dumps(body).encode(), STRATEGIC_MERGE_PATCH, ("", "v1", "ConfigMap")) == \
        expected


_names = st.sampled_from(["a", "b", "c", "d"])
_container = st.fixed_dictionaries(
    {"name": _names},
    optional={"image": st.sampled_from(["x", "y"]), "args": st.lists(st.sampled_from(["1", "2"]), max_size=2),
              "env": st.lists(st.fixed_dictionaries({"name": _names, "value": st.sampled_from(["1", "2"])}),
                              max_size=2, unique_by=lambda e: e["name"])},
)
_containers = st.lists(_container, min_size=1, max_size=3, unique_by=lambda c: c["name"])
_patch_item = st.one_of(
    _container,
    st.builds(lambda name: {"name": name, "$patch": "delete"}, _names),
)


@st.composite
def _container_patches(draw: st.DrawFn) -> dict:
    items = draw(st.lists(_patch_item, max_size=3, unique_by=lambda c: c["name"]))
    spec: dict[str, Any] = {"containers": items}
    if draw(st.booleans()):
        order = [{"name": c["name"]} for c in items if "$patch" not in c]
        order += [{"name": n} for n in draw(st.lists(_names, max_size=2, unique=True)) if {"name": n} not in order]
        spec["$setElementOrder/containers"] = order
    if draw(st.booleans()):
        spec["$deleteFromPrimitiveList/args"] = ["1"]
    return {"spec": {"template": {"spec": spec}}, "metadata": {"labels": draw(
        st.dictionaries(st.sampled_from(["app", "tier"]), st.none() | st.sampled_from(["v"]), max_size=2))}}


@needs_kubectl
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_containers, _container_patches())
def test_strategic_merge_of_containers_matches_kubectl(containers: list[dict], body: dict) -> None:
    assert_same_as_kubectl(deployment(containers), body, STRATEGIC_MERGE_PATCH, DEPLOYMENT)


_finalizers = st.lists(st.sampled_from(["f1", "f2", "f3"]), max_size=3, unique=True)
_env = st.lists(st.fixed_dictionaries({"name": _names, "value": st.sampled_from(["1", "2"])}), max_size=3,
                unique_by=lambda e: e["name"])
_ports = st.lists(st.fixed_dictionaries({"containerPort": st.sampled_from([80, 443, 8080])},
                                        optional={"name": st.sampled_from(["web", "tls"])}),
                  max_size=2, unique_by=lambda p: p["containerPort"])
_pod_container = st.fixed_dictionaries({"name": _names}, optional={"image": st.sampled_from(["x", "y"]),
                                                                   "env": _env, "ports": _ports})
_conditions = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["Ready", "Initialized", "PodScheduled"]),
                                              "status": st.sampled_from(["True", "False"])}),
                       max_size=3, unique_by=lambda c: c["type"])


@st.composite
def _live_pods(draw: st.DrawFn) -> dict:
    live = pod()
    live["metadata"]["finalizers"] = draw(_finalizers)
    live["spec"]["containers"] = draw(st.lists(_pod_container, min_size=1, max_size=3, unique_by=lambda c: c["name"]))
    live["status"] = {"conditions": draw(_conditions)}
    return live


@st.composite
def _pod_patches(draw: st.DrawFn) -> dict:
    metadata: dict[str, Any] = {}
    if draw(st.booleans()):
        metadata["finalizers"] = draw(_finalizers)
    if draw(st.booleans()):
        # never an item both added and deleted: kube's result then depends on Go's map order
        deleted = [f for f in draw(_finalizers) if f not in metadata.get("finalizers", [])]
        metadata["$deleteFromPrimitiveList/finalizers"] = deleted
    if draw(st.booleans()):
        metadata["$setElementOrder/finalizers"] = sorted(set(metadata.get("finalizers", []) + draw(_finalizers)))
    containers = []
    for container in draw(st.lists(_pod_container, max_size=2, unique_by=lambda c: c["name"])):
        if "env" in container and draw(st.booleans()):
            container["$setElementOrder/env"] = [{"name": e["name"]} for e in container["env"]]
        if draw(st.booleans()):
            container["env"] = [*container.get("env", []), {"name": "gone", "$patch": "delete"}]
        containers.append(container)
    body: dict[str, Any] = {"metadata": metadata, "spec": {"containers": containers}}
    if draw(st.booleans()):
        body["status"] = {"conditions": draw(_conditions)}
    return body


@needs_kubectl
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_live_pods(), _pod_patches())
def test_strategic_merge_of_pods_matches_kubectl(live: dict, body: dict) -> None:
    assert_same_as_kubectl(live, body, STRATEGIC_MERGE_PATCH, POD)


# --- server-side apply ----------------------------------------------------------------------------------


def applied(replicas: int | None = 2, image: str = "nginx:1.25", **extra: Any) -> dict:
    config = deployment([{"name": "nginx", "image": image}])
    del config["metadata"]["namespace"]
    if replicas is None:
        del config["spec"]["replicas"]
    else:
        config["spec"]["replicas"] = replicas
    config["spec"].update(extra)
    return config


def managers(obj: dict) -> dict[tuple[str, str], dict]:
    return {(e["manager"], e["operation"]): e for e in obj["metadata"].get("managedFields", [])}


def test_apply_creates_and_records_the_applied_fields() -> None:
    created = patch.server_side_apply(None, applied(), "kubectl", False, DEPLOYMENT)
    assert created["spec"]["replicas"] == 2
    entry = managers(created)[("kubectl", "Apply")]
    assert entry["apiVersion"] == "apps/v1"
    assert entry["fieldsType"] == "FieldsV1"
    assert entry["time"].endswith("Z")
    fields = entry["fieldsV1"]
    assert fields["f:spec"]["f:replicas"] == {}
    assert fields["f:spec"]["f:selector"] == {}  # a label selector is owned as one field
    assert fields["f:metadata"]["f:labels"] == {"f:app": {}}
    container = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"nginx"}']
    assert container == {".": {}, "f:image": {}, "f:name": {}}
    assert "f:name" not in fields["f:metadata"]  # server-owned identity fields are not tracked


def test_apply_is_idempotent() -> None:
    first = patch.server_side_apply(None, applied(), "kubectl", False, DEPLOYMENT)
    second = patch.server_side_apply(first, applied(), "kubectl", False, DEPLOYMENT)
    assert second == first


def test_apply_conflicts_with_a_field_another_manager_set() -> None:
    created = patch.record_update(None, applied(replicas=1), "kubectl-client-side-apply", DEPLOYMENT)
    with pytest.raises(ApplyConflict) as conflict:
        patch.server_side_apply(created, applied(replicas=3), "kubectl", False, DEPLOYMENT)
    assert conflict.value.causes == [{
        "type": "FieldManagerConflict",
        "message": 'conflict with "kubectl-client-side-apply" using apps/v1',
        "field": ".spec.replicas",
    }]
    assert str(conflict.value) == (
        'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas'
    )


def test_apply_with_the_same_value_shares_ownership_without_conflict() -> None:
    created = patch.record_update(None, applied(replicas=2), "kubectl-client-side-apply", DEPLOYMENT)
    result = patch.server_side_apply(created, applied(replicas=2), "kubectl", False, DEPLOYMENT)
    owners = managers(result)
    assert "f:replicas" in owners[("kubectl", "Apply")]["fieldsV1"]["f:spec"]
    assert "f:replicas" in owners[("kubectl-client-side-apply", "Update")]["fieldsV1"]["f:spec"]


def test_forced_apply_takes_ownership() -> None:
    created = patch.record_update(None, applied(replicas=1), "kubectl-client-side-apply", DEPLOYMENT)
    result = patch.server_side_apply(created, applied(replicas=3, image="nginx:1.27"), "kubectl", True, DEPLOYMENT)
    assert result["spec"]["replicas"] == 3
    owners = managers(result)
    assert "f:replicas" not in owners[("kubectl-client-side-apply", "Update")]["fieldsV1"]["f:spec"]
    assert "f:replicas" in owners[("kubectl", "Apply")]["fieldsV1"]["f:spec"]


def test_conflicts_name_keyed_list_items_like_kube() -> None:
    created = patch.server_side_apply(None, applied(), "alice", False, DEPLOYMENT)
    with pytest.raises(ApplyConflict) as conflict:
        patch.server_side_apply(created, applied(image="nginx:1.27"), "bob", False, DEPLOYMENT)
    fields = {cause["field"] for cause in conflict.value.causes}
    assert '.spec.template.spec.containers[name="nginx"].image' in fields


def test_apply_removes_fields_the_manager_no_longer_applies() -> None:
    with_annotation = applied()
    with_annotation["metadata"]["annotations"] = {"owner": "team-a"}
    first = patch.server_side_apply(None, with_annotation, "kubectl", False, DEPLOYMENT)
    second = patch.server_side_apply(first, applied(replicas=None), "kubectl", False, DEPLOYMENT)
    assert "replicas" not in second["spec"]
    assert second["metadata"].get("annotations", {}) == {}
    assert "f:replicas" not in managers(second)[("kubectl", "Apply")]["fieldsV1"]["f:spec"]


def test_apply_keeps_fields_someone_else_also_owns() -> None:
    first = patch.server_side_apply(None, applied(replicas=2), "kubectl", False, DEPLOYMENT)
    scaled = copy.deepcopy(first)
    scaled["spec"]["replicas"] = 2
    scaled["spec"]["paused"] = True
    shared = patch.server_side_apply(first, applied(replicas=2), "ops", False, DEPLOYMENT)
    dropped = patch.server_side_apply(shared, applied(replicas=None), "kubectl", False, DEPLOYMENT)
    assert dropped["spec"]["replicas"] == 2  # "ops" still applies it


def test_two_appliers_own_different_containers() -> None:
    first = patch.server_side_apply(None, applied(), "alice", False, DEPLOYMENT)
    sidecar = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"template": {"spec": {"containers": [{"name": "side", "image": "busybox"}]}}}}
    both = patch.server_side_apply(first, sidecar, "bob", False, DEPLOYMENT)
    assert [c["name"] for c in containers_of(both)] == ["nginx", "side"]
    # bob stops applying his container: it goes, alice's stays
    bob_leaves = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    after = patch.server_side_apply(both, bob_leaves, "bob", False, DEPLOYMENT)
    assert [c["name"] for c in containers_of(after)] == ["nginx"]


def test_apply_merges_ports_keyed_by_port_and_default_protocol() -> None:
    first = patch.server_side_apply(
        None, applied(), "kubectl", False, DEPLOYMENT)
    with_ports = applied()
    containers_of(with_ports)[0]["ports"] = [{"containerPort": 80}]
    second = patch.server_side_apply(first, with_ports, "kubectl", False, DEPLOYMENT)
    container = managers(second)[("kubectl", "Apply")]["fieldsV1"]["f:spec"]["f:template"]["f:spec"][
        "f:containers"]['k:{"name":"nginx"}']
    assert 'k:{"containerPort":80,"protocol":"TCP"}' in container["f:ports"]


def test_record_update_moves_ownership_of_changed_fields() -> None:
    created = patch.server_side_apply(None, applied(replicas=2), "kubectl", False, DEPLOYMENT)
    scaled = copy.deepcopy(created)
    scaled["spec"]["replicas"] = 5
    updated = patch.record_update(created, scaled, "kube-controller-manager", DEPLOYMENT)
    owners = managers(updated)
    assert owners[("kube-controller-manager", "Update")]["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in owners[("kubectl", "Apply")]["fieldsV1"]["f:spec"]
    # now the next apply of replicas=2 by kubectl conflicts with the updater
    with pytest.raises(ApplyConflict) as conflict:
        patch.server_side_apply(updated, applied(replicas=2), "kubectl", False, DEPLOYMENT)
    assert conflict.value.causes[0]["message"] == 'conflict with "kube-controller-manager" using apps/v1'


def test_record_update_without_changes_adds_no_manager() -> None:
    created = patch.server_side_apply(None, applied(), "kubectl", False, DEPLOYMENT)
    same = patch.record_update(created, copy.deepcopy(created), "someone", DEPLOYMENT)
    assert ("someone", "Update") not in managers(same)


def test_record_update_on_create_owns_every_field_set() -> None:
    created = patch.record_update(None, pod(), "kubectl-create", POD)
    entry = managers(created)[("kubectl-create", "Update")]
    assert entry["fieldsV1"]["f:spec"]["f:containers"]['k:{"name":"app"}'] == {
        ".": {}, "f:image": {}, "f:name": {}}


_replicas = st.integers(0, 5)
_images = st.sampled_from(["a", "b"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alice", "bob"]), st.none() | _replicas, _images, st.booleans()),
                min_size=1, max_size=5))
def test_apply_is_idempotent_after_any_history(history: list[tuple[str, int | None, str, bool]]) -> None:
    live = None
    for manager, replicas, image, force in history:
        try:
            live = patch.server_side_apply(live, applied(replicas, image), manager, force, DEPLOYMENT)
        except ApplyConflict:
            continue
        again = patch.server_side_apply(live, applied(replicas, image), manager, False, DEPLOYMENT)
        assert again == live
        if replicas is not None:
            assert live["spec"]["replicas"] == replicas
        assert containers_of(live)[0]["image"] == image


# Lists are never empty here: kube's typed objects drop empty lists (omitempty), Skiff stores JSON as is.
_apply_container = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "c"]), "image": _images},
    optional={"args": st.lists(st.sampled_from(["1", "2"]), min_size=1, max_size=2),
              "env": st.lists(st.fixed_dictionaries({"name": _names, "value": st.sampled_from(["1", "2"])}),
                              min_size=1, max_size=2, unique_by=lambda e: e["name"]),
              # protocol is always there, as kube's defaulting would have put it
              "ports": st.lists(st.fixed_dictionaries({"containerPort": st.sampled_from([80, 443]),
                                                       "protocol": st.just("TCP")}),
                                min_size=1, max_size=2, unique_by=lambda p: p["containerPort"])},
)


@st.composite
def _apply_configs(draw: st.DrawFn) -> dict:
    config: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    labels = draw(st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2))
    if labels:
        config["metadata"]["labels"] = labels
    finalizers = draw(st.lists(st.sampled_from(["f1", "f2"]), max_size=2, unique=True))
    if finalizers:
        config["metadata"]["finalizers"] = finalizers
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["replicas"] = draw(_replicas)
    containers = draw(st.lists(_apply_container, max_size=3, unique_by=lambda c: c["name"]))
    if containers:
        spec["template"] = {"spec": {"containers": containers}}
    if spec:
        config["spec"] = spec
    return config


def _without_managed_fields(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("managedFields", None)
    return obj


@settings(max_examples=150, deadline=None)
@given(_apply_configs(), _apply_configs())
def test_a_sole_manager_reapplying_gets_exactly_its_new_configuration(first: dict, second: dict) -> None:
    # With nobody else owning anything, applying C1 then C2 is the same as applying C2 alone: fields C1 set
    # and C2 does not are removed, the rest is C2's.
    history = patch.server_side_apply(patch.server_side_apply(None, first, "me", False, DEPLOYMENT),
                                      second, "me", False, DEPLOYMENT)
    alone = patch.server_side_apply(None, second, "me", False, DEPLOYMENT)
    assert _without_managed_fields(history) == _without_managed_fields(alone)
    assert managers(history).keys() == managers(alone).keys()
    if ("me", "Apply") in managers(alone):
        assert managers(history)[("me", "Apply")]["fieldsV1"] == managers(alone)[("me", "Apply")]["fieldsV1"]


@settings(max_examples=150, deadline=None)
@given(_apply_configs(), _apply_configs())
def test_an_applied_configuration_is_in_the_result(live_config: dict, config: dict) -> None:
    live = patch.record_update(None, live_config, "someone", DEPLOYMENT)
    result = patch.server_side_apply(live, config, "me", True, DEPLOYMENT)

    def contained(part: Any, whole: Any) -> bool:
        if isinstance(part, dict):
            return isinstance(whole, dict) and all(contained(v, whole.get(k)) for k, v in part.items())
        if isinstance(part, list) and part and isinstance(part[0], dict) and "name" in part[0]:
            by_name = {item.get("name"): item for item in whole or []}
            return all(contained(item, by_name.get(item["name"])) for item in part)
        if isinstance(part, list) and part and isinstance(part[0], dict):
            return all(any(contained(item, other) for other in whole or []) for item in part)
        if isinstance(part, list) and whole is not None and part and not isinstance(part[0], dict):
            return set(part) <= set(whole) if config["metadata"].get("finalizers") is part else part == whole
        return part == whole

    assert contained(config, result)


def test_conflicts_with_several_managers_are_grouped_like_kube() -> None:
    created = patch.server_side_apply(None, applied(replicas=1, image="a"), "alice", False, DEPLOYMENT)
    scaled = copy.deepcopy(created)
    scaled["metadata"]["labels"]["app"] = "other"
    updated = patch.record_update(created, scaled, "bob", DEPLOYMENT)
    config = applied(replicas=3, image="b")
    with pytest.raises(ApplyConflict) as conflict:
        patch.server_side_apply(updated, config, "carol", False, DEPLOYMENT)
    messages = {(cause["message"], cause["field"]) for cause in conflict.value.causes}
    assert messages == {
        ('conflict with "alice"', ".spec.replicas"),
        ('conflict with "alice"', '.spec.template.spec.containers[name="nginx"].image'),
        ('conflict with "bob" using apps/v1', ".metadata.labels.app"),
    }
    assert str(conflict.value) == (
        'Apply failed with 3 conflicts: conflicts with "alice":\n'
        "- .spec.replicas\n"
        '- .spec.template.spec.containers[name="nginx"].image\n'
        'conflicts with "bob" using apps/v1:\n'
        "- .metadata.labels.app"
    )

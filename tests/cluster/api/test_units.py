"""Unit tests of the pure parts: selectors, validation messages, the protobuf decoder, request routing, the
Service allocator's bookkeeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiff.cluster.api import protobuf, validation
from skiff.cluster.api.auth import AUTOUPDATE, CONTROLLER_MANAGER_USER, bootstrap_policy, reconcile_bootstrap
from skiff.cluster.api.objects import encode
from skiff.cluster.api.resources import BY_PATH
from skiff.cluster.api.rest import matches_stored
from skiff.cluster.api.routing import request_info
from skiff.cluster.api.selectors import FieldSelector, Filter, LabelSelector
from skiff.cluster.api.status import ApiError, FieldError, invalid


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "db"}, False),
    ("app!=web", {}, True),
    ("tier in (a, b),app", {"tier": "b", "app": "x"}, True),
    ("tier notin (a,b)", {"tier": "a"}, False),
    ("!app", {"app": "x"}, False),
    ("example.com/role=x", {"example.com/role": "x"}, True),
    ("", {"any": "thing"}, True),
])
def test_label_selector(text: str, labels: dict, expected: bool) -> None:
    assert LabelSelector.parse(text).matches(labels) is expected


def test_bad_label_selector_is_400() -> None:
    with pytest.raises(ApiError) as error:
        LabelSelector.parse("a in (b")
    assert error.value.code == 400


def test_field_selector_per_type() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    assert FieldSelector.parse("spec.nodeName=n1,status.phase!=Pending", "pods").matches(pod)
    assert not FieldSelector.parse("metadata.name=q", "pods").matches(pod)
    with pytest.raises(ApiError) as error:
        FieldSelector.parse("spec.nodeName=n1", "configmaps")
    assert error.value.code == 400 and "field label not supported" in error.value.message


_PHASES = st.sampled_from([None, "Pending", "Running", "Succeeded", "Failed"])
_NODES = st.sampled_from([None, "", "node-1", "node-10", "n:1", "a/b", "Failed", "Succeeded-x"])
_FIELD_SELECTORS = st.sampled_from([
    "status.phase!=Succeeded,status.phase!=Failed", "spec.nodeName=node-1", "spec.nodeName!=", "spec.nodeName=",
    "spec.nodeName=a/b", "status.phase=Running,spec.nodeName!=node-10", "metadata.name=p-1", "spec.nodeName!=n:1"])


@settings(max_examples=400, deadline=None)
@given(_PHASES, _NODES, _FIELD_SELECTORS, st.sampled_from(["p-1", "Failed", "node-1"]),
       st.sampled_from([None, "app=web", "app!=web"]), st.sampled_from([{}, {"app": "web"}]))
def test_matching_stored_bytes_agrees_with_decoding(phase, node, fields, name, labels, pod_labels) -> None:
    """The watch's and list's shortcut (a value absent from the JSON is no field's value) never disagrees with
    the selectors applied to the decoded object; it only declines (None) when it cannot tell."""
    pod = {"metadata": {"name": name, "namespace": "default", "labels": pod_labels}, "spec": {}, "status": {}}
    if phase is not None:
        pod["status"]["phase"] = phase
    if node is not None:
        pod["spec"]["nodeName"] = node
    flt = Filter(LabelSelector.parse(labels), FieldSelector.parse(fields, "pods"))
    quick = matches_stored(flt, encode(pod))
    assert quick is None or quick == flt.matches(pod)
    if labels is None and fields == "status.phase!=Succeeded,status.phase!=Failed" and name == "p-1" \
            and phase in (None, "Pending", "Running") and node in (None, "", "node-1"):
        assert quick is True  # the scheduler's own watch of pending pods decodes nothing


def test_validation_names_the_field_like_kube() -> None:
    deployments = BY_PATH[("apps", "v1", "deployments")]
    obj = {"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
        "metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c"}]}}}}
    validation.default(deployments, obj)
    errors = validation.validate(deployments, obj)
    message = invalid("Deployment", "apps", "web", errors).message
    assert message.startswith('Deployment.apps "web" is invalid: [')
    assert "spec.template.metadata.labels: Invalid value: " in message
    assert "spec.template.spec.containers[0].image: Required value" in message


def test_field_error_formats() -> None:
    assert str(FieldError("spec.replicas", "Invalid", "must be greater than or equal to 0", -1)) == \
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    assert str(FieldError("spec.type", "NotSupported", 'supported values: "A"', "B")) == \
        'spec.type: Unsupported value: "B": supported values: "A"'


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


def _varint_field(number: int, value: int) -> bytes:
    return bytes([number << 3, value])


def test_protobuf_configmap_as_kubectl_sends_it() -> None:
    labels = _field(11, _field(1, b"app") + _field(2, b"web"))
    meta = _field(1, b"cfg") + _field(2, b"") + _field(3, b"") + labels  # gogo writes empty strings too
    data = _field(2, _field(1, b"a") + _field(2, b"1"))
    body = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"ConfigMap")) + _field(2, _field(1, meta) + data)
    assert protobuf.decode(body) == {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": "cfg", "labels": {"app": "web"}}, "data": {"a": "1"}}


def test_protobuf_keeps_zero_replicas_and_reads_int_or_string() -> None:
    port = _field(4, _varint_field(1, 1) + _field(3, b"http")) + bytes([3 << 3, 80])
    spec = _varint_field(1, 0)
    body = protobuf.MAGIC + _field(1, _field(1, b"apps/v1") + _field(2, b"Deployment")) + _field(
        2, _field(1, _field(1, b"d")) + _field(2, spec))
    assert protobuf.decode(body)["spec"] == {"replicas": 0}
    service = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"Service")) + _field(
        2, _field(1, _field(1, b"s")) + _field(2, _field(1, port)))
    assert protobuf.decode(service)["spec"]["ports"] == [{"port": 80, "targetPort": "http"}]


def test_protobuf_unknown_kind_is_415_and_garbage_400() -> None:
    with pytest.raises(ApiError) as unknown:
        protobuf.decode(protobuf.MAGIC + _field(1, _field(1, b"policy/v1") + _field(2, b"PodDisruptionBudget")))
    assert unknown.value.code == 415
    for garbage in (b"\x0a\xff\xff", _field(1, _field(1, b"v1") + _field(2, b"ConfigMap")) + _varint_field(2, 1),
                    _field(1, _field(1, b"v1") + _field(2, b"ConfigMap")) + _field(2, _varint_field(1, 5))):
        with pytest.raises(ApiError) as error:
            protobuf.decode(protobuf.MAGIC + garbage)
        assert error.value.code == 400


@pytest.mark.parametrize(("method", "path", "watch", "expected"), [
    ("GET", "/api/v1/namespaces/default/pods", False, ("list", "pods", "default", "", "")),
    ("GET", "/api/v1/namespaces/default/pods/p/log", False, ("get", "pods", "default", "p", "log")),
    ("GET", "/api/v1/watch/namespaces/default/pods", False, ("watch", "pods", "default", "", "")),
    ("DELETE", "/apis/apps/v1/namespaces/ns/deployments", False, ("deletecollection", "deployments", "ns", "", "")),
    ("PUT", "/api/v1/namespaces/team/finalize", False, ("update", "namespaces", "team", "team", "finalize")),
    ("GET", "/api/v1/nodes", True, ("watch", "nodes", "", "", "")),
    ("PATCH", "/apis/apps/v1/namespaces/d/deployments/web/scale", False, ("patch", "deployments", "d", "web",
                                                                          "scale")),
])
def test_request_info(method: str, path: str, watch: bool, expected: tuple) -> None:
    info = request_info(method, path, watch)
    assert (info.verb, info.plural, info.namespace, info.name, info.subresource) == expected
    assert info.type is not None


def test_non_resource_paths() -> None:
    info = request_info("GET", "/apis/apps", False)
    assert not info.is_resource and info.verb == "get"


def test_a_default_role_from_an_older_version_gains_what_the_current_one_adds() -> None:
    default = next(obj for plural, obj in bootstrap_policy() if obj["metadata"]["name"] == CONTROLLER_MANAGER_USER
                   and plural == "clusterroles")
    older = {**default, "rules": [*default["rules"][1:], {"apiGroups": ["x"], "resources": ["y"], "verbs": ["get"]}]}
    updated = reconcile_bootstrap(older, default)
    assert updated is not None
    assert updated["rules"] == older["rules"] + [default["rules"][0]]  # added, nothing taken away
    assert reconcile_bootstrap(updated, default) is None
    pinned = {**older, "metadata": {**older["metadata"], "annotations": {AUTOUPDATE: "false"}}}
    assert reconcile_bootstrap(pinned, default) is None

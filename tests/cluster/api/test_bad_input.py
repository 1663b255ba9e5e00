"""Bad input gets the right Status code and a message naming the field, and the server keeps serving:
malformed JSON/YAML (400), unknown kinds and resources (kubectl's own error, 404), invalid names and
missing required fields (422), stale or malformed resourceVersions (409, 400), unsupported patch types (415).
"""

from __future__ import annotations

import json

import pytest

JSON = {"Content-Type": "application/json"}
CM_PATH = "/api/v1/namespaces/default/configmaps"


@pytest.fixture(autouse=True)
def still_serving(api_server):
    yield
    assert api_server.request("GET", "/readyz").status == 200
    assert api_server.request("GET", "/api/v1/namespaces/default").status == 200


def _status(reply, code: int, reason: str) -> dict:
    body = reply.json()
    assert (reply.status, body["kind"], body["code"], body["reason"]) == (code, "Status", code, reason), body
    return body


def test_malformed_json_is_400(api_server) -> None:
    reply = api_server.request("POST", CM_PATH, b'{"metadata": {"name": "x"', JSON)
    assert "json parse error" in _status(reply, 400, "BadRequest")["message"]


def test_malformed_yaml_is_400(api_server) -> None:
    reply = api_server.request("POST", CM_PATH, b"metadata:\n  name: [unclosed\n", {"Content-Type": "application/yaml"})
    assert "YAML" in _status(reply, 400, "BadRequest")["message"]


def test_kubectl_rejects_malformed_yaml(kubectl) -> None:
    result = kubectl("apply", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: [\n", check=False)
    assert result.returncode != 0 and "yaml" in result.stderr.lower()


def test_unknown_kind(kubectl, api_server) -> None:
    result = kubectl("apply", "-f", "-", input="apiVersion: v1\nkind: Gizmo\nmetadata:\n  name: g\n", check=False)
    assert result.returncode != 0 and 'no matches for kind "Gizmo" in version "v1"' in result.stderr
    _status(api_server.request("GET", "/api/v1/namespaces/default/gizmos"), 404, "NotFound")
    _status(api_server.request("GET", "/apis/nosuch.group/v1/things"), 404, "NotFound")


def test_body_kind_must_match_the_endpoint(api_server) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})
    assert "does not match the expected kind" in _status(api_server.request("POST", CM_PATH, body, JSON), 400,
                                                         "BadRequest")["message"]


def test_invalid_name_is_422_naming_metadata_name(kubectl, api_server) -> None:
    result = kubectl("create", "configmap", "Bad_Name", check=False)
    assert result.returncode != 0
    assert 'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 ' \
        'subdomain must consist of' in result.stderr
    body = _status(api_server.request("POST", CM_PATH, json.dumps({"metadata": {"name": "Bad_Name"}}), JSON),
                   422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    missing = _status(api_server.request("POST", CM_PATH, json.dumps({"metadata": {}}), JSON), 422, "Invalid")
    assert "metadata.name: Required value: name or generateName is required" in missing["message"]


def test_missing_required_fields_are_422_naming_them(kubectl, api_server) -> None:
    pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: noimage\nspec:\n  containers:\n  - name: c\n"
    result = kubectl("apply", "-f", "-", input=pod, check=False)
    assert result.returncode != 0
    assert 'Pod "noimage" is invalid: spec.containers[0].image: Required value' in result.stderr
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nosel"},
                  "spec": {"template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "c"}]}}}}
    body = _status(api_server.request("POST", "/apis/apps/v1/namespaces/default/deployments", json.dumps(deployment),
                                      JSON), 422, "Invalid")
    fields = {c["field"] for c in body["details"]["causes"]}
    assert {"spec.selector", "spec.template.spec.containers[0].image"} <= fields
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "noports"}, "spec": {}}
    body = _status(api_server.request("POST", "/api/v1/namespaces/default/services", json.dumps(service), JSON),
                   422, "Invalid")
    assert "spec.ports: Required value" in body["message"]


def test_stale_resource_version_is_409_and_malformed_is_400(api_server) -> None:
    made = api_server.request("POST", CM_PATH, json.dumps({"metadata": {"name": "rv"}, "data": {"a": "1"}}), JSON)
    assert made.status == 201
    current = made.json()
    current["data"] = {"a": "2"}
    assert api_server.request("PUT", f"{CM_PATH}/rv", json.dumps(current), JSON).status == 200
    current["data"] = {"a": "3"}  # still the first resourceVersion
    _status(api_server.request("PUT", f"{CM_PATH}/rv", json.dumps(current), JSON), 409, "Conflict")
    current["metadata"]["resourceVersion"] = "not-a-number"
    body = _status(api_server.request("PUT", f"{CM_PATH}/rv", json.dumps(current), JSON), 400, "BadRequest")
    assert "metadata.resourceVersion" in body["message"]
    body = _status(api_server.request("GET", f"{CM_PATH}?resourceVersion=abc"), 400, "BadRequest")
    assert "resourceVersion" in body["message"]
    assert api_server.request("DELETE", f"{CM_PATH}/rv").status == 200


def test_unsupported_patch_type_is_415(api_server) -> None:
    api_server.request("POST", CM_PATH, json.dumps({"metadata": {"name": "p415"}}), JSON)
    reply = api_server.request("PATCH", f"{CM_PATH}/p415", b"{}", {"Content-Type": "text/plain"})
    _status(reply, 415, "UnsupportedMediaType")
    bad_patch = api_server.request("PATCH", f"{CM_PATH}/p415", b"{not json",
                                   {"Content-Type": "application/merge-patch+json"})
    _status(bad_patch, 400, "BadRequest")
    api_server.request("DELETE", f"{CM_PATH}/p415")


def test_not_found_and_already_exists(api_server) -> None:
    body = _status(api_server.request("GET", f"{CM_PATH}/nothere"), 404, "NotFound")
    assert body["message"] == 'configmaps "nothere" not found'
    dup = json.dumps({"metadata": {"name": "dup"}})
    assert api_server.request("POST", CM_PATH, dup, JSON).status == 201
    body = _status(api_server.request("POST", CM_PATH, dup, JSON), 409, "AlreadyExists")
    assert body["message"] == 'configmaps "dup" already exists'
    api_server.request("DELETE", f"{CM_PATH}/dup")


def test_json_even_when_protobuf_is_preferred(api_server) -> None:
    reply = api_server.request("GET", "/api/v1/namespaces/default",
                               headers={"Accept": "application/vnd.kubernetes.protobuf,application/json"})
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["kind"] == "Namespace"


def test_unknown_fields_strict_for_kubectl_warned_otherwise(kubectl, api_server) -> None:
    typo = ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: typo\nspec:\n  replica: 2\n  selector:\n"
            "    matchLabels: {app: t}\n  template:\n    metadata:\n      labels: {app: t}\n    spec:\n"
            "      containers:\n      - name: c\n        image: busybox\n        imagePullPolcy: Always\n")
    result = kubectl("apply", "-f", "-", input=typo, check=False)
    assert result.returncode != 0
    assert 'strict decoding error: unknown field "spec.replica", unknown field ' \
        '"spec.template.spec.containers[0].imagePullPolcy"' in result.stderr
    body = json.dumps({"metadata": {"name": "warned"}, "dta": {"a": "b"}})
    reply = api_server.request("POST", CM_PATH, body, JSON)
    assert reply.status == 201 and 'unknown field \\"dta\\"' in reply.headers["Warning"]
    api_server.request("DELETE", f"{CM_PATH}/warned")

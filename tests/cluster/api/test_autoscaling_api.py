"""HorizontalPodAutoscaler in the API, driven by the real kubectl 1.32: kept as autoscaling/v2, also served as
autoscaling/v1 (what ``kubectl autoscale`` posts), defaulted and validated as kube does, printed as kube prints."""

from __future__ import annotations

import json

import yaml

from skiff.cluster.api.printers import format_hpa_metrics
from tests.cluster.api.conftest import KubectlRun

V1_COLLECTION = "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers"
WEB = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
       "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "busybox"}]}}}}


def hpa_v2(name: str, **spec: object) -> dict:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "maxReplicas": 5, **spec}}


def get(kubectl: KubectlRun, what: str) -> dict:
    return json.loads(kubectl("get", what, "-o", "json").stdout)


def test_kubectl_autoscale_posts_v1_and_the_object_reads_back_in_both_versions(kubectl: KubectlRun) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(WEB))
    out = kubectl("autoscale", "deployment/web", "--min=2", "--max=6", "--cpu-percent=55").stdout
    assert out.strip() == "horizontalpodautoscaler.autoscaling/web autoscaled"

    v2 = get(kubectl, "hpa/web")  # the preferred version
    assert v2["apiVersion"] == "autoscaling/v2"
    assert v2["spec"]["minReplicas"] == 2 and v2["spec"]["maxReplicas"] == 6
    assert v2["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    assert v2["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 55}}}]

    v1 = get(kubectl, "horizontalpodautoscalers.v1.autoscaling/web")
    assert v1["apiVersion"] == "autoscaling/v1"
    assert v1["spec"]["targetCPUUtilizationPercentage"] == 55
    assert "metrics" not in v1["spec"]
    assert v1["status"] == {"currentReplicas": 0, "desiredReplicas": 0}
    assert v1["metadata"]["resourceVersion"] == v2["metadata"]["resourceVersion"]

    listed = json.loads(kubectl("get", "--raw", V1_COLLECTION).stdout)
    assert listed["kind"] == "HorizontalPodAutoscalerList" and listed["apiVersion"] == "autoscaling/v1"
    assert [item["spec"]["targetCPUUtilizationPercentage"] for item in listed["items"]] == [55]

    table = kubectl("get", "hpa").stdout.splitlines()
    assert table[0].split() == ["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"]
    assert table[1].split()[:7] == ["web", "Deployment/web", "cpu:", "<unknown>/55%", "2", "6", "0"]
    assert "horizontalpodautoscaler.autoscaling/web" in kubectl("get", "all").stdout

    kubectl("delete", "hpa", "web")
    assert kubectl("get", "hpa", "web", check=False).returncode != 0


def test_a_write_through_v1_keeps_what_only_v2_can_say(kubectl: KubectlRun) -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 30}}
    memory = {"type": "Resource", "resource": {"name": "memory",
                                               "target": {"type": "AverageValue", "averageValue": "100Mi"}}}
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}
    kubectl("apply", "-f", "-", input=json.dumps(hpa_v2("keep", metrics=[cpu, memory], behavior=behavior)))
    created = get(kubectl, "hpa/keep")
    # a partial behavior gets the rest of kube's default rules
    assert created["spec"]["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 30, "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}
    assert created["spec"]["behavior"]["scaleUp"]["policies"] == [
        {"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]

    kubectl("patch", "horizontalpodautoscalers.v1.autoscaling", "keep", "--type=merge",
            "-p", '{"spec": {"targetCPUUtilizationPercentage": 70, "maxReplicas": 9}}')
    patched = get(kubectl, "hpa/keep")
    assert patched["spec"]["maxReplicas"] == 9
    assert patched["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
        memory]
    assert patched["spec"]["behavior"] == created["spec"]["behavior"]

    v1 = get(kubectl, "horizontalpodautoscalers.v1.autoscaling/keep")
    v1["spec"]["minReplicas"] = 3
    kubectl("replace", "-f", "-", input=json.dumps(v1))
    replaced = get(kubectl, "hpa/keep")
    assert replaced["spec"]["minReplicas"] == 3
    assert replaced["spec"]["metrics"] == patched["spec"]["metrics"]
    assert replaced["spec"]["behavior"] == created["spec"]["behavior"]
    table = kubectl("get", "hpa", "keep").stdout.splitlines()[1]
    assert "cpu: <unknown>/70%, memory: <unknown>/100Mi" in table
    kubectl("delete", "hpa", "keep")


def test_no_metrics_means_eighty_percent_cpu(kubectl: KubectlRun) -> None:
    kubectl("create", "-f", "-", input=yaml.safe_dump(hpa_v2("plain")))
    spec = get(kubectl, "hpa/plain")["spec"]
    assert spec["minReplicas"] == 1
    assert spec["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 80}
    assert "behavior" not in spec
    kubectl("delete", "hpa", "plain")


def test_invalid_autoscalers_are_refused_with_kubes_messages(kubectl: KubectlRun) -> None:
    cases = [
        (hpa_v2("bad", minReplicas=4, maxReplicas=2),
         "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"),
        (hpa_v2("bad", minReplicas=0), "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1"),
        (hpa_v2("bad", scaleTargetRef={"name": "web"}), "spec.scaleTargetRef.kind: Required value"),
        (hpa_v2("bad", metrics=[{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 0}}}]),
         "spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0"),
        (hpa_v2("bad", behavior={"scaleUp": {"policies": [{"type": "Hours", "value": 1, "periodSeconds": 5}]}}),
         'spec.behavior.scaleUp.policies[0].type: Unsupported value: "Hours"'),
        (hpa_v2("bad", behavior={"scaleDown": {"stabilizationWindowSeconds": 4000}}),
         "spec.behavior.scaleDown.stabilizationWindowSeconds: Invalid value: 4000: must be less than or equal to 3600"),
    ]
    for manifest, message in cases:
        result = kubectl("create", "-f", "-", input=json.dumps(manifest), check=False)
        assert result.returncode != 0, manifest
        assert 'The HorizontalPodAutoscaler "bad" is invalid' in result.stderr, result.stderr
        assert message in result.stderr, result.stderr
    v1 = {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "bad"},
          "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 0}}
    result = kubectl("create", "-f", "-", input=json.dumps(v1), check=False)
    assert "spec.maxReplicas: Invalid value: 0: must be greater than 0" in result.stderr, result.stderr
    assert kubectl("get", "hpa", "bad", check=False).returncode != 0  # nothing was kept


def test_the_targets_column_reads_every_metric_source() -> None:
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}
    pods = {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue",
                                                                         "averageValue": "1k"}}}
    external = {"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value",
                                                                                         "value": "30"}}}
    assert format_hpa_metrics([], []) == "<none>"
    assert format_hpa_metrics([cpu], [{"type": "Resource", "resource": {
        "name": "cpu", "current": {"averageUtilization": 12, "averageValue": "12m"}}}]) == "cpu: 12%/50%"
    assert format_hpa_metrics([cpu, pods, external], []) == "cpu: <unknown>/50%, <unknown>/1k + 1 more..."
    assert format_hpa_metrics([external], [{"type": "External", "external": {"current": {"value": "7"}}}]) == "7/30"


def test_the_python_client_reads_and_watches_through_v1_and_v2(kubectl: KubectlRun, k8s) -> None:
    from kubernetes import client, watch

    kubectl("create", "-f", "-", input=json.dumps(hpa_v2("watched", minReplicas=2)))
    v1 = client.AutoscalingV1Api(k8s).read_namespaced_horizontal_pod_autoscaler("watched", "default")
    assert v1.spec.target_cpu_utilization_percentage == 80 and v1.spec.min_replicas == 2
    v2 = client.AutoscalingV2Api(k8s).read_namespaced_horizontal_pod_autoscaler("watched", "default")
    assert v2.spec.metrics[0].resource.target.average_utilization == 80

    events = watch.Watch().stream(client.AutoscalingV1Api(k8s).list_namespaced_horizontal_pod_autoscaler,
                                  "default", field_selector="metadata.name=watched", timeout_seconds=2,
                                  _request_timeout=10)
    first = next(events)
    assert first["type"] == "ADDED"
    assert first["object"].api_version == "autoscaling/v1"
    assert first["object"].spec.target_cpu_utilization_percentage == 80
    kubectl("delete", "hpa", "watched")

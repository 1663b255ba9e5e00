"""Request bodies in Kubernetes' protobuf encoding, decoded to the JSON form the server works with.

kubectl's typed clients (``kubectl create namespace|configmap|secret|serviceaccount|service|deployment|
role|rolebinding|...``) send ``application/vnd.kubernetes.protobuf``: the magic ``k8s\\0``, then a
``runtime.Unknown`` envelope (TypeMeta, raw bytes of the object). The object's message is decoded with
the field numbers of kube's ``generated.proto`` for the types such clients send (a schema named
``group/version/Kind`` where versions of a kind number their fields differently); unknown fields are
skipped. gogo-protobuf writes every non-pointer scalar even at its zero value, where JSON would omit
it, so zero values are dropped (except where zero is meaningful: ``replicas``).

Answers are always JSON (client-go decodes a response by its Content-Type).
"""

from __future__ import annotations

import base64
from typing import Any

from skiff.cluster.api.status import bad_request, unsupported_media_type

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
KEEP_ZERO = frozenset({"replicas"})

# A field: number -> (json name, type, repeated); type is a scalar kind or the name of a message below.
# Scalar kinds: str, bytes (base64 in JSON), int, bool, map (string->string), bmap (string->bytes),
# intstr (IntOrString), time (seconds -> RFC 3339), quantity.
F = dict[int, tuple[str, str, bool]]
SCHEMAS: dict[str, F] = {
    "ObjectMeta": {1: ("name", "str", False), 2: ("generateName", "str", False), 3: ("namespace", "str", False),
                   5: ("uid", "str", False), 6: ("resourceVersion", "str", False), 7: ("generation", "int", False),
                   11: ("labels", "map", False), 12: ("annotations", "map", False),
                   13: ("ownerReferences", "OwnerReference", True), 14: ("finalizers", "str", True)},
    "OwnerReference": {1: ("kind", "str", False), 3: ("name", "str", False), 4: ("uid", "str", False),
                       5: ("apiVersion", "str", False), 6: ("controller", "bool", False),
                       7: ("blockOwnerDeletion", "bool", False)},
    "LabelSelector": {1: ("matchLabels", "map", False), 2: ("matchExpressions", "LabelSelectorRequirement", True)},
    "LabelSelectorRequirement": {1: ("key", "str", False), 2: ("operator", "str", False), 3: ("values", "str", True)},
    "ConfigMap": {1: ("metadata", "ObjectMeta", False), 2: ("data", "map", False), 3: ("binaryData", "bmap", False),
                  4: ("immutable", "bool", False)},
    "Secret": {1: ("metadata", "ObjectMeta", False), 2: ("data", "bmap", False), 3: ("type", "str", False),
               4: ("stringData", "map", False), 5: ("immutable", "bool", False)},
    "Namespace": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "NamespaceSpec", False)},
    "NamespaceSpec": {1: ("finalizers", "str", True)},
    "ServiceAccount": {1: ("metadata", "ObjectMeta", False), 2: ("secrets", "ObjectReference", True),
                       3: ("imagePullSecrets", "LocalObjectReference", True),
                       4: ("automountServiceAccountToken", "bool", False)},
    "ObjectReference": {1: ("kind", "str", False), 2: ("namespace", "str", False), 3: ("name", "str", False),
                        4: ("uid", "str", False), 5: ("apiVersion", "str", False),
                        6: ("resourceVersion", "str", False), 7: ("fieldPath", "str", False)},
    "LocalObjectReference": {1: ("name", "str", False)},
    "Service": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "ServiceSpec", False)},
    "ServiceSpec": {1: ("ports", "ServicePort", True), 2: ("selector", "map", False), 3: ("clusterIP", "str", False),
                    18: ("clusterIPs", "str", True), 4: ("type", "str", False), 5: ("externalIPs", "str", True),
                    7: ("sessionAffinity", "str", False), 10: ("externalName", "str", False),
                    11: ("externalTrafficPolicy", "str", False), 17: ("ipFamilyPolicy", "str", False),
                    19: ("ipFamilies", "str", True), 22: ("internalTrafficPolicy", "str", False)},
    "ServicePort": {1: ("name", "str", False), 2: ("protocol", "str", False), 6: ("appProtocol", "str", False),
                    3: ("port", "int", False), 4: ("targetPort", "intstr", False), 5: ("nodePort", "int", False)},
    "Deployment": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "DeploymentSpec", False)},
    "DeploymentSpec": {1: ("replicas", "int", False), 2: ("selector", "LabelSelector", False),
                       3: ("template", "PodTemplateSpec", False), 4: ("strategy", "DeploymentStrategy", False),
                       5: ("minReadySeconds", "int", False), 6: ("revisionHistoryLimit", "int", False),
                       7: ("paused", "bool", False), 9: ("progressDeadlineSeconds", "int", False)},
    "DeploymentStrategy": {1: ("type", "str", False), 2: ("rollingUpdate", "RollingUpdateDeployment", False)},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "intstr", False), 2: ("maxSurge", "intstr", False)},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "PodSpec", False)},
    "PodSpec": {2: ("containers", "Container", True), 3: ("restartPolicy", "str", False),
                4: ("terminationGracePeriodSeconds", "int", False), 6: ("dnsPolicy", "str", False),
                7: ("nodeSelector", "map", False), 8: ("serviceAccountName", "str", False),
                10: ("nodeName", "str", False), 11: ("hostNetwork", "bool", False), 16: ("hostname", "str", False),
                19: ("schedulerName", "str", False), 20: ("initContainers", "Container", True)},
    "Container": {1: ("name", "str", False), 2: ("image", "str", False), 3: ("command", "str", True),
                  4: ("args", "str", True), 5: ("workingDir", "str", False), 6: ("ports", "ContainerPort", True),
                  7: ("env", "EnvVar", True), 8: ("resources", "ResourceRequirements", False),
                  13: ("terminationMessagePath", "str", False), 14: ("imagePullPolicy", "str", False),
                  16: ("stdin", "bool", False), 17: ("stdinOnce", "bool", False), 18: ("tty", "bool", False),
                  20: ("terminationMessagePolicy", "str", False)},
    "ContainerPort": {1: ("name", "str", False), 2: ("hostPort", "int", False), 3: ("containerPort", "int", False),
                      4: ("protocol", "str", False), 5: ("hostIP", "str", False)},
    "EnvVar": {1: ("name", "str", False), 2: ("value", "str", False)},
    "ResourceRequirements": {1: ("limits", "qmap", False), 2: ("requests", "qmap", False)},
    "Role": {1: ("metadata", "ObjectMeta", False), 2: ("rules", "PolicyRule", True)},
    "ClusterRole": {1: ("metadata", "ObjectMeta", False), 2: ("rules", "PolicyRule", True)},
    "PolicyRule": {1: ("verbs", "str", True), 2: ("apiGroups", "str", True), 3: ("resources", "str", True),
                   4: ("resourceNames", "str", True), 5: ("nonResourceURLs", "str", True)},
    "RoleBinding": {1: ("metadata", "ObjectMeta", False), 2: ("subjects", "Subject", True),
                    3: ("roleRef", "RoleRef", False)},
    "ClusterRoleBinding": {1: ("metadata", "ObjectMeta", False), 2: ("subjects", "Subject", True),
                           3: ("roleRef", "RoleRef", False)},
    "Subject": {1: ("kind", "str", False), 2: ("apiGroup", "str", False), 3: ("name", "str", False),
                4: ("namespace", "str", False)},
    "RoleRef": {1: ("apiGroup", "str", False), 2: ("kind", "str", False), 3: ("name", "str", False)},
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta", False),
                                2: ("spec", "SelfSubjectAccessReviewSpec", False)},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes", False),
                                    2: ("nonResourceAttributes", "NonResourceAttributes", False)},
    "ResourceAttributes": {1: ("namespace", "str", False), 2: ("verb", "str", False), 3: ("group", "str", False),
                           4: ("version", "str", False), 5: ("resource", "str", False),
                           6: ("subresource", "str", False), 7: ("name", "str", False)},
    "NonResourceAttributes": {1: ("path", "str", False), 2: ("verb", "str", False)},
    "SelfSubjectReview": {1: ("metadata", "ObjectMeta", False)},
    # `kubectl create token` (authentication.k8s.io/v1)
    "Job": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "JobSpec", False)},
    "JobSpec": {1: ("parallelism", "int", False), 2: ("completions", "int", False),
                3: ("activeDeadlineSeconds", "int", False), 4: ("selector", "LabelSelector", False),
                5: ("manualSelector", "bool", False), 6: ("template", "PodTemplateSpec", False),
                7: ("backoffLimit", "int", False), 8: ("ttlSecondsAfterFinished", "int", False),
                9: ("completionMode", "str", False), 10: ("suspend", "bool", False)},
    "CronJob": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "CronJobSpec", False)},
    "CronJobSpec": {1: ("schedule", "str", False), 2: ("startingDeadlineSeconds", "int", False),
                    3: ("concurrencyPolicy", "str", False), 4: ("suspend", "bool", False),
                    5: ("jobTemplate", "JobTemplateSpec", False), 6: ("successfulJobsHistoryLimit", "int", False),
                    7: ("failedJobsHistoryLimit", "int", False), 8: ("timeZone", "str", False)},
    "JobTemplateSpec": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "JobSpec", False)},
    # `kubectl autoscale` (1.32): autoscaling/v1 (v2's spec numbers its fields differently, hence the version)
    "autoscaling/v1/HorizontalPodAutoscaler": {1: ("metadata", "ObjectMeta", False),
                                               2: ("spec", "autoscaling/v1/HorizontalPodAutoscalerSpec", False)},
    "autoscaling/v1/HorizontalPodAutoscalerSpec": {1: ("scaleTargetRef", "CrossVersionObjectReference", False),
                                                   2: ("minReplicas", "int", False), 3: ("maxReplicas", "int", False),
                                                   4: ("targetCPUUtilizationPercentage", "int", False)},
    "CrossVersionObjectReference": {1: ("kind", "str", False), 2: ("name", "str", False),
                                    3: ("apiVersion", "str", False)},
    "TokenRequest": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "TokenRequestSpec", False)},
    "TokenRequestSpec": {1: ("audiences", "str", True), 4: ("expirationSeconds", "int", False),
                         3: ("boundObjectRef", "BoundObjectReference", False)},
    "BoundObjectReference": {1: ("kind", "str", False), 2: ("apiVersion", "str", False), 3: ("name", "str", False),
                             4: ("uid", "str", False)},
}


class _Reader:
    def __init__(self, data: Any) -> None:
        if not isinstance(data, bytes):
            raise ValueError("a message where a scalar was expected")
        self.data, self.pos = data, 0

    def varint(self) -> int:
        result = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise ValueError("truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def fields(self) -> list[tuple[int, int, Any]]:
        """Every (field number, wire type, value) of a message: bytes for length-delimited, int otherwise."""
        out = []
        while self.pos < len(self.data):
            key = self.varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                out.append((number, wire, self.varint()))
            elif wire == 2:
                size = self.varint()
                if self.pos + size > len(self.data):
                    raise ValueError("truncated field")
                out.append((number, wire, self.data[self.pos:self.pos + size]))
                self.pos += size
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                out.append((number, wire, int.from_bytes(self.data[self.pos:self.pos + width], "little")))
                self.pos += width
            else:
                raise ValueError(f"unsupported wire type {wire}")
        return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _map_entry(raw: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for number, _, v in _Reader(raw).fields():
        if number == 1:
            key = v.decode()
        elif number == 2:
            value = v
    return key, value


def _scalar(kind: str, wire_value: Any) -> Any:
    if isinstance(wire_value, bytes) == (kind in ("int", "bool")):
        raise ValueError(f"wrong wire type for a field of kind {kind}")
    if kind == "str":
        return wire_value.decode()
    if kind == "bytes":
        return base64.b64encode(wire_value).decode()
    if kind == "int":
        return _signed(wire_value)
    if kind == "bool":
        return bool(wire_value)
    if kind == "intstr":
        parts = {n: v for n, _, v in _Reader(wire_value).fields()}
        return parts.get(3, b"").decode() if parts.get(1) == 1 else _signed(parts.get(2, 0))
    raise ValueError(f"unknown kind {kind}")


def decode_message(raw: bytes, schema: str) -> dict[str, Any]:
    fields = SCHEMAS[schema]
    out: dict[str, Any] = {}
    for number, _, value in _Reader(raw).fields():
        spec = fields.get(number)
        if spec is None:
            continue  # a field no kubectl create command sets
        name, kind, repeated = spec
        if kind in ("map", "bmap", "qmap"):
            if not isinstance(value, bytes):
                raise ValueError(f"wrong wire type for the map {name}")
            key, entry = _map_entry(value)
            if kind == "qmap":  # a Quantity: its string form is field 1
                decoded: Any = next((v.decode() for n, _, v in _Reader(entry).fields() if n == 1), "")
            else:
                decoded = entry.decode() if kind == "map" else base64.b64encode(entry).decode()
            out.setdefault(name, {})[key] = decoded
            continue
        if kind in SCHEMAS and not isinstance(value, bytes):
            raise ValueError(f"wrong wire type for a {kind} message")
        item = decode_message(value, kind) if kind in SCHEMAS else _scalar(kind, value)
        if repeated:
            out.setdefault(name, []).append(item)
        else:
            out[name] = item
    return {k: v for k, v in out.items() if k in KEEP_ZERO or v not in ("", 0, False, {}, [])}


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body as a JSON-style object; 400 if it is malformed, 415 for a kind not known here."""
    if not body.startswith(MAGIC):
        raise bad_request("protobuf body without the k8s magic prefix")
    try:
        envelope = {n: v for n, _, v in _Reader(body[len(MAGIC):]).fields()}
        type_meta = {n: v.decode() for n, _, v in _Reader(envelope.get(1, b"")).fields()}
        api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
        schema = f"{api_version}/{kind}" if f"{api_version}/{kind}" in SCHEMAS else kind
        if schema not in SCHEMAS or "metadata" not in {f[0] for f in SCHEMAS[schema].values()}:
            raise unsupported_media_type(f"{CONTENT_TYPE} (kind {kind or 'unknown'}: send JSON)")
        obj = decode_message(envelope.get(2, b""), schema)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed protobuf body: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}

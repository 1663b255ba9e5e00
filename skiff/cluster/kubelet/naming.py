"""Names and labels of a pod's containers on the engine, as dockershim made them, so that a restarted agent
(or a person with ``docker ps``) finds every container of a pod from the engine alone.

A sandbox is ``k8s_POD_<pod>_<namespace>_<uid>_<attempt>``; a container ``k8s_<container>_<pod>_<namespace>_
<uid>_<attempt>``, where attempt is its restart count. The labels carry the same facts, so nothing is parsed
back out of names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
CONTAINER_TYPE = "io.kubernetes.docker.type"  # podsandbox | container
RESTART_COUNT = "io.kubernetes.container.restartCount"
CONTAINER_KIND = "io.kubernetes.container.kind"  # skiff: init | regular
TERMINATION_GRACE = "io.kubernetes.pod.terminationGracePeriod"
NODE_NAME = "io.kubernetes.node.name"  # skiff: the agent that made it (several agents may share an engine)
SANDBOX = "POD"  # dockershim's container name of the sandbox
TYPE_SANDBOX, TYPE_CONTAINER = "podsandbox", "container"


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, pod: dict[str, Any]) -> PodRef:
        meta = pod["metadata"]
        return cls(meta.get("namespace") or "default", meta["name"], meta["uid"])

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def container_name(pod: PodRef, container: str, attempt: int) -> str:
    return f"k8s_{container}_{pod.name}_{pod.namespace}_{pod.uid}_{attempt}"


def labels(pod: PodRef, node: str, container: str, attempt: int, *, kind: str) -> dict[str, str]:
    is_sandbox = container == SANDBOX
    return {POD_NAME: pod.name, POD_NAMESPACE: pod.namespace, POD_UID: pod.uid, CONTAINER_NAME: container,
            CONTAINER_TYPE: TYPE_SANDBOX if is_sandbox else TYPE_CONTAINER, RESTART_COUNT: str(attempt),
            CONTAINER_KIND: kind, NODE_NAME: node}

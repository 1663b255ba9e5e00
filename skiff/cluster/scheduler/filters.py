"""Filters: may this pod run on this node? Each answers with kube-scheduler's reason when it may not.

Node-local filters read only the pod and the node (unschedulable, taints, node affinity and nodeSelector,
host ports, resources) and run in kube's plugin order, stopping at the first that refuses. Their verdict,
together with the node-local scores, is memoized per node and pod class (``tables.VerdictTable``), since
every replica of a template gets the same answer until the node changes.

Pairwise filters (inter-pod affinity, topology spread) depend on other nodes' pods; ``PairwiseState``
counts what they need once per pod (kube's PreFilter), then answers per node.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from skiff.cluster.scheduler import scores
from skiff.cluster.scheduler.cache import SchedulerCache
from skiff.cluster.scheduler.nodeinfo import UNSCHEDULABLE_TAINT, NodeInfo
from skiff.cluster.scheduler.podinfo import PodInfo, SpreadConstraint, Taint

UNSCHEDULABLE = "node(s) were unschedulable"
NODE_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
NODE_PORTS = "node(s) didn't have free ports for the requested pod ports"
TOO_MANY_PODS = "Too many pods"
POD_AFFINITY = "node(s) didn't match pod affinity rules"
POD_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"
SPREAD = "node(s) didn't match pod topology spread constraints"
SPREAD_MISSING_LABEL = "node(s) didn't match pod topology spread constraints (missing required label)"

_UNSCHEDULABLE_TAINT = Taint(UNSCHEDULABLE_TAINT, "", "NoSchedule")


class NodeVerdict(NamedTuple):
    """A node-local answer: why not (empty: it fits), and the node-local raw scores when it fits."""

    reasons: tuple[str, ...]
    resources: int = 0  # least allocated + balanced allocation, 0-200
    soft_taints: int = 0  # PreferNoSchedule taints not tolerated
    node_preference: int = 0  # summed weights of the preferred node affinity terms that match


def untolerated_taint(pod: PodInfo, node: NodeInfo) -> Taint | None:
    for taint in node.hard_taints:
        for toleration in pod.tolerations:
            if toleration.tolerates(taint):
                break
        else:
            return taint
    return None


def taint_reason(taint: Taint) -> str:
    return f"node(s) had untolerated taint {{{taint.key}: {taint.value}}}"


def matches_node_affinity(pod: PodInfo, node: NodeInfo) -> bool:
    """nodeSelector and required node affinity, both holding."""
    labels = node.labels
    for key, value in pod.node_selector.items():
        if labels.get(key) != value:
            return False
    required = pod.required_node_affinity
    return required is None or required.matches(labels, node.fields)


def insufficient_resources(pod: PodInfo, node: NodeInfo) -> tuple[str, ...]:
    """kube's fitsRequest: the pod count always; CPU, memory and other resources the pod asks for."""
    reasons = []
    if len(node.pods) + 1 > node.allocatable_pods:
        reasons.append(TOO_MANY_PODS)
    if pod.milli_cpu and pod.milli_cpu > node.allocatable_cpu - node.requested_cpu:
        reasons.append("Insufficient cpu")
    if pod.memory and pod.memory > node.allocatable_memory - node.requested_memory:
        reasons.append("Insufficient memory")
    for name, value in pod.scalar:
        if value and value > node.allocatable_scalar.get(name, 0) - node.requested_scalar.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return tuple(reasons)


def local_reasons(pod: PodInfo, node: NodeInfo) -> tuple[str, ...]:
    """The first node-local filter that refuses, in kube's order (empty: the node fits)."""
    if node.unschedulable and not any(t.tolerates(_UNSCHEDULABLE_TAINT) for t in pod.tolerations):
        return (UNSCHEDULABLE,)
    if node.hard_taints:
        taint = untolerated_taint(pod, node)
        if taint is not None:
            return (taint_reason(taint),)
    if (pod.node_selector or pod.required_node_affinity is not None) and not matches_node_affinity(pod, node):
        return (NODE_AFFINITY,)
    if pod.host_ports and node.port_conflict(pod):
        return (NODE_PORTS,)
    return insufficient_resources(pod, node)


def local_verdict(pod: PodInfo, node: NodeInfo) -> NodeVerdict:
    """The node-local verdict (memoized by the caller, in the cache's ``VerdictTable`` for the pod's class)."""
    reasons = local_reasons(pod, node)
    if reasons:
        return NodeVerdict(reasons)
    return NodeVerdict((), scores.least_allocated(pod, node) + scores.balanced_allocation(pod, node),
                       scores.untolerated_soft_taints(pod, node), scores.node_preference(pod, node))


# Pairwise filters ---------------------------------------------------------------------------------------------

Pair = tuple[str, str]  # (topology key, value)


class PairwiseState:
    """What the inter-pod affinity and topology spread filters count before looking at nodes (kube's
    PreFilter of InterPodAffinity and PodTopologySpread)."""

    def __init__(self, pod: PodInfo, cache: SchedulerCache) -> None:
        self.pod = pod
        self.existing_anti: Counter[Pair] = Counter()  # existing pods' anti-affinity terms that match this pod
        for other, node in cache.placed_with_affinity():
            for term in other.anti_affinity:
                value = node.labels.get(term.topology_key)
                if value is not None and term.matches(pod):
                    self.existing_anti[(term.topology_key, value)] += 1
        self.affinity: Counter[Pair] = Counter()
        self.anti: Counter[Pair] = Counter()
        if pod.affinity or pod.anti_affinity:
            for other, node in cache.placed():
                if pod.affinity and all(t.matches(other) for t in pod.affinity):
                    for t in pod.affinity:
                        if t.topology_key in node.labels:
                            self.affinity[(t.topology_key, node.labels[t.topology_key])] += 1
                for t in pod.anti_affinity:
                    if t.topology_key in node.labels and t.matches(other):
                        self.anti[(t.topology_key, node.labels[t.topology_key])] += 1
        # the first pod of a group that wants its own kind nearby may go anywhere
        self.self_affinity = not self.affinity and all(t.matches(pod) for t in pod.affinity)
        self.spread = [SpreadCounts(c, pod, cache) for c in pod.spread if c.hard]
        self.active = bool(self.existing_anti or pod.affinity or pod.anti_affinity or self.spread)

    def reason(self, node: NodeInfo) -> str | None:
        labels = node.labels
        if self.pod.affinity and not self._affinity_holds(labels):
            return POD_AFFINITY
        for term in self.pod.anti_affinity:
            value = labels.get(term.topology_key)
            if value is not None and self.anti[(term.topology_key, value)]:
                return POD_ANTI_AFFINITY
        for (key, value), count in self.existing_anti.items():
            if count and labels.get(key) == value:
                return EXISTING_ANTI_AFFINITY
        for spread in self.spread:
            reason = spread.reason(node)
            if reason:
                return reason
        return None

    def _affinity_holds(self, labels: dict[str, str]) -> bool:
        for term in self.pod.affinity:
            value = labels.get(term.topology_key)
            if value is None:
                return False
            if not self.affinity[(term.topology_key, value)] and not self.self_affinity:
                return False
        return True


class SpreadCounts:
    """Matching pods per domain of one DoNotSchedule topology spread constraint, over the nodes the pod could
    use (those passing its node affinity when the policy honors it, with the constraint's key)."""

    def __init__(self, constraint: SpreadConstraint, pod: PodInfo, cache: SchedulerCache) -> None:
        self.constraint = constraint
        key = constraint.topology_key
        self.counts: dict[str, int] = {}
        for node in cache.node_list:
            value = node.labels.get(key)
            if value is not None and self._eligible(pod, node):
                self.counts.setdefault(value, 0)
        for other, node in cache.placed():
            value = node.labels.get(key)
            if value in self.counts and other.namespace == pod.namespace and not other.terminating \
                    and constraint.selector.matches(other.labels):
                self.counts[value] += 1
        self.self_match = 1 if constraint.selector.matches(pod.labels) else 0
        if len(self.counts) < constraint.min_domains:
            self.min_count = 0
        else:
            self.min_count = min(self.counts.values(), default=0)

    def _eligible(self, pod: PodInfo, node: NodeInfo) -> bool:
        if self.constraint.honor_node_affinity and not matches_node_affinity(pod, node):
            return False
        return not (self.constraint.honor_taints and untolerated_taint(pod, node) is not None)

    def reason(self, node: NodeInfo) -> str | None:
        value = node.labels.get(self.constraint.topology_key)
        if value is None:
            return SPREAD_MISSING_LABEL
        skew = self.counts.get(value, 0) + self.self_match - self.min_count
        return SPREAD if skew > self.constraint.max_skew else None

"""Scores: how good is each feasible node, 0-100 per plugin, summed with kube-scheduler's default weights.

| plugin (kube's name)              | weight | here                                                        |
|-----------------------------------|--------|-------------------------------------------------------------|
| NodeResourcesFit (LeastAllocated) | 1      | ``least_allocated``: free share of CPU and memory           |
| NodeResourcesBalancedAllocation   | 1      | ``balanced_allocation``: CPU and memory used alike          |
| TaintToleration                   | 3      | fewer untolerated PreferNoSchedule taints                   |
| NodeAffinity                      | 2      | preferred node affinity weights                             |
| PodTopologySpread                 | 2      | fewer matching pods in the node's domains (by default: the  |
|                                   |        | pod's owner over hosts and zones)                           |
| InterPodAffinity                  | 2      | preferred pod (anti-)affinity, both ways                    |

ImageLocality (weight 1) has nothing to go on (nodes report no images) and is left out. A plugin whose
scores come out equal on every node cannot change the choice, so it is skipped rather than computed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from skiff.cluster.scheduler.podinfo import HOSTNAME_LABEL, ZONE_LABEL, PodInfo

if TYPE_CHECKING:
    from skiff.cluster.scheduler.cache import SchedulerCache
    from skiff.cluster.scheduler.nodeinfo import NodeInfo

MAX_SCORE = 100
TAINT_WEIGHT, NODE_AFFINITY_WEIGHT, SPREAD_WEIGHT, POD_AFFINITY_WEIGHT = 3, 2, 2, 2
HARD_POD_AFFINITY_WEIGHT = 1  # what an existing pod's required affinity term counts for when scoring


def least_allocated(pod: PodInfo, node: NodeInfo) -> int:
    """The mean free share of CPU and memory after placing ``pod`` (requests with kube's non-zero defaults)."""
    return (_free_share(node.nonzero_cpu + pod.nonzero_cpu, node.allocatable_cpu)
            + _free_share(node.nonzero_memory + pod.nonzero_memory, node.allocatable_memory)) // 2


def _free_share(requested: int, capacity: int) -> int:
    if capacity == 0 or requested > capacity:
        return 0
    return (capacity - requested) * MAX_SCORE // capacity


def balanced_allocation(pod: PodInfo, node: NodeInfo) -> int:
    """100 when CPU and memory would be used in the same proportion, less as they differ."""
    fractions = []
    for requested, capacity in ((node.requested_cpu + pod.milli_cpu, node.allocatable_cpu),
                                (node.requested_memory + pod.memory, node.allocatable_memory)):
        if capacity:
            fractions.append(min(requested / capacity, 1.0))
    std = abs(fractions[0] - fractions[1]) / 2 if len(fractions) == 2 else 0.0
    return int((1 - std) * MAX_SCORE)


def untolerated_soft_taints(pod: PodInfo, node: NodeInfo) -> int:
    count = 0
    for taint in node.soft_taints:
        if not any(t.tolerates(taint) for t in pod.tolerations if t.effect in ("", "PreferNoSchedule")):
            count += 1
    return count


def node_preference(pod: PodInfo, node: NodeInfo) -> int:
    return sum(weight for weight, term in pod.preferred_node_affinity if term.matches(node.labels, node.fields))


def normalize(raw: Sequence[int], reverse: bool = False) -> list[int]:
    """kube's DefaultNormalizeScore: scale to 0-100 by the highest; ``reverse`` turns "fewer is better" round."""
    highest = max(raw, default=0)
    if highest == 0:
        return [MAX_SCORE if reverse else 0] * len(raw)
    scaled = [MAX_SCORE * s // highest for s in raw]
    return [MAX_SCORE - s for s in scaled] if reverse else scaled


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # Go's math.Round on the non-negative scores here


# PodTopologySpread ---------------------------------------------------------------------------------------------

def spread(pod: PodInfo, cache: SchedulerCache, feasible: Sequence[NodeInfo]) -> list[int] | None:
    """Normalized spread scores for the soft constraints (None when the pod has none)."""
    constraints = [c for c in pod.spread if not c.hard]
    if not constraints:
        return None
    if constraints[0].owner is not None:
        return _normalize_spread(_owner_spread(constraints[0].owner, cache, feasible))
    raw, ignored = _selector_spread(pod, constraints, cache, feasible)
    counted = [s for s, skip in zip(raw, ignored, strict=True) if not skip]
    normalized = _normalize_spread(raw, min(counted, default=0), max(counted, default=0))
    return [0 if skip else s for s, skip in zip(normalized, ignored, strict=True)]


def _normalize_spread(raw: list[int], lowest: int | None = None, highest: int | None = None) -> list[int]:
    """kube's PodTopologySpread NormalizeScore: the fewest matching pods scores 100."""
    lowest = min(raw) if lowest is None else lowest
    highest = max(raw) if highest is None else highest
    if highest == 0:
        return [MAX_SCORE] * len(raw)
    top = highest + lowest
    return [MAX_SCORE * (top - s) // highest for s in raw]


def _owner_spread(owner: str, cache: SchedulerCache, feasible: Sequence[NodeInfo]) -> list[int]:
    """The system default constraints (skew 3 over hosts, 5 over zones) counting the owner's pods, from the
    cache's running counts: one dict look-up per node and domain."""
    hosts = cache.owner_hosts.get(owner) or {}
    host_weight = math.log(len(feasible) + 2)
    if not cache.zoned_nodes:
        counts = hosts.get
        return [int(counts(n.name, 0) * host_weight + 2.5) for n in feasible]
    zones_of = [n.labels.get(ZONE_LABEL) for n in feasible]
    distinct = {z for z in zones_of if z is not None}
    zones = cache.owner_zones.get(owner) or {}
    zone_weight = math.log(len(distinct) + 2)
    return [_round(hosts.get(n.name, 0) * host_weight + 2 + (4 + zones.get(z, 0) * zone_weight if z is not None
                                                              else 0))
            for n, z in zip(feasible, zones_of, strict=True)]


def owner_spread_by_count(counts: list[int], feasible: int) -> dict[int, int]:
    """The weighted, normalized default-spreading score for each count of the owner's pods on a node (zones
    aside): the score depends on the count alone, so it is worked out once per distinct count."""
    host_weight = math.log(feasible + 2)
    lowest, highest = int(min(counts) * host_weight + 2.5), int(max(counts) * host_weight + 2.5)
    top = highest + lowest
    return {c: SPREAD_WEIGHT * (MAX_SCORE * (top - int(c * host_weight + 2.5)) // highest) for c in set(counts)}


def _selector_spread(pod: PodInfo, constraints: list, cache: SchedulerCache,
                     feasible: Sequence[NodeInfo]) -> tuple[list[int], list[bool]]:
    """Explicit ScheduleAnyway constraints: matching pods of the pod's namespace per domain; nodes without
    every constraint's key are ignored (score 0), as kube does for constraints the pod states itself."""
    counts: list[Counter[str]] = []
    weights = []
    for c in constraints:
        values = {n.labels.get(c.topology_key) for n in feasible} - {None}
        weights.append(math.log((len(feasible) if c.topology_key == HOSTNAME_LABEL else len(values)) + 2))
        domain: Counter[str] = Counter()
        for other, node in cache.placed():
            value = node.labels.get(c.topology_key)
            if value in values and other.namespace == pod.namespace and not other.terminating \
                    and c.selector.matches(other.labels):
                domain[value] += 1
        counts.append(domain)
    raw, ignored = [], []
    for node in feasible:
        score, missing = 0.0, False
        for c, weight, domain in zip(constraints, weights, counts, strict=True):
            value = node.labels.get(c.topology_key)
            if value is None:
                missing = True
                break
            score += domain[value] * weight + c.max_skew - 1
        raw.append(0 if missing else _round(score))
        ignored.append(missing)
    return raw, ignored


# InterPodAffinity ---------------------------------------------------------------------------------------------

def pod_affinity(pod: PodInfo, cache: SchedulerCache, feasible: Sequence[NodeInfo]) -> list[int] | None:
    """Preferred affinity of the pod towards placed pods and of placed pods towards it (their required
    affinity counting ``HARD_POD_AFFINITY_WEIGHT``), summed per topology domain; None when nothing applies."""
    wants = pod.preferred_affinity or pod.preferred_anti_affinity
    if not wants and not cache.affinity_pods:
        return None
    domains: Counter[tuple[str, str]] = Counter()
    for other, node in (cache.placed() if wants else cache.placed_with_affinity()):
        labels = node.labels
        for sign, terms in ((1, pod.preferred_affinity), (-1, pod.preferred_anti_affinity)):
            for t in terms:
                if t.topology_key in labels and t.matches(other):
                    domains[(t.topology_key, labels[t.topology_key])] += sign * t.weight
        for sign, weight, terms in ((1, HARD_POD_AFFINITY_WEIGHT, other.affinity), (1, None, other.preferred_affinity),
                                    (-1, None, other.preferred_anti_affinity)):
            for t in terms:
                if t.topology_key in labels and t.matches(pod):
                    domains[(t.topology_key, labels[t.topology_key])] += sign * (weight or t.weight)
    domains = Counter({k: v for k, v in domains.items() if v})
    if not domains:
        return None
    keys = {k for k, _ in domains}
    raw = [sum(domains.get((k, n.labels[k]), 0) for k in keys if k in n.labels) for n in feasible]
    lowest, highest = min(raw), max(raw)
    if highest == lowest:
        return None
    return [MAX_SCORE * (s - lowest) // (highest - lowest) for s in raw]

"""One scheduling decision: filter the nodes, score the feasible ones, pick the best.

As kube-scheduler does at scale, it stops filtering once it has found enough feasible nodes
(``feasible_nodes_to_find``: half the nodes in a small cluster, down to 5% in a large one, never fewer than
100) and starts the next pod's search where this one stopped, so every node gets its turn. Ties between the
best nodes are broken at random.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from skiff.cluster.scheduler import scores
from skiff.cluster.scheduler.cache import SchedulerCache
from skiff.cluster.scheduler.filters import NodeVerdict, PairwiseState, local_verdict
from skiff.cluster.scheduler.nodeinfo import NodeInfo
from skiff.cluster.scheduler.podinfo import PodInfo
from skiff.cluster.scheduler.tables import VerdictTable

MIN_FEASIBLE_NODES = 100
BASE_PERCENTAGE = 50
MIN_PERCENTAGE = 5
NO_NODES = "no nodes available to schedule pods"


def feasible_nodes_to_find(total: int, percentage: int = 0) -> int:
    """kube's numFeasibleNodesToFind; ``percentage`` 0 is adaptive (50% minus 1% per 125 nodes, at least 5%)."""
    if total < MIN_FEASIBLE_NODES or percentage >= 100:
        return total
    if percentage <= 0:
        percentage = max(BASE_PERCENTAGE - total // 125, MIN_PERCENTAGE)
    return max(total * percentage // 100, MIN_FEASIBLE_NODES)


class FitError(Exception):
    """No node fits; the message is kube-scheduler's (``0/3 nodes are available: 1 Insufficient cpu, ...``)."""

    def __init__(self, pod: PodInfo, total: int, reasons: Counter[str]) -> None:
        self.pod, self.total, self.reasons = pod, total, reasons
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.total == 0:
            return NO_NODES
        listed = sorted(f"{count} {reason}" for reason, count in self.reasons.items())
        return f"0/{self.total} nodes are available: {', '.join(listed)}."


@dataclass(frozen=True, slots=True)
class Decision:
    node: str
    evaluated: int  # nodes filtered
    feasible: int  # of which fit


class Algorithm:
    def __init__(self, cache: SchedulerCache, percentage_of_nodes: int = 0, rng: random.Random | None = None) -> None:
        self.cache = cache
        self.percentage = percentage_of_nodes
        self.rng = rng or random.Random()
        self.next_start = 0

    def schedule(self, pod: PodInfo) -> Decision:
        """The node for ``pod``; FitError when none fits."""
        nodes = self.cache.node_list
        total = len(nodes)
        if total == 0:
            raise FitError(pod, 0, Counter())
        wanted = feasible_nodes_to_find(total, self.percentage)
        start = self.next_start % total
        table = self.cache.verdict_table(pod.class_key)
        judge = functools.partial(local_verdict, pod)
        pairwise = PairwiseState(pod, self.cache)
        window = None if pairwise.active else _window_if_all_fit(table, nodes, start, wanted, judge)
        if window is not None:
            feasible, verdicts, resources = _take(nodes, window), _take(table.verdicts, window), \
                _take(table.resources, window)
            reasons: Counter[str] = Counter()
            processed = wanted
        else:
            feasible, verdicts, reasons, processed = self._walk(table, nodes, start, wanted, judge, pairwise)
            resources = [v[1] for v in verdicts]
        self.next_start = (start + processed) % total
        if not feasible:
            raise FitError(pod, total, reasons)
        if len(feasible) == 1:
            return Decision(feasible[0].name, processed, 1)
        totals = self._score(pod, feasible, verdicts, resources, window)
        return Decision(self._select(feasible, totals), processed, len(feasible))

    def _walk(self, table: VerdictTable, nodes: list[NodeInfo], start: int, wanted: int,
              judge: Callable[[NodeInfo], NodeVerdict], pairwise: PairwiseState
              ) -> tuple[list[NodeInfo], list[NodeVerdict], Counter[str], int]:
        """Node by node round from ``start`` until ``wanted`` fit: for pods some nodes refuse, and for pods whose
        fit depends on other nodes' pods."""
        total = len(nodes)
        feasible: list[NodeInfo] = []
        verdicts: list[NodeVerdict] = []
        reasons: Counter[str] = Counter()
        processed = 0
        for segment_start, segment_end in ((start, total), (0, start)):
            table.fill(nodes, segment_start, segment_end, judge)
            for i in range(segment_start, segment_end):
                processed += 1
                verdict = table.verdicts[i]
                if verdict[0]:
                    reasons.update(verdict[0])
                    continue
                if pairwise.active:
                    reason = pairwise.reason(nodes[i])
                    if reason is not None:
                        reasons[reason] += 1
                        continue
                feasible.append(nodes[i])
                verdicts.append(verdict)
                if len(feasible) >= wanted:
                    return feasible, verdicts, reasons, processed
        return feasible, verdicts, reasons, processed

    def _score(self, pod: PodInfo, feasible: list[NodeInfo], verdicts: list[NodeVerdict], resources: list[int],
               window: Window | None) -> list[int]:
        totals = resources
        if self.cache.soft_taint_nodes:
            _add(totals, scores.normalize([v[2] for v in verdicts], reverse=True), scores.TAINT_WEIGHT)
        if pod.preferred_node_affinity:
            _add(totals, scores.normalize([v[3] for v in verdicts]), scores.NODE_AFFINITY_WEIGHT)
        owner = pod.spread[0].owner if pod.spread else None
        if owner is not None and window is not None and not self.cache.zoned_nodes:
            # the default spreading from per-node counts sliced out of the owner's table: one score per count
            counts = _take(self.cache.owner_counts(owner), window)
            by_count = scores.owner_spread_by_count(counts, len(feasible))
            totals[:] = [t + by_count[c] for t, c in zip(totals, counts, strict=True)]
        else:
            spread = scores.spread(pod, self.cache, feasible)
            if spread is not None:
                _add(totals, spread, scores.SPREAD_WEIGHT)
        affinity = scores.pod_affinity(pod, self.cache, feasible)
        if affinity is not None:
            _add(totals, affinity, scores.POD_AFFINITY_WEIGHT)
        return totals

    def _select(self, feasible: list[NodeInfo], totals: list[int]) -> str:
        """The highest total; among equals, each equally likely (kube's reservoir sampling)."""
        best = max(totals)
        tied = totals.count(best)
        if tied == 1:
            return feasible[totals.index(best)].name
        chosen = self.rng.randrange(tied)
        return next(node for node, total in zip(feasible, totals, strict=True)
                    if total == best and (chosen := chosen - 1) < 0).name


Window = tuple[tuple[int, int], ...]  # the node-list ranges a decision looked at, in order


def _window_if_all_fit(table: VerdictTable, nodes: list[NodeInfo], start: int, wanted: int,
                       judge: Callable[[NodeInfo], NodeVerdict]) -> Window | None:
    """The ``wanted`` nodes from ``start`` (round the end) when every one of them fits, the usual case, found
    with slices; None when some refuse."""
    total = len(nodes)
    end = start + wanted
    window = ((start, end),) if end <= total else ((start, total), (0, end - total))
    for first, last in window:
        table.fill(nodes, first, last, judge)
        if table.fits.count(1, first, last) != last - first:
            return None
    return window


def _take(values: list, window: Window) -> list:
    if len(window) == 1:
        first, last = window[0]
        return values[first:last]
    return [item for first, last in window for item in values[first:last]]


def _add(totals: list[int], plugin: list[int], weight: int) -> None:
    totals[:] = [t + s * weight for t, s in zip(totals, plugin, strict=True)]

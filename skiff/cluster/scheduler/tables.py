"""Per-node memos laid out in the cache's node order, so that a decision reads a window of nodes with list
slices (C speed) instead of a Python loop over nodes.

* ``VerdictTable``: for one pod class (``PodInfo.class_key``), each node's node-local verdict, whether it fits,
  and its resource score. Replicas of one template share a class, and a node's verdict holds until the node
  changes, which (one pod at a time) is one node per decision: the rest of the window is already judged.
* ``OwnerCounts``: for one owner (a ReplicaSet, say), how many of its pods each node holds: what the default
  spreading reads per node.

``SlotTables`` keeps both kinds in step with the node list: a changed node's slots are cleared, an added node
gets an empty slot, a removal renumbers everything (rare: the tables are rebuilt lazily).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skiff.cluster.scheduler.nodeinfo import NodeInfo

MAX_TABLES = 64  # pod classes (and owners) remembered; the least recently used go first


class VerdictTable:
    def __init__(self, size: int) -> None:
        self.verdicts: list[Any] = [None] * size  # filters.NodeVerdict, None: not judged since the node changed
        self.fits = bytearray(size)  # 1: judged and fits
        self.resources = [0] * size  # the node-local resource score where it fits

    def fill(self, nodes: list[NodeInfo], start: int, end: int, judge: Callable[[NodeInfo], Any]) -> None:
        """Judge the nodes in ``[start, end)`` that are not judged yet."""
        verdicts = self.verdicts
        i = start
        while True:
            try:
                i = verdicts.index(None, i, end)
            except ValueError:
                return
            verdict = judge(nodes[i])
            verdicts[i] = verdict
            fits = not verdict[0]
            self.fits[i] = fits
            self.resources[i] = verdict[1] if fits else 0
            i += 1

    def clear(self, index: int) -> None:
        self.verdicts[index] = None
        self.fits[index] = 0

    def append(self) -> None:
        self.verdicts.append(None)
        self.fits.append(0)
        self.resources.append(0)


class SlotTables:
    def __init__(self) -> None:
        self.verdicts: dict[str, VerdictTable] = {}
        self.owners: dict[str, list[int]] = {}
        self.size = 0

    def verdict_table(self, class_key: str) -> VerdictTable:
        table = self.verdicts.pop(class_key, None)
        if table is None:
            table = VerdictTable(self.size)
            if len(self.verdicts) >= MAX_TABLES:
                del self.verdicts[next(iter(self.verdicts))]
        self.verdicts[class_key] = table  # most recently used last
        return table

    def owner_counts(self, owner: str, nodes: list[NodeInfo], hosts: dict[str, int]) -> list[int]:
        counts = self.owners.pop(owner, None)
        if counts is None:
            counts = [hosts.get(n.name, 0) for n in nodes]
            if len(self.owners) >= MAX_TABLES:
                del self.owners[next(iter(self.owners))]
        self.owners[owner] = counts
        return counts

    def node_changed(self, index: int) -> None:
        for table in self.verdicts.values():
            table.clear(index)

    def owner_moved(self, owner: str, index: int, delta: int) -> None:
        counts = self.owners.get(owner)
        if counts is not None:
            counts[index] += delta

    def node_added(self) -> None:
        self.size += 1
        for table in self.verdicts.values():
            table.append()
        for counts in self.owners.values():
            counts.append(0)

    def renumbered(self, size: int) -> None:
        self.size = size
        self.verdicts.clear()
        self.owners.clear()

"""Selectors the scheduler evaluates, compiled once per pod: label selectors (pod affinity, spreading) and
node selector terms (nodeSelector, node affinity), with kube's semantics for each operator.

A requirement is ``(key, operator, values)``; matching a node or pod is then a few dict look-ups. Malformed
terms (an unknown operator, ``Gt`` with a non-integer) match nothing, as kube's scheduler treats a term it
cannot parse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Labels = Mapping[str, str]
_SET_OPS = {"In", "NotIn", "Exists", "DoesNotExist"}


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # In, NotIn, Exists, DoesNotExist, Gt, Lt
    values: frozenset[str] = frozenset()
    bound: int = 0  # Gt and Lt compare against it

    def matches(self, labels: Labels) -> bool:
        op = self.op
        if op == "In":
            return labels.get(self.key) in self.values
        if op == "NotIn":
            return labels.get(self.key) not in self.values
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        value = labels.get(self.key)
        if value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        return number > self.bound if op == "Gt" else number < self.bound


class Unmatchable(ValueError):
    """A term the scheduler cannot evaluate: it matches nothing."""


def requirement(expr: Mapping[str, Any], allow_numeric: bool) -> Requirement:
    key, op, values = expr.get("key") or "", expr.get("operator"), expr.get("values") or []
    if op in _SET_OPS:
        if op in ("In", "NotIn") and not values:
            raise Unmatchable(f"{op} needs values")
        return Requirement(key, op, frozenset(str(v) for v in values))
    if op in ("Gt", "Lt") and allow_numeric:
        if len(values) != 1:
            raise Unmatchable(f"{op} needs exactly one value")
        try:
            return Requirement(key, op, bound=int(values[0]))
        except (TypeError, ValueError):
            raise Unmatchable(f"{op} needs an integer") from None
    raise Unmatchable(f"unknown operator {op!r}")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A ``metav1.LabelSelector``: every requirement holds. ``NOTHING`` (a null selector) matches no labels."""

    requirements: tuple[Requirement, ...]
    empty_matches_all: bool = True

    def matches(self, labels: Labels) -> bool:
        if not self.requirements:
            return self.empty_matches_all
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def compile(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        if selector is None:
            return NOTHING
        reqs = [Requirement(k, "In", frozenset([str(v)])) for k, v in (selector.get("matchLabels") or {}).items()]
        try:
            reqs += [requirement(e, allow_numeric=False) for e in selector.get("matchExpressions") or ()]
        except Unmatchable:
            return NOTHING
        return cls(tuple(reqs))


NOTHING = LabelSelector((), empty_matches_all=False)


@dataclass(frozen=True, slots=True)
class NodeSelectorTerm:
    """One term of a NodeSelector: label expressions and ``metadata.name`` field expressions, all holding."""

    labels: tuple[Requirement, ...]
    fields: tuple[Requirement, ...]

    def matches(self, node_labels: Labels, node_fields: Labels) -> bool:
        for r in self.labels:
            if not r.matches(node_labels):
                return False
        return all(r.matches(node_fields) for r in self.fields)


def node_selector_term(term: Mapping[str, Any] | None) -> NodeSelectorTerm | None:
    """The compiled term, or None for a term that matches nothing (empty, or one kube cannot parse)."""
    if not term:
        return None
    exprs, fields = term.get("matchExpressions") or (), term.get("matchFields") or ()
    if not exprs and not fields:
        return None
    try:
        labels = tuple(requirement(e, allow_numeric=True) for e in exprs)
        compiled_fields = tuple(requirement(f, allow_numeric=True) for f in fields)
    except Unmatchable:
        return None
    if any(f.key != "metadata.name" for f in compiled_fields):
        return None  # kube supports no other node field
    return NodeSelectorTerm(labels, compiled_fields)


@dataclass(frozen=True, slots=True)
class NodeSelector:
    """``requiredDuringSchedulingIgnoredDuringExecution`` of node affinity: any term holds."""

    terms: tuple[NodeSelectorTerm, ...]

    def matches(self, node_labels: Labels, node_fields: Labels) -> bool:
        return any(term.matches(node_labels, node_fields) for term in self.terms)

    @classmethod
    def compile(cls, selector: Mapping[str, Any]) -> NodeSelector:
        terms = (node_selector_term(t) for t in selector.get("nodeSelectorTerms") or ())
        return cls(tuple(t for t in terms if t is not None))

"""Label and field selectors, parsed once per request and matched against objects.

Label selectors take kube's full string syntax: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
``a notin (x)``, ``a`` (exists) and ``!a``, comma-separated (commas inside parentheses belong to
the set). Field selectors take ``field=value``, ``field==value`` and ``field!=value`` on the fields
each type supports (``metadata.name`` and ``metadata.namespace`` everywhere).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skiff.cluster.api.status import bad_request

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # = != in notin exists !
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # != and notin


class LabelSelector:
    """A parsed label selector; ``matches(labels)``; empty matches everything."""

    def __init__(self, requirements: list[Requirement]) -> None:
        self.requirements = requirements

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        try:
            return cls([_requirement(part.strip()) for part in _split_top(text or "") if part.strip()])
        except ValueError as exc:
            raise bad_request(f"unable to parse requirement: {exc}") from None

    @classmethod
    def from_label_selector(cls, selector: dict[str, Any] | None) -> LabelSelector:
        """The structured ``{matchLabels, matchExpressions}`` form (Deployments, ReplicaSets)."""
        selector = selector or {}
        reqs = [Requirement(k, "=", frozenset([str(v)])) for k, v in (selector.get("matchLabels") or {}).items()]
        ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
        for expr in selector.get("matchExpressions") or []:
            reqs.append(Requirement(expr.get("key", ""), ops.get(expr.get("operator", ""), "in"),
                                    frozenset(expr.get("values") or [])))
        return cls(reqs)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _requirement(text: str) -> Requirement:
    set_form = re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", text)
    if set_form:
        key, op, raw = set_form.groups()
        values = frozenset(v.strip() for v in raw.split(",") if v.strip())
        return Requirement(_check_key(key), op, _check_values(values))
    if text.startswith("!"):
        return Requirement(_check_key(text[1:].strip()), "!")
    for token, op in (("!=", "!="), ("==", "="), ("=", "=")):
        if token in text:
            key, value = (s.strip() for s in text.split(token, 1))
            return Requirement(_check_key(key), op, _check_values(frozenset([value])))
    return Requirement(_check_key(text), "exists")


def _check_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"invalid label key {key!r}")
    return key


def _check_values(values: frozenset[str]) -> frozenset[str]:
    for value in values:
        if len(value) > 63 or not _VALUE.match(value):
            raise ValueError(f"invalid label value: {value!r}")
    return values


# Field selectors ---------------------------------------------------------------------------------------------

def _path(*keys: str) -> Callable[[dict[str, Any]], str]:
    def get(obj: dict[str, Any]) -> str:
        value: Any = obj
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, bool):
            return "true" if value else "false"
        return "" if value is None else str(value)
    return get


COMMON_FIELDS = {"metadata.name": _path("metadata", "name"), "metadata.namespace": _path("metadata", "namespace")}
TYPE_FIELDS: dict[str, dict[str, Callable[[dict[str, Any]], str]]] = {
    "pods": {"spec.nodeName": _path("spec", "nodeName"), "status.phase": _path("status", "phase"),
             "spec.restartPolicy": _path("spec", "restartPolicy"), "spec.schedulerName": _path("spec", "schedulerName"),
             "spec.serviceAccountName": _path("spec", "serviceAccountName"),
             "status.podIP": _path("status", "podIP"),
             "status.nominatedNodeName": _path("status", "nominatedNodeName")},
    "events": {f"involvedObject.{f}": _path("involvedObject", f)
               for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")}
              | {"reason": _path("reason"), "reportingComponent": _path("reportingComponent"),
                 "source": _path("source", "component"), "type": _path("type")},
    "secrets": {"type": _path("type")},
    "namespaces": {"status.phase": _path("status", "phase")},
    "nodes": {"spec.unschedulable": _path("spec", "unschedulable")},
    "replicasets": {"status.replicas": _path("status", "replicas")},
}


class FieldSelector:
    """A parsed field selector for one resource type."""

    def __init__(self, terms: list[tuple[Callable[[dict[str, Any]], str], bool, str]],
                 names: dict[str, str]) -> None:
        self.terms = terms
        self.names = names  # field -> value for equality terms (lets a get by name skip a full scan)

    @classmethod
    def parse(cls, text: str | None, plural: str) -> FieldSelector:
        known = COMMON_FIELDS | TYPE_FIELDS.get(plural, {})
        terms, names = [], {}
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            match = re.fullmatch(r"([^=!]+?)\s*(==|!=|=)\s*(.*)", part)
            if not match:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            field, op, value = match.groups()
            getter = known.get(field)
            if getter is None:
                raise bad_request(f'field label not supported: {field}')
            terms.append((getter, op != "!=", value))
            if op != "!=":
                names[field] = value
        return cls(terms, names)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((getter(obj) == value) == equal for getter, equal, value in self.terms)


class Filter:
    """Both selectors of a list or watch request."""

    def __init__(self, labels: LabelSelector, fields: FieldSelector) -> None:
        self.labels, self.fields = labels, fields

    @classmethod
    def from_query(cls, query: Any, plural: str) -> Filter:
        return cls(LabelSelector.parse(query.get("labelSelector")), FieldSelector.parse(query.get("fieldSelector"),
                                                                                        plural))

    def __bool__(self) -> bool:
        return bool(self.labels) or bool(self.fields)

    def matches(self, obj: dict[str, Any]) -> bool:
        return self.labels.matches(obj.get("metadata", {}).get("labels")) and self.fields.matches(obj)



MATCH_ALL = Filter(LabelSelector([]), FieldSelector([], {}))  # no selectors: every object

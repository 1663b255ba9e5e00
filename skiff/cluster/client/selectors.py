"""Label selectors as API objects carry them (``matchLabels`` + ``matchExpressions``), matched locally.

Controllers match cached objects against a ReplicaSet's or Deployment's ``spec.selector`` without asking the
server; ``to_query`` renders one as the ``labelSelector`` query parameter for a list or watch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from skiff.errors import InvalidArgument

Labels = Mapping[str, str]
Matcher = Callable[[Labels], bool]


def _requirement(expression: Mapping[str, Any]) -> Matcher:
    key, operator = expression.get("key", ""), expression.get("operator", "")
    values = frozenset(expression.get("values") or ())
    if operator == "In":
        return lambda labels: key in labels and labels[key] in values
    if operator == "NotIn":
        return lambda labels: key not in labels or labels[key] not in values
    if operator == "Exists":
        return lambda labels: key in labels
    if operator == "DoesNotExist":
        return lambda labels: key not in labels
    raise InvalidArgument(f"{operator!r} is not a valid label selector operator")


def matcher(selector: Mapping[str, Any] | None, *, empty_matches_all: bool = True) -> Matcher:
    """A function telling whether a label set matches ``selector``.

    An empty selector matches everything (``empty_matches_all``, as for workload selectors) or nothing; a
    missing one (None) matches nothing, as kube's ``LabelSelectorAsSelector`` says.
    """
    if selector is None:
        return lambda labels: False
    wanted = dict(selector.get("matchLabels") or {})
    expressions = [_requirement(e) for e in selector.get("matchExpressions") or ()]
    if not wanted and not expressions:
        return lambda labels: empty_matches_all

    def matches(labels: Labels) -> bool:
        return all(labels.get(k) == v for k, v in wanted.items()) and all(r(labels) for r in expressions)
    return matches


def to_query(selector: Mapping[str, Any] | None) -> str:
    """The ``labelSelector`` text of ``selector`` (``a=b,c in (d,e),!f``)."""
    if not selector:
        return ""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or ():
        values = ",".join(sorted(e.get("values") or ()))
        terms.append({"In": f"{e['key']} in ({values})", "NotIn": f"{e['key']} notin ({values})",
                      "Exists": e["key"], "DoesNotExist": f"!{e['key']}"}[e["operator"]])
    return ",".join(terms)

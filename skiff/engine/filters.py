"""How dockerd matches list filters, shared by every listing the engine serves (containers, networks, volumes)."""

from __future__ import annotations

import re
from collections.abc import Iterable


def pattern_match(patterns: Iterable[str] | None, value: str) -> bool:
    """dockerd's id and name filters: any pattern searched in ``value`` as a regular expression (as a plain
    substring when it is not a valid one). No patterns match everything."""
    patterns = list(patterns or ())
    if not patterns:
        return True
    for pattern in patterns:
        try:
            if re.search(pattern, value):
                return True
        except re.error:
            if pattern in value:
                return True
    return False


def labels_match(labels: dict[str, str], wanted: Iterable[str]) -> bool:
    """Every ``key`` or ``key=value`` in ``wanted`` holds for ``labels``."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True

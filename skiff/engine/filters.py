"""How dockerd matches list filters, shared by every listing the engine serves (containers, networks, volumes)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from skiff.errors import InvalidArgument


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


def port_key(port: str) -> str:
    """A port as dockerd keys ExposedPorts and PortBindings: ``80`` is ``80/tcp``."""
    return port if "/" in port else f"{port}/tcp"


def port_filter(key: str, values: Iterable[str]) -> set[str]:
    """The ports a ``publish`` or ``expose`` filter names, as ``PORT/PROTO`` keys: each value is
    ``PORT[/PROTO]`` or ``START-END[/PROTO]`` (tcp when no protocol is given), as dockerd's ``portOp``."""
    ports: set[str] = set()
    for value in values:
        if ":" in value:
            raise InvalidArgument(f"filter for '{key}' should not contain ':': {value}")
        number, _, proto = value.partition("/")
        start, _, end = number.partition("-")
        try:
            first, last = int(start), int(end or start)
        except ValueError:
            first = last = -1
        if not (0 < first <= last < 65536) or proto not in ("", "tcp", "udp", "sctp"):
            raise InvalidArgument(f"error while looking up for {key} {value}: invalid port or range")
        ports.update(f"{p}/{proto or 'tcp'}" for p in range(first, last + 1))
    return ports

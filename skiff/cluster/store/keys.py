"""Key ranges: how a prefix becomes the half-open interval ``[prefix, end)`` both backends scan.

etcd addresses "every key starting with P" as the range from P to P with its last byte incremented;
SQLite compares TEXT with memcmp over UTF-8, which orders like code points, so the same rule applied
to the last *character* gives the same interval. Keeping one helper makes "a/" never match "ab/" in
either backend for the same reason.
"""

from __future__ import annotations

_MAX_CHAR = 0x10FFFF


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``; None if unbounded.

    ``"a/"`` -> ``"a0"``; ``""`` -> None (the whole key space).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < _MAX_CHAR:
            chars[-1] = chr(last + 1)
            return "".join(chars)
        chars.pop()  # U+10FFFF cannot be incremented: widen to the shorter prefix, as etcd does with 0xff
    return None


def in_range(key: str, start: str, end: str | None) -> bool:
    """Whether ``key`` lies in ``[start, end)`` (``end`` None: no upper bound)."""
    return key >= start and (end is None or key < end)

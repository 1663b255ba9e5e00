"""Byte ranges in both directions: ``Range`` on blob downloads, ``Content-Range`` on upload chunks."""

from __future__ import annotations

import re

from skiff.registry.errors import DistributionError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Upload chunks: "<start>-<end>" as the distribution spec writes it; "bytes <start>-<end>[/<total>]" too.
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def download_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (start, end inclusive) a ``Range`` header asks of a ``size``-byte blob.

    None means "send the whole blob": no header, or several ranges (which HTTP lets a server ignore).
    A malformed or unsatisfiable range is RANGE_INVALID (416) with ``Content-Range: bytes */size``,
    as Go's http.ServeContent answers in distribution.
    """
    if header is None:
        return None
    header = header.strip()
    if header.startswith("bytes=") and "," in header:
        return None
    m = _RANGE.match(header)
    if m is None or m.groups() == ("", ""):
        raise unsatisfiable(size)
    first, last = m.groups()
    if first == "":  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise unsatisfiable(size)
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise unsatisfiable(size)
    return start, end


def unsatisfiable(size: int) -> DistributionError:
    return DistributionError("RANGE_INVALID", "requested range not satisfiable",
                             headers={"Content-Range": f"bytes */{size}"})


def upload_range(header: str | None) -> tuple[int, int] | None:
    """(start, end inclusive) of an upload chunk's ``Content-Range``; None when absent."""
    if header is None:
        return None
    m = _CONTENT_RANGE.match(header.strip())
    if m is None:
        raise DistributionError("RANGE_INVALID", detail={"Content-Range": header})
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise DistributionError("RANGE_INVALID", detail={"Content-Range": header})
    return start, end


def upload_progress(offset: int) -> str:
    """The ``Range`` header of an upload response: the bytes received so far (``0-0`` when none)."""
    return f"0-{max(offset - 1, 0)}"

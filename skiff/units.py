"""Human-readable units as Docker's go-units prints them, shared by the engine (``Status`` texts), the
registry client (progress bars) and the CLI (columns): one definition, so all say it the same way."""

from __future__ import annotations


def human_duration(seconds: float) -> str:
    """go-units' HumanDuration: "Less than a second", "3 seconds", "About an hour", "2 weeks"..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _scaled(size: float, base: float, units: tuple[str, ...], precision: int) -> str:
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def human_size(size: float, precision: int = 3) -> str:
    """go-units ``HumanSizeWithPrecision``: decimal units (``12.3MB``)."""
    return _scaled(size, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"), precision)


def bytes_size(size: float) -> str:
    """go-units ``BytesSize``: binary units, four significant digits (``1.5GiB``)."""
    return _scaled(size, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 4)

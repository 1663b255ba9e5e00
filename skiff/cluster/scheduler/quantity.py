"""Kubernetes resource quantities (``100m``, ``1.5``, ``128Mi``, ``1e3``) as the integers the scheduler adds up.

CPU is counted in millicores and everything else in whole units (memory in bytes), both rounded up as
kube's ``MilliValue()`` and ``Value()`` round them, so that ``0.1`` CPU and ``100m`` are the same request.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

from skiff.errors import InvalidArgument

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$")
_SUFFIX = {
    None: Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "k": Fraction(10**3),
    "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12), "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}


def parse_quantity(value: str | int | float) -> Fraction:
    """The exact value of a quantity; InvalidArgument when it is not one."""
    if isinstance(value, bool):
        raise InvalidArgument(f"quantities must match the regular expression, not {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    match = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidArgument(f"quantities must match the regular expression "
                              f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$', not {value!r}")
    number, exponent, suffix = match.groups()
    scale = Fraction(10) ** int(exponent[1:]) if exponent else _SUFFIX[suffix]
    return Fraction(number) * scale


def milli_value(value: str | int | float) -> int:
    """The quantity in thousandths, rounded up (CPU in millicores)."""
    return math.ceil(parse_quantity(value) * 1000)


def whole_value(value: str | int | float) -> int:
    """The quantity in whole units, rounded up (memory in bytes, pod counts)."""
    return math.ceil(parse_quantity(value))


@functools.lru_cache(maxsize=4096)
def resource_value(name: str, value: str | int | float) -> int:
    """A resource's amount in the unit the scheduler counts it in: millicores for ``cpu``, else whole units.
    Memoized: a cluster's pods ask for a handful of distinct amounts, and Fractions are slow."""
    return milli_value(value) if name == "cpu" else whole_value(value)

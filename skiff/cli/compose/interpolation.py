"""Variables in Compose files: ``.env`` files and ``${VAR}`` interpolation, with the Compose spec's rules.

``$VAR`` and ``${VAR}`` take the variable's value (unset: empty, with a warning); ``${VAR:-default}`` /
``${VAR-default}`` a default when unset or empty / unset; ``${VAR:?message}`` / ``${VAR?message}`` fail
when unset or empty / unset; ``${VAR:+other}`` / ``${VAR+other}`` replace a set value; ``$$`` is a
literal ``$``. Defaults and messages may themselves hold variables. Values are interpolated, keys are not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from skiff import errors

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class MissingVariable(errors.InvalidArgument):
    """A ``${VAR:?message}`` whose variable is missing a value."""


def interpolate(text: str, env: Mapping[str, str], warn: Callable[[str], None] | None = None) -> str:
    """``text`` with its variables substituted from ``env``."""
    return _substitute(text, 0, env, warn, closing=False)[0]


def _substitute(text: str, i: int, env: Mapping[str, str], warn: Callable[[str], None] | None,
                closing: bool) -> tuple[str, int]:
    """Substitute from ``text[i:]`` up to the end (or, with ``closing``, the ``}`` that ends a default)."""
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if closing and ch == "}":
            return "".join(out), i
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1:i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            value, i = _braced(text, i + 2, env, warn)
            out.append(value)
        elif (m := _NAME.match(text, i + 1)) is not None:
            out.append(_lookup(m.group(0), env, warn))
            i = m.end()
        else:
            raise errors.InvalidArgument(f"invalid interpolation format for {text!r}: a \"$\" must be followed by a "
                                         "variable name or \"{\" (write \"$$\" for a literal \"$\")")
    if closing:
        raise errors.InvalidArgument(f"invalid interpolation format for {text!r}: missing \"}}\"")
    return "".join(out), i


def _braced(text: str, i: int, env: Mapping[str, str], warn: Callable[[str], None] | None) -> tuple[str, int]:
    """``${...}`` starting after the brace; returns (value, index after the closing brace)."""
    m = _NAME.match(text, i)
    if m is None:
        raise errors.InvalidArgument(f"invalid interpolation format for {text!r}: bad variable name after \"${{\"")
    name, i = m.group(0), m.end()
    if text[i:i + 1] == "}":
        return _lookup(name, env, warn), i + 1
    operator = next((op for op in _OPERATORS if text.startswith(op, i)), None)
    if operator is None:
        raise errors.InvalidArgument(f"invalid interpolation format for {text!r}: unexpected "
                                     f"{text[i:i + 1] or 'end'!r} after ${{{name}")
    # The default is only interpolated where it is used (an unused ${A:?x} inside must not fail).
    raw_start = i + len(operator)
    _, end = _substitute(text, raw_start, _Anything(), None, closing=True)
    argument = text[raw_start:end]
    is_set = name in env
    has_value = is_set and env[name] != ""
    strict = operator.startswith(":")
    present = has_value if strict else is_set
    kind = operator[-1]
    if kind == "-":
        value = env[name] if present else interpolate(argument, env, warn)
    elif kind == "+":
        value = interpolate(argument, env, warn) if present else ""
    else:  # "?"
        if not present:
            message = interpolate(argument, env, warn)
            raise MissingVariable(f"required variable {name} is missing a value" + (f": {message}" if message else ""))
        value = env[name]
    return value, end + 1


def _lookup(name: str, env: Mapping[str, str], warn: Callable[[str], None] | None) -> str:
    if name in env:
        return env[name]
    if warn is not None:
        warn(f'The "{name}" variable is not set. Defaulting to a blank string.')
    return ""


class _Anything(dict):
    """An environment in which every variable is set (to find where a default ends without evaluating it)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return "x"


def interpolate_tree(node: Any, env: Mapping[str, str], warn: Callable[[str], None] | None = None,
                     path: str = "") -> Any:
    """Every string value in a loaded YAML tree interpolated (keys are left alone); errors name the path."""
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, warn, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env, warn, f"{path}[{n}]") for n, v in enumerate(node)]
    if isinstance(node, str):
        try:
            return interpolate(node, env, warn)
        except errors.InvalidArgument as e:
            raise type(e)(f"error while interpolating {path}: {e}") from None
    return node


# --------------------------------------------------------------------------------------------------
# .env files
# --------------------------------------------------------------------------------------------------


def parse_env_file(text: str, path: str = ".env", lookup: Mapping[str, str] | None = None) -> dict[str, str]:
    """A ``.env`` / ``env_file`` file: ``KEY=value`` lines, ``export`` allowed, ``#`` comments, single quotes
    literal, double quotes with escapes and variables, unquoted values cut at `` #``. A bare ``KEY`` takes its
    value from ``lookup`` (left out when it has none)."""
    result: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not _NAME.fullmatch(key) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
            raise errors.InvalidArgument(f"{path}:{number}: invalid variable name {key!r}")
        if not sep:
            if lookup is not None and key in lookup:
                result[key] = lookup[key]
            continue
        result[key] = _env_value(value.strip(), {**(lookup or {}), **result})
    return result


def _env_value(value: str, env: Mapping[str, str]) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1].replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"').replace("\\\\", "\\")
        return interpolate(inner, env)
    if " #" in value:
        value = value[:value.index(" #")].rstrip()
    return interpolate(value, env) if "$" in value else value

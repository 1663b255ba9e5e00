"""Docker's output conventions: tabwriter tables, human sizes and durations, and a small subset of Go's
text/template for ``--format`` (``{{.Field}}``, ``{{.A.B}}``, ``{{json .}}``, ``{{upper/lower/title X}}``,
``{{join X sep}}``, ``{{index X key}}``, ``{{truncate X n}}``, ``{{len X}}``, the ``table`` prefix)."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from skiff.units import bytes_size, human_duration, human_size  # noqa: F401 (re-exported for commands)


def tabwrite(rows: Iterable[Iterable[str]], minwidth: int = 10, padding: int = 3) -> str:
    """Go's ``tabwriter.NewWriter(out, minwidth, 1, padding, ' ', 0)`` as docker uses it: every column but
    the last is padded to ``max(minwidth, widest cell + padding)``."""
    table = [[str(cell) for cell in row] for row in rows]
    widths: dict[int, int] = {}
    for row in table:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), max(minwidth, len(cell) + padding))
    return "".join("".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + (row[-1] if row else "")
                   + "\n" for row in table)


def tabwrite_lines(lines: Iterable[str]) -> str:
    """Tab-separated lines (a rendered ``table`` template) through the tabwriter."""
    return tabwrite(line.split("\t") for line in lines)






def ago(unix: float) -> str:
    return human_duration(time.time() - unix) + " ago"


def ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def parse_time(value: str) -> float:
    """An RFC 3339 timestamp (nanoseconds allowed) as a unix time; 0 for Go's zero time."""
    if not value or value.startswith("0001-01-01"):
        return 0.0
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", value)
    if not m:
        return 0.0
    zone = m.group(3) or "Z"
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if zone == "Z" else zone))
    return base.timestamp() + float("0." + (m.group(2) or "0"))


def local_time(unix: float) -> str:
    """Docker's ``CreatedAt``: ``2006-01-02 15:04:05 -0700 MST`` in local time."""
    t = datetime.fromtimestamp(unix).astimezone()
    return t.strftime("%Y-%m-%d %H:%M:%S %z ") + (t.tzname() or "")


# ---- Go templates (the subset docker users write)


class TemplateError(ValueError):
    pass


def _go_json(value: Any) -> str:
    # Go's encoding/json escapes <, > and & by default; docker's {{json}} keeps that.
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _to_text(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{_to_text(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_to_text(v) for v in value) + "]"
    return str(value)


_FUNCS: dict[str, Callable[..., Any]] = {
    "json": _go_json,
    "upper": lambda s: _to_text(s).upper(),
    "lower": lambda s: _to_text(s).lower(),
    "title": lambda s: _to_text(s).title(),
    "join": lambda items, sep: sep.join(_to_text(i) for i in items or []),
    "split": lambda s, sep: s.split(sep),
    "index": lambda obj, *keys: _index(obj, keys),
    "truncate": lambda s, n: _to_text(s)[: int(n)],
    "len": lambda obj: len(obj or []),
    "println": lambda *a: " ".join(_to_text(x) for x in a) + "\n",
    "print": lambda *a: "".join(_to_text(x) for x in a),
    "printf": lambda fmt, *a: _printf(fmt, a),
    "pad": lambda s, left, right: " " * int(left) + _to_text(s) + " " * int(right),
}


def _printf(fmt: str, args: tuple) -> str:
    values = iter(args)
    return re.sub(r"%[-+# 0-9.]*[svdq]", lambda m: _to_text(next(values, "")), fmt)


def _index(obj: Any, keys: tuple) -> Any:
    for key in keys:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, Mapping) else obj[int(key)]
    return obj


_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(`[^`]*`)|(\$?\.[\w.]*|\$)|(-?\d+)|(\w+)|(\()|(\))|(\|))')


def _lookup(obj: Any, path: str) -> Any:
    for part in filter(None, path.lstrip("$").split(".")):
        if isinstance(obj, Mapping):
            if part not in obj:
                raise TemplateError(f"can't evaluate field {part}")
            obj = obj[part]
        else:
            obj = getattr(obj, part, None)
    return obj


class Template:
    """A compiled ``--format`` string. ``table`` templates render a header row and go through the tabwriter."""

    def __init__(self, text: str) -> None:
        self.table = text.startswith("table")
        if self.table:
            text = text[len("table"):]
        text = text.strip(" ") if self.table else text
        self.text = text.replace("\\t", "\t").replace("\\n", "\n")
        self.parts: list[tuple[str, str]] = []
        pos = 0
        for m in re.finditer(r"{{-?\s*(.*?)\s*-?}}", self.text, re.S):
            self.parts.append(("text", self.text[pos:m.start()]))
            self.parts.append(("action", m.group(1)))
            pos = m.end()
        self.parts.append(("text", self.text[pos:]))
        for kind, body in self.parts:
            if kind == "action" and body.split(" ", 1)[0] in ("if", "range", "end", "else", "with"):
                raise TemplateError(f"template: unsupported action {{{{{body}}}}}")

    def render(self, context: Any) -> str:
        return "".join(text if kind == "text" else _to_text(self._pipeline(text, context))
                       for kind, text in self.parts)

    def _pipeline(self, text: str, context: Any) -> Any:
        value: Any = _NOVALUE
        for command in self._split_pipes(text):
            value = self._command(self._tokens(command), context, value)
        return value

    @staticmethod
    def _split_pipes(text: str) -> list[str]:
        out, depth, quote, cur = [], 0, "", ""
        for ch in text:
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "\"`":
                quote = ch
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "|" and depth == 0:
                out.append(cur)
                cur = ""
                continue
            cur += ch
        return [*out, cur]

    @staticmethod
    def _tokens(text: str) -> list[str]:
        tokens, pos, text = [], 0, text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise TemplateError(f"template: cannot parse {text!r}")
            tokens.append(m.group(0).strip())
            pos = m.end()
        return tokens

    def _command(self, tokens: list[str], context: Any, piped: Any) -> Any:
        args: list[Any] = []
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if tok == "(":
                depth, j = 1, i + 1
                while j < len(tokens) and depth:
                    depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                    j += 1
                args.append(self._command(tokens[i + 1: j - 1], context, _NOVALUE))
                i = j
                continue
            args.append(_Func(tok) if tok in _FUNCS else self._operand(tok, context))
            i += 1
        if piped is not _NOVALUE:
            args.append(piped)
        if args and isinstance(args[0], _Func):
            return _FUNCS[args[0].name](*args[1:])
        if len(args) != 1:
            raise TemplateError(f"template: can't give argument to non-function {tokens[0] if tokens else ''}")
        return args[0]

    @staticmethod
    def _operand(tok: str, context: Any) -> Any:
        if tok.startswith('"'):
            return json.loads(tok)
        if tok.startswith("`"):
            return tok[1:-1]
        if tok.startswith((".", "$")):
            return _lookup(context, tok)
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if tok in ("true", "false"):
            return tok == "true"
        raise TemplateError(f'template: function "{tok}" not defined')


class _Func:
    def __init__(self, name: str) -> None:
        self.name = name


_NOVALUE = object()


def render(fmt: str, items: list[Mapping[str, Any]], headers: Mapping[str, str]) -> str:
    """Render ``items`` with a docker ``--format``; ``headers`` maps field names to column titles."""
    template = Template(fmt)
    lines = [template.render(item) for item in items]
    if template.table:
        header = template.render(_Headers(headers))
        return tabwrite_lines([header, *lines])
    return "".join(line + "\n" for line in lines)


class _Headers(dict):
    def __init__(self, names: Mapping[str, str]) -> None:
        super().__init__(names)

    def __missing__(self, key: str) -> str:
        return key.upper()

    def __contains__(self, key: object) -> bool:
        return True


def quote_command(path: str, args: list[str] | None) -> str:
    return " ".join(shlex.quote(a) if " " in a else a for a in [path, *(args or [])] if a is not None)

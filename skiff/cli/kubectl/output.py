"""kubectl's output formats: the server's Table laid out as kubectl lays it out, ``-o json|yaml|name``, the
JSONPath templates of ``-o jsonpath=...``, and the indented listing ``describe`` prints.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

# kubectl's tabwriter: cells padded by 3 spaces, at least 6 wide; the last column is not padded.
_PADDING = 3
_MIN_WIDTH = 6


def lay_out(rows: list[list[str]]) -> str:
    """Rows of cells aligned in columns, kubectl style."""
    if not rows:
        return ""
    columns = max(len(row) for row in rows)
    widths = [0] * columns
    for row in rows:
        for index, cell in enumerate(row[:-1]):
            widths[index] = max(widths[index], len(cell) + _PADDING, _MIN_WIDTH)
    lines = []
    for row in rows:
        padded = [cell.ljust(widths[index]) for index, cell in enumerate(row[:-1])]
        lines.append("".join(padded) + (row[-1] if row else ""))
    return "\n".join(lines) + "\n"


def cell_text(value: Any) -> str:
    if value is None:
        return "<none>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def table_rows(table: dict[str, Any], *, wide: bool, headers: bool, name_prefix: str = "",
               namespace_column: bool = False, show_labels: bool = False) -> list[list[str]]:
    """A server Table as rows of text (the header first when ``headers``)."""
    columns = table.get("columnDefinitions") or []
    shown = [i for i, column in enumerate(columns) if wide or not column.get("priority")]
    rows = []
    if headers:
        header = [columns[i]["name"].upper() for i in shown]
        if namespace_column:
            header.insert(0, "NAMESPACE")
        if show_labels:
            header.append("LABELS")
        rows.append(header)
    for row in table.get("rows") or []:
        cells = row.get("cells") or []
        metadata = (row.get("object") or {}).get("metadata") or {}
        text = []
        for i in shown:
            value = cell_text(cells[i]) if i < len(cells) else ""
            if columns[i].get("format") == "name" and name_prefix:
                value = f"{name_prefix}/{value}"
            text.append(value)
        if namespace_column:
            text.insert(0, metadata.get("namespace", ""))
        if show_labels:
            labels = metadata.get("labels") or {}
            text.append(",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>")
        rows.append(text)
    return rows


def to_json(document: Any) -> str:
    return json.dumps(document, indent=4) + "\n"


def to_yaml(document: Any) -> str:
    return yaml.safe_dump(document, default_flow_style=False, sort_keys=True, allow_unicode=True)


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Several objects as kubectl prints them: one ``v1`` List."""
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


# --- JSONPath -------------------------------------------------------------------------------------------


class JSONPathError(ValueError):
    """The template is malformed."""


def jsonpath(template: str, document: Any) -> str:
    """Evaluate a kubectl JSONPath template (fields, [n], [*], [?(@.k=="v")], range/end, quoted text)."""
    parts = _split_template(template)
    out, _ = _render(parts, 0, [document], stop_at_end=False)
    return out


def _split_template(template: str) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    position = 0
    while position < len(template):
        start = template.find("{", position)
        if start < 0:
            parts.append(("text", template[position:]))
            break
        if start > position:
            parts.append(("text", template[position:start]))
        end = _closing_brace(template, start)
        parts.append(("expr", template[start + 1:end].strip()))
        position = end + 1
    return parts


def _closing_brace(template: str, start: int) -> int:
    quote = None
    for index in range(start + 1, len(template)):
        char = template[index]
        if quote:
            if char == "\\":
                continue
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "}":
            return index
    raise JSONPathError(f"unclosed action in template {template!r}")


def _render(parts: list[tuple[str, str]], index: int, scope: list[Any], *, stop_at_end: bool) -> tuple[str, int]:
    out = []
    while index < len(parts):
        kind, text = parts[index]
        if kind == "text":
            out.append(text)
        elif text == "end":
            if stop_at_end:
                return "".join(out), index
            raise JSONPathError("not in range, nothing to end")
        elif text.startswith("range "):
            items = _evaluate(text[len("range "):].strip(), scope[-1], scope[0])
            body_start = index + 1
            end_index = body_start
            if not items:
                _, end_index = _render(parts, body_start, [*scope, None], stop_at_end=True)
            for item in items:
                rendered, end_index = _render(parts, body_start, [scope[0], item], stop_at_end=True)
                out.append(rendered)
            index = end_index
        elif text.startswith(("'", '"')):
            out.append(_unquote(text))
        else:
            values = _evaluate(text, scope[-1], scope[0])
            out.append(" ".join(_plain(value) for value in values))
        index += 1
    if stop_at_end:
        raise JSONPathError("range without end")
    return "".join(out), index


def _unquote(text: str) -> str:
    try:
        return json.loads(text) if text.startswith('"') else text[1:-1]
    except ValueError:
        return text[1:-1]


def _plain(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


_STEP = re.compile(r"\.\.?([A-Za-z0-9_\-/]+|\*)|\[([^\]]*)\]|\.\[")


def _evaluate(expression: str, current: Any, root: Any) -> list[Any]:
    if expression in ("@", "."):
        return [current]
    if expression.startswith("$"):
        values, expression = [root], expression[1:]
    elif expression.startswith("@"):
        values, expression = [current], expression[1:]
    else:
        values = [current]
    if expression and not expression.startswith((".", "[")):
        expression = "." + expression
    position = 0
    while position < len(expression):
        match = _STEP.match(expression, position)
        if not match:
            raise JSONPathError(f"unrecognized character in action: {expression[position:]!r}")
        position = match.end()
        if match.group(1) is not None:
            values = _field(values, match.group(1), recursive=match.group(0).startswith(".."))
        elif match.group(2) is not None:
            values = _subscript(values, match.group(2).strip(), root)
    return values


def _field(values: list[Any], name: str, *, recursive: bool) -> list[Any]:
    found = []
    for value in values:
        if recursive:
            found.extend(_descendants(value, name))
        elif name == "*":
            if isinstance(value, dict):
                found.extend(value.values())
            elif isinstance(value, list):
                found.extend(value)
        elif isinstance(value, dict) and name in value:
            found.append(value[name])
    return found


def _descendants(value: Any, name: str) -> list[Any]:
    found = []
    if isinstance(value, dict):
        if name in value:
            found.append(value[name])
        for child in value.values():
            found.extend(_descendants(child, name))
    elif isinstance(value, list):
        for child in value:
            found.extend(_descendants(child, name))
    return found


_FILTER = re.compile(r"\?\((.*)\)$")
_COMPARISON = re.compile(r"(@[^=!<>]*?)\s*(==|!=|<=|>=|<|>)\s*(.+)$")


def _subscript(values: list[Any], subscript: str, root: Any) -> list[Any]:
    found: list[Any] = []
    filter_match = _FILTER.match(subscript)
    for value in values:
        if filter_match:
            if isinstance(value, list):
                found.extend(item for item in value if _matches(filter_match.group(1), item, root))
        elif subscript == "*":
            found.extend(value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [])
        elif isinstance(value, list):
            found.extend(_slice(value, subscript))
        elif isinstance(value, dict):
            key = _unquote(subscript) if subscript[:1] in "'\"" else subscript
            if key in value:
                found.append(value[key])
    return found


def _slice(items: list[Any], subscript: str) -> list[Any]:
    try:
        if ":" in subscript:
            bounds = [int(p) if p.strip() else None for p in subscript.split(":")]
            return items[slice(*bounds)]
        index = int(subscript)
    except ValueError as error:
        raise JSONPathError(f"invalid array index {subscript!r}") from error
    if -len(items) <= index < len(items):
        return [items[index]]
    raise JSONPathError(f"array index out of bounds: index {index}, length {len(items)}")


def _matches(condition: str, item: Any, root: Any) -> bool:
    comparison = _COMPARISON.match(condition.strip())
    if not comparison:
        return bool(_evaluate(condition.strip(), item, root))
    left_values = _evaluate(comparison.group(1), item, root)
    right_text = comparison.group(3).strip()
    right = _unquote(right_text) if right_text[:1] in "'\"" else _number(right_text)
    operator = comparison.group(2)
    for left in left_values:
        try:
            if {"==": left == right, "!=": left != right, "<": left < right, ">": left > right,
                    "<=": left <= right, ">=": left >= right}[operator]:
                return True
        except TypeError:
            continue
    return False


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


# --- describe -------------------------------------------------------------------------------------------


def describe(obj: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """A readable account of an object: identity, labels, annotations, then every field, then its events."""
    metadata = obj.get("metadata") or {}
    lines = [f"{'Name:':<20}{metadata.get('name', '')}"]
    if metadata.get("namespace"):
        lines.append(f"{'Namespace:':<20}{metadata['namespace']}")
    lines.append(_map_lines("Labels:", metadata.get("labels")))
    lines.append(_map_lines("Annotations:", {
        k: v for k, v in (metadata.get("annotations") or {}).items()
        if k != "kubectl.kubernetes.io/last-applied-configuration"}))
    if metadata.get("creationTimestamp"):
        lines.append(f"{'CreationTimestamp:':<20}{metadata['creationTimestamp']}")
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("controller"):
            lines.append(f"{'Controlled By:':<20}{owner.get('kind')}/{owner.get('name')}")
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        lines.append(f"{_title(key)}:")
        lines.extend(_field_lines(value, 1))
    lines.append(_events_lines(events))
    return "\n".join(line for line in lines if line is not None) + "\n"


def _map_lines(title: str, mapping: dict[str, Any] | None) -> str:
    if not mapping:
        return f"{title:<20}<none>"
    entries = [f"{k}={v}" for k, v in sorted(mapping.items())]
    return f"{title:<20}" + ("\n" + " " * 20).join(entries)


def _title(key: str) -> str:
    spaced = re.sub(r"(?<=[a-z0-9])([A-Z])", r" \1", key)
    return spaced[:1].upper() + spaced[1:]


def _field_lines(value: Any, depth: int) -> list[str]:
    indent = "  " * depth
    if isinstance(value, dict):
        if not value:
            return [f"{indent}<none>"]
        lines = []
        for key, child in value.items():
            if isinstance(child, dict | list) and child:
                lines.append(f"{indent}{_title(key)}:")
                lines.extend(_field_lines(child, depth + 1))
            else:
                lines.append(f"{indent}{_title(key)}:  {_scalar(child)}")
        return lines
    if isinstance(value, list):
        if not value:
            return [f"{indent}<none>"]
        lines = []
        for item in value:
            if isinstance(item, dict) and item:
                name = item.get("name") or item.get("type")
                lines.append(f"{indent}{name}:" if isinstance(name, str) else f"{indent}-")
                lines.extend(_field_lines({k: v for k, v in item.items() if not (k == "name" and name == v)},
                                          depth + 1))
            else:
                lines.append(f"{indent}{_scalar(item)}")
        return lines
    return [f"{indent}{_scalar(value)}"]


def _scalar(value: Any) -> str:
    if value is None or value == {} or value == []:
        return "<none>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _events_lines(events: list[dict[str, Any]]) -> str:
    if not events:
        return "Events:             <none>"
    rows = [["Type", "Reason", "Age", "From", "Message"], ["----", "------", "----", "----", "-------"]]
    for event in events:
        source = event.get("source") or {}
        rows.append([event.get("type", ""), event.get("reason", ""), event.get("_age", ""),
                     source.get("component") or event.get("reportingController", ""),
                     (event.get("message") or "").strip()])
    return "Events:\n" + "".join("  " + line + "\n" for line in lay_out(rows).splitlines()).rstrip("\n")

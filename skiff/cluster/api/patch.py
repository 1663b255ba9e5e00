"""The four ways a Kubernetes client changes part of an object: JSON patch, merge patch, strategic merge
patch, and server-side apply (with the ``metadata.managedFields`` bookkeeping it rests on).

Pure functions on JSON-like data, importable without the API server: the server parses the request, calls
``apply_patch``/``server_side_apply``/``record_update`` and maps the errors below once to a ``Status``
(``PatchError`` -> 400 or 422, ``UnsupportedPatchType`` -> 415, ``ApplyConflict`` -> 409).
"""

from __future__ import annotations

import json
from typing import Any

from skiff.cluster.api import _apply, _smp_schema, _strategic
from skiff.errors import Conflict, InvalidArgument, Unsupported

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)


class PatchError(InvalidArgument):
    """The patch is malformed (``bad_request``: HTTP 400) or cannot be applied to this object (HTTP 422)."""

    def __init__(self, message: str, bad_request: bool) -> None:
        super().__init__(message)
        self.message = message
        self.bad_request = bad_request


class UnsupportedPatchType(Unsupported):
    """The content type is not a patch type, or strategic merge is asked for a kind without a schema (415)."""


class ApplyConflict(Conflict):
    """Server-side apply would change fields another manager owns; ``causes`` are kube's StatusCauses."""

    def __init__(self, causes: list[dict[str, str]]) -> None:
        self.causes = causes
        super().__init__(_conflict_message(causes))


def apply_patch(live: dict, body: bytes, content_type: str, gvk: tuple[str, str, str]) -> dict:
    """Return ``live`` with the patch in ``body`` applied; ``live`` itself is left untouched."""
    if content_type == JSON_PATCH:
        return _apply_json_patch(live, _parse_json(body))
    if content_type == MERGE_PATCH:
        patch = _parse_json(body)
        if not isinstance(patch, dict):
            raise PatchError("merge patch must be a JSON object", bad_request=True)
        return merge_patch(live, patch)
    if content_type == STRATEGIC_MERGE_PATCH:
        root = _smp_schema.root_type(gvk)
        if root is None:
            raise UnsupportedPatchType(
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}"
            )
        patch = _parse_json(body)
        if not isinstance(patch, dict):
            raise PatchError("strategic merge patch must be a JSON object", bad_request=True)
        return strategic_merge_patch(live, patch, root)
    raise UnsupportedPatchType(
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}, {APPLY_PATCH}"
    )


def server_side_apply(live: dict | None, applied: dict, manager: str, force: bool, gvk: tuple[str, str, str]) -> dict:
    """Merge ``applied`` into ``live`` (None: create) as ``manager`` and record who owns which field."""
    if not isinstance(applied, dict):
        raise PatchError("apply configuration must be an object", bad_request=True)
    try:
        return _apply.apply(live, applied, manager, force, gvk)
    except _apply.FieldConflicts as conflicts:
        raise ApplyConflict(conflicts.causes) from None
    except _apply.ApplyInvalid as error:
        raise PatchError(str(error), bad_request=False) from None


def record_update(old: dict | None, new: dict, manager: str, gvk: tuple[str, str, str],
                  subresource: str | None = None) -> dict:
    """Return ``new`` with managedFields updated for a create/update/patch made by ``manager`` (through
    ``subresource``: ``status`` or ``scale``, recorded in the entry as kube does)."""
    try:
        return _apply.update(old, new, manager, gvk, subresource)
    except _apply.ApplyInvalid as error:
        raise PatchError(str(error), bad_request=False) from None


# --- parsing --------------------------------------------------------------------------------------------


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PatchError(f"error decoding patch: {error}", bad_request=True) from None


# --- merge patch (RFC 7386) -----------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` removes a member, anything else replaces."""
    if not isinstance(patch, dict):
        return copy_json(patch)
    result = copy_json(target) if isinstance(target, dict) else {}
    _merge_into(result, patch)
    return result


def _merge_into(result: dict, patch: dict) -> None:
    """``merge_patch`` in place, on a result the caller owns (copied once, not once per level)."""
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(result.get(key), dict):
                result[key] = {}
            _merge_into(result[key], value)
        else:
            result[key] = copy_json(value)


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars): several times faster than ``copy.deepcopy``."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def create_merge_patch(original: Any, modified: Any) -> Any:
    """The RFC 7386 patch that turns ``original`` into ``modified`` (both objects)."""
    patch: dict[str, Any] = {}
    for key in original.keys() - modified.keys():
        patch[key] = None
    for key, value in modified.items():
        if key not in original:
            patch[key] = copy_json(value)
        elif isinstance(value, dict) and isinstance(original[key], dict):
            nested = create_merge_patch(original[key], value)
            if nested:
                patch[key] = nested
        elif not _json_equal(original[key], value):
            patch[key] = copy_json(value)
    return patch


# --- strategic merge patch ------------------------------------------------------------------------------


def strategic_merge_patch(live: dict, patch: dict, root: str) -> dict:
    """Apply a strategic merge patch to ``live`` for the schema type ``root`` (see ``_smp_schema``)."""
    try:
        return _strategic.apply(copy_json(live), copy_json(patch), root)
    except _strategic.StrategicPatchError as error:
        raise PatchError(str(error), bad_request=error.malformed) from None


# --- JSON patch (RFC 6902) ------------------------------------------------------------------------------
#
# Operation by operation as kube's json-patch library (evanphx/json-patch v4) does it, including its
# leniencies: negative array indices count from the end, replacing a missing object member sets it, a test
# or copy of a missing member sees null; the whole document ("") cannot be a target.


def _apply_json_patch(live: dict, operations: Any) -> dict:
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise PatchError("json patch must be a JSON array of operation objects", bad_request=True)
    document: Any = copy_json(live)
    for operation in operations:
        _json_patch_operation(document, operation)
    return document


def _json_patch_operation(document: Any, operation: dict[str, Any]) -> None:
    op = operation.get("op")
    path = _member(operation, "path", op)
    if op == "add":
        _add(document, path, copy_json(_member(operation, "value", op)), op)
    elif op == "remove":
        _remove(document, path, op)
    elif op == "replace":
        _replace(document, path, copy_json(_member(operation, "value", op)), op)
    elif op == "move":
        source = _member(operation, "from", op)
        value = _remove(document, source, op)
        _add(document, path, value, op, destination=True)
    elif op == "copy":
        value = copy_json(_get(document, _member(operation, "from", op), op))
        _add(document, path, value, op, destination=True)
    elif op == "test":
        if not _json_equal(_get(document, path, op), _member(operation, "value", op)):
            raise PatchError(f"testing value {path} failed: test failed", bad_request=False)
    else:
        raise PatchError(f"Unexpected kind: {op}", bad_request=False)


def _member(operation: dict[str, Any], name: str, op: Any) -> Any:
    if name not in operation:
        raise PatchError(f"operation {op!r} is missing {name!r}", bad_request=False)
    value = operation[name]
    if name in ("path", "from") and not isinstance(value, str):
        raise PatchError(f"operation {op!r}: {name!r} must be a string", bad_request=False)
    return value


def _tokens(pointer: str) -> list[str]:
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]


def _list_index(container: list[Any], token: str, *, for_insert: bool) -> int:
    """Go's Atoi of the token (signs and leading zeros allowed); negative indices count from the end."""
    if for_insert and token == "-":
        return len(container)
    digits = token[1:] if token[:1] in "+-" else token
    if not digits.isdigit() or not digits.isascii():
        raise PatchError(f'strconv.Atoi: parsing "{token}": invalid syntax', bad_request=False)
    index = int(token)
    size = len(container) + 1 if for_insert else len(container)
    if index < 0 and index >= -size:
        index += size
    if not 0 <= index < size:
        raise PatchError(f"Unable to access invalid index: {int(token)}: invalid index referenced", False)
    return index


def _parent(document: Any, pointer: str, op: Any, *, destination: bool = False) -> tuple[Any, str]:
    """The container that holds ``pointer``'s target, and the last token."""
    if not pointer.startswith("/"):
        what = "destination path" if destination else "path"
        raise PatchError(f"{op} operation does not apply: doc is missing {what}: {json.dumps(pointer)}", False)
    tokens = _tokens(pointer)
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_list_index(node, token, for_insert=False)]
        else:
            node = None
        if not isinstance(node, dict | list):
            what = "destination path" if destination else "path"
            raise PatchError(f"{op} operation does not apply: doc is missing {what}: {pointer}: missing value", False)
    return node, tokens[-1]


def _get(document: Any, pointer: str, op: Any) -> Any:
    """The value at ``pointer``; a missing object member reads as null (as evanphx v4's get does)."""
    if pointer == "":
        return document
    parent, token = _parent(document, pointer, op)
    if isinstance(parent, dict):
        return parent.get(token)
    return parent[_list_index(parent, token, for_insert=False)]


def _add(document: Any, pointer: str, value: Any, op: Any, *, destination: bool = False) -> None:
    parent, token = _parent(document, pointer, op, destination=destination)
    if isinstance(parent, dict):
        parent[token] = value
    else:
        parent.insert(_list_index(parent, token, for_insert=True), value)


def _replace(document: Any, pointer: str, value: Any, op: Any) -> None:
    parent, token = _parent(document, pointer, op)
    if isinstance(parent, dict):
        parent[token] = value
    else:
        parent[_list_index(parent, token, for_insert=False)] = value


def _remove(document: Any, pointer: str, op: Any) -> Any:
    parent, token = _parent(document, pointer, op)
    if isinstance(parent, dict):
        if token not in parent:
            message = f"error in remove for path: '{pointer}': Unable to remove nonexistent key: {token}: missing value"
            raise PatchError(message, bad_request=False)
        return parent.pop(token)
    return parent.pop(_list_index(parent, token, for_insert=False))


def _json_equal(left: Any, right: Any) -> bool:
    """JSON value equality: numbers compare by value, but booleans are not numbers."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and left == right


def _conflict_message(causes: list[dict[str, str]]) -> str:
    """kube's message: one conflict inline, several grouped by manager (sorted), one ``- path`` a line."""
    if len(causes) == 1:
        return f"Apply failed with 1 conflict: {causes[0]['message']}: {causes[0]['field']}"
    by_manager: dict[str, list[str]] = {}
    for cause in causes:
        by_manager.setdefault(cause["message"].removeprefix("conflict with "), []).append(cause["field"])
    lines = []
    for manager in sorted(by_manager):
        lines.append(f"conflicts with {manager}:")
        lines.extend(f"- {field}" for field in by_manager[manager])
    return f"Apply failed with {len(causes)} conflicts: " + "\n".join(lines)

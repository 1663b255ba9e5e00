"""Applying a Kubernetes strategic merge patch to an object.

The semantics follow apimachinery's ``strategicpatch`` apply path (``mergeMap`` with MergeParallelList and
IgnoreUnmatchedNulls): maps merge key by key and ``null`` deletes; lists are replaced unless the schema gives
them a merge strategy (see ``_smp_schema``); keyed lists merge item by item; the directives ``$patch``
(replace/merge/delete, in maps and in list items), ``$retainKeys``, ``$deleteFromPrimitiveList/<field>`` and
``$setElementOrder/<field>`` are honoured, including kube's rules for where merged items land in the list.

The functions work on private deep copies: callers pass fresh data.
"""

from __future__ import annotations

from typing import Any

from skiff.cluster.api import _smp_schema as schema

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList"
SET_ELEMENT_ORDER = "$setElementOrder"


class StrategicPatchError(Exception):
    """The patch cannot be applied; ``malformed`` when a directive itself is malformed (HTTP 400)."""

    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


def apply(original: dict[str, Any], patch: dict[str, Any], root: str) -> dict[str, Any]:
    """Merge ``patch`` into ``original`` (both are consumed) for an object whose root type is ``root``."""
    return _merge_map(original, patch, root)


# --- values ---------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """The JSON kind of a value; Go's decoder gives one type per kind (all numbers are float64)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "list"
    return "null"


def _same(left: Any, right: Any) -> bool:
    """JSON equality of two scalars (True is not 1)."""
    return _kind(left) == _kind(right) and left == right


def _remove_directives(value: Any) -> tuple[Any, bool]:
    """``value`` without directive-carrying maps; False when ``value`` itself is such a map."""
    if isinstance(value, dict):
        if DIRECTIVE in value:
            return None, False
        cleaned = {}
        for key, item in value.items():
            item, keep = _remove_directives(item)
            if keep:
                cleaned[key] = item
        return cleaned, True
    if isinstance(value, list):
        kept = []
        for item in value:
            item, keep = _remove_directives(item)
            if keep:
                kept.append(item)
        return kept, True
    return value, True


def _discard_nulls(value: Any) -> None:
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None]:
            del value[key]
        for item in value.values():
            _discard_nulls(item)
    elif isinstance(value, list):
        for item in value:
            _discard_nulls(item)


# --- maps -----------------------------------------------------------------------------------------------


def _merge_map(original: dict[str, Any] | None, patch: dict[str, Any], type_name: str | None) -> dict[str, Any]:
    if DIRECTIVE in patch:
        directive = patch[DIRECTIVE]
        if directive == "replace":
            del patch[DIRECTIVE]
            return patch
        if directive == "delete":
            return {}
        if directive != "merge":
            raise StrategicPatchError(f"Unknown patch type: {directive}, Patch: {patch}", malformed=True)
        del patch[DIRECTIVE]
    if original is None:
        original = {}
    _apply_retain_keys(original, patch)
    _merge_ordered_lists(original, patch, type_name)

    # Deletions from primitive lists go first so that an item both deleted and added ends up present.
    for key in sorted(patch, key=lambda k: not k.startswith(DELETE_FROM_PRIMITIVE_LIST)):
        patch_value = patch[key]
        delete_list = key.startswith(DELETE_FROM_PRIMITIVE_LIST + "/")
        if key.startswith(DELETE_FROM_PRIMITIVE_LIST) and not delete_list:
            raise StrategicPatchError("invalid patch format for the primitive list deletion directive", malformed=True)
        if delete_list:
            key = key.split("/", 1)[1]
        if patch_value is None:
            original.pop(key, None)
            continue
        if key not in original or _kind(original[key]) != _kind(patch_value):
            if not delete_list:
                _discard_nulls(patch_value)
                cleaned, keep = _remove_directives(patch_value)
                if keep:
                    original[key] = cleaned
                else:
                    original.pop(key, None)
            continue
        field = schema.field_of(type_name, key)
        if isinstance(patch_value, dict) and field.replace_struct:
            original[key] = patch_value
        elif isinstance(patch_value, dict):
            original[key] = _merge_map(original[key], patch_value, field.type)
        elif isinstance(patch_value, list):
            original[key] = _merge_list_field(original[key], patch_value, field, delete_list)
        else:
            original[key] = patch_value
    return original


def _apply_retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    if RETAIN_KEYS not in patch:
        return
    retain = patch.pop(RETAIN_KEYS)
    if not isinstance(retain, list):
        raise StrategicPatchError("invalid patch format for the $retainKeys directive", malformed=True)
    for key, value in patch.items():
        if value is None or key.startswith((DELETE_FROM_PRIMITIVE_LIST, SET_ELEMENT_ORDER)):
            continue
        if key not in retain:
            raise StrategicPatchError("invalid patch format for the $retainKeys directive", malformed=True)
    for key in [k for k in original if k not in retain]:
        del original[key]


# --- lists ----------------------------------------------------------------------------------------------


def _merge_list_field(original: list[Any], patch: list[Any], field: schema.Field, delete_list: bool) -> list[Any]:
    if field.list in (schema.SET, schema.KEYED) or delete_list:
        return _merge_list(original, patch, field, delete_list)
    return patch


def _element_kind(*lists: list[Any]) -> str | None:
    kind = None
    for items in lists:
        for item in items:
            item_kind = _kind(item)
            if item_kind == "list":
                raise StrategicPatchError("lists of lists are not supported")
            if kind is not None and item_kind != kind:
                raise StrategicPatchError(f"list element types are not identical: {lists}")
            kind = item_kind
    return kind


def _merge_list(original: list[Any], patch: list[Any], field: schema.Field, delete_list: bool) -> list[Any]:
    if not original and not patch:
        return original
    kind = _element_kind(original, patch)
    merge_key = field.merge_key if kind == "map" else None
    if kind != "map":
        if delete_list:
            return [item for item in original if not any(_same(item, gone) for gone in patch)]
        merged = _dedupe(original + patch)
    else:
        if not merge_key:
            raise StrategicPatchError("cannot merge lists without merge key")
        original, patch = _apply_list_directives(original, patch, merge_key)
        merged = _merge_keyed_items(list(original), patch, field, merge_key)
    in_patch, server_only = _partition(merged, patch, merge_key)
    return _normalize_order(in_patch, server_only, patch, original, merge_key)


def _dedupe(items: list[Any]) -> list[Any]:
    kept: list[Any] = []
    for item in items:
        if not any(_same(item, seen) for seen in kept):
            kept.append(item)
    return kept


def _key_of(item: Any, merge_key: str | None) -> Any:
    if merge_key is None:
        return item
    if not isinstance(item, dict):
        raise StrategicPatchError(f"expected a map in the list, got {item!r}")
    if merge_key not in item:
        raise StrategicPatchError(f"map: {item} does not contain declared merge key: {merge_key}")
    return item[merge_key]


def _index(items: list[Any], item: Any, merge_key: str | None) -> int:
    wanted = item.get(merge_key) if merge_key is not None and isinstance(item, dict) else item
    for position, candidate in enumerate(items):
        value = candidate.get(merge_key) if merge_key is not None and isinstance(candidate, dict) else candidate
        if _same(value, wanted):
            return position
    return -1


def _apply_list_directives(
    original: list[Any], patch: list[Any], merge_key: str
) -> tuple[list[Any], list[Any]]:
    """Handle ``$patch`` items: delete matching entries, or replace the whole list with the patch items."""
    plain: list[Any] = []
    replace = False
    for item in patch:
        if not isinstance(item, dict):
            raise StrategicPatchError(f"expected a map in the list, got {item!r}")
        if DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise StrategicPatchError(f"map: {item} does not contain declared merge key: {merge_key}")
            original = [entry for entry in original if not _same(_key_of(entry, merge_key), item[merge_key])]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise StrategicPatchError("merging lists cannot yet be specified in the patch")
        else:
            raise StrategicPatchError(f"Unknown patch type: {directive}, Patch: {item}", malformed=True)
    if replace:
        return plain, []
    return original, plain


def _merge_keyed_items(original: list[Any], patch: list[Any], field: schema.Field, merge_key: str) -> list[Any]:
    for item in patch:
        position = _index(original, {merge_key: _key_of(item, merge_key)}, merge_key)
        if position >= 0:
            original[position] = _merge_map(original[position], item, field.type)
        else:
            original.append(item)
    return original


def _partition(merged: list[Any], order: list[Any], merge_key: str | None) -> tuple[list[Any], list[Any]]:
    """Split ``merged`` into the items named in ``order`` and the rest (the server-only items)."""
    named, server_only = [], []
    for item in merged:
        (named if _index(order, item, merge_key) >= 0 else server_only).append(item)
    return named, server_only


def _normalize_order(
    patch_items: list[Any], server_only: list[Any], patch_order: list[Any], server_order: list[Any],
    merge_key: str | None,
) -> list[Any]:
    """kube's ordering: patch items in patch order, server-only items in live order, interleaved by live order."""
    patch_items = _sort_by(patch_items, patch_order, merge_key)
    server_only = _sort_by(server_only, server_order, merge_key)
    result: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(patch_items):
        if j >= len(patch_items):
            result.append(server_only[i])
            i += 1
        elif i >= len(server_only):
            result.append(patch_items[j])
            j += 1
        else:
            left = _index(server_order, server_only[i], merge_key)
            right = _index(server_order, patch_items[j], merge_key)
            if left >= 0 and right >= 0 and left < right:
                result.append(server_only[i])
                i += 1
            else:
                result.append(patch_items[j])
                j += 1
    return result


def _sort_by(items: list[Any], order: list[Any], merge_key: str | None) -> list[Any]:
    def position(item: Any) -> int:
        found = _index(order, item, merge_key)
        return found if found >= 0 else len(order)

    return sorted(items, key=position)


# --- $setElementOrder -----------------------------------------------------------------------------------


def _merge_ordered_lists(original: dict[str, Any], patch: dict[str, Any], type_name: str | None) -> None:
    """Merge each list that has a ``$setElementOrder/<field>`` and order it as the directive says."""
    for directive_key in [k for k in patch if k.startswith(SET_ELEMENT_ORDER)]:
        order = patch.pop(directive_key)
        if not directive_key.startswith(SET_ELEMENT_ORDER + "/") or not isinstance(order, list):
            raise StrategicPatchError("invalid patch format for the $setElementOrder directive", malformed=True)
        key = directive_key.split("/", 1)[1]
        field = schema.field_of(type_name, key)
        merge_key = field.merge_key  # as kube does: the schema's key, whatever the items are
        original_list = original.get(key)
        patch_list = patch.pop(key, None)
        for value in (original_list, patch_list):
            if value is not None and not isinstance(value, list):
                raise StrategicPatchError(f"expected a list at {key}")
        _check_order(patch_list or [], order, merge_key)
        if original_list is None and patch_list is None:
            continue
        if patch_list is None:
            merged = original_list
        elif original_list is None:
            merged, _ = _remove_directives(patch_list)
        else:
            merged = _merge_list_field(original_list, patch_list, field, False)
        in_order, server_only = _partition(merged, order, merge_key)
        if _element_kind(original_list or [], patch_list or []) is None:
            raise StrategicPatchError("no elements in any of the given slices")
        server_order = original_list or []
        if merge_key is not None and original_list and patch_list:
            server_order = _aliased_server_order(original_list, patch_list, merge_key)
        original[key] = _normalize_order(in_order, server_only, order, server_order, merge_key)


def _aliased_server_order(original: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    """The live list as kube's merge leaves it seen through the caller's slice header.

    Go's merge deletes ``$patch: delete`` items from the live slice in place and appends new items into the
    room that frees, so the caller's view of the live list (used to place server-only items) shows shifted
    and appended items. kube's results depend on it; the slice capacity is what decoding JSON gives (append
    growth from empty: 1, 2, 4, 8, ...).
    """
    capacity = 0
    while capacity < len(original):
        capacity = capacity * 2 if capacity else 1
    array = list(original) + [None] * (capacity - len(original))
    length = len(original)
    replaced = False
    for item in patch:
        if not isinstance(item, dict) or DIRECTIVE not in item:
            continue
        if item[DIRECTIVE] == "replace":
            replaced = True
        elif item[DIRECTIVE] == "delete":
            while (index := _index(array[:length], {merge_key: item.get(merge_key)}, merge_key)) >= 0:
                array[index:length - 1] = array[index + 1:length]
                length -= 1
    if not replaced:
        survivors = array[:length]
        for item in patch:
            if isinstance(item, dict) and DIRECTIVE not in item and _index(survivors, item, merge_key) < 0:
                if length == capacity:
                    break  # append reallocates: later items land in a new array
                array[length] = item
                survivors.append(item)
                length += 1
    return array[: len(original)]


def _check_order(patch_list: list[Any], order: list[Any], merge_key: str | None) -> None:
    """The patch list's items must appear in ``order``, in the same relative order."""
    items = [i for i in patch_list if not (isinstance(i, dict) and DIRECTIVE in i)]
    position = 0
    for wanted in order:
        if position < len(items) and _same(_key_of(items[position], merge_key), _key_of(wanted, merge_key)):
            position += 1
    if position < len(items):
        raise StrategicPatchError(
            f"The order in patch list:\n{patch_list}\n doesn't match $setElementOrder list:\n{order}\n"
        )

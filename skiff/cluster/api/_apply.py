"""Server-side apply and field ownership (``metadata.managedFields``), after kube's structured-merge-diff.

A *field set* is a set of paths; a path is a tuple of elements ``("f", name)`` (a struct or map member),
``("k", key)`` (an item of an associative list, ``key`` being kube's JSON of the key fields) or ``("v", value)``
(a member of a set of scalars). Sets serialize to kube's FieldsV1 (``{"f:spec": {"f:replicas": {}}}``, with
``"."`` marking a path that is a member and also has members below it).

- apply: merge the configuration into the live object, take ownership of exactly the configuration's fields,
  drop the fields this manager applied last time and no longer applies (unless someone else owns them), and
  refuse (unless forced) to change a field whose value another manager set.
- update: a plain write; the writer owns what it added or changed, and other managers lose those fields.
"""

from __future__ import annotations

import copy
import functools
import json
from datetime import UTC, datetime
from typing import Any

from skiff.cluster.api import _smp_schema as schema

PathElement = tuple[str, Any]
Path = tuple[PathElement, ...]
FieldSet = set[Path]

# Fields the server owns: never tracked (kube's stripped metadata fields, plus the type fields).
_IGNORED_METADATA = frozenset({
    "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "selfLink",
    "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds",
})


class FieldConflicts(Exception):
    """Another manager owns fields whose values the apply would change."""

    def __init__(self, causes: list[dict[str, str]]) -> None:
        super().__init__(causes)
        self.causes = causes


class ApplyInvalid(ValueError):
    """The configuration cannot be merged (e.g. an associative list item without its key)."""


# --- public operations ----------------------------------------------------------------------------------


def apply(live: dict | None, applied: dict, manager: str, force: bool, gvk: tuple[str, str, str]) -> dict:
    root = _root_field(gvk)
    api_version = _api_version(gvk)
    live = copy.deepcopy(live) if live is not None else {}
    applied = _without_nulls(copy.deepcopy(applied))
    managers = decode_managed_fields(live.get("metadata", {}).get("managedFields"))

    merged = merge(live, applied, root)
    previous = managers.get((manager, "Apply", None))
    applied_set = field_set(_tracked(applied), root)
    if previous is not None:
        others = set().union(*(entry.fields for key, entry in managers.items() if key != (manager, "Apply", None)))
        merged = _prune(merged, previous.fields - applied_set, others | applied_set)

    added, modified, removed = compare(_tracked(live), _tracked(merged), root)
    changed = added | modified
    conflicts = []
    for key, entry in managers.items():
        if key == (manager, "Apply", None):
            continue
        for path in sorted(entry.fields & changed, key=path_string):
            conflicts.append({
                "type": "FieldManagerConflict",
                "message": f"conflict with {entry.describe()}",
                "field": path_string(path),
            })
    if conflicts and not force:
        raise FieldConflicts(conflicts)

    now = _now()
    for key, entry in managers.items():
        if key != (manager, "Apply", None):
            entry.fields -= changed | removed
    managers[(manager, "Apply", None)] = ManagedEntry(manager, "Apply", api_version, now, applied_set)
    if previous is not None and previous.fields == applied_set and merged == live:
        managers[(manager, "Apply", None)].time = previous.time
    return _with_managed_fields(merged, managers)


def update(old: dict | None, new: dict, manager: str, gvk: tuple[str, str, str],
           subresource: str | None = None) -> dict:
    """A plain write by ``manager`` (through ``subresource``, e.g. ``status`` or ``scale``): its entry, kept
    apart from the same manager's writes through other subresources as kube keeps it, owns what changed."""
    root = _root_field(gvk)
    api_version = _api_version(gvk)
    # Only metadata.managedFields is rewritten: copying the top level and metadata keeps ``new`` untouched.
    new = {**new, "metadata": dict(new.get("metadata") or {})}
    managers = decode_managed_fields((old.get("metadata") or {}).get("managedFields")) if old is not None else {}
    added, modified, removed = compare(_tracked(old or {}), _tracked(new), root)
    changed = added | modified
    for key, entry in managers.items():
        if key != (manager, "Update", subresource):
            entry.fields -= changed | removed
    previous = managers.get((manager, "Update", subresource))
    fields = ((previous.fields if previous else set()) - removed) | changed
    if fields:
        time = _now() if changed or removed or previous is None else previous.time
        managers[(manager, "Update", subresource)] = ManagedEntry(manager, "Update", api_version, time, fields,
                                                                  subresource)
    else:
        managers.pop((manager, "Update", subresource), None)
    return _with_managed_fields(new, managers)


# --- schema walking -------------------------------------------------------------------------------------


def _root_field(gvk: tuple[str, str, str]) -> schema.Field:
    return schema.Field(type=schema.root_type(gvk))


def _api_version(gvk: tuple[str, str, str]) -> str:
    group, version, _kind = gvk
    return f"{group}/{version}" if group else version


def _child(field: schema.Field, name: str) -> schema.Field:
    if field.granular_map:
        return schema.DEFAULT
    return schema.field_of(field.type, name)


def _item_field(field: schema.Field) -> schema.Field:
    return schema.Field(type=field.type)


def _is_keyed(field: schema.Field, value: Any) -> bool:
    return field.list == schema.KEYED and isinstance(value, list) and all(isinstance(i, dict) for i in value)


def _is_set(field: schema.Field, value: Any) -> bool:
    return field.list == schema.SET and isinstance(value, list)


def _is_granular(field: schema.Field, value: Any) -> bool:
    """A map whose members are tracked one by one (a struct or a granular map), not an atomic value."""
    return isinstance(value, dict) and not field.atomic_struct


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def item_key(item: dict[str, Any], field: schema.Field) -> PathElement:
    key = []
    for name in field.apply_keys:
        if name in item:
            key.append((name, _canonical(item[name])))
        elif name in schema.KEY_DEFAULTS:
            key.append((name, schema.KEY_DEFAULTS[name]))
    if not key:
        raise ApplyInvalid(
            f"associative list with keys has an element that omits key field {field.apply_keys[0]!r}"
        )
    try:
        return ("k", _key_json(tuple(sorted(key))))
    except TypeError:  # an unhashable key value: no caching
        return ("k", json.dumps(dict(key), sort_keys=True, separators=(",", ":")))


@functools.lru_cache(maxsize=4096)
def _key_json(key: tuple[tuple[str, Any], ...]) -> str:
    """kube's JSON for an item key (``{"containerPort":80,"protocol":"TCP"}``); the same keys recur constantly."""
    return json.dumps(dict(key), sort_keys=True, separators=(",", ":"))


def _value_key(value: Any) -> PathElement:
    return ("v", json.dumps(_canonical(value), sort_keys=True, separators=(",", ":")))


def _keyed_items(items: list[dict[str, Any]], field: schema.Field) -> dict[PathElement, dict[str, Any]]:
    indexed: dict[PathElement, dict[str, Any]] = {}
    for item in items:
        key = item_key(item, field)
        if key in indexed:
            raise ApplyInvalid(f"duplicate entries for key {key[1]}")
        indexed[key] = item
    return indexed


# --- field sets -----------------------------------------------------------------------------------------


def field_set(value: Any, field: schema.Field) -> FieldSet:
    """The fields an applied configuration sets (structured-merge-diff's ToFieldSet)."""
    out: FieldSet = set()
    _collect(value, field, (), out, mark_containers=False)
    out.discard(())
    return out


def _collect(value: Any, field: schema.Field, path: Path, out: FieldSet, *, mark_containers: bool) -> None:
    """Add the paths of ``value`` at ``path``; ``mark_containers`` also adds maps and lists themselves."""
    if _is_keyed(field, value):
        if mark_containers:
            out.add(path)
        for key, item in _keyed_items(value, field).items():
            out.add((*path, key))
            _collect(item, _item_field(field), (*path, key), out, mark_containers=mark_containers)
    elif _is_set(field, value):
        if mark_containers:
            out.add(path)
        out.update((*path, _value_key(item)) for item in value)
    elif _is_granular(field, value):
        if not value or (mark_containers and field.granular_map):
            out.add(path)
        for name, member in value.items():
            child_path = (*path, ("f", name))
            if field.granular_map or member is None or member == {}:
                out.add(child_path)
            _collect(member, _child(field, name), child_path, out, mark_containers=mark_containers)
    else:
        out.add(path)


def compare(old: Any, new: Any, field: schema.Field) -> tuple[FieldSet, FieldSet, FieldSet]:
    """The paths added, modified and removed from ``old`` to ``new``."""
    added: FieldSet = set()
    modified: FieldSet = set()
    removed: FieldSet = set()
    _compare(old, new, field, (), added, modified, removed)
    for found in (added, modified, removed):
        found.discard(())
    return added, modified, removed


def _compare(
    old: Any, new: Any, field: schema.Field, path: Path, added: FieldSet, modified: FieldSet, removed: FieldSet
) -> None:
    if _is_keyed(field, old) and _is_keyed(field, new):
        old_items, new_items = _keyed_items(old, field), _keyed_items(new, field)
        for key in old_items.keys() | new_items.keys():
            _compare_member(old_items.get(key), new_items.get(key), _item_field(field), (*path, key),
                            added, modified, removed, always_mark=True)
    elif _is_set(field, old) and _is_set(field, new):
        old_values = {_value_key(v) for v in old}
        new_values = {_value_key(v) for v in new}
        added.update((*path, v) for v in new_values - old_values)
        removed.update((*path, v) for v in old_values - new_values)
    elif _is_granular(field, old) and _is_granular(field, new):
        for name in old.keys() | new.keys():
            _compare_member(old.get(name, _MISSING), new.get(name, _MISSING), _child(field, name),
                            (*path, ("f", name)), added, modified, removed, always_mark=field.granular_map)
    elif not _equal(old, new):
        modified.add(path)


_MISSING = object()


def _compare_member(
    old: Any, new: Any, field: schema.Field, path: Path, added: FieldSet, modified: FieldSet, removed: FieldSet,
    *, always_mark: bool,
) -> None:
    if old is _MISSING or (old is None and new is not None):
        _collect(new, field, path, added, mark_containers=True)
        if always_mark or new is None or new == {}:
            added.add(path)
    elif new is _MISSING or (new is None and old is not None):
        _collect(old, field, path, removed, mark_containers=True)
        removed.add(path)
    else:
        _compare(old, new, field, path, added, modified, removed)


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_equal(a, b) for a, b in zip(left, right, strict=True))
    return left == right and (type(left) is type(right) or {type(left), type(right)} <= {int, float})


# --- merging and pruning --------------------------------------------------------------------------------


def merge(live: Any, config: Any, field: schema.Field) -> Any:
    """Structured merge: ``config`` wins on every field it sets; keyed lists and sets merge item by item."""
    if _is_keyed(field, live) and _is_keyed(field, config):
        live_items, config_items = _keyed_items(live, field), _keyed_items(config, field)
        return _merge_ordered(
            list(live_items), list(config_items),
            lambda key: merge(live_items.get(key), config_items[key], _item_field(field)) if key in config_items
            else live_items[key],
        )
    if _is_set(field, live) and _is_set(field, config):
        by_key = {_value_key(v): v for v in live} | {_value_key(v): v for v in config}
        order = _merge_ordered([_value_key(v) for v in live], [_value_key(v) for v in config], by_key.__getitem__)
        return order
    if _is_granular(field, live) and _is_granular(field, config):
        result = dict(live)
        for name, value in config.items():
            result[name] = merge(live.get(name), value, _child(field, name))
        return result
    return config


def _merge_ordered(live_keys: list[Any], config_keys: list[Any], produce: Any) -> list[Any]:
    """Config items in config order; live-only items keep their place relative to the shared items."""
    config_position = {key: position for position, key in enumerate(config_keys)}
    result: list[Any] = []
    next_config = 0
    for key in live_keys:
        if key not in config_position:
            result.append(produce(key))
        elif config_position[key] >= next_config:
            # A shared item: the config items up to it come first, in config order.
            for pending in config_keys[next_config : config_position[key] + 1]:
                result.append(produce(pending))
            next_config = config_position[key] + 1
    result.extend(produce(key) for key in config_keys[next_config:])
    return result


def _prune(obj: dict[str, Any], candidates: FieldSet, kept: FieldSet) -> dict[str, Any]:
    """Remove the paths in ``candidates`` unless a path in ``kept`` is at or below them.

    A map or list that the removals leave empty goes too, unless someone owns it.
    """
    removed: list[Path] = []
    for path in sorted(candidates, key=len):
        if any(path[: len(gone)] == gone for gone in removed):
            continue  # went with its parent
        if _owned_at_or_below(path, kept) or _is_key_field(path):
            continue
        _remove_path(obj, path)
        removed.append(path)
    for path in sorted(removed, key=len, reverse=True):
        for depth in range(len(path) - 1, 0, -1):
            parent = path[:depth]
            if _owned_at_or_below(parent, kept) or _value_at(obj, parent) not in ({}, []):
                break
            _remove_path(obj, parent)
    return obj


def _owned_at_or_below(path: Path, kept: FieldSet) -> bool:
    return any(other[: len(path)] == path for other in kept)


def _value_at(node: Any, path: Path) -> Any:
    for element in path:
        node = _step(node, element)
        if node is None:
            return None
    return node


def _is_key_field(path: Path) -> bool:
    """A key field of a list item that stays: removing it would orphan the item."""
    return len(path) >= 2 and path[-2][0] == "k" and path[-1][1] in json.loads(path[-2][1])


def _remove_path(node: Any, path: Path) -> None:
    *parents, last = path
    for element in parents:
        node = _step(node, element)
        if node is None:
            return
    kind, key = last
    if kind == "f" and isinstance(node, dict):
        node.pop(key, None)
    elif isinstance(node, list):
        node[:] = [item for item in node if not _matches(item, last)]


def _step(node: Any, element: PathElement) -> Any:
    kind, key = element
    if kind == "f":
        return node.get(key) if isinstance(node, dict) else None
    if isinstance(node, list):
        for item in node:
            if _matches(item, element):
                return item
    return None


def _matches(item: Any, element: PathElement) -> bool:
    kind, key = element
    if kind == "v":
        return _value_key(item) == element
    if kind == "k" and isinstance(item, dict):
        wanted = json.loads(key)
        return all(_canonical(item.get(name, schema.KEY_DEFAULTS.get(name))) == value
                   for name, value in wanted.items())
    return False


# --- managedFields --------------------------------------------------------------------------------------


class ManagedEntry:
    """One ``managedFields`` entry: a manager, its operation, and the fields it owns."""

    def __init__(self, manager: str, operation: str, api_version: str, time: str | None, fields: FieldSet,
                 subresource: str | None = None, encoded: dict[str, Any] | None = None) -> None:
        self.manager = manager
        self.operation = operation
        self.api_version = api_version
        self.time = time
        self.fields = fields
        self.subresource = subresource
        # The FieldsV1 the entry was read from, reused while the fields stay the same (encoding is costly).
        self._encoded = (frozenset(fields), encoded) if encoded is not None else None

    def describe(self) -> str:
        """The manager as kube names it in conflicts: ``"kubectl"``, ``"kubelet" using v1``."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text

    def encode(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"manager": self.manager, "operation": self.operation}
        if self.api_version:
            entry["apiVersion"] = self.api_version
        if self.time:
            entry["time"] = self.time
        entry["fieldsType"] = "FieldsV1"
        if self._encoded is not None and self._encoded[0] == self.fields:
            entry["fieldsV1"] = self._encoded[1]
        else:
            entry["fieldsV1"] = encode_fields(self.fields)
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def decode_managed_fields(entries: Any) -> dict[tuple[str, str, str | None], ManagedEntry]:
    managers: dict[tuple[str, str, str | None], ManagedEntry] = {}
    for entry in entries or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("manager", ""), str):
            continue
        encoded = entry.get("fieldsV1") or {}
        decoded = ManagedEntry(
            entry.get("manager", ""), entry.get("operation", "Update"), entry.get("apiVersion", ""),
            entry.get("time"), decode_fields(encoded), entry.get("subresource"), encoded=encoded,
        )
        managers[(decoded.manager, decoded.operation, decoded.subresource)] = decoded
    return managers


def _with_managed_fields(obj: dict[str, Any],
                         managers: dict[tuple[str, str, str | None], ManagedEntry]) -> dict[str, Any]:
    metadata = obj.setdefault("metadata", {})
    entries = [entry.encode() for entry in managers.values() if entry.fields]
    if entries:
        metadata["managedFields"] = entries
    else:
        metadata.pop("managedFields", None)
    return obj


def encode_fields(fields: FieldSet) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in fields:
        node = tree
        for element in path:
            node = node.setdefault(_element_string(element), {})
        node["."] = {}
    return _drop_lone_dots(tree)


def _drop_lone_dots(node: dict[str, Any]) -> dict[str, Any]:
    """``"."`` is only written when the path also has children: ``{"f:x": {".": {}}}`` is ``{"f:x": {}}``."""
    result = {}
    for name, child in node.items():
        if name == ".":
            continue
        if set(child) == {"."}:
            result[name] = {}
        else:
            result[name] = _drop_lone_dots(child)
            if "." in child:
                result[name] = {".": {}, **result[name]}
    return dict(sorted(result.items(), key=lambda item: (item[0] != ".", item[0])))


def decode_fields(tree: dict[str, Any], prefix: Path = ()) -> FieldSet:
    fields: FieldSet = set()
    for name, child in tree.items():
        if name == ".":
            fields.add(prefix)
            continue
        path = (*prefix, _parse_element(name))
        if not child:
            fields.add(path)
        else:
            fields |= decode_fields(child, path)
    return fields


def _element_string(element: PathElement) -> str:
    kind, key = element
    return f"{kind}:{key}"


def _parse_element(text: str) -> PathElement:
    kind, _, key = text.partition(":")
    if kind not in ("f", "k", "v", "i"):
        return ("f", text)
    return (kind, key)


def path_string(path: Path) -> str:
    """A path as kube prints it in conflicts: ``.spec.template.spec.containers[name="nginx"].image``."""
    parts = []
    for kind, key in path:
        if kind == "f":
            parts.append(f".{key}")
        elif kind == "k":
            fields = json.loads(key)
            parts.append("[" + ",".join(f"{name}={json.dumps(value)}" for name, value in fields.items()) + "]")
        elif kind == "v":
            parts.append(f"[={key}]")
        else:
            parts.append(f"[{key}]")
    return "".join(parts)


# --- helpers --------------------------------------------------------------------------------------------


def _tracked(obj: dict[str, Any]) -> dict[str, Any]:
    """The part of an object whose fields have owners (no type fields, no server-set metadata)."""
    tracked = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    metadata = tracked.get("metadata")
    if isinstance(metadata, dict):
        tracked["metadata"] = {k: v for k, v in metadata.items() if k not in _IGNORED_METADATA}
        if not tracked["metadata"]:
            del tracked["metadata"]
    return tracked


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

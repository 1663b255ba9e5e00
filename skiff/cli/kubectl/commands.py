"""The verbs of ``skiff kubectl``: get, describe, apply, create, delete, scale, label, annotate here; expose,
rollout and set image in ``workloads.py``; logs, exec and top in ``pods.py``.

Each verb is a function of the parsed arguments and a ``Client``; it prints what kubectl prints and returns
the exit code. Objects are read from ``-f`` files (YAML or JSON, several documents, ``-`` for stdin,
directories); tables come from the server (``as=Table``), so the columns are the server's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from skiff.cli.kubectl import output, pods, workloads
from skiff.cli.kubectl.client import TABLE_ACCEPT, ApiError, ApiResource, Client, ConfigError, load_config

Command = Callable[[argparse.Namespace, Client], int]
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "kubectl"


class UsageError(Exception):
    """The command line asks for something kubectl would refuse."""


# --- shared helpers -------------------------------------------------------------------------------------


def _namespace(args: argparse.Namespace, client: Client) -> str:
    return args.namespace or client.config.namespace


def _read_documents(sources: list[str], stdin: TextIO) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for source in sources:
        if source == "-":
            texts = [stdin.read()]
        elif Path(source).is_dir():
            texts = [p.read_text() for p in sorted(Path(source).iterdir()) if p.suffix in (".yaml", ".yml", ".json")]
        else:
            try:
                texts = [Path(source).read_text()]
            except OSError as error:
                raise UsageError(f'the path "{source}" does not exist') from error
        for text in texts:
            try:
                loaded = list(yaml.safe_load_all(text))
            except yaml.YAMLError as error:
                raise UsageError(f"error parsing {source}: {error}") from error
            for document in loaded:
                if not document:
                    continue
                if not isinstance(document, dict) or "kind" not in document or "apiVersion" not in document:
                    raise UsageError(f"error validating {source}: apiVersion and kind must be set")
                if document["kind"].endswith("List") and isinstance(document.get("items"), list):
                    documents.extend(document["items"])
                else:
                    documents.append(document)
    return documents


def _target(client: Client, obj: dict[str, Any], namespace: str) -> tuple[ApiResource, str | None, str]:
    resource = client.for_kind(obj["apiVersion"], obj["kind"])
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        raise UsageError(f"{resource.qualified}: the object has no metadata.name")
    object_namespace = (obj.get("metadata") or {}).get("namespace") or namespace
    return resource, object_namespace if resource.namespaced else None, name


def _split_targets(client: Client, words: list[str]) -> list[tuple[ApiResource, list[str]]]:
    """``TYPE[,TYPE] [NAME...]`` or ``TYPE/NAME...`` as (resource, names) pairs."""
    if not words:
        raise UsageError("you must specify the type of resource")
    if "/" in words[0]:
        targets: list[tuple[ApiResource, list[str]]] = []
        for word in words:
            kind, slash, name = word.partition("/")
            if not slash or not name:
                raise UsageError(f"there is no need to specify a resource type as a separate argument: {word}")
            targets.append((client.resolve(kind), [name]))
        return targets
    types = [t for t in words[0].split(",") if t]
    names = words[1:]
    if names and len(types) > 1:
        raise UsageError("you may only specify a single resource type when naming objects")
    resources: list[ApiResource] = []
    for kind in types:
        resources.extend(client.category("all") if kind == "all" else [client.resolve(kind)])
    return [(resource, names) for resource in resources]


def _gone(client: Client, path: str) -> bool:
    try:
        client.request("GET", path)
    except ApiError as error:
        if error.code == 404:
            return True
        raise
    return False


# --- get ------------------------------------------------------------------------------------------------


def get(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    targets = _split_targets(client, args.resources)
    namespace = None if args.all_namespaces else _namespace(args, client)
    fmt = args.output or ""
    query: dict[str, Any] = {}
    if args.selector:
        query["labelSelector"] = args.selector
    if args.field_selector:
        query["fieldSelector"] = args.field_selector

    if fmt in ("", "wide"):
        return _get_tables(args, client, targets, namespace, query, out, err)
    objects = []
    for resource, names in targets:
        if names:
            objects.extend(client.request("GET", resource.path(namespace, name)) for name in names)
        else:
            listing = client.request("GET", resource.path(namespace), query=query or None)
            for item in listing.get("items", []):
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
                objects.append(item)
    if not args.show_managed_fields:
        for obj in objects:
            (obj.get("metadata") or {}).pop("managedFields", None)
    single = len(targets) == 1 and len(targets[0][1]) == 1
    document: Any = objects[0] if single and objects else output.as_list(objects)
    if fmt == "json":
        out.write(output.to_json(document))
    elif fmt == "yaml":
        out.write(output.to_yaml(document))
    elif fmt == "name":
        for obj in objects:
            resource = client.for_kind(obj["apiVersion"], obj["kind"])
            out.write(f"{resource.qualified}/{obj['metadata']['name']}\n")
    elif fmt.startswith("jsonpath="):
        out.write(output.jsonpath(fmt[len("jsonpath="):].strip("'"), document))
    else:
        raise UsageError(f"unable to match a printer suitable for the output format {fmt!r}, allowed formats are: "
                         "json,jsonpath,name,wide,yaml")
    if args.watch and len(targets) == 1:
        resource, names = targets[0]
        return _watch_objects(client, resource, namespace, query, names, fmt, out)
    return 0


def _get_tables(args: argparse.Namespace, client: Client, targets: list[tuple[ApiResource, list[str]]],
                namespace: str | None, query: dict[str, Any], out: TextIO, err: TextIO) -> int:
    wide = args.output == "wide"
    several = len(targets) > 1 or args.resources[0] == "all"
    printed_any = False
    failed = False
    for resource, names in targets:
        tables = []
        if names:
            for name in names:
                try:
                    tables.append(client.request("GET", resource.path(namespace, name), accept=TABLE_ACCEPT))
                except ApiError as error:
                    _report(error, err)
                    failed = True
        else:
            tables.append(client.request("GET", resource.path(namespace), query=query or None, accept=TABLE_ACCEPT))
        table = _merge_tables(tables)
        if table.get("rows"):
            rows = output.table_rows(table, wide=wide, headers=not args.no_headers,
                                     name_prefix=resource.qualified if several else "",
                                     namespace_column=args.all_namespaces and resource.namespaced,
                                     show_labels=args.show_labels)
            if printed_any:
                out.write("\n")
            out.write(output.lay_out(rows))
            out.flush()
            printed_any = True
        if args.watch and not several:
            return _watch_tables(client, resource, namespace, query, names, table, args, out,
                                 headers=not printed_any and not args.no_headers)
    if not printed_any and not failed:
        if namespace and all(r.namespaced for r, _ in targets):
            err.write(f"No resources found in {namespace} namespace.\n")
        else:
            err.write("No resources found\n")
    return 1 if failed else 0


def _merge_tables(tables: list[dict[str, Any]]) -> dict[str, Any]:
    if not tables:
        return {}
    merged = dict(tables[0])
    merged["rows"] = [row for table in tables for row in table.get("rows") or []]
    return merged


def _watch_query(query: dict[str, Any], names: list[str], resource_version: str) -> dict[str, Any]:
    watch_query = dict(query)
    if names:
        watch_query["fieldSelector"] = f"metadata.name={names[0]}"
    if resource_version:
        watch_query["resourceVersion"] = resource_version
    return watch_query


def _watch_tables(client: Client, resource: ApiResource, namespace: str | None, query: dict[str, Any],
                  names: list[str], table: dict[str, Any], args: argparse.Namespace, out: TextIO, *,
                  headers: bool) -> int:
    """Print a row per change; the header comes with the first row when the list was empty."""
    columns = table.get("columnDefinitions")
    resource_version = (table.get("metadata") or {}).get("resourceVersion", "")
    for event in client.watch(resource.path(namespace), _watch_query(query, names, resource_version),
                              accept=TABLE_ACCEPT):
        if event.get("type") in ("BOOKMARK", "ERROR"):
            continue
        obj = event.get("object") or {}
        if obj.get("kind") == "Table":
            shown = {"columnDefinitions": obj.get("columnDefinitions") or columns, "rows": obj.get("rows")}
            rows = output.table_rows(shown, wide=args.output == "wide", headers=headers,
                                     namespace_column=args.all_namespaces and resource.namespaced,
                                     show_labels=args.show_labels)
            out.write(output.lay_out(rows))
            headers = False
        else:
            out.write(f"{(obj.get('metadata') or {}).get('name', '')}\n")
        out.flush()
    return 0


def _watch_objects(client: Client, resource: ApiResource, namespace: str | None, query: dict[str, Any],
                   names: list[str], fmt: str, out: TextIO) -> int:
    for event in client.watch(resource.path(namespace), _watch_query(query, names, "")):
        obj = event.get("object") or {}
        if fmt == "json":
            out.write(output.to_json(obj))
        elif fmt == "yaml":
            out.write("---\n" + output.to_yaml(obj))
        elif fmt == "name":
            out.write(f"{resource.qualified}/{obj.get('metadata', {}).get('name', '')}\n")
        else:
            out.write(output.jsonpath(fmt[len("jsonpath="):].strip("'"), obj))
        out.flush()
    return 0


# --- describe -------------------------------------------------------------------------------------------


def describe(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    namespace = _namespace(args, client)
    first = True
    for resource, names in _split_targets(client, args.resources):
        objects = ([client.request("GET", resource.path(namespace, name)) for name in names] if names else
                   client.request("GET", resource.path(namespace),
                                  query={"labelSelector": args.selector} if args.selector else None)["items"])
        for obj in objects:
            if not first:
                out.write("\n\n")
            first = False
            out.write(output.describe(obj, _events_for(client, resource, obj)))
    return 0


def _events_for(client: Client, resource: ApiResource, obj: dict[str, Any]) -> list[dict[str, Any]]:
    metadata = obj.get("metadata") or {}
    selector = [f"involvedObject.name={metadata.get('name')}", f"involvedObject.kind={resource.kind}"]
    if metadata.get("uid"):
        selector.append(f"involvedObject.uid={metadata['uid']}")
    events_resource = client.resolve("events")
    namespace = metadata.get("namespace") or "default"
    try:
        table = client.request("GET", events_resource.path(namespace), accept=TABLE_ACCEPT,
                               query={"fieldSelector": ",".join(selector)})
    except ApiError:
        return []
    names = [column["name"] for column in table.get("columnDefinitions") or []]
    events = []
    for row in table.get("rows") or []:
        cells = dict(zip(names, row.get("cells") or [], strict=False))
        source = cells.get("Source") or ""
        events.append({"type": cells.get("Type", ""), "reason": cells.get("Reason", ""),
                       "_age": cells.get("Last Seen", ""), "source": {"component": source.split(",")[0]},
                       "message": cells.get("Message", "")})
    return events


# --- apply and create -----------------------------------------------------------------------------------


def apply(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    """Server-side apply of every object in the files: created, configured or unchanged."""
    failed = False
    for obj in _read_documents(args.filename, sys.stdin):
        resource, namespace, name = _target(client, obj, _namespace(args, client))
        path = resource.path(namespace, name)
        try:
            before = client.request("GET", path)
        except ApiError as error:
            if error.code != 404:
                raise
            before = None
        query = {"fieldManager": args.field_manager, "force": "true" if args.force_conflicts else "false"}
        if namespace and resource.namespaced:
            obj = {**obj, "metadata": {**obj.get("metadata", {}), "namespace": namespace}}
        try:
            after = client.request("PATCH", path, query=query, body=obj, content_type=APPLY_PATCH)
        except ApiError as error:
            _report(error, err)
            failed = True
            continue
        if before is None:
            verb = "created"
        elif (before.get("metadata") or {}).get("resourceVersion") == (after.get("metadata") or {}).get(
                "resourceVersion"):
            verb = "unchanged"
        else:
            verb = "configured"
        out.write(f"{resource.qualified}/{name} {verb}\n")
    return 1 if failed else 0


def create(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    if args.filename:
        objects = _read_documents(args.filename, sys.stdin)
    elif args.what:
        objects = [_generated(args)]
    else:
        raise UsageError("must specify one of -f and -k, or a resource to create (namespace, deployment, configmap)")
    failed = False
    for obj in objects:
        resource, namespace, name = _target(client, obj, _namespace(args, client))
        try:
            client.request("POST", resource.path(namespace), body=obj, query={"fieldManager": "kubectl-create"})
        except ApiError as error:
            _report(error, err)
            failed = True
            continue
        out.write(f"{resource.qualified}/{name} created\n")
    return 1 if failed else 0


def _generated(args: argparse.Namespace) -> dict[str, Any]:
    what, name = args.what[0], (args.what[1] if len(args.what) > 1 else None)
    if not name:
        raise UsageError(f"NAME is required for create {what}")
    if what in ("namespace", "ns"):
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    if what in ("configmap", "cm"):
        data = dict(literal.split("=", 1) for literal in args.from_literal or [])
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    if what in ("deployment", "deploy"):
        if not args.image:
            raise UsageError("required flag(s) \"image\" not set")
        container_name = args.image[0].rsplit("/", 1)[-1].split(":")[0].split("@")[0]
        container: dict[str, Any] = {"name": container_name, "image": args.image[0], "resources": {}}
        if args.port:
            container["ports"] = [{"containerPort": args.port}]
        return {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": args.replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}},
        }
    raise UsageError(f"unknown resource to create: {what}")


# --- delete ---------------------------------------------------------------------------------------------


def delete(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    namespace = _namespace(args, client)
    victims: list[tuple[ApiResource, str | None, str]] = []
    if args.filename:
        victims = [_target(client, obj, namespace) for obj in _read_documents(args.filename, sys.stdin)]
    else:
        for resource, names in _split_targets(client, args.resources):
            scope = namespace if resource.namespaced else None
            if not names:
                if not (args.all or args.selector):
                    raise UsageError("resource(s) were provided, but no name was specified")
                listing = client.request("GET", resource.path(scope),
                                         query={"labelSelector": args.selector} if args.selector else None)
                names = [item["metadata"]["name"] for item in listing.get("items", [])]
            victims.extend((resource, scope, name) for name in names)
    failed = False
    deleted = []
    options: dict[str, Any] = {"propagationPolicy": "Background"}
    if args.force or args.grace_period >= 0:
        # --force alone means "immediately", as kubectl's --force --grace-period=0
        options["gracePeriodSeconds"] = 0 if args.force and args.grace_period < 0 else max(args.grace_period, 0)
    for resource, scope, name in victims:
        path = resource.path(scope, name)
        try:
            client.request("DELETE", path, body=options)
        except ApiError as error:
            _report(error, err)
            failed = True
            continue
        out.write(f'{resource.qualified} "{name}" deleted\n')
        out.flush()
        deleted.append(path)
    if args.wait:
        deadline = time.monotonic() + args.timeout if args.timeout else None
        for path in deleted:
            while not _gone(client, path):
                if deadline is not None and time.monotonic() > deadline:
                    err.write(f"error: timed out waiting for the deletion of {path}\n")
                    return 1
                time.sleep(0.2)
    if not victims and not failed:
        err.write("No resources found\n")
    return 1 if failed else 0


# --- scale, label, annotate -----------------------------------------------------------------------------


def scale(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    if args.replicas is None:
        raise UsageError("--replicas=COUNT is required, and COUNT must be greater than or equal to 0")
    namespace = _namespace(args, client)
    for resource, names in _split_targets(client, args.resources):
        for name in names:
            path = resource.path(namespace if resource.namespaced else None, name, "scale")
            client.request("PATCH", path, body={"spec": {"replicas": args.replicas}}, content_type=MERGE_PATCH)
            out.write(f"{resource.qualified}/{name} scaled\n")
    return 0


def _metadata_map_command(field: str, done: str) -> Command:
    def command(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
        words = list(args.args)
        changes: dict[str, str | None] = {}
        while words and ("=" in words[-1] or words[-1].endswith("-")):
            word = words.pop()
            if "=" in word:
                key, value = word.split("=", 1)
                changes[key] = value
            else:
                changes[word[:-1]] = None
        if not changes:
            raise UsageError(f"at least one {field[:-1]} update is required")
        namespace = _namespace(args, client)
        for resource, names in _split_targets(client, words):
            for name in names:
                path = resource.path(namespace if resource.namespaced else None, name)
                current = (client.request("GET", path).get("metadata") or {}).get(field) or {}
                for key, value in changes.items():
                    if value is not None and key in current and current[key] != value and not args.overwrite:
                        err.write(f"error: '{key}' already has a value ({current[key]}), and --overwrite is false\n")
                        return 1
                wanted = {k: v for k, v in changes.items() if current.get(k) != v and (v is not None or k in current)}
                if wanted:
                    client.request("PATCH", path, body={"metadata": {field: wanted}}, content_type=MERGE_PATCH)
                    out.write(f"{resource.qualified}/{name} {done}\n")
                else:
                    out.write(f"{resource.qualified}/{name} not {done}\n")
        return 0

    return command


# --- entry point ----------------------------------------------------------------------------------------


def _report(error: ApiError, err: TextIO) -> None:
    err.write(f"Error from server ({error.reason}): {error.message}\n")


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--kubeconfig", default=default, help="path to the kubeconfig file")
    parser.add_argument("--context", default=default, help="the kubeconfig context to use")
    parser.add_argument("-n", "--namespace", default=default, help="the namespace of the request")


_VERB_HELP = {
    "get": "display resources", "describe": "show details of resources",
    "apply": "apply a configuration (server-side apply)", "create": "create resources from files or arguments",
    "delete": "delete resources", "scale": "set the number of replicas",
    "label": "update the labels of resources", "annotate": "update the annotations of resources",
    "expose": "make a Service for a workload", "rollout": "status, history, undo, restart, pause, resume",
    "set": "set image: change containers' images", "logs": "print a container's logs",
    "exec": "run a command in a container", "port-forward": "forward local ports to a pod",
    "top": "resource usage (needs the metrics API)",
    "autoscale": "make a HorizontalPodAutoscaler for a workload",
}


def _namespaced(function: Callable[..., int]) -> Command:
    """A verb of workloads.py/pods.py, given the request's namespace."""

    def command(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
        return function(args, client, _namespace(args, client), out, err)

    return command


def build_parser() -> argparse.ArgumentParser:
    """The top level: global flags, the verb, and the verb's own arguments (parsed by ``verb_parser``)."""
    parser = argparse.ArgumentParser(
        prog="skiff kubectl",
        description="kubectl's common verbs against any Kubernetes API server (the kubeconfig's context).",
        epilog="verbs: " + ", ".join(f"{verb} ({text})" for verb, text in _VERB_HELP.items()))
    _common(parser, top=True)
    parser.add_argument("verb", choices=sorted(_VERB_HELP), metavar="VERB")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def verb_parser(verb: str) -> argparse.ArgumentParser:
    """One verb's flags and arguments; flags may sit anywhere among the arguments, as with kubectl."""
    sub = argparse.ArgumentParser(prog=f"skiff kubectl {verb}", description=_VERB_HELP[verb])
    _common(sub, top=False)
    if verb == "get":
        sub.set_defaults(function=get)
        sub.add_argument("resources", nargs="+", metavar="TYPE[,TYPE] [NAME...] | TYPE/NAME")
        sub.add_argument("-o", "--output", help="wide, json, yaml, name or jsonpath=TEMPLATE")
        sub.add_argument("-l", "--selector", help="label selector")
        sub.add_argument("--field-selector", help="field selector")
        sub.add_argument("-A", "--all-namespaces", action="store_true")
        sub.add_argument("-w", "--watch", action="store_true", help="after listing, watch for changes")
        sub.add_argument("--show-labels", action="store_true")
        sub.add_argument("--no-headers", action="store_true")
        sub.add_argument("--show-managed-fields", action="store_true", help="keep metadata.managedFields")
    elif verb == "describe":
        sub.set_defaults(function=describe)
        sub.add_argument("resources", nargs="+")
        sub.add_argument("-l", "--selector")
    elif verb in ("apply", "create"):
        sub.add_argument("-f", "--filename", action="append", default=[], help="file, directory or - for stdin")
        if verb == "apply":
            sub.set_defaults(function=apply)
            sub.add_argument("--field-manager", default=FIELD_MANAGER)
            sub.add_argument("--force-conflicts", action="store_true")
            sub.add_argument("--server-side", action="store_true", help="accepted: apply is always server-side")
        else:
            sub.set_defaults(function=create)
            sub.add_argument("what", nargs="*", metavar="namespace|deployment|configmap NAME")
            sub.add_argument("--image", action="append")
            sub.add_argument("--replicas", type=int, default=1)
            sub.add_argument("--port", type=int)
            sub.add_argument("--from-literal", action="append")
    elif verb == "delete":
        sub.set_defaults(function=delete)
        sub.add_argument("resources", nargs="*")
        sub.add_argument("-f", "--filename", action="append", default=[])
        sub.add_argument("-l", "--selector")
        sub.add_argument("--all", action="store_true")
        sub.add_argument("--wait", type=_boolean, default=True, nargs="?", const=True)
        sub.add_argument("--timeout", type=_seconds, default=0.0, help="how long to wait (0: forever)")
        sub.add_argument("--grace-period", type=int, default=-1, help="seconds given to the object to end")
        sub.add_argument("--force", action="store_true", help="delete at once, without waiting for the kubelet")
    elif verb == "scale":
        sub.set_defaults(function=scale)
        sub.add_argument("resources", nargs="+")
        sub.add_argument("--replicas", type=int)
    elif verb in ("expose", "rollout", "set", "logs", "exec", "port-forward", "top", "autoscale"):
        _pod_and_workload_verbs(sub, verb)
    else:
        field, done = ("labels", "labeled") if verb == "label" else ("annotations", "annotated")
        sub.set_defaults(function=_metadata_map_command(field, done))
        sub.add_argument("args", nargs="+", metavar="TYPE NAME KEY=VAL... | KEY-")
        sub.add_argument("--overwrite", action="store_true")
    return sub


def _pod_and_workload_verbs(sub: argparse.ArgumentParser, verb: str) -> None:
    if verb == "expose":
        sub.set_defaults(function=_namespaced(workloads.expose))
        sub.add_argument("resources", nargs="+", metavar="TYPE/NAME | TYPE NAME")
        sub.add_argument("--port")
        sub.add_argument("--target-port")
        sub.add_argument("--protocol")
        sub.add_argument("--type", help="ClusterIP, NodePort, LoadBalancer or ExternalName")
        sub.add_argument("--name", help="the Service's name (default: the workload's)")
        sub.add_argument("--selector", dest="selector_override", type=_label_map, help="k=v[,k=v]")
        sub.add_argument("--cluster-ip")
        sub.add_argument("--session-affinity")
        sub.add_argument("--external-ip")
    elif verb == "autoscale":
        sub.set_defaults(function=_namespaced(workloads.autoscale))
        sub.add_argument("resources", nargs="+", metavar="TYPE/NAME | TYPE NAME")
        sub.add_argument("--min", type=int, help="the fewest replicas (default: 1)")
        sub.add_argument("--max", type=int, default=-1, help="the most replicas (required)")
        sub.add_argument("--cpu-percent", type=int, help="target average CPU use, as a percentage of requests")
        sub.add_argument("--name", help="the autoscaler's name (default: the workload's)")
    elif verb == "rollout":
        sub.set_defaults(function=_namespaced(workloads.rollout))
        sub.add_argument("action", metavar="status|history|undo|restart|pause|resume")
        sub.add_argument("resources", nargs="+", metavar="TYPE/NAME | TYPE NAME")
        sub.add_argument("-w", "--watch", type=_boolean, default=True, nargs="?", const=True)
        sub.add_argument("--timeout", type=_seconds, default=0.0)
        sub.add_argument("--revision", type=int, default=0)
        sub.add_argument("--to-revision", type=int, default=0)
    elif verb == "set":
        sub.set_defaults(function=_namespaced(workloads.set_image))
        sub.add_argument("what", choices=["image"])
        sub.add_argument("args", nargs="+", metavar="TYPE/NAME CONTAINER=IMAGE...")
    elif verb == "logs":
        sub.set_defaults(function=_namespaced(pods.logs))
        sub.add_argument("resources", nargs="+", metavar="POD | TYPE/NAME")
        sub.add_argument("-c", "--container")
        sub.add_argument("-f", "--follow", action="store_true")
        sub.add_argument("-p", "--previous", action="store_true")
        sub.add_argument("--timestamps", action="store_true")
        sub.add_argument("--tail", type=int, default=-1)
        sub.add_argument("--since", type=_seconds)
        sub.add_argument("--since-time")
        sub.add_argument("--limit-bytes", type=int)
    elif verb == "exec":
        sub.set_defaults(function=_namespaced(pods.exec_), command=[])
        sub.add_argument("resources", nargs="+", metavar="POD | TYPE/NAME")
        sub.add_argument("-c", "--container")
        sub.add_argument("-i", "--stdin", action="store_true")
        sub.add_argument("-t", "--tty", action="store_true")
    elif verb == "port-forward":
        sub.set_defaults(function=_namespaced(pods.port_forward))
        sub.add_argument("resource", metavar="POD | TYPE/NAME")
        sub.add_argument("ports", nargs="+", metavar="[LOCAL_PORT:]REMOTE_PORT")
        sub.add_argument("--address", default="127.0.0.1", help="the local address to listen on")
    else:
        sub.set_defaults(function=_namespaced(pods.top))
        sub.add_argument("what", nargs="+", metavar="node|pod [NAME]")


def _label_map(text: str) -> dict[str, str]:
    try:
        return dict(pair.split("=", 1) for pair in text.split(",") if pair)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid selector {text!r} (k=v[,k=v])") from None


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def run(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    rest, command = list(args.rest), []
    if args.verb == "exec":
        if "--" not in rest:
            err.write("error: exec [POD] [COMMAND] is not supported anymore. Use exec [POD] -- [COMMAND] instead\n")
            return 1
        split = rest.index("--")
        rest, command = rest[:split], rest[split + 1:]
    args = verb_parser(args.verb).parse_intermixed_args(rest, namespace=args)
    if args.verb == "exec":
        args.command = command
    try:
        client = Client(load_config(args.kubeconfig, args.context))
        return args.function(args, client, out, err)
    except ApiError as error:
        _report(error, err)
    except (ConfigError, UsageError, output.JSONPathError, workloads.WorkloadError) as error:
        err.write(f"error: {error}\n")
    except OSError as error:
        err.write(f"Unable to connect to the server: {error}\n")
    except KeyboardInterrupt:
        return 130
    return 1

"""The pod verbs of ``skiff kubectl``: logs, exec, port-forward and top.

``logs`` streams ``pods/<name>/log``; ``exec`` speaks the remote-command WebSocket (``streams.py``) with
the terminal in raw mode under ``-t``; both pick a pod for ``TYPE/NAME`` from the workload's selector and
default the container as kubectl does (the ``kubectl.kubernetes.io/default-container`` annotation, else the
first). ``top`` reads the metrics API, which a cluster serves only with a metrics server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from skiff.cli.kubectl import streams
from skiff.cli.kubectl.client import ApiError, Client
from skiff.cli.kubectl.workloads import WorkloadError, one_target, selector_of

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"


def _pod(client: Client, words: list[str], namespace: str, err: TextIO) -> dict[str, Any]:
    """The pod named by ``POD``, ``pod/POD`` or ``TYPE/NAME`` (then one of the workload's pods)."""
    if len(words) == 1 and "/" not in words[0]:
        return client.request("GET", f"/api/v1/namespaces/{namespace}/pods/{words[0]}")
    resource, name = one_target(client, words)
    obj = client.request("GET", resource.path(namespace if resource.namespaced else None, name))
    if resource.kind == "Pod":
        return obj
    selector = ",".join(f"{k}={v}" for k, v in selector_of(obj).items())
    pods = client.request("GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": selector})
    candidates = sorted(pods.get("items", []), key=_preference)
    if not candidates:
        raise WorkloadError(f"no pods found for {resource.name}/{name}")
    if len(candidates) > 1:
        err.write(f"Found {len(candidates)} pods, using pod/{candidates[0]['metadata']['name']}\n")
    return candidates[0]


def _preference(pod: dict[str, Any]) -> tuple[int, int, str]:
    """Running and ready pods first, then the oldest (kubectl's ActivePods ordering, simplified)."""
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    running = status.get("phase") == "Running"
    return (0 if running else 1, 0 if ready else 1, pod["metadata"].get("creationTimestamp", ""))


def _container(pod: dict[str, Any], wanted: str | None, err: TextIO) -> str:
    if wanted:
        return wanted
    containers = [c["name"] for c in pod["spec"].get("containers") or []]
    if len(containers) == 1:
        return containers[0]
    chosen = (pod["metadata"].get("annotations") or {}).get(DEFAULT_CONTAINER)
    if chosen not in containers:
        chosen = containers[0]
        init = [f"{c['name']} (init)" for c in pod["spec"].get("initContainers") or []]
        err.write(f'Defaulted container "{chosen}" out of: {", ".join(containers + init)}\n')
    return chosen


# --- logs -----------------------------------------------------------------------------------------------


def logs(args: argparse.Namespace, client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    pod = _pod(client, args.resources, namespace, err)
    query: dict[str, Any] = {"container": _container(pod, args.container, err)}
    for flag, name in ((args.follow, "follow"), (args.previous, "previous"), (args.timestamps, "timestamps")):
        if flag:
            query[name] = "true"
    if args.tail is not None and args.tail >= 0:
        query["tailLines"] = str(args.tail)
    if args.since:
        query["sinceSeconds"] = str(int(args.since))
    if args.since_time:
        query["sinceTime"] = args.since_time
    if args.limit_bytes:
        query["limitBytes"] = str(args.limit_bytes)
    sink = getattr(out, "buffer", None)
    for chunk in client.stream(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/log", query):
        if sink is not None:
            sink.write(chunk)
            sink.flush()
        else:
            out.write(chunk.decode(errors="replace"))
    return 0


# --- exec -----------------------------------------------------------------------------------------------


def exec_(args: argparse.Namespace, client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    if not args.command:
        raise WorkloadError("you must specify at least one command for the container")
    pod = _pod(client, args.resources, namespace, err)
    container = _container(pod, args.container, err)
    tty = args.tty
    if tty and not (args.stdin and os.isatty(0)):
        err.write("Unable to use a TTY - input is not a terminal or the right kind of file\n")
        tty = False
    query = [("command", word) for word in args.command]
    query += [("container", container), ("stdout", "true")]
    if args.stdin:
        query.append(("stdin", "true"))
    if tty:
        query.append(("tty", "true"))
    else:
        query.append(("stderr", "true"))
    channel = client.upgrade(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/exec", query)
    try:
        with _raw_terminal(tty):
            if tty:
                _follow_window_size(channel)
            if args.stdin:
                threading.Thread(target=_pump_stdin, args=(channel,), daemon=True).start()
            status = _copy_output(channel, out, err)
    finally:
        channel.close()
    if status is None:
        return 0
    code = streams.exit_code(status)
    if code and not _has_exit_code(status):
        err.write(f"error: {status.get('message') or 'the command failed'}\n")
    elif code:
        err.write(f"command terminated with exit code {code}\n")
    return code


def _has_exit_code(status: dict[str, Any]) -> bool:
    return any(c.get("reason") == "ExitCode" for c in (status.get("details") or {}).get("causes") or [])


def _copy_output(channel: streams.ChannelSocket, out: TextIO, err: TextIO) -> dict[str, Any] | None:
    """Stdout and stderr to ours until the server closes; the Status from the error channel, if any."""
    status = None
    sinks = {streams.STDOUT: getattr(out, "buffer", None), streams.STDERR: getattr(err, "buffer", None)}
    texts = {streams.STDOUT: out, streams.STDERR: err}
    while (message := channel.receive()) is not None:
        number, data = message
        if number in sinks:
            sink = sinks[number]
            if sink is not None:
                sink.write(data)
                sink.flush()
            else:
                texts[number].write(data.decode(errors="replace"))
        elif number == streams.ERROR and data:
            try:
                status = json.loads(data)
            except ValueError:
                status = {"status": "Failure", "message": data.decode(errors="replace")}
    return status


def _pump_stdin(channel: streams.ChannelSocket) -> None:
    try:
        while data := os.read(0, 65536):
            channel.send(streams.STDIN, data)
        channel.close_stdin()
    except OSError:
        pass  # the connection went away: the main thread sees it too


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _follow_window_size(channel: streams.ChannelSocket) -> None:
    def send_size(*_: object) -> None:
        size = shutil.get_terminal_size()
        with contextlib.suppress(OSError):
            channel.resize(size.columns, size.lines)

    send_size()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGWINCH, send_size)


# --- top ------------------------------------------------------------------------------------------------


def top(args: argparse.Namespace, client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    """``top pod|node`` from metrics.k8s.io; without a metrics server, kubectl's own error."""
    try:
        client.request("GET", "/apis/metrics.k8s.io/v1beta1")
    except ApiError as error:
        if error.code in (404, 503):
            raise WorkloadError("Metrics API not available") from None
        raise
    what = args.what[0] if args.what else ""
    if what in ("node", "nodes", "no"):
        return _top_nodes(client, out)
    if what in ("pod", "pods", "po"):
        return _top_pods(client, namespace, out, err)
    raise WorkloadError("top needs a resource: node or pod")


def _top_pods(client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    items = client.request("GET", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods").get("items", [])
    if not items:  # kubectl's two answers: pods without figures yet, or no pods at all
        if client.request("GET", f"/api/v1/namespaces/{namespace}/pods", query={"limit": "1"}).get("items"):
            raise WorkloadError("metrics not available yet")
        err.write(f"No resources found in {namespace} namespace.\n")
        return 0
    rows = [["NAME", "CPU(cores)", "MEMORY(bytes)"]]
    for item in sorted(items, key=lambda i: i["metadata"]["name"]):
        parts = [c.get("usage") or {} for c in item.get("containers") or []]
        cpu, memory = (sum(_quantity(u.get(k, "0")) for u in parts) for k in ("cpu", "memory"))
        rows.append([item["metadata"]["name"], f"{round(cpu * 1000)}m", f"{round(memory / 2**20)}Mi"])
    _columns(rows, out)
    return 0


def _top_nodes(client: Client, out: TextIO) -> int:
    items = client.request("GET", "/apis/metrics.k8s.io/v1beta1/nodes").get("items", [])
    if not items:
        raise WorkloadError("metrics not available yet")
    allocatable = {n["metadata"]["name"]: (n.get("status") or {}).get("allocatable") or {}
                   for n in client.request("GET", "/api/v1/nodes").get("items", [])}
    rows = [["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]]
    for item in sorted(items, key=lambda i: i["metadata"]["name"]):
        usage, capacity = item.get("usage") or {}, allocatable.get(item["metadata"]["name"], {})
        cpu, memory = _quantity(usage.get("cpu", "0")), _quantity(usage.get("memory", "0"))
        rows.append([item["metadata"]["name"], f"{round(cpu * 1000)}m", _percent(cpu, capacity.get("cpu")),
                     f"{round(memory / 2**20)}Mi", _percent(memory, capacity.get("memory"))])
    _columns(rows, out)
    return 0


def _percent(used: float, capacity: str | None) -> str:
    total = _quantity(capacity) if capacity else 0
    return f"{round(used / total * 100)}%" if total else "<unknown>"


def _columns(rows: list[list[str]], out: TextIO) -> None:
    """kubectl's table layout: each column as wide as its widest cell, three spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


_SUFFIXES = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(text: str) -> float:
    """A Kubernetes quantity (``250m``, ``1.5``, ``128Mi``) as a number."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


# --- port-forward ---------------------------------------------------------------------------------------

PORT_FORWARD_PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io")


def port_forward(args: argparse.Namespace, client: Client, namespace: str, out: TextIO, err: TextIO) -> int:
    """Listen on local ports; each connection gets a WebSocket of its own to ``pods/<name>/portforward`` (the
    v4 channel protocol: data on channel 0, errors on 1, each opened with the port), until either side ends."""
    pod = _pod(client, [args.resource], namespace, err)
    phase = (pod.get("status") or {}).get("phase")
    if phase != "Running":
        raise WorkloadError(f"unable to forward port because pod is not running. Current status={phase}")
    path = f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/portforward"
    listeners = []
    for spec in args.ports:
        local, remote = _port_pair(spec)
        listener = socket.create_server((args.address, local))
        listeners.append(listener)
        out.write(f"Forwarding from {args.address}:{listener.getsockname()[1]} -> {remote}\n")
        out.flush()
        threading.Thread(target=_accept_forever, args=(listener, client, path, remote, out, err),
                         daemon=True).start()
    try:
        threading.Event().wait()  # until interrupted
    finally:
        for listener in listeners:
            listener.close()
    return 0


def _port_pair(spec: str) -> tuple[int, int]:
    """``REMOTE``, ``LOCAL:REMOTE`` or ``:REMOTE`` (a free local port) as (local, remote)."""
    local, _, remote = spec.rpartition(":") if ":" in spec else (spec, "", spec)
    try:
        pair = int(local or 0), int(remote)
    except ValueError:
        raise WorkloadError(f"invalid port {spec!r}: want [LOCAL:]REMOTE") from None
    if not 0 <= pair[0] < 65536 or not 0 < pair[1] < 65536:
        raise WorkloadError(f"invalid port {spec!r}: ports are 1-65535")
    return pair


def _accept_forever(listener: socket.socket, client: Client, path: str, remote: int, out: TextIO,
                    err: TextIO) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # closed
        out.write(f"Handling connection for {listener.getsockname()[1]}\n")
        out.flush()
        threading.Thread(target=_forward, args=(conn, client, path, remote, err), daemon=True).start()


def _forward(conn: socket.socket, client: Client, path: str, remote: int, err: TextIO) -> None:
    try:
        channel = client.upgrade(path, [("ports", str(remote))], PORT_FORWARD_PROTOCOLS)
    except (ApiError, OSError) as error:
        err.write(f"error: {error}\n")
        conn.close()
        return

    def upstream() -> None:  # the local connection's bytes to the pod
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                channel.send(0, data)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RD)

    threading.Thread(target=upstream, daemon=True).start()
    opened: set[int] = set()
    try:
        while (message := channel.receive()) is not None:
            number, data = message
            if number not in opened:  # each channel's first message is its port
                opened.add(number)
                continue
            if number == 0:
                conn.sendall(data)
            elif data:
                err.write(f"error forwarding port {remote}: {data.decode(errors='replace')}\n")
    except OSError:
        pass
    finally:
        channel.close()
        conn.close()

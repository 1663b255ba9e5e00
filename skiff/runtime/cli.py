"""``skiff runtime`` / ``skiff-runtime``: runc's command line over ``skiff.runtime.container.Runtime``.

Anything that calls runc (an engine, containerd, a person) can call this instead. Errors are one line
on stderr (and a JSON record in ``--log`` when asked) with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from skiff import errors
from skiff.runtime.state import DEFAULT_ROOT

_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``1024``, ``64m``, ``1GiB``, ``-1`` (unlimited), as docker/runc accept them."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b") or "0"
    try:
        if value[-1] in _UNITS:
            return int(float(value[:-1]) * _UNITS[value[-1]])
        return int(value)
    except (ValueError, IndexError):
        raise errors.InvalidArgument(f"invalid size {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiff-runtime", description="Skiff's OCI runtime (runc command line)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="directory for container state")
    p.add_argument("--log", help="also write errors to this file")
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true")
    p.add_argument("--rootless", default="auto")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, container: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text)
        if container:
            c.add_argument("id")
        return c

    for name in ("create", "run"):
        c = sub.add_parser(name, help=f"{name} a container from a bundle")
        c.add_argument("--bundle", "-b", default=".")
        c.add_argument("--console-socket")
        c.add_argument("--pid-file")
        c.add_argument("--preserve-fds", type=int, default=0)
        c.add_argument("--no-pivot", action="store_true")
        c.add_argument("--no-new-keyring", action="store_true")
        if name == "run":
            c.add_argument("--detach", "-d", action="store_true")
            c.add_argument("--keep", action="store_true")
            c.add_argument("--no-subreaper", action="store_true")
        c.add_argument("id")
    command("start", "start a created container")
    command("state", "print the OCI state of a container")
    c = sub.add_parser("kill", help="send a signal to the container's init (default SIGTERM)")
    c.add_argument("--all", "-a", action="store_true")
    c.add_argument("id")
    c.add_argument("signal", nargs="?", default="SIGTERM")
    c = command("delete", "delete a container and everything it holds")
    c.add_argument("--force", "-f", action="store_true")
    c = sub.add_parser("exec", help="run a process in a running container")
    c.add_argument("--process", "-p")
    c.add_argument("--tty", "-t", action="store_true")
    c.add_argument("--detach", "-d", action="store_true")
    c.add_argument("--pid-file")
    c.add_argument("--console-socket")
    c.add_argument("--cwd")
    c.add_argument("--env", "-e", action="append", default=[])
    c.add_argument("--user", "-u")
    c.add_argument("--additional-gids", "-g", action="append", default=[])
    c.add_argument("--cap", "-c", action="append", default=[])
    c.add_argument("--no-new-privs", action="store_true")
    c.add_argument("--preserve-fds", type=int, default=0)
    c.add_argument("--apparmor")
    c.add_argument("--process-label")
    c.add_argument("id")
    c.add_argument("args", nargs=argparse.REMAINDER)
    c = sub.add_parser("list", help="list containers")
    c.add_argument("--format", "-f", default="table", choices=["table", "json"])
    c.add_argument("--quiet", "-q", action="store_true")
    c = sub.add_parser("ps", help="list the processes of a container")
    c.add_argument("--format", "-f", default="table", choices=["table", "json"])
    c.add_argument("id")
    c.add_argument("ps_args", nargs=argparse.REMAINDER)
    command("pause", "freeze every process of a container")
    command("resume", "thaw a paused container")
    c = sub.add_parser("update", help="change a container's resource limits while it runs")
    c.add_argument("--resources", "-r")
    for flag in ("--memory", "--memory-swap", "--memory-reservation", "--kernel-memory"):
        c.add_argument(flag)
    for flag in ("--cpu-shares", "--cpu-period", "--cpu-quota", "--pids-limit", "--blkio-weight"):
        c.add_argument(flag, type=int)
    c.add_argument("--cpuset-cpus")
    c.add_argument("--cpuset-mems")
    c.add_argument("id")
    c = sub.add_parser("spec", help="write a default config.json")
    c.add_argument("--bundle", "-b", default=".")
    c.add_argument("--rootless", action="store_true")
    return p


def _exec_process(runtime: Any, a: argparse.Namespace) -> dict[str, Any]:
    """The process to exec: --process JSON, or the container's own process with these args and flags."""
    if a.process:
        try:
            with open(a.process) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise errors.InvalidArgument(f"process {a.process}: {e}") from None
    if not a.args:
        raise errors.InvalidArgument("exec: a command to run is required")
    from skiff.runtime.state import ContainerState

    process = dict(ContainerState.load(runtime.root, a.id).spec["process"])
    process["args"] = list(a.args)
    process["terminal"] = a.tty
    process["env"] = list(process.get("env") or []) + a.env
    if a.cwd:
        process["cwd"] = a.cwd
    if a.user:
        uid, _, gid = a.user.partition(":")
        user: dict[str, Any] = {}
        if uid.isdigit() and (not gid or gid.isdigit()):
            user = {"uid": int(uid), "gid": int(gid or 0)}
        else:
            user = {"uid": 0, "gid": 0, "username": a.user}
        process["user"] = user
    if a.additional_gids:
        process.setdefault("user", {})["additionalGids"] = [int(g) for g in a.additional_gids]
    if a.cap:
        caps = {k: list(v) for k, v in (process.get("capabilities") or {}).items()}
        for cap in a.cap:
            for kind in ("bounding", "effective", "permitted", "ambient"):
                caps.setdefault(kind, []).append(cap)
        process["capabilities"] = caps
    if a.no_new_privs:
        process["noNewPrivileges"] = True
    return process


def _update_resources(a: argparse.Namespace) -> dict[str, Any]:
    if a.resources:
        source = sys.stdin if a.resources == "-" else open(a.resources)  # noqa: SIM115
        with source:
            try:
                return json.load(source)
            except json.JSONDecodeError as e:
                raise errors.InvalidArgument(f"resources: malformed JSON: {e}") from None
    memory = {k: parse_size(v) for k, v in (("limit", a.memory), ("swap", a.memory_swap),
                                            ("reservation", a.memory_reservation)) if v is not None}
    cpu = {k: v for k, v in (("shares", a.cpu_shares), ("period", a.cpu_period), ("quota", a.cpu_quota),
                             ("cpus", a.cpuset_cpus), ("mems", a.cpuset_mems)) if v is not None}
    resources: dict[str, Any] = {}
    if memory:
        resources["memory"] = memory
    if cpu:
        resources["cpu"] = cpu
    if a.pids_limit is not None:
        resources["pids"] = {"limit": a.pids_limit}
    if a.blkio_weight is not None:
        resources["blockIO"] = {"weight": a.blkio_weight}
    return resources


def _print_list(containers: list[dict[str, Any]], a: argparse.Namespace) -> None:
    if a.quiet:
        for c in containers:
            print(c["id"])
    elif a.format == "json":
        print(json.dumps(containers))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(c["id"], str(c["pid"]), c["status"], c["bundle"], c["created"], c["owner"] or "root")
                 for c in containers]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _print_ps(pids: list[int], a: argparse.Namespace) -> None:
    if a.format == "json":
        print(json.dumps(pids))
        return
    import subprocess

    out = subprocess.run(["ps", *(a.ps_args or ["-ef"])], capture_output=True, text=True, check=False).stdout
    lines = out.splitlines()
    if not lines:
        return
    header = lines[0]
    column = header.split().index("PID")
    print(header)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in pids:
            print(line)


def _dispatch(a: argparse.Namespace) -> int:
    from skiff.runtime.container import Runtime

    runtime = Runtime(os.path.abspath(a.root))
    cmd = a.command
    if cmd == "create":
        runtime.create(a.id, a.bundle, a.pid_file, a.console_socket, a.preserve_fds)
    elif cmd == "run":
        return runtime.run(a.id, a.bundle, a.pid_file, a.console_socket, a.detach, a.preserve_fds)
    elif cmd == "start":
        runtime.start(a.id)
    elif cmd == "state":
        print(json.dumps(runtime.state(a.id), indent=2))
    elif cmd == "kill":
        runtime.kill(a.id, a.signal, a.all)
    elif cmd == "delete":
        runtime.delete(a.id, a.force)
    elif cmd == "exec":
        return runtime.exec(a.id, _exec_process(runtime, a), a.detach, a.pid_file, a.console_socket, a.preserve_fds)
    elif cmd == "list":
        _print_list(runtime.list(), a)
    elif cmd == "ps":
        _print_ps(runtime.pids(a.id), a)
    elif cmd == "pause":
        runtime.pause(a.id)
    elif cmd == "resume":
        runtime.resume(a.id)
    elif cmd == "update":
        runtime.update(a.id, _update_resources(a))
    elif cmd == "spec":
        _write_spec(a.bundle)
    return 0


def _write_spec(bundle: str) -> None:
    from skiff.runtime.spec import default_spec

    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise errors.AlreadyExists("File config.json exists. Remove it first")
    with open(path, "w") as f:
        json.dump(default_spec(), f, indent="\t")


def _report(a: argparse.Namespace | None, message: str) -> None:
    sys.stderr.write(f"skiff-runtime: {message}\n")
    if a is not None and a.log:
        import time

        record = (json.dumps({"level": "error", "msg": message, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime())})
                  if a.log_format == "json" else f"level=error msg={json.dumps(message)}")
        try:
            with open(a.log, "a") as f:
                f.write(record + "\n")
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    a = None
    try:
        a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
        if a.systemd_cgroup:
            raise errors.Unsupported("the systemd cgroup driver is not supported; use cgroupfs")
        return _dispatch(a)
    except errors.SkiffError as e:
        _report(a, str(e))
    except OSError as e:
        _report(a, f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
    except KeyboardInterrupt:
        _report(a, "interrupted")
    return 1


if __name__ == "__main__":
    sys.exit(main())

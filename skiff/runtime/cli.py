"""``skiff runtime`` / ``skiff-runtime``: runc's command line over ``skiff.runtime.container.Runtime``.

Anything that calls runc (an engine, containerd, a person) can call this instead. Errors are one line
on stderr (and a JSON record in ``--log`` when asked) with exit status 1.
"""

from __future__ import annotations

import os
import sys

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


class Args:
    """Parsed command line: attributes named after the long flags (``--pid-file`` -> ``pid_file``)."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


# Flags: name -> kind ("bool", "str", "int" or "list"); short aliases map to a long name.
_GLOBAL = {"root": "str", "log": "str", "log-format": "str", "debug": "bool", "systemd-cgroup": "bool",
           "rootless": "str", "criu": "str"}
_CREATE = {"bundle": "str", "console-socket": "str", "pid-file": "str", "preserve-fds": "int",
           "no-pivot": "bool", "no-new-keyring": "bool"}
_COMMANDS: dict = {
    # command: (flags, short aliases, positional names, name of the trailing list or None, help)
    "create": (_CREATE, {"b": "bundle"}, ["id"], None, "create a container from a bundle"),
    "run": ({**_CREATE, "detach": "bool", "keep": "bool", "no-subreaper": "bool"},
            {"b": "bundle", "d": "detach"}, ["id"], None, "create, start and wait for a container"),
    "start": ({}, {}, ["id"], None, "start a created container"),
    "state": ({}, {}, ["id"], None, "print the OCI state of a container"),
    "kill": ({"all": "bool"}, {"a": "all"}, ["id", "signal?"], None, "signal the container (default SIGTERM)"),
    "delete": ({"force": "bool"}, {"f": "force"}, ["id"], None, "delete a container and all it holds"),
    "exec": ({"process": "str", "tty": "bool", "detach": "bool", "pid-file": "str", "console-socket": "str",
              "cwd": "str", "env": "list", "user": "str", "additional-gids": "list", "cap": "list",
              "no-new-privs": "bool", "preserve-fds": "int", "apparmor": "str", "process-label": "str",
              "cgroup": "str"},
             {"p": "process", "t": "tty", "d": "detach", "e": "env", "u": "user", "g": "additional-gids",
              "c": "cap"}, ["id"], "args", "run a process in a running container"),
    "list": ({"format": "str", "quiet": "bool"}, {"f": "format", "q": "quiet"}, [], None, "list containers"),
    "ps": ({"format": "str"}, {"f": "format"}, ["id"], "ps_args", "list a container's processes"),
    "pause": ({}, {}, ["id"], None, "freeze every process of a container"),
    "resume": ({}, {}, ["id"], None, "thaw a paused container"),
    "update": ({"resources": "str", "memory": "str", "memory-swap": "str", "memory-reservation": "str",
                "kernel-memory": "str", "cpu-shares": "int", "cpu-period": "int", "cpu-quota": "int",
                "pids-limit": "int", "blkio-weight": "int", "cpuset-cpus": "str", "cpuset-mems": "str"},
               {"r": "resources"}, ["id"], None, "change a container's resource limits while it runs"),
    "spec": ({"bundle": "str", "rootless": "bool"}, {"b": "bundle"}, [], None, "write a default config.json"),
}
_DEFAULTS = {"root": DEFAULT_ROOT, "log-format": "text", "bundle": ".", "preserve-fds": 0, "signal": "SIGTERM",
             "format": "table"}


def _usage() -> str:
    lines = ["usage: skiff-runtime [--root DIR] [--log FILE] [--log-format text|json] COMMAND [OPTIONS] ARGS", "",
             "commands:"]
    lines += [f"  {name:8} {spec[4]}" for name, spec in _COMMANDS.items()]
    return "\n".join(lines) + "\n"


def _take_flags(argv: list[str], i: int, flags: dict, aliases: dict, values: dict) -> int:
    """Consume ``--flag[=value]`` / ``-f value`` words from ``argv[i:]``; the index after them."""
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        word = argv[i]
        if word == "--":
            return i + 1
        name, eq, inline = word.lstrip("-").partition("=")
        name = aliases.get(name, name)
        kind = flags.get(name)
        if kind is None:
            raise errors.InvalidArgument(f"flag provided but not defined: {word}")
        i += 1
        if kind == "bool":
            values[name] = inline.lower() not in ("false", "0") if eq else True
            continue
        if not eq:
            if i >= len(argv):
                raise errors.InvalidArgument(f"flag needs an argument: {word}")
            inline, i = argv[i], i + 1
        if kind == "int":
            try:
                value: object = int(inline)
            except ValueError:
                raise errors.InvalidArgument(f"invalid value {inline!r} for flag {word}") from None
        else:
            value = inline
        if kind == "list":
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
    return i


def parse_args(argv: list[str]) -> Args:
    """runc's command line: global flags, a command, its flags, then its arguments."""
    values: dict = {}
    i = _take_flags(argv, 0, _GLOBAL, {}, values)
    if i >= len(argv) or argv[i] in ("help", "-h", "--help"):
        raise _Help()
    command = argv[i]
    if command not in _COMMANDS:
        raise errors.InvalidArgument(f"unknown command {command!r}")
    flags, aliases, positional, rest, _ = _COMMANDS[command]
    if "-h" in argv[i + 1:] or "--help" in argv[i + 1:]:
        raise _Help()
    i = _take_flags(argv, i + 1, flags, aliases, values)
    for name in positional:
        optional = name.endswith("?")
        if i < len(argv):
            values[name.rstrip("?")] = argv[i]
            i += 1
        elif not optional:
            raise errors.InvalidArgument(f'"{command}" requires a container {name}')
    if rest:
        values[rest] = argv[i:]
    elif i < len(argv):
        raise errors.InvalidArgument(f"{command}: unexpected argument {argv[i]!r}")
    merged = {**{k: None for k in (*_GLOBAL, *flags)}, **{k: v for k, v in _DEFAULTS.items()}, **values}
    for kind_table in (_GLOBAL, flags):
        for name, kind in kind_table.items():
            if kind == "list" and merged.get(name) is None:
                merged[name] = []
            if kind == "bool" and merged.get(name) is None:
                merged[name] = False
    merged["command"] = command
    return Args(**{k.replace("-", "_"): v for k, v in merged.items()})


class _Help(Exception):
    pass


def _exec_process(runtime: object, a: Args) -> dict:
    """The process to exec: --process JSON, or the container's own process with these args and flags."""
    import json

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
        user: dict = {}
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


def _update_resources(a: Args) -> dict:
    import json

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
    resources: dict = {}
    if memory:
        resources["memory"] = memory
    if cpu:
        resources["cpu"] = cpu
    if a.pids_limit is not None:
        resources["pids"] = {"limit": a.pids_limit}
    if a.blkio_weight is not None:
        resources["blockIO"] = {"weight": a.blkio_weight}
    return resources


def _print_list(containers: list[dict], a: Args) -> None:
    import json

    if a.quiet:
        for c in containers:
            print(c["id"])
    elif a.format == "json":
        print(json.dumps(containers))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(c["id"], str(c["pid"]), c["status"], c["bundle"], c["created"], c["owner"])
                 for c in containers]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _print_ps(pids: list[int], a: Args) -> None:
    import json

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


def _dispatch(a: Args) -> int:
    if a.command in ("create", "run", "exec"):
        from skiff.runtime.cgroups import warm_attach_lock

        # First, so the kernel's wait overlaps our imports and bundle reading (see its docstring).
        # The child is reaped by our exit, or by the reaper of `run`/`exec`.
        warm_attach_lock()
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
        import json

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
    import json

    from skiff.runtime.spec import default_spec

    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise errors.AlreadyExists("File config.json exists. Remove it first")
    with open(path, "w") as f:
        json.dump(default_spec(), f, indent="\t")


def _report(a: Args | None, message: str) -> None:
    import json

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
        try:
            a = parse_args(sys.argv[1:] if argv is None else argv)
        except _Help:
            sys.stdout.write(_usage())
            return 0
        if a.systemd_cgroup:
            raise errors.Unsupported("the systemd cgroup driver is not supported; use cgroupfs")
        return _dispatch(a)
    except errors.SkiffError as e:
        _report(a, str(e))
    except OSError as e:
        from skiff.runtime.linux import describe

        _report(a, describe(e))
    except KeyboardInterrupt:
        _report(a, "interrupted")
    return 1


def entry(argv: list[str] | None = None) -> None:
    """The executable's entry point: ``main``, then exit without interpreter teardown.

    Tearing down the modules and ctypes state costs several milliseconds per command, a noticeable
    share of a container start; there is nothing to clean up that exit does not already release.
    """
    code = main(argv)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()

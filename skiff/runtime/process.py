"""The container's process: user, groups, rlimits, capabilities, no_new_privs, environment, exec.

Used for the container's first process (by init) and for every ``exec``; both call ``prepare`` while
still root inside the container, then ``become`` to drop to what the spec asks, then ``execute``.
"""

from __future__ import annotations

import os
import resource

from skiff.errors import InvalidArgument, NotFound
from skiff.runtime import linux
from skiff.runtime.capabilities import CapabilitySets

RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}


def validate_rlimits(process: dict) -> None:
    for limit in process.get("rlimits") or []:
        if limit.get("type") not in RLIMITS:
            raise InvalidArgument(f"unknown rlimit type {limit.get('type')!r}")


def _passwd_entry(uid: int | None = None, name: str | None = None) -> list[str] | None:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) < 7:
                    continue
                if (name is not None and fields[0] == name) or (uid is not None and fields[2] == str(uid)):
                    return fields
    except OSError:
        return None
    return None


def _group_id(name: str) -> int:
    try:
        with open("/etc/group") as f:
            for line in f:
                fields = line.split(":")
                if len(fields) >= 3 and fields[0] == name:
                    return int(fields[2])
    except OSError:
        pass
    raise NotFound(f"unable to find group {name}")


class ProcessSetup:
    """Everything about the process resolved from the spec; reads /etc inside the container's root."""

    def __init__(self, process: dict) -> None:
        self.process = process
        self.args: list[str] = process["args"]
        self.caps = CapabilitySets(process.get("capabilities"))
        self.env = list(process.get("env") or [])
        user = process.get("user") or {}
        self.uid, self.gid = int(user.get("uid", 0)), int(user.get("gid", 0))
        self.additional_gids = [int(g) for g in user.get("additionalGids") or []]
        self.umask = user.get("umask")
        self.username = user.get("username")

    def resolve_user(self) -> None:
        """Names in the rootfs's /etc/passwd and /etc/group become ids; HOME comes from the passwd entry."""
        if self.username:
            name, _, group = self.username.partition(":")
            entry = _passwd_entry(name=name) if not name.isdigit() else _passwd_entry(uid=int(name))
            if entry is None and not name.isdigit():
                raise NotFound(f"unable to find user {name}: no matching entries in passwd file")
            self.uid = int(entry[2]) if entry else int(name)
            self.gid = int(entry[3]) if entry and not group else self.gid
            if group:
                self.gid = int(group) if group.isdigit() else _group_id(group)
        if not any(e.startswith("HOME=") for e in self.env):
            entry = _passwd_entry(uid=self.uid)
            self.env.append(f"HOME={entry[5] if entry and entry[5] else '/'}")

    def apply_rlimits(self) -> None:
        for limit in self.process.get("rlimits") or []:
            resource.setrlimit(RLIMITS[limit["type"]], (limit["soft"], limit["hard"]))

    def apply_oom_score(self) -> None:
        if self.process.get("oomScoreAdj") is not None:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(self.process["oomScoreAdj"]))

    def become(self) -> None:
        """Drop to the spec's user and capabilities (order matters: bounding set while still root)."""
        self.caps.drop_bounding()
        linux.prctl(linux.PR_SET_KEEPCAPS, 1)
        os.setgroups(self.additional_gids)
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)
        linux.prctl(linux.PR_SET_KEEPCAPS, 0)
        self.caps.apply()
        if self.umask is not None:
            os.umask(int(self.umask))

    def chdir(self) -> None:
        cwd = self.process.get("cwd") or "/"
        try:
            os.chdir(cwd)
        except OSError as e:
            raise NotFound(f"chdir to cwd ({cwd!r}) set in config.json failed: {e.strerror}") from None

    def executable(self) -> str:
        """Resolve args[0] on the process's own PATH; fails before the container starts, as runc's does."""
        name = self.args[0]
        if "/" in name:
            if os.access(name, os.X_OK) and not os.path.isdir(name):
                return name
            if os.path.exists(name):  # as Go's LookPath: there, but not something we may execute
                raise InvalidArgument(f'exec: "{name}": permission denied')
            raise NotFound(f'exec: "{name}": stat {name}: no such file or directory')
        path = next((e[5:] for e in self.env if e.startswith("PATH=")), "/usr/local/bin:/usr/bin:/bin")
        for directory in path.split(":"):
            candidate = os.path.join(directory or ".", name)
            if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
                return candidate
        raise NotFound(f'exec: "{name}": executable file not found in $PATH')

    def execute(self, path: str) -> None:
        env = {}
        for entry in self.env:
            key, _, value = entry.partition("=")
            env[key] = value
        os.execve(path, self.args, env)


def close_inherited_fds(keep: int) -> None:
    """Mark every fd above ``keep`` close-on-exec, so nothing of the runtime leaks into the container."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > keep:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass

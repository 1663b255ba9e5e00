"""The container's filesystem view: mounts, /dev, pivot_root, masked and read-only paths.

Runs inside the container's new mount namespace (in the init process), in the order runc uses, so
that the mount table a process sees is the one it would see under runc.
"""

from __future__ import annotations

import errno
import os
import stat

from skiff.errors import InvalidArgument, NotFound
from skiff.rootpath import resolve_in_root
from skiff.runtime import linux

# option -> (set?, flag), as mount(8) and runc read them.
_FLAGS = {
    "async": (False, linux.MS_SYNCHRONOUS), "atime": (False, linux.MS_NOATIME),
    "bind": (True, linux.MS_BIND), "defaults": (True, 0), "dev": (False, linux.MS_NODEV),
    "diratime": (False, linux.MS_NODIRATIME), "dirsync": (True, linux.MS_DIRSYNC),
    "exec": (False, linux.MS_NOEXEC), "mand": (True, linux.MS_MANDLOCK), "noatime": (True, linux.MS_NOATIME),
    "nodev": (True, linux.MS_NODEV), "nodiratime": (True, linux.MS_NODIRATIME),
    "noexec": (True, linux.MS_NOEXEC), "nomand": (False, linux.MS_MANDLOCK),
    "norelatime": (False, linux.MS_RELATIME), "nostrictatime": (False, linux.MS_STRICTATIME),
    "nosuid": (True, linux.MS_NOSUID), "nosymfollow": (True, linux.MS_NOSYMFOLLOW),
    "rbind": (True, linux.MS_BIND | linux.MS_REC), "relatime": (True, linux.MS_RELATIME),
    "remount": (True, linux.MS_REMOUNT), "ro": (True, linux.MS_RDONLY), "rw": (False, linux.MS_RDONLY),
    "strictatime": (True, linux.MS_STRICTATIME), "suid": (False, linux.MS_NOSUID),
    "sync": (True, linux.MS_SYNCHRONOUS),
}
_PROPAGATION = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE, "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}
_IGNORED = {"tmpcopyup", "idmap", "ridmap"}

# (name, major, minor): the devices every container gets, mode 0666.
DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
                   ("tty", 5, 0))


class MountOptions:
    """One mount's options split into flags, propagation changes and filesystem data."""

    def __init__(self, options: list[str] | None) -> None:
        self.flags = 0
        self.propagation: list[int] = []
        data = []
        for option in options or ():
            if option in _FLAGS:
                is_set, flag = _FLAGS[option]
                self.flags = (self.flags | flag) if is_set else (self.flags & ~flag)
            elif option in _PROPAGATION:
                self.propagation.append(_PROPAGATION[option])
            elif option not in _IGNORED:
                data.append(option)
        self.data = ",".join(data)

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & linux.MS_BIND)


def _make_mountpoint(dest: str, source_is_file: bool) -> None:
    if source_is_file:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.exists(dest):
            os.close(os.open(dest, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o755))
    else:
        os.makedirs(dest, exist_ok=True)


class RootfsBuilder:
    """Builds the container's mount tree under ``rootfs`` and pivots into it."""

    def __init__(self, spec: dict, rootfs: str, bundle: str, cgroup_paths: dict[str, str],
                 new_namespaces: set[str]) -> None:
        self.spec = spec
        self.rootfs = rootfs
        self.bundle = bundle
        self.cgroup_paths = cgroup_paths
        self.new_namespaces = new_namespaces
        self.in_userns = "user" in new_namespaces
        namespaces = (spec.get("linux") or {}).get("namespaces") or []
        self.has_network_namespace = any(ns.get("type") == "network" for ns in namespaces)  # new or joined
        self.mounts = spec.get("mounts") or []
        self.dev_bound = any(m["destination"] == "/dev" and MountOptions(m.get("options")).is_bind
                             for m in self.mounts)

    # -- before pivot_root ---------------------------------------------------------------------------
    def prepare(self) -> None:
        linux_spec = self.spec.get("linux") or {}
        propagation = _PROPAGATION.get(linux_spec.get("rootfsPropagation") or "rslave",
                                       linux.MS_SLAVE | linux.MS_REC)
        linux.mount(None, "/", None, propagation)
        self._make_parent_private()
        linux.mount(self.rootfs, self.rootfs, "bind", linux.MS_BIND | linux.MS_REC)
        for m in self.mounts:
            self._mount(m)
        if not self.dev_bound:
            self._create_devices(linux_spec.get("devices") or [])
            self._dev_symlinks()

    def _make_parent_private(self) -> None:
        # pivot_root refuses a new root whose parent mount is shared.
        mountpoint = self._mountpoint_of(self.rootfs)
        try:
            linux.mount(None, mountpoint, None, linux.MS_PRIVATE)
        except OSError:
            pass

    @staticmethod
    def _mountpoint_of(path: str) -> str:
        best = "/"
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                    best = point
        return best

    def _mount(self, m: dict) -> None:
        options = MountOptions(m.get("options"))
        kind = m.get("type") or ("bind" if options.is_bind else "")
        source = m.get("source") or kind
        dest = resolve_in_root(self.rootfs, m["destination"])
        if kind == "sysfs" and not self.has_network_namespace:
            # A sysfs mount shows the mounter's network devices; sharing the host's netns, bind the host's.
            options.flags |= linux.MS_BIND | linux.MS_REC
            source = "/sys"
        if kind == "cgroup":
            self._mount_cgroups(dest, options)
            return
        if kind == "cgroup2":
            self._mount_cgroup2(dest, options)
            return
        if options.is_bind:
            self._bind(source, dest, options)
        else:
            os.makedirs(dest, exist_ok=True)
            flags = options.flags
            if m["destination"] == "/dev":
                flags &= ~linux.MS_RDONLY  # made read-only in finalize, after the devices exist
            linux.mount(source, dest, kind, flags, options.data or None)
        for propagation in options.propagation:
            linux.mount(None, dest, None, propagation)

    def _bind(self, source: str, dest: str, options: MountOptions) -> None:
        if not os.path.isabs(source):
            source = os.path.join(self.bundle, source)
        try:
            source_is_file = not os.path.isdir(source) and os.path.lexists(source)
        except OSError:
            source_is_file = False
        if not os.path.lexists(source):
            raise NotFound(f"bind mount source {source} does not exist")
        _make_mountpoint(dest, source_is_file)
        linux.mount(source, dest, "bind", options.flags & (linux.MS_BIND | linux.MS_REC))
        extra = options.flags & ~(linux.MS_BIND | linux.MS_REC | linux.MS_REMOUNT)
        if extra:
            linux.mount(source, dest, None, options.flags | linux.MS_REMOUNT)

    def _cgroup_mounts(self) -> list[tuple[str, str, str]]:
        """(mountpoint name, host cgroup dir, superblock options) for each v1 hierarchy the container is in."""
        found = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[sep + 1] != "cgroup":
                    continue
                point = fields[4]
                for path in self.cgroup_paths.values():
                    if path == point or path.startswith(point + "/"):
                        opts = [o for o in fields[sep + 3].split(",") if o not in ("rw", "ro")]
                        found.append((os.path.basename(point), path, ",".join(opts)))
                        break
        return found

    def _mount_cgroups(self, dest: str, options: MountOptions) -> None:
        v1 = self._cgroup_mounts()
        if not v1:
            self._mount_cgroup2(dest, options)
            return
        os.makedirs(dest, exist_ok=True)
        linux.mount("tmpfs", dest, "tmpfs", options.flags & ~linux.MS_RDONLY, "mode=755")
        for name, host_dir, superopts in v1:
            target = os.path.join(dest, name)
            os.makedirs(target, exist_ok=True)
            if "cgroup" in self.new_namespaces:
                linux.mount("cgroup", target, "cgroup", options.flags, superopts)
            else:
                linux.mount(host_dir, target, "bind", linux.MS_BIND | linux.MS_REC)
                linux.mount(host_dir, target, None, options.flags | linux.MS_BIND | linux.MS_REMOUNT)
            if "," in name:
                # cpu,cpuacct mounted together gets the per-controller names as links, as on the host.
                for alias in name.split(","):
                    link = os.path.join(dest, alias)
                    if not os.path.lexists(link):
                        os.symlink(name, link)

    def _mount_cgroup2(self, dest: str, options: MountOptions) -> None:
        os.makedirs(dest, exist_ok=True)
        if "cgroup" in self.new_namespaces:
            linux.mount("cgroup2", dest, "cgroup2", options.flags)
            return
        host_dir = self.cgroup_paths.get("unified") or next(iter(self.cgroup_paths.values()), "/sys/fs/cgroup")
        linux.mount(host_dir, dest, "bind", linux.MS_BIND | linux.MS_REC)
        linux.mount(host_dir, dest, None, options.flags | linux.MS_BIND | linux.MS_REMOUNT)

    def _create_devices(self, devices: list[dict]) -> None:
        old_umask = os.umask(0)
        try:
            wanted = [{"path": f"/dev/{n}", "type": "c", "major": ma, "minor": mi, "fileMode": 0o666,
                       "uid": 0, "gid": 0} for n, ma, mi in DEFAULT_DEVICES]
            wanted += devices
            for device in wanted:
                self._create_device(device)
        finally:
            os.umask(old_umask)

    def _create_device(self, device: dict) -> None:
        dest = resolve_in_root(self.rootfs, device["path"])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if self.in_userns:
            # mknod is not allowed in a user namespace: bind the host's node instead.
            _make_mountpoint(dest, True)
            linux.mount(device["path"], dest, "bind", linux.MS_BIND)
            return
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(device.get("type"))
        if kind is None:
            raise InvalidArgument(f"device {device['path']}: unknown type {device.get('type')!r}")
        mode = (device.get("fileMode") or 0o666) & 0o7777
        try:
            os.unlink(dest)
        except FileNotFoundError:
            pass
        os.mknod(dest, kind | mode, os.makedev(device.get("major", 0), device.get("minor", 0)))
        os.chown(dest, device.get("uid") or 0, device.get("gid") or 0)

    def _dev_symlinks(self) -> None:
        links = [("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
                 ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr")]
        if os.path.exists("/proc/kcore"):
            links.append(("/proc/kcore", "/dev/core"))
        for target, link in links:
            try:
                os.symlink(target, resolve_in_root(self.rootfs, link))
            except FileExistsError:
                pass
        ptmx = resolve_in_root(self.rootfs, "/dev/ptmx")
        if os.path.isdir(resolve_in_root(self.rootfs, "/dev/pts")):
            try:
                os.unlink(ptmx)
            except FileNotFoundError:
                pass
            os.symlink("pts/ptmx", ptmx)

    # -- pivot_root ----------------------------------------------------------------------------------
    def pivot(self) -> None:
        """pivot_root(".", ".") then detach the old root: no put_old directory needed (runc's trick)."""
        old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        new_root = os.open(self.rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(new_root)
            linux.pivot_root(".", ".")
            os.fchdir(old_root)
            linux.mount(None, ".", None, linux.MS_SLAVE | linux.MS_REC)
            linux.umount(".", linux.MNT_DETACH)
            os.chdir("/")
        finally:
            os.close(old_root)
            os.close(new_root)

    # -- after pivot_root ----------------------------------------------------------------------------
    def finalize(self) -> None:
        cwd = (self.spec.get("process") or {}).get("cwd") or "/"
        os.makedirs(cwd, mode=0o755, exist_ok=True)  # as runc: a missing cwd is made (we are in the jail)
        for m in self.mounts:
            if m["destination"] == "/dev" and MountOptions(m.get("options")).flags & linux.MS_RDONLY:
                remount_readonly("/dev")
        if (self.spec.get("root") or {}).get("readonly"):
            remount_readonly("/")
        os.umask(0o022)

    def protect_paths(self) -> None:
        linux_spec = self.spec.get("linux") or {}
        for path in linux_spec.get("readonlyPaths") or []:
            readonly_path(path)
        for path in linux_spec.get("maskedPaths") or []:
            mask_path(path)


# statvfs flag -> the mount flag a remount must repeat.
_LOCKED_FLAGS = ((os.ST_NOSUID, linux.MS_NOSUID), (os.ST_NODEV, linux.MS_NODEV), (os.ST_NOEXEC, linux.MS_NOEXEC),
                 (os.ST_NOATIME, linux.MS_NOATIME), (os.ST_NODIRATIME, linux.MS_NODIRATIME),
                 (os.ST_RELATIME, linux.MS_RELATIME))


def _mount_flags(path: str) -> int:
    """The per-mount flags now on ``path`` (a remount must repeat the locked ones)."""
    current = os.statvfs(path).f_flag
    flags = 0
    for st_flag, ms_flag in _LOCKED_FLAGS:
        if current & st_flag:
            flags |= ms_flag
    return flags


def remount_readonly(path: str) -> None:
    flags = _mount_flags(path)
    try:
        linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | flags)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        # Not a mount point yet: make it one, then remount.
        linux.mount(path, path, "bind", linux.MS_BIND | linux.MS_REC)
        linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | flags)


def readonly_path(path: str) -> None:
    try:
        linux.mount(path, path, "bind", linux.MS_BIND | linux.MS_REC)
    except FileNotFoundError:
        return
    linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _mount_flags(path))


def mask_path(path: str) -> None:
    try:
        linux.mount("/dev/null", path, "bind", linux.MS_BIND)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno != errno.ENOTDIR:
            raise
        # A directory: hide it under an empty read-only tmpfs.
        linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY)

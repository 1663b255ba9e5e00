"""Busybox OCI bundles for the demo, the tests and the benchmarks.

``make_busybox_bundle(path, args)`` writes ``path/config.json`` (the default spec plus overrides)
and ``path/rootfs``: a static busybox with one link per applet in /bin (hard links, as
``busybox --install`` makes them), a small /etc/passwd and /etc/group, /sbin, /usr/bin and
/usr/sbin as symlinks to /bin, and the empty directories a runtime mounts on (/proc, /sys, /dev,
/tmp).

Building many bundles is cheap: the rootfs is built once into a cache directory (keyed by the
busybox binary and the layout version) and each bundle gets its own copy of it, made like
``cp -a`` (hard-link groups kept: one busybox file per bundle, every applet a link to it). Hard
links, not symlinks, because creating a symlink costs as much as creating a file and some hosts
watch /tmp, where test bundles live: ~270 symlinks took 80 ms there, the links take 10. Each bundle
owning its files means a container writing into its rootfs never touches the cache or another
bundle, and no inode collects a link per bundle.

Command line (scripts/install.sh uses it)::

    python -m skiff.runtime.bundle DIR [--terminal] [--set KEY=JSON ...] -- ARGS...
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from skiff.runtime.spec import default_spec

BUSYBOX = os.environ.get("SKIFF_BUSYBOX", "/bin/busybox")

# Bump when the rootfs layout below changes, so old caches are not reused.
_LAYOUT_VERSION = 2

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
skiffuser:x:1000:1000:Skiff test user:/home/skiffuser:/bin/sh
"""

GROUP = """\
root:x:0:
skiffgroup:x:1000:
extra:x:2000:skiffuser
nogroup:x:65534:
"""

# Directories in the rootfs: mount points the spec mounts on, and homes.
_DIRS = {
    "bin": 0o755, "etc": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o1777,
    "root": 0o700, "home": 0o755, "home/skiffuser": 0o755, "var": 0o755, "run": 0o755,
}


def cache_dir() -> str:
    """Where built rootfs templates live (``SKIFF_BUNDLE_CACHE`` overrides)."""
    explicit = os.environ.get("SKIFF_BUNDLE_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "skiff", "rootfs")


_digests: dict[tuple[str, int, int, int], str] = {}


def _busybox_digest(busybox: str) -> str:
    st = os.stat(busybox)
    key = (busybox, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = _hash_file(busybox)
    return _digests[key]


def _hash_file(busybox: str) -> str:
    h = hashlib.sha256()
    with open(busybox, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _applets(busybox: str) -> list[str]:
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({name for name in out.split() if name and "/" not in name and name != "busybox"})


def _build_template(dest: str, busybox: str) -> None:
    """Build a complete rootfs at ``dest`` (which must not exist)."""
    os.makedirs(dest)
    for d, mode in _DIRS.items():
        p = os.path.join(dest, d)
        os.makedirs(p, exist_ok=True)
        os.chmod(p, mode)
    if os.geteuid() == 0:
        os.chown(os.path.join(dest, "home/skiffuser"), 1000, 1000)
    shutil.copy2(busybox, os.path.join(dest, "bin/busybox"))
    os.chmod(os.path.join(dest, "bin/busybox"), 0o755)
    for name in _applets(busybox):
        os.link(os.path.join(dest, "bin/busybox"), os.path.join(dest, "bin", name))
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        with open(os.path.join(dest, "etc", name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(dest, "etc", name), 0o644)
    # /sbin and /usr/bin point at /bin so every PATH entry the default spec lists finds the applets.
    for link in ("sbin", "usr/bin", "usr/sbin"):
        os.makedirs(os.path.dirname(os.path.join(dest, link)) or dest, exist_ok=True)
        os.symlink("/bin", os.path.join(dest, link))


def rootfs_template(busybox: str = BUSYBOX) -> str:
    """The cached rootfs for ``busybox``, built on first use (safe against concurrent builders)."""
    base = cache_dir()
    dest = os.path.join(base, f"busybox-{_busybox_digest(busybox)}-v{_LAYOUT_VERSION}")
    if os.path.isdir(dest):
        return dest
    os.makedirs(base, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".build-", dir=base)
    try:
        _build_template(os.path.join(staging, "rootfs"), busybox)
        try:
            os.rename(os.path.join(staging, "rootfs"), dest)
        except OSError:
            if not os.path.isdir(dest):  # lost a race only if the winner left a complete template
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _copy_tree(src: str, dst: str, links: dict[int, str] | None = None) -> None:
    """Copy the template like ``cp -a``: symlinks recreated, files copied once per hard-link group
    (the group's other names linked to that copy), directories with their modes and owners."""
    links = {} if links is None else links
    os.makedirs(dst, exist_ok=True)
    shutil.copystat(src, dst)
    with os.scandir(src) as entries:
        for entry in entries:
            s, d = entry.path, os.path.join(dst, entry.name)
            st = entry.stat(follow_symlinks=False)
            if entry.is_symlink():
                os.symlink(os.readlink(s), d)
            elif entry.is_dir():
                _copy_tree(s, d, links)
                if os.geteuid() == 0:
                    os.chown(d, st.st_uid, st.st_gid)
            elif st.st_nlink > 1 and st.st_ino in links:
                os.link(links[st.st_ino], d)
            else:
                shutil.copy2(s, d)
                links[st.st_ino] = d


def _merge(target: dict[str, Any], key: str, value: Any) -> None:
    """Set ``target[key]`` to ``value``: dicts merge recursively, ``None`` deletes, others replace."""
    if "__" in key:  # process__user={"uid": 1000} addresses a nested key
        head, rest = key.split("__", 1)
        sub = target.setdefault(head, {})
        if not isinstance(sub, dict):
            raise TypeError(f"spec override {key!r}: {head!r} is not an object")
        _merge(sub, rest, value)
        return
    if value is None:
        target.pop(key, None)
    elif isinstance(value, dict) and isinstance(target.get(key), dict):
        for k, v in value.items():
            _merge(target[key], k, v)
    else:
        target[key] = copy.deepcopy(value)


def apply_overrides(spec: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply ``make_busybox_bundle``'s keyword overrides to ``spec`` in place and return it."""
    for key, value in overrides.items():
        _merge(spec, key, value)
    return spec


def write_spec(path: str, spec: dict[str, Any]) -> None:
    """Write ``path/config.json`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=path)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(path, "config.json"))


def make_busybox_bundle(path: str | os.PathLike[str], args: list[str] | None = None, *,
                        terminal: bool = False, **spec_overrides: Any) -> str:
    """Create a busybox OCI bundle at ``path`` running ``args``; returns the bundle's path.

    ``spec_overrides`` are applied to ``default_spec(terminal=terminal, args=args)``: a dict value
    merges into the existing object (``process={"user": {"uid": 1000}}``), any other value replaces
    it, ``None`` removes the key, and ``__`` in a name reaches into nested objects
    (``linux__cgroupsPath="/skiff-test/x"``). An existing ``path/rootfs`` is replaced.
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    rootfs = os.path.join(path, "rootfs")
    if os.path.lexists(rootfs):
        shutil.rmtree(rootfs)
    _copy_tree(rootfs_template(), rootfs)
    spec = apply_overrides(default_spec(terminal=terminal, args=list(args) if args else None), spec_overrides)
    write_spec(path, spec)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, args = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m skiff.runtime.bundle",
                                     description="Create a busybox OCI bundle: DIR/config.json and DIR/rootfs.")
    parser.add_argument("dir", help="the bundle directory (created if missing)")
    parser.add_argument("--terminal", action="store_true", help="set process.terminal")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a spec override, e.g. hostname='\"box\"' or linux__cgroupsPath='\"/x\"'")
    ns = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in ns.set:
        key, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=JSON")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw  # a bare string is fine: --set hostname=box
    path = make_busybox_bundle(ns.dir, args or None, terminal=ns.terminal, **overrides)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

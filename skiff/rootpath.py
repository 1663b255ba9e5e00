"""Paths inside a root directory whose symlinks may not lead out of it.

A container's root filesystem, an image being built and a build context are trees made by someone else: a
symlink in them may point anywhere (``/etc`` -> ``/host/etc``, ``a`` -> ``../../..``). Before the engine,
the builder or the runtime creates or reads a path inside one, the path is resolved here as if the root
were ``/`` (Docker's ``FollowSymlinkInScope``, runc's ``SecureJoin``): absolute link targets restart at the
root, ``..`` stops at it, so the result is always inside the root.
"""

from __future__ import annotations

import os
import stat

from skiff.errors import InvalidArgument

MAX_LINKS = 255  # symlinks followed for one path (Linux allows 40 per walk; a loop ends here either way)


def resolve_in_root(root: str, path: str) -> str:
    """``root``/``path`` with every existing symlink followed inside ``root``; missing parts are kept as
    written. Raises InvalidArgument for a symlink loop."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise InvalidArgument(f"{path}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    return os.path.join(root, *resolved) if resolved else root

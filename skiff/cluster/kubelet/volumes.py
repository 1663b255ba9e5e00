"""A pod's volumes on the node: directories under ``<data-dir>/pods/<uid>/volumes/``, bind-mounted into its
containers (so it works on any engine that takes ``Binds``, dockerd included).

- ``emptyDir``: a directory; ``medium: Memory`` makes it a tmpfs (``sizeLimit`` its size) that the agent mounts
  and unmounts itself.
- ``hostPath``: the host's path, created for ``DirectoryOrCreate``/``FileOrCreate``, checked for the other types.
- ``configMap``, ``secret``, ``downwardAPI``: files written atomically from the API's objects on every sync
  (so updates reach running pods), keys that went away removed; ``defaultMode``/``mode`` honoured.
- ``projected``: the same sources, several in one directory.

Anything else is a ``VolumeError`` the pod reports (and retries), never a crash of the agent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from skiff.atomicfile import write_atomically
from skiff.cluster.kubelet.containers import ContainerConfigError, Lookup, field_value, resource_value
from skiff.cluster.scheduler.quantity import whole_value

Obj = dict[str, Any]
_FILE_SOURCES = ("configMap", "secret", "downwardAPI", "projected")


class VolumeError(ContainerConfigError):
    """A volume cannot be set up (unknown type, a missing source, a hostPath of the wrong type)."""


class PodVolumes:
    """The volumes of the pods of one node, under ``root`` (``<data-dir>/pods``)."""

    def __init__(self, root: Path, node_allocatable: dict[str, str]) -> None:
        self.root = root
        self.node_allocatable = node_allocatable

    def pod_dir(self, uid: str) -> Path:
        return self.root / uid

    async def prepare(self, pod: Obj, lookup: Lookup) -> dict[str, str]:
        """Make (or refresh) every volume of ``pod``; volume name → host path."""
        uid = pod["metadata"]["uid"]
        paths: dict[str, str] = {}
        for volume in (pod.get("spec") or {}).get("volumes") or ():
            name = volume.get("name") or ""
            paths[name] = await self._prepare_one(pod, volume, self.pod_dir(uid) / "volumes" / name, lookup)
        return paths

    async def _prepare_one(self, pod: Obj, volume: Obj, target: Path, lookup: Lookup) -> str:
        if "hostPath" in volume:
            return _host_path(volume["hostPath"] or {})
        if "emptyDir" in volume:
            return _empty_dir(volume["emptyDir"] or {}, target)
        for kind in _FILE_SOURCES:
            if kind in volume:
                files = await self._files(pod, kind, volume[kind] or {}, lookup)
                _write_files(target, files)
                return str(target)
        kinds = sorted(k for k in volume if k != "name") or ["none"]
        raise VolumeError(f'volume "{volume.get("name")}": unsupported volume type {", ".join(kinds)}')

    async def _files(self, pod: Obj, kind: str, source: Obj, lookup: Lookup) -> dict[str, tuple[bytes, int]]:
        """relative path → (content, mode) for one file-backed source."""
        default_mode = int(source.get("defaultMode", 0o644))
        namespace = pod["metadata"].get("namespace") or "default"
        if kind == "projected":
            files: dict[str, tuple[bytes, int]] = {}
            for item in source.get("sources") or ():
                for sub in ("configMap", "secret", "downwardAPI"):
                    if sub in item:
                        files.update(await self._files(pod, sub, {"defaultMode": default_mode, **(item[sub] or {})},
                                                       lookup))
            return files
        if kind == "downwardAPI":
            result = {}
            for item in source.get("items") or ():
                if item.get("fieldRef"):
                    value = field_value(pod, item["fieldRef"].get("fieldPath") or "")
                else:
                    container = _named_container(pod, (item.get("resourceFieldRef") or {}).get("containerName"))
                    value = resource_value(container, item.get("resourceFieldRef") or {}, self.node_allocatable)
                result[item["path"]] = (value.encode(), int(item.get("mode", default_mode)))
            return result
        what = "configmap" if kind == "configMap" else "secret"
        name = source.get("name") or source.get("secretName") or ""
        data = await lookup(what, namespace, name)
        if data is None:
            if source.get("optional"):
                return {}
            raise VolumeError(f'{what} "{name}" not found')
        items = source.get("items")
        if not items:
            return {key: (value.encode(), default_mode) for key, value in data.items()}
        result = {}
        for item in items:
            key = item.get("key") or ""
            if key not in data:
                if source.get("optional"):
                    continue
                raise VolumeError(f'{what} "{name}" has no key "{key}"')
            result[item.get("path") or key] = (data[key].encode(), int(item.get("mode", default_mode)))
        return result

    def cleanup(self, uid: str) -> None:
        """Remove a pod's volumes (tmpfs unmounted first); host paths are the host's and stay."""
        directory = self.pod_dir(uid)
        volumes = directory / "volumes"
        if volumes.is_dir():
            for entry in volumes.iterdir():
                if os.path.ismount(entry):
                    subprocess.run(["umount", str(entry)], capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)

    def known_pods(self) -> list[str]:
        return [p.name for p in self.root.iterdir()] if self.root.is_dir() else []


def _named_container(pod: Obj, name: str | None) -> Obj:
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") == name:
            return container
    raise VolumeError(f"resourceFieldRef names no container of the pod: {name!r}")


def _host_path(source: Obj) -> str:
    path = source.get("path") or ""
    if not path.startswith("/"):
        raise VolumeError(f"hostPath {path!r} is not absolute")
    kind = source.get("type") or ""
    exists = os.path.lexists(path)
    if kind == "DirectoryOrCreate" and not exists:
        os.makedirs(path, 0o755, exist_ok=True)
    elif kind == "FileOrCreate" and not exists:
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        Path(path).touch(0o644)
    checks = {"Directory": os.path.isdir, "File": os.path.isfile, "Socket": _is_socket}
    if kind in checks and not checks[kind](path):
        raise VolumeError(f"hostPath type check failed: {path} is not a {kind.lower()}")
    return path


def _is_socket(path: str) -> bool:
    import stat

    with contextlib.suppress(OSError):
        return stat.S_ISSOCK(os.stat(path).st_mode)
    return False


def _empty_dir(source: Obj, target: Path) -> str:
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o777)  # kube's emptyDir is world-writable, so any runAsUser can use it
    if source.get("medium") == "Memory" and not os.path.ismount(target):
        options = "mode=1777"
        if source.get("sizeLimit"):
            options += f",size={whole_value(source['sizeLimit'])}"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise VolumeError(f"emptyDir medium Memory: mount tmpfs: {result.stderr.strip()}")
    return str(target)


def _write_files(target: Path, files: dict[str, tuple[bytes, int]]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for relative, (data, mode) in files.items():
        path = (target / relative).resolve()
        if target.resolve() not in path.parents:
            raise VolumeError(f"volume file path {relative!r} leaves the volume")
        wanted.add(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != data or (path.stat().st_mode & 0o777) != mode:
            write_atomically(path, data, mode=mode, durable=False)
    for path in list(target.rglob("*")):
        if path.is_file() and path.resolve() not in wanted:
            path.unlink()


def binds(container: Obj, volumes: dict[str, str]) -> list[str]:
    """The container's volumeMounts as the engine's ``Binds`` (``host:container[:ro]``)."""
    result = []
    for mount in container.get("volumeMounts") or ():
        name = mount.get("name") or ""
        if name not in volumes:
            raise VolumeError(f'volumeMount "{name}" names no volume of the pod')
        source = volumes[name]
        if mount.get("subPath"):
            source = os.path.join(source, mount["subPath"])
            if not os.path.lexists(source):
                os.makedirs(source, 0o755, exist_ok=True)
        mode = ":ro" if mount.get("readOnly") else ""
        result.append(f"{source}:{mount['mountPath']}{mode}")
    return result

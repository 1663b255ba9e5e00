"""OCI hooks: programs run at fixed points of the lifecycle with the container's state on stdin."""

from __future__ import annotations

import os

from skiff.errors import SystemFailure
from skiff.runtime import quickjson


def run_hooks(spec: dict, point: str, state: dict) -> None:
    """Run every hook of one point (``prestart``, ``createRuntime``, ...) in order; the first failure stops."""
    hooks = (spec.get("hooks") or {}).get(point) or []
    if not hooks:
        return
    import subprocess  # only hook users pay for it

    # As runc's specs.State: a zero pid is left out (omitempty), unlike in `state`'s output.
    payload = quickjson.dumps({k: v for k, v in state.items() if k != "pid" or v}).encode()
    for hook in hooks:
        path = hook["path"]
        args = hook.get("args") or [path]
        try:
            result = subprocess.run(
                args, executable=path, input=payload, env=_env(hook.get("env")),
                capture_output=True, timeout=hook.get("timeout"), check=False,
            )
        except subprocess.TimeoutExpired:
            raise SystemFailure(f"{point} hook {path} timed out after {hook['timeout']}s") from None
        except OSError as e:
            raise SystemFailure(f"{point} hook {path}: {e.strerror}") from None
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            raise SystemFailure(
                f"{point} hook {path} exited with status {result.returncode}"
                + (f": {detail[-1]}" if detail else "")
            )


def _env(entries: list[str] | None) -> dict[str, str]:
    env = {}
    for entry in entries or []:
        key, _, value = entry.partition("=")
        env[key] = value
    return env


def validate_hooks(spec: dict) -> None:
    from skiff.errors import InvalidArgument

    for point, hooks in (spec.get("hooks") or {}).items():
        for hook in hooks or []:
            if not isinstance(hook, dict) or not isinstance(hook.get("path"), str):
                raise InvalidArgument(f"{point} hook needs a path")
            if not os.path.isabs(hook["path"]):
                raise InvalidArgument(f"{point} hook path {hook['path']!r} must be absolute")

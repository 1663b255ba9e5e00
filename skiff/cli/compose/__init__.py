"""``skiff compose``: the Compose specification on top of the Engine API, a client like ``docker compose``.

Modules: interpolation.py (``.env`` files and ``${VAR}``), schema.py (the keys the spec allows), loader.py
(files -> a checked, canonical ``model.Project``), model.py (the project, Compose's labels, the config hash),
convert.py (a service -> a container create body), convergence.py (plan and apply: networks, volumes,
containers, dependency conditions), commands.py (the verbs).
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from skiff.cli.compose.commands import run_cli

    return run_cli(argv)

"""``skiff <verb>``: docker's verbs and flags, a client of the Engine API through docker-py.

The daemon is chosen by ``-H/--host`` (before the verb), else ``SKIFF_HOST``, else
``unix:///run/skiff/engine.sock``. Errors are reported the way docker reports them
(``Error response from daemon: ...`` on stderr) with docker's exit codes (125 for a failed ``run``/``create``,
126/127 when the command cannot be run, the container's own code otherwise).

Modules: commands.py (the verbs), formatting.py (tables, human units, ``--format`` templates),
streams.py (attach/exec: stdin, demultiplexing, raw terminal, resize).
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from skiff.cli.dockercli.commands import run_cli

    return run_cli(argv)

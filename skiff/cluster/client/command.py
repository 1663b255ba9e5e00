"""The shell of a control-plane command (``skiff agent``, ``skiff scheduler``, ``skiff hollow-nodes``, ...):
logging, the event loop, and failures reported as one line and exit status 1."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from skiff.errors import SkiffError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_command(name: str, log_level: str, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run ``main()`` to its end with logging at ``log_level``; a Skiff error (a bad kubeconfig included) or an
    OS error is printed as ``<name>: <message>`` and gives exit status 1."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    try:
        asyncio.run(main())
    except (SkiffError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0

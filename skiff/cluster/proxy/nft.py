"""Running ``nft``: one script per call, fed on stdin (``nft -f -``), which nft applies as one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from skiff.errors import SystemFailure


async def apply(script: str, command: Sequence[str] = ("nft",)) -> None:
    process = await asyncio.create_subprocess_exec(*command, "-f", "-", stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate(script.encode())
    if process.returncode != 0:
        message = (err or out).decode(errors="replace")[:2000]
        raise SystemFailure(f"nft -f - exited with {process.returncode}: {message}")

"""A child process for the durability test: writes to a SQLite store and acknowledges each write.

    python -m tests.cluster.store_writer DB_PATH

Several writers create ``/durable/<writer>/<n>`` as fast as they can; after each write returns it
prints ``<key> <revision>`` on stdout, unbuffered. The parent SIGKILLs this process mid-stream, then
checks that every acknowledged write survived.
"""

from __future__ import annotations

import asyncio
import os
import sys

from skiff.cluster.store.sqlite import SQLiteStore

WRITERS = 8


async def write_forever(store: SQLiteStore, writer: int) -> None:
    for n in range(10**9):
        key = f"/durable/{writer}/{n}"
        revision = await store.create(key, f"{writer}:{n}".encode())
        os.write(1, f"{key} {revision}\n".encode())  # the acknowledgement: only after the write returned


async def main(path: str) -> None:
    store = await SQLiteStore.open(path)
    os.write(1, b"ready\n")
    await asyncio.gather(*(write_forever(store, w) for w in range(WRITERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

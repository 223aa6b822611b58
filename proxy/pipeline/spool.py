"""Disk spool for critical messages that cannot stay in memory: SQLite in WAL mode, one worker thread.

Appends and deletes are batched: everything the event loop hands over during one iteration becomes one
transaction, run on a single worker thread so the loop never blocks on disk and writes stay ordered. The
spool's size is the sum of the spooled frames' bytes, bounded by `spool.maxBytes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    frame BLOB NOT NULL,
    created REAL NOT NULL
)
"""


class SpoolRow(msgspec.Struct, frozen=True):
    """One spooled message, as read back for replay."""

    id: int
    subject: str
    frame: bytes
    created: float


class Spool:
    """Critical messages on disk, replayed oldest first; rows are deleted only once confirmed upstream."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.bytes = 0
        self.messages = 0
        self.oldest_created: float | None = None
        self.write_errors = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[str, bytes, float]] = []
        self._pending_deletes: list[int] = []
        self._flush_scheduled = False
        self._last_write: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    # -- lifecycle -----------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create or reopen the spool; what a previous process left is counted and replayed."""
        count, size, oldest = await self._run(self._open_sync)
        self.messages, self.bytes, self.oldest_created = count, size, oldest
        if count:
            log.warning(
                "spool %s holds %d critical messages (%d bytes) from a previous run", self.path, count, size
            )

    def _open_sync(self) -> tuple[int, int, float | None]:
        self.path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path / "spool.db", check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives the process being killed.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(SCHEMA)
        self._db = db
        count, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(frame)), 0), MIN(created) FROM messages"
        ).fetchone()
        return int(count), int(size), oldest

    async def close(self) -> None:
        """Write what is pending and close the database."""
        await self.flush()
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- writing -------------------------------------------------------------------------------------
    def has_room(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    def append(self, subject: str, frame: bytes) -> None:
        """Spool one frame; it is written with the rest of this loop iteration's frames in one transaction."""
        now = time.time()
        self._pending.append((subject, frame, now))
        self.bytes += len(frame)
        self.messages += 1
        if self.oldest_created is None:
            self.oldest_created = now
        self._schedule_flush()

    def delete(self, ids: list[int], sizes: int) -> None:
        """Forget rows confirmed upstream."""
        self._pending_deletes.extend(ids)
        self.bytes -= sizes
        self.messages -= len(ids)
        if self.messages <= 0:
            self.messages = 0
            self.bytes = 0
            self.oldest_created = None
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        rows, self._pending = self._pending, []
        deletes, self._pending_deletes = self._pending_deletes, []
        if rows or deletes:
            self._last_write = self._loop.run_in_executor(self._executor, self._write_sync, rows, deletes)
            self._last_write.add_done_callback(self._write_done)

    def _write_done(self, fut: asyncio.Future[None]) -> None:
        err = fut.exception()
        if err is not None:
            self.write_errors += 1
            log.error("spool write failed: %s", err)

    def _write_sync(self, rows: list[tuple[str, bytes, float]], deletes: list[int]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            if rows:
                db.executemany("INSERT INTO messages (subject, frame, created) VALUES (?, ?, ?)", rows)
            if deletes:
                db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in deletes])
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise

    async def flush(self) -> None:
        """Wait until everything appended or deleted so far is committed."""
        self._flush()
        while self._last_write is not None and not self._last_write.done():
            last = self._last_write
            with contextlib.suppress(sqlite3.Error):
                await asyncio.shield(last)
            if last is self._last_write:
                break

    # -- reading -------------------------------------------------------------------------------------
    async def read(self, after_id: int, limit: int) -> list[SpoolRow]:
        """The oldest rows with an id above `after_id` (committed ones: call after flush())."""
        await self.flush()
        return await self._run(self._read_sync, after_id, limit)

    def _read_sync(self, after_id: int, limit: int) -> list[SpoolRow]:
        db = self._db
        assert db is not None
        cursor = db.execute(
            "SELECT id, subject, frame, created FROM messages WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        rows = [SpoolRow(row[0], row[1], bytes(row[2]), row[3]) for row in cursor]
        if rows and after_id == 0:
            self.oldest_created = rows[0].created
        return rows

    def oldest_age(self, now_wall: float | None = None) -> float:
        """Seconds since the oldest spooled message was written (0 when empty)."""
        if self.oldest_created is None or self.messages == 0:
            return 0.0
        return max(0.0, (now_wall if now_wall is not None else time.time()) - self.oldest_created)

    async def _run(self, fn, *args):
        return await self._loop.run_in_executor(self._executor, fn, *args)

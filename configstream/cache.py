"""State between runs: one SQLite file, values as LZ4-compressed msgpack.

Holds the last test result of every proxy (keyed by `models.identity`, never
by name) and a history of runs. No other module writes SQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import lz4.frame
import msgpack

from configstream.errors import ConfigStreamError
from configstream.models import Entry, ProbeResult, Status, identity

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATABASE_NAME = "configstream.sqlite3"
# Runs kept for trends; older rows are dropped when a run is recorded.
MAX_RUNS = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY, checked_at REAL NOT NULL, status TEXT NOT NULL, value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, finished_at REAL NOT NULL, value BLOB NOT NULL
);
"""


class CacheError(ConfigStreamError):
    """The cache folder cannot be used."""


# How long a second run waits for the first to release the cache.
LOCK_WAIT_SECONDS = 30.0


@contextlib.contextmanager
def exclusive(folder: Path, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the cache folder's lock for one run.

    Two runs on one cache would interleave their results and history; the
    second waits up to `wait` seconds, then stops with a clear error.

    Raises:
        CacheError: another run kept the lock for longer than `wait`.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / "lock").open("a")
    except OSError as exc:
        raise CacheError(f"cannot use cache folder {folder}: {exc.strerror}") from exc
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CacheError(
                        f"another run holds the cache in {folder} (waited {wait:.0f} s)"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        handle.close()


def pack(value: Any) -> bytes:
    """msgpack, then LZ4 frame compression."""
    return bytes(lz4.frame.compress(msgpack.packb(value, use_bin_type=True)))


def unpack(blob: bytes) -> Any:
    return msgpack.unpackb(lz4.frame.decompress(blob), raw=False)


class Cache:
    """A handle on the cache database; use `Cache.open` as a context manager."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path

    @classmethod
    def open(cls, folder: Path) -> Cache:
        """Open (creating if needed) the database in `folder`.

        A file that is not a ConfigStream database is moved aside with a
        warning and a new one is created, so a corrupt cache never stops a run.
        """
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create cache folder {folder}: {exc.strerror}"
            ) from exc
        path = folder / DATABASE_NAME
        try:
            return cls(cls._connect(path), path)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning(
                "cache %s is unreadable (%s); moved to %s", path, exc, aside.name
            )
            path.replace(aside)
            return cls(cls._connect(path), path)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
        row = connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is not None and row[0] != str(SCHEMA_VERSION):
            # Results are cheap to make again; a rebuild beats a migration
            # that could misread old values.
            log.warning(
                "cache schema %s is not %s; rebuilding it", row[0], SCHEMA_VERSION
            )
            connection.executescript(
                "DROP TABLE results; DROP TABLE runs; DELETE FROM meta;" + _SCHEMA
            )
            row = None
        if row is None:
            connection.execute(
                "INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
            connection.commit()
        return connection

    def summary(self) -> dict[str, Any]:
        """Counts by status, runs kept and bytes on disk."""
        by_status = dict(
            self.connection.execute(
                "SELECT status, COUNT(*) FROM results GROUP BY status"
            )
        )
        runs = self.connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        size = sum(
            f.stat().st_size
            for f in self.path.parent.glob(f"{self.path.name}*")
            if f.is_file()
        )
        return {"results": by_status, "runs": runs, "bytes": size}

    def prune(self, older_than: float) -> int:
        """Delete results checked more than `older_than` seconds ago; returns how many."""
        with self.connection:
            deleted = self.connection.execute(
                "DELETE FROM results WHERE checked_at < ?", (time.time() - older_than,)
            ).rowcount
        self.connection.execute("VACUUM")
        return int(deleted)

    def record_results(self, entries: Iterable[Entry]) -> None:
        """Store the latest result of each tested proxy."""
        now = time.time()
        rows = [
            (
                identity(entry.proxy),
                now,
                str(entry.result.status),
                pack(
                    {
                        "latency_ms": entry.result.latency_ms,
                        "exit_ip": entry.result.exit_ip,
                        "reason": entry.result.reason,
                        "country": entry.country,
                    }
                ),
            )
            for entry in entries
            # A reused result keeps its original time, or it would never age.
            if entry.result.status.value in {"alive", "dead", "untestable"}
            and not entry.reused
        ]
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", rows
            )

    def result(self, key: str) -> dict[str, Any] | None:
        row = self.connection.execute(
            "SELECT checked_at, status, value FROM results WHERE id=?", (key,)
        ).fetchone()
        if row is None:
            return None
        return {"checked_at": row[0], "status": row[1], **unpack(row[2])}

    def fresh_result(
        self, key: str, alive_ttl: float, dead_ttl: float
    ) -> ProbeResult | None:
        """A cached alive or dead result younger than its time to live.

        Untestable results are never reused: the next run may have a core
        that can test them.
        """
        row = self.result(key)
        if row is None:
            return None
        age = time.time() - float(row["checked_at"])
        if row["status"] == "alive" and age < alive_ttl:
            return ProbeResult(
                Status.ALIVE, latency_ms=row["latency_ms"], exit_ip=row["exit_ip"]
            )
        if row["status"] == "dead" and age < dead_ttl:
            return ProbeResult(Status.DEAD, reason=row["reason"])
        return None

    def record_run(self, stats: dict[str, Any]) -> None:
        """Append a run's stats to the history, keeping the last `MAX_RUNS`."""
        summary = {
            key: stats.get(key)
            for key in ("fetch", "parse", "dedupe", "test", "seconds", "degraded")
        }
        with self.connection:
            self.connection.execute(
                "INSERT INTO runs (finished_at, value) VALUES (?, ?)",
                (time.time(), pack(summary)),
            )
            self.connection.execute(
                "DELETE FROM runs WHERE id <= (SELECT MAX(id) FROM runs) - ?",
                (MAX_RUNS,),
            )

    def last_good_alive(self) -> int | None:
        """The alive count of the newest run that published, if any."""
        for run in reversed(self.runs()):
            test = run.get("test") or {}
            if not run.get("degraded") and test.get("tested"):
                return int(test.get("alive") or 0)
        return None

    def runs(self) -> list[dict[str, Any]]:
        rows = self.connection.execute(
            "SELECT finished_at, value FROM runs ORDER BY id"
        )
        return [{"finished_at": at, **unpack(value)} for at, value in rows]

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""State between runs: one SQLite file, values as LZ4-compressed msgpack.

Holds the last test result of every proxy (keyed by `models.identity`, never
by name) and a history of runs. No other module writes SQL.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
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
        if row is None:
            connection.execute(
                "INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
            connection.commit()
        return connection

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

"""State between runs: one SQLite file, values as LZ4-compressed msgpack.

Holds the last test result of every proxy (keyed by `models.identity`, never
by name) and a history of runs. No other module writes SQL.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import logging
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import lz4.block
import msgpack

from configstream.errors import ConfigStreamError
from configstream.models import (
    Entry,
    ParseReport,
    ProbeResult,
    Proxy,
    Rejection,
    Status,
    Tls,
    Transport,
    collector_paused,
    identity,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
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
CREATE TABLE IF NOT EXISTS fetch_state (
    name TEXT PRIMARY KEY, url TEXT NOT NULL, etag TEXT, last_modified TEXT,
    body_hash TEXT NOT NULL, fetched_at REAL NOT NULL, report BLOB NOT NULL,
    cursor INTEGER
);
CREATE TABLE IF NOT EXISTS source_health (
    run_id INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS merged_parse (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
_TABLES = ("results", "runs", "fetch_state", "source_health", "merged_parse")
# Values of at least this many bytes are LZ4-compressed (see `pack`).
COMPRESS_FROM = 128
_RAW, _LZ4 = b"\x00", b"\x01"
# The level-1 map holds this many results; SQLite answers the rest.
L1_SIZE = 200_000
# Keys per query when many results are read at once (SQLite allows 32,766
# parameters; smaller batches keep each statement cheap to prepare).
PRELOAD_BATCH = 500
# Per-source health rows are kept for this many runs.
SOURCE_HEALTH_RUNS = 60


class CacheError(ConfigStreamError):
    """The cache folder cannot be used."""


@dataclass(slots=True)
class FetchState:
    """A source's validators and the hash of its last body.

    The parse of that body is stored beside them and read only when needed
    (`Cache.stored_report`).
    """

    etag: str | None
    last_modified: str | None
    body_hash: str
    # Telegram channels: the newest message id read.
    cursor: int | None = None


# Proxies are stored as lists of field values in declaration order, which
# packs smaller and rebuilds several times faster than dictionaries.
_PROXY_FIELDS = tuple(f.name for f in dataclasses.fields(Proxy))
_TLS_FIELDS = tuple(f.name for f in dataclasses.fields(Tls))
_TRANSPORT_FIELDS = tuple(f.name for f in dataclasses.fields(Transport))
_TLS_AT = _PROXY_FIELDS.index("tls")
_TRANSPORT_AT = _PROXY_FIELDS.index("transport")
# Fields that are tuples (of strings, or of pairs) in the model.
_TUPLES_AT = [_PROXY_FIELDS.index(name) for name in ("ports", "options")]
_ALPN_AT = _TLS_FIELDS.index("alpn")
_OPTIONS_AT = _TRANSPORT_FIELDS.index("options")


def proxy_to_data(proxy: Proxy) -> list[Any]:
    """A proxy as plain msgpack-able values (cache, shard partials)."""
    values = [getattr(proxy, name) for name in _PROXY_FIELDS]
    if proxy.tls is not None:
        values[_TLS_AT] = [getattr(proxy.tls, name) for name in _TLS_FIELDS]
    if proxy.transport is not None:
        values[_TRANSPORT_AT] = [
            getattr(proxy.transport, name) for name in _TRANSPORT_FIELDS
        ]
    return values


def proxy_from_data(values: list[Any]) -> Proxy:
    """The inverse of `proxy_to_data` (it reuses the list it is given).

    Raises:
        ValueError, TypeError: the values are not a stored proxy.
    """
    if len(values) != len(_PROXY_FIELDS):
        raise ValueError("stored proxy has another number of fields")
    for at in _TUPLES_AT:
        values[at] = tuple(_tuples(values[at]))
    tls = values[_TLS_AT]
    if tls is not None:
        tls[_ALPN_AT] = tuple(tls[_ALPN_AT])
        values[_TLS_AT] = Tls(*tls)
    transport = values[_TRANSPORT_AT]
    if transport is not None:
        transport[_OPTIONS_AT] = tuple(_tuples(transport[_OPTIONS_AT]))
        values[_TRANSPORT_AT] = Transport(*transport)
    return Proxy(*values)


def _tuples(items: list[Any]) -> list[Any]:
    return [tuple(item) if isinstance(item, list) else item for item in items]


def report_to_data(report: ParseReport) -> dict[str, Any]:
    """A parse report as plain msgpack-able values (every proxy field kept)."""
    return {
        "shape": report.shape,
        "found": report.found,
        "lines": report.lines,
        "ignored_lines": report.ignored_lines,
        "proxies": [proxy_to_data(proxy) for proxy in report.proxies],
        "rejections": [[r.reason, r.detail, r.where] for r in report.rejections],
    }


def pack_report(report: ParseReport) -> bytes:
    return pack(report_to_data(report))


def unpack_report(blob: bytes) -> ParseReport:
    """A parse report stored by `pack_report`.

    Raises:
        ValueError: the blob is not a stored report.
    """
    try:
        with collector_paused():
            return report_from_data(unpack(blob))
    except (TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"stored parse is unreadable: {exc!r}") from None


def report_from_data(data: dict[str, Any]) -> ParseReport:
    """The inverse of `report_to_data`.

    Raises:
        ValueError, TypeError, KeyError: the data is not a stored report.
    """
    return ParseReport(
        shape=data["shape"],
        proxies=[proxy_from_data(item) for item in data["proxies"]],
        rejections=[Rejection(*item) for item in data["rejections"]],
        found=data["found"],
        lines=data["lines"],
        ignored_lines=data["ignored_lines"],
    )


# How long a second run waits for the first to release the cache.
LOCK_WAIT_SECONDS = 30.0


@contextlib.contextmanager
def exclusive(folder: Path, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the cache folder's lock for one run.

    Two runs on one cache would interleave their results and history; the
    second waits up to `wait` seconds, then stops with a clear error.

    A folder that cannot be written holds no lock and no state: the run
    goes on without them (see `Cache.open`), with a warning.

    Raises:
        CacheError: another run kept the lock for longer than `wait`.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / "lock").open("a")
    except OSError as exc:
        log.warning(
            "cache folder %s cannot be written (%s): this run keeps no state",
            folder,
            exc.strerror,
        )
        yield
        return
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


def _result_row(row: Sequence[Any]) -> dict[str, Any]:
    checked_at, status, value = row
    return {"checked_at": checked_at, "status": status, **unpack(value)}


def pack(value: Any) -> bytes:
    """msgpack, LZ4-compressed when that makes it smaller.

    A test result packs into about 60 bytes, which an LZ4 frame would grow
    to 84; such values are stored raw. A marker byte says which.
    """
    raw = msgpack.packb(value, use_bin_type=True)
    if len(raw) < COMPRESS_FROM:
        return _RAW + raw
    return _LZ4 + lz4.block.compress(raw)


def unpack(blob: bytes) -> Any:
    """The value `pack` stored.

    Raises:
        ValueError: the blob is not a packed value.
    """
    marker, body = blob[:1], blob[1:]
    if marker == _LZ4:
        try:
            body = lz4.block.decompress(body)
        except lz4.block.LZ4BlockError as exc:
            raise ValueError(f"cache value does not decompress: {exc}") from None
    elif marker != _RAW:
        raise ValueError("cache value has an unknown marker byte")
    return msgpack.unpackb(body, raw=False)


class Cache:
    """A handle on the cache database; use `Cache.open` as a context manager."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.connection = connection
        self.path = path
        # Every age is measured with this clock; tests move it.
        self.clock = clock
        # False when the folder could not be written and state lives in memory.
        self.persistent = True
        # Level 1: recent rows by key, in front of SQLite. A miss is kept
        # too (as None), so a key is looked up in SQLite at most once.
        self._l1: collections.OrderedDict[str, dict[str, Any] | None] = (
            collections.OrderedDict()
        )

    @classmethod
    def open(cls, folder: Path, clock: Callable[[], float] = time.time) -> Cache:
        """Open (creating if needed) the database in `folder`.

        A file that is not a ConfigStream database is moved aside with a
        warning and a new one is created, so a corrupt cache never stops a run.
        A folder that cannot be written gives a warning and a cache in memory:
        the run goes on, and only its reuse of earlier work is lost.
        """
        path = folder / DATABASE_NAME
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # SQLite needs to create its -wal and -shm files beside the
            # database, so a writable folder is checked, not just the file.
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            log.warning(
                "cache folder %s cannot be written (%s): keeping state in memory "
                "for this run only",
                folder,
                exc.strerror,
            )
            cache = cls(cls._connect(":memory:"), path, clock)
            cache.persistent = False
            return cache
        try:
            return cls(cls._connect(path), path, clock)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning(
                "cache %s is unreadable (%s); moved to %s", path, exc, aside.name
            )
            path.replace(aside)
            return cls(cls._connect(path), path, clock)

    @staticmethod
    def _connect(path: Path | str) -> sqlite3.Connection:
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
                "".join(f"DROP TABLE IF EXISTS {name};" for name in _TABLES)
                + "DELETE FROM meta;"
                + _SCHEMA
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
                "DELETE FROM results WHERE checked_at < ?", (self.clock() - older_than,)
            ).rowcount
        self.connection.execute("VACUUM")
        return int(deleted)

    def record_results(self, entries: Iterable[Entry]) -> None:
        """Store the latest result of each tested proxy."""
        now = self.clock()
        self._l1.clear()  # simpler than keeping it in step; the run is over
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
        """The stored result of one proxy identity, through the level-1 map."""
        if key in self._l1:
            self._l1.move_to_end(key)
            return self._l1[key]
        row = self.connection.execute(
            "SELECT checked_at, status, value FROM results WHERE id=?", (key,)
        ).fetchone()
        found = None if row is None else _result_row(row)
        self._remember(key, found)
        return found

    def preload(self, keys: Iterable[str]) -> None:
        """Fetch many keys' results into the level-1 map in a few queries.

        One query per key costs a round trip through SQLite each; a run asks
        for every unique proxy at once, so it asks in batches.
        """
        wanted = [key for key in dict.fromkeys(keys) if key not in self._l1]
        for start in range(0, len(wanted), PRELOAD_BATCH):
            batch = wanted[start : start + PRELOAD_BATCH]
            marks = ",".join("?" * len(batch))
            rows = self.connection.execute(
                "SELECT id, checked_at, status, value FROM results "
                f"WHERE id IN ({marks})",
                batch,
            )
            found = {row[0]: _result_row(row[1:]) for row in rows}
            for key in batch:
                self._remember(key, found.get(key))

    def _remember(self, key: str, row: dict[str, Any] | None) -> None:
        self._l1[key] = row
        if len(self._l1) > L1_SIZE:
            self._l1.popitem(last=False)

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
        age = self.clock() - float(row["checked_at"])
        if age < 0:
            # Checked "in the future": the clock was set back. The result's
            # real age is unknown, so it is tested again.
            return None
        if row["status"] == "alive" and age < alive_ttl:
            return ProbeResult(
                Status.ALIVE, latency_ms=row["latency_ms"], exit_ip=row["exit_ip"]
            )
        if row["status"] == "dead" and age < dead_ttl:
            return ProbeResult(Status.DEAD, reason=row["reason"])
        return None

    def record_run(self, stats: dict[str, Any]) -> None:
        """Append a run's stats and per-source health to the history.

        The last `MAX_RUNS` runs and the last `SOURCE_HEALTH_RUNS` runs of
        source health are kept.
        """
        summary = {
            key: stats.get(key)
            for key in ("fetch", "parse", "dedupe", "test", "seconds", "degraded")
        }
        with self.connection:
            run_id = self.connection.execute(
                "INSERT INTO runs (finished_at, value) VALUES (?, ?)",
                (self.clock(), pack(summary)),
            ).lastrowid
            self.connection.executemany(
                "INSERT OR REPLACE INTO source_health VALUES (?, ?, ?)",
                [
                    (run_id, row["name"], pack(row))
                    for row in stats.get("sources") or []
                ],
            )
            self.connection.execute(
                "DELETE FROM runs WHERE id <= (SELECT MAX(id) FROM runs) - ?",
                (MAX_RUNS,),
            )
            self.connection.execute(
                "DELETE FROM source_health WHERE run_id <= ? - ?",
                (run_id, SOURCE_HEALTH_RUNS),
            )

    def source_history(self) -> dict[str, list[dict[str, Any]]]:
        """Each source's health rows, oldest first, with the run's time."""
        rows = self.connection.execute(
            "SELECT h.name, r.finished_at, h.value FROM source_health h "
            "JOIN runs r ON r.id = h.run_id ORDER BY h.run_id"
        )
        history: dict[str, list[dict[str, Any]]] = {}
        for name, finished_at, value in rows:
            history.setdefault(name, []).append(
                {**unpack(value), "finished_at": finished_at}
            )
        return history

    def fetch_state(self, name: str, url: str) -> FetchState | None:
        """What the last good fetch of a source left, if its URL is unchanged."""
        row = self.connection.execute(
            "SELECT etag, last_modified, body_hash, cursor FROM fetch_state "
            "WHERE name=? AND url=?",
            (name, url),
        ).fetchone()
        return None if row is None else FetchState(*row)

    def stored_report(self, name: str) -> bytes | None:
        """The packed parse of a source's last body (see `unpack_report`)."""
        row = self.connection.execute(
            "SELECT report FROM fetch_state WHERE name=?", (name,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def forget_fetch_state(self, name: str) -> None:
        with self.connection:
            self.connection.execute("DELETE FROM fetch_state WHERE name=?", (name,))

    def record_fetch_state(
        self, name: str, url: str, state: FetchState, packed_report: bytes | None
    ) -> None:
        """Keep a source's validators, with its packed parse if it changed.

        Without `packed_report`, the stored parse stays (the body was the same).
        """
        with self.connection:
            if packed_report is None:
                self.connection.execute(
                    "UPDATE fetch_state SET url=?, etag=?, last_modified=?, "
                    "fetched_at=?, cursor=? WHERE name=?",
                    (
                        url,
                        state.etag,
                        state.last_modified,
                        self.clock(),
                        state.cursor,
                        name,
                    ),
                )
                return
            self.connection.execute(
                "INSERT OR REPLACE INTO fetch_state VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    url,
                    state.etag,
                    state.last_modified,
                    state.body_hash,
                    self.clock(),
                    packed_report,
                    state.cursor,
                ),
            )

    def merged_parse(self, key: str) -> bytes | None:
        """The packed merge of the last run's parses, if it had this key."""
        row = self.connection.execute(
            "SELECT value FROM merged_parse WHERE key=?", (key,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def keep_merged_parse(self, key: str, packed: bytes) -> None:
        """Keep one merge (the latest); the key names its sources' bodies."""
        with self.connection:
            self.connection.execute("DELETE FROM merged_parse")
            self.connection.execute(
                "INSERT INTO merged_parse VALUES (?, ?)", (key, packed)
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

"""The cache folder: reuse, lock, corruption, schema changes, maintenance."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from configstream.cache import SCHEMA_VERSION, Cache, CacheError, exclusive
from configstream.models import Entry, ProbeResult, Proxy, Status, identity
from tests.conftest import run_cli

PROXY = Proxy("trojan", "203.0.113.30", 443, password="fake-pass")


def _entry(status: Status) -> Entry:
    result = ProbeResult(status, latency_ms=12.5 if status is Status.ALIVE else None)
    return Entry(proxy=PROXY, result=result)


def test_results_round_trip_and_expire(tmp_path: Path) -> None:
    with Cache.open(tmp_path) as cache:
        cache.record_results([_entry(Status.ALIVE)])
        fresh = cache.fresh_result(identity(PROXY), alive_ttl=60, dead_ttl=60)
        stale = cache.fresh_result(identity(PROXY), alive_ttl=0, dead_ttl=60)
    assert fresh == ProbeResult(Status.ALIVE, latency_ms=12.5)
    assert stale is None


def test_untestable_is_never_reused(tmp_path: Path) -> None:
    with Cache.open(tmp_path) as cache:
        cache.record_results([_entry(Status.UNTESTABLE)])
        assert cache.fresh_result(identity(PROXY), 3600, 3600) is None


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "configstream.sqlite3").write_bytes(b"not a database at all" * 100)
    with Cache.open(tmp_path) as cache:
        cache.record_results([_entry(Status.DEAD)])
    assert list(tmp_path.glob("configstream.sqlite3.corrupt-*"))


def test_other_schema_version_is_rebuilt(tmp_path: Path) -> None:
    with Cache.open(tmp_path) as cache:
        cache.record_results([_entry(Status.ALIVE)])
    with sqlite3.connect(tmp_path / "configstream.sqlite3") as connection:
        connection.execute("UPDATE meta SET value='0' WHERE key='schema'")
    with Cache.open(tmp_path) as cache:
        assert cache.summary()["results"] == {}
        row = cache.connection.execute("SELECT value FROM meta").fetchone()
    assert row == (str(SCHEMA_VERSION),)


def test_second_holder_waits_then_gives_up(tmp_path: Path) -> None:
    """A run on a cache another run holds stops with a clear error."""
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with exclusive(tmp_path):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    started = time.monotonic()
    with pytest.raises(CacheError, match="another run holds the cache"):
        with exclusive(tmp_path, wait=0.5):
            pass
    assert time.monotonic() - started >= 0.5
    release.set()
    thread.join()
    with exclusive(tmp_path, wait=0.5):
        pass


def test_cache_command_stats_prune_clear(tmp_path: Path) -> None:
    with Cache.open(tmp_path / "cache") as cache:
        cache.record_results([_entry(Status.ALIVE)])
    stats = run_cli("cache", "stats", cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["results"] == {"alive": 1}
    pruned = run_cli("cache", "prune", "--older-than", "0", cwd=tmp_path)
    assert "pruned 1 results" in pruned.stdout
    cleared = run_cli("cache", "clear", cwd=tmp_path)
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert not list((tmp_path / "cache").glob("configstream.sqlite3*"))


def _proxies(count: int) -> list[Proxy]:
    return [
        Proxy("trojan", f"198.51.100.{1 + i % 250}", 1000 + i, password=f"p{i}")
        for i in range(count)
    ]


def test_preload_answers_as_single_lookups_do(tmp_path: Path) -> None:
    """Batched reads into the level-1 map give exactly the stored rows."""
    proxies = _proxies(1234)
    entries = [
        Entry(
            p,
            result=ProbeResult(
                Status.ALIVE if i % 3 else Status.DEAD,
                latency_ms=float(i) if i % 3 else None,
            ),
        )
        for i, p in enumerate(proxies)
    ]
    with Cache.open(tmp_path) as cache:
        cache.record_results(entries[:1000])  # the last 234 were never stored
    keys = [identity(p) for p in proxies]
    with Cache.open(tmp_path) as single:
        expected = [single.result(key) for key in keys]
    with Cache.open(tmp_path) as batched:
        batched.preload(keys)
        batched.connection.close()  # every answer must now come from memory
        assert [batched.result(key) for key in keys] == expected
    assert sum(row is None for row in expected) == 234


def test_level1_map_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("configstream.cache.L1_SIZE", 50)
    with Cache.open(tmp_path) as cache:
        cache.preload(identity(p) for p in _proxies(400))
        assert len(cache._l1) == 50


def test_values_pack_small_raw_and_large_compressed() -> None:
    from configstream.cache import pack, unpack

    small = {"latency_ms": 12.5, "exit_ip": "198.51.100.7"}
    large = {"lines": ["vless://" + "x" * 60] * 200}
    assert pack(small)[:1] == b"\x00" and unpack(pack(small)) == small
    assert pack(large)[:1] == b"\x01" and unpack(pack(large)) == large
    assert len(pack(large)) < len(json.dumps(large)) / 5
    with pytest.raises(ValueError):
        unpack(b"\x07junk")
    with pytest.raises(ValueError):
        unpack(b"\x01not lz4 at all")

"""The cache folder: reuse, lock, corruption, schema changes, maintenance."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from configstream.cache import SCHEMA_VERSION, Cache, CacheError, exclusive
from configstream.demo import World
from configstream.models import Entry, ProbeResult, Proxy, Status, identity
from tests.conftest import run_cli, world_run_args

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


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_alive_and_dead_results_expire_on_their_own_ttl(tmp_path: Path) -> None:
    clock = _Clock()
    alive, dead = _proxies(2)
    with Cache.open(tmp_path, clock=clock) as cache:
        cache.record_results(
            [
                Entry(alive, result=ProbeResult(Status.ALIVE, latency_ms=20.0)),
                Entry(dead, result=ProbeResult(Status.DEAD, reason="refused")),
            ]
        )

    def fresh_after(seconds: float) -> tuple[bool, bool]:
        clock.now = 1_800_000_000.0 + seconds
        with Cache.open(tmp_path, clock=clock) as cache:
            return tuple(  # type: ignore[return-value]
                cache.fresh_result(identity(p), alive_ttl=3 * 3600, dead_ttl=3600)
                is not None
                for p in (alive, dead)
            )

    assert fresh_after(10) == (True, True)
    assert fresh_after(3599) == (True, True)
    assert fresh_after(3601) == (True, False)  # dead results age faster
    assert fresh_after(3 * 3600 + 1) == (False, False)


def test_clock_set_back_makes_results_stale(tmp_path: Path) -> None:
    """A result from the 'future' has an unknown age and is tested again."""
    clock = _Clock()
    with Cache.open(tmp_path, clock=clock) as cache:
        cache.record_results([_entry(Status.ALIVE)])
    clock.now -= 24 * 3600
    with Cache.open(tmp_path, clock=clock) as cache:
        assert cache.fresh_result(identity(PROXY), 3600, 3600) is None


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder nobody may create files in, root included where possible."""
    if os.geteuid() == 0:
        # sysfs refuses new files even to root.
        return Path("/sys/kernel")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_unwritable_cache_folder_keeps_state_in_memory(tmp_path: Path) -> None:
    folder = _unwritable_folder(tmp_path)
    with exclusive(folder, wait=1), Cache.open(folder) as cache:
        assert not cache.persistent
        cache.record_results([_entry(Status.ALIVE)])
        assert cache.fresh_result(identity(PROXY), 60, 60) is not None


def test_run_with_unwritable_cache_still_publishes(
    world: World, tmp_path: Path
) -> None:
    """A read-only cache folder costs the run its reuse, nothing else."""
    folder = _unwritable_folder(tmp_path)
    args = world_run_args(world)
    args[args.index("--cache") + 1] = str(folder)
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot be written" in done.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["test"]["alive"] == len(world.live)


def test_truncated_database_is_moved_aside_and_run_goes_on(
    world: World, tmp_path: Path
) -> None:
    """A database cut short (a runner killed mid-save) costs one warning."""
    first = run_cli(*world_run_args(world), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    database = tmp_path / "cache" / "configstream.sqlite3"
    for extra in tmp_path.glob("cache/configstream.sqlite3-*"):
        extra.unlink()  # the WAL, as an interrupted cache upload leaves it
    data = database.read_bytes()
    database.write_bytes(data[: len(data) // 3])
    again = run_cli(*world_run_args(world), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("configstream.sqlite3 is unreadable") == 1
    assert list((tmp_path / "cache").glob("configstream.sqlite3.corrupt-*"))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["test"]["alive"] == len(world.live)

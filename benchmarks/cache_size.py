"""Cache size and lookup speed with 100,000 stored test results.

Usage: python benchmarks/cache_size.py [--results N] [--folder DIR]

Builds N distinct proxies (real corpus configs, then copies on other ports
until there are N), stores an alive or dead result for each in a new cache
folder, and reports: bytes on disk, the time to compute N identities, and
the time of N lookups three ways: one query per key in a new process-like
cold cache, batched preload then lookups, and lookups answered by the
level-1 map. Nothing is contacted.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import random
import tempfile
import time
from pathlib import Path

from configstream.cache import Cache
from configstream.errors import SourceError
from configstream.models import Entry, ProbeResult, Proxy, Status, identity
from configstream.parse import parse_body

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"


def corpus_proxies() -> list[Proxy]:
    found: dict[Proxy, None] = {}
    for path in sorted(DEFAULT_CORPUS.rglob("*")):
        if not path.is_file() or path.name in {"README.md", "SOURCES.txt"}:
            continue
        try:
            found.update(dict.fromkeys(parse_body(path.read_bytes()).proxies))
        except SourceError:
            continue
    return list(found)


def distinct_proxies(count: int) -> list[Proxy]:
    """`count` different proxies: the corpus's, then copies on new ports."""
    base = corpus_proxies()
    proxies: dict[Proxy, None] = dict.fromkeys(base[:count])
    for shift in itertools.count(1):
        if len(proxies) >= count:
            break
        for proxy in base:
            moved = dataclasses.replace(proxy, port=(proxy.port + shift) % 65535 + 1)
            proxies[moved] = None
            if len(proxies) >= count:
                break
    return list(proxies)


def result_for(rng: random.Random) -> ProbeResult:
    if rng.random() < 0.3:
        return ProbeResult(
            Status.ALIVE,
            latency_ms=round(rng.uniform(40, 900), 1),
            exit_ip=f"198.51.100.{rng.randrange(1, 255)}",
        )
    return ProbeResult(Status.DEAD, reason="connect: connection refused")


def timed(label: str, count: int, action) -> float:  # noqa: ANN001
    gc.collect()
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    print(f"{label:<44}{seconds:>8.3f} s  {count / seconds:>12,.0f} /s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="configstream-cache-"))
    rng = random.Random(1)

    proxies = distinct_proxies(args.results)
    entries = [
        Entry(proxy, sources=["s"], result=result_for(rng), country="DE")
        for proxy in proxies
    ]
    keys: list[str] = []
    timed(
        f"identity() of {len(proxies):,} proxies",
        len(proxies),
        lambda: keys.extend(identity(p) for p in proxies),
    )
    with Cache.open(folder) as cache:
        timed("store every result", len(entries), lambda: cache.record_results(entries))
        cache.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = cache.summary()["bytes"]
    print(
        f"{'bytes on disk':<44}{size / 1e6:>8.1f} MB  ({size / len(keys):,.0f} per result)"
    )

    def one_by_one() -> None:
        with Cache.open(folder) as cache:
            for key in keys:
                cache.fresh_result(key, 3 * 3600, 3600)

    def preloaded() -> None:
        with Cache.open(folder) as cache:
            cache.preload(keys)
            for key in keys:
                cache.fresh_result(key, 3 * 3600, 3600)

    timed(f"{len(keys):,} lookups, one query each (cold)", len(keys), one_by_one)
    timed(f"{len(keys):,} lookups after preload (as a run)", len(keys), preloaded)
    with Cache.open(folder) as cache:
        cache.preload(keys)
        timed(
            f"{len(keys):,} lookups from the level-1 map",
            len(keys),
            lambda: [cache.fresh_result(key, 3 * 3600, 3600) for key in keys],
        )
    print(f"cache folder: {folder}")


if __name__ == "__main__":
    main()

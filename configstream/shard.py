"""Splitting the testing over several runners, and joining the results.

`configstream run --shard I/N` fetches and parses everything (cheap) but
tests only the proxies whose identity falls in slice I of N, then writes a
partial result instead of the outputs. `configstream merge` reads the N
partials, checks they belong together, and publishes them as one run.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from configstream import __version__
from configstream.cache import pack, proxy_from_data, proxy_to_data, unpack
from configstream.errors import ConfigStreamError
from configstream.models import Entry, ProbeResult, Proxy, Status, identity

PARTIAL_FORMAT = 1


class ShardError(ConfigStreamError):
    """Partial results that cannot be merged."""


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` into (I, N), 1 <= I <= N.

    Raises:
        ValueError: the text is not such a pair.
    """
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise ValueError(f"shard must look like 2/5, got {text!r}")
    pair = int(index), int(count)
    if not 1 <= pair[0] <= pair[1]:
        raise ValueError(f"shard {text!r} is not between 1/N and N/N")
    return pair


def shard_of(proxy: Proxy, count: int) -> int:
    """The slice (1..count) a proxy belongs to, the same on every runner."""
    digest = hashlib.blake2b(identity(proxy).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


def partial_name(index: int, count: int) -> str:
    return f"partial-{index}-of-{count}.bin"


def write_partial(
    folder: Path, stats: dict[str, Any], entries: Sequence[Entry]
) -> Path:
    """Write one shard's entries and stats; returns the file written."""
    shard = stats["shard"]
    data = {
        "format": PARTIAL_FORMAT,
        "version": __version__,
        "shard": [shard["index"], shard["count"]],
        "stats": stats,
        "entries": [
            [
                proxy_to_data(entry.proxy),
                entry.sources,
                str(entry.result.status),
                entry.result.latency_ms,
                entry.result.exit_ip,
                entry.result.reason,
                entry.country,
                entry.reused,
            ]
            for entry in entries
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / partial_name(shard["index"], shard["count"])
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(pack(data))
    temporary.replace(path)
    return path


def _entry(row: list[Any]) -> Entry:
    proxy, sources, status, latency, exit_ip, reason, country, reused = row
    return Entry(
        proxy=proxy_from_data(proxy),
        sources=list(sources),
        result=ProbeResult(Status(status), latency, exit_ip, reason),
        country=country,
        reused=bool(reused),
    )


def _sum_counts(values: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add numbers key by key; nested dicts of numbers are added too."""
    total: dict[str, Any] = {}
    for value in values:
        for key, item in value.items():
            if isinstance(item, bool) or not isinstance(item, (int, float, dict)):
                total.setdefault(key, item)
            elif isinstance(item, dict):
                total[key] = dict(Counter(total.get(key, {})) + Counter(item))
            else:
                total[key] = total.get(key, 0) + item
    return total


def read_partials(paths: Sequence[Path]) -> tuple[list[Entry], dict[str, Any]]:
    """Every shard's entries and the stats of the whole run.

    Raises:
        ShardError: a file is unreadable, the files come from different
            splits, or a shard is missing or given twice.
    """
    parts = []
    for path in paths:
        try:
            data = unpack(path.read_bytes())
            if data.get("format") != PARTIAL_FORMAT:
                raise ValueError("not a ConfigStream partial result")
            parts.append(data)
        except (OSError, ValueError, AttributeError) as exc:
            raise ShardError(f"{path}: {exc}") from None
    counts = {data["shard"][1] for data in parts}
    if len(counts) != 1:
        raise ShardError(f"partials come from different splits: {sorted(counts)}")
    count = counts.pop()
    seen = sorted(data["shard"][0] for data in parts)
    if seen != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(seen))
        raise ShardError(
            f"need shards 1..{count} once each; missing {missing}, got {seen}"
        )
    entries = [_entry(row) for data in parts for row in data["entries"]]
    first = parts[0]["stats"]
    stats = dict(first)
    stats.pop("shard", None)
    stats["test"] = _sum_counts([data["stats"]["test"] for data in parts])
    stats["seconds"] = {
        key: max(data["stats"]["seconds"].get(key, 0) for data in parts)
        for key in first["seconds"]
    }
    stats["shards"] = count
    # Each shard counted its own slice of every source's configs.
    summed = ("alive", "only_here", "configs")
    by_source: dict[str, dict[str, Any]] = {}
    for data in parts:
        for row in data["stats"]["sources"]:
            merged = by_source.setdefault(
                row["name"], dict(row, **dict.fromkeys(summed, 0))
            )
            for key in summed:
                merged[key] += row.get(key) or 0
    for row in by_source.values():
        configs = row["configs"]
        row["alive_ratio"] = round(row["alive"] / configs, 3) if configs else 0.0
    stats["sources"] = list(by_source.values())
    stats["geo"] = {
        "by_country": dict(
            Counter(e.country or "unknown" for e in entries).most_common()
        )
    }
    return entries, stats

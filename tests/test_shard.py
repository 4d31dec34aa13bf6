"""Sharded testing: N slices plus a merge equal one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from configstream.demo import World
from configstream.models import Proxy
from configstream.shard import ShardError, parse_shard, read_partials, shard_of
from tests.conftest import run_cli, world_run_args


def _args(world: World, output: str, cache: str) -> list[str]:
    args = world_run_args(world)
    args[args.index("--output") + 1] = output
    args[args.index("--cache") + 1] = cache
    return args


def _alive(output: Path) -> set[tuple[str, int, str]]:
    proxies = json.loads((output / "proxies.json").read_text())
    return {
        (p["protocol"], p["port"], p["exit_ip"])
        for p in proxies
        if p["status"] == "alive"
    }


def test_three_shards_and_merge_equal_one_run(world: World, tmp_path: Path) -> None:
    whole = run_cli(*_args(world, "whole", "cache-whole"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    for index in (1, 2, 3):
        done = run_cli(
            *_args(world, f"part{index}", f"cache{index}"),
            "--shard",
            f"{index}/3",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert not (tmp_path / f"part{index}" / "index.html").exists()
    partials = [tmp_path / f"part{i}" / f"partial-{i}-of-3.bin" for i in (1, 2, 3)]
    merged = run_cli(
        "merge",
        *map(str, partials),
        "--output",
        "merged",
        "--cache",
        "cache-merge",
        "--base-url",
        "https://lists.example.org/",
        cwd=tmp_path,
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert _alive(tmp_path / "merged") == _alive(tmp_path / "whole") != set()
    one = json.loads((tmp_path / "whole" / "stats.json").read_text())
    joined = json.loads((tmp_path / "merged" / "stats.json").read_text())
    for key in ("alive", "dead", "untestable", "skipped"):
        assert joined["test"][key] == one["test"][key], key
    assert joined["dedupe"]["unique"] == one["dedupe"]["unique"]
    assert joined["shards"] == 3
    alive_by_source = {r["name"]: r["alive"] for r in joined["sources"]}
    assert alive_by_source == {r["name"]: r["alive"] for r in one["sources"]}


def test_each_proxy_falls_in_exactly_one_stable_slice() -> None:
    proxies = [
        Proxy("trojan", f"198.51.100.{i}", 443, password="p") for i in range(300)
    ]
    slices = [shard_of(p, 4) for p in proxies]
    assert set(slices) == {1, 2, 3, 4}
    assert slices == [shard_of(p, 4) for p in proxies]  # stable
    assert min(slices.count(i) for i in (1, 2, 3, 4)) > 40  # roughly even


@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "3", "1/0"])
def test_bad_shard_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_shard(text)


def test_missing_or_foreign_partials_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x91\x01")
    with pytest.raises(ShardError):
        read_partials([junk])
    done = run_cli("merge", str(junk), "--output", "o", "--cache", "c", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr

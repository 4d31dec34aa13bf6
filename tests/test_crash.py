"""SIGKILL at random moments of a real run leaves cache and output consistent."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from configstream.cache import DATABASE_NAME, Cache
from configstream.demo import World
from tests.conftest import run_cli, world_run_args


def _output_is_one_whole_set(output: Path) -> None:
    """Every file the manifest names is there with its size and hash."""
    manifest = json.loads((output / "manifest.json").read_text())
    for item in manifest["files"]:
        data = (output / item["name"]).read_bytes()
        assert len(data) == item["size"], item["name"]
        assert hashlib.sha256(data).hexdigest() == item["sha256"], item["name"]
    stats = json.loads((output / "stats.json").read_text())
    assert stats["generated_at"] == manifest["generated_at"]


def _cache_is_readable(folder: Path) -> None:
    database = folder / DATABASE_NAME
    if not database.exists():
        return
    connection = sqlite3.connect(database)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()
    with Cache.open(folder) as cache:
        cache.summary()
        cache.runs()
        cache.source_history()


def test_sigkill_anywhere_leaves_cache_and_output_whole(
    world: World, tmp_path: Path
) -> None:
    args = [*world_run_args(world), "--fresh"]  # every run goes through every stage
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rng = random.Random(20261204)
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-m", "configstream.cli", *args],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ),
        )
        time.sleep(rng.uniform(0.2, 4.0))
        child.kill()
        child.wait()
        # Never missing, never a mix: the old set or the new one.
        _output_is_one_whole_set(tmp_path / "out")
        _cache_is_readable(tmp_path / "cache")
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _output_is_one_whole_set(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["test"][
        "alive"
    ] == len(world.live)
    assert not list(tmp_path.glob(".out.*"))  # leftovers were cleared

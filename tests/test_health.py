"""Source health: streaks, flags, resting and retrying, and the table."""

from __future__ import annotations

import json
from pathlib import Path

from configstream.cache import Cache
from configstream.health import (
    FAILED_RUNS_TO_FLAG,
    RETRY_EVERY,
    USELESS_RUNS_TO_FLAG,
    add_outcomes,
    resting,
    summarize,
)
from configstream.models import Entry, ProbeResult, Proxy, Status
from tests.conftest import run_cli


def _ok(only_here: int = 1) -> dict[str, object]:
    return {"status": "ok", "only_here": only_here, "found": 3, "parsed": 3}


def _failed() -> dict[str, object]:
    return {"status": "failed", "error": "HTTP 503 after 3 attempts"}


def _rest() -> dict[str, object]:
    return {"status": "resting"}


def test_failure_streak_flags_and_a_success_clears() -> None:
    history = {
        "flaky": [_ok(), *[_failed()] * FAILED_RUNS_TO_FLAG],
        "healed": [*[_failed()] * FAILED_RUNS_TO_FLAG, _ok()],
        "young": [_failed()] * (FAILED_RUNS_TO_FLAG - 1),
    }
    flags = {h.name: h.flag for h in summarize(history)}
    assert flags["flaky"].startswith(f"failed {FAILED_RUNS_TO_FLAG} runs")
    assert flags["healed"] == flags["young"] == ""


def test_a_source_with_nothing_unique_is_flagged() -> None:
    history = {
        "copycat": [_ok(only_here=0)] * USELESS_RUNS_TO_FLAG,
        "useful": [_ok(only_here=0)] * (USELESS_RUNS_TO_FLAG - 1) + [_ok(1)],
    }
    flags = {h.name: h.flag for h in summarize(history)}
    assert "nothing unique" in flags["copycat"]
    assert flags["useful"] == ""


def test_flagged_source_rests_then_is_retried() -> None:
    failing = [_failed()] * FAILED_RUNS_TO_FLAG
    assert "down" in resting({"down": failing})
    rested = failing + [_rest()] * (RETRY_EVERY - 2)
    assert "down" in resting({"down": rested})
    # After RETRY_EVERY - 1 runs off, it is fetched again.
    assert "down" not in resting({"down": failing + [_rest()] * (RETRY_EVERY - 1)})


def test_outcomes_count_unique_and_alive_per_source() -> None:
    def entry(host: str, sources: list[str], alive: bool) -> Entry:
        status = Status.ALIVE if alive else Status.DEAD
        return Entry(
            Proxy("trojan", host, 443, password="p"),
            sources=sources,
            result=ProbeResult(status),
        )

    rows = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    add_outcomes(
        rows,
        [
            entry("x.example.com", ["a"], True),
            entry("y.example.com", ["a", "b"], True),
            entry("z.example.com", ["b"], False),
        ],
    )
    figures = {r["name"]: (r["only_here"], r["alive"], r["alive_ratio"]) for r in rows}
    assert figures == {"a": (1, 2, 1.0), "b": (1, 1, 0.5), "c": (0, 0, 0.0)}


def test_sources_command_shows_recorded_runs(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with Cache.open(cache_dir) as cache:
        for row in (_failed(), _failed(), _failed()):
            cache.record_run(
                {"sources": [{"name": "down", **row}, {"name": "up", **_ok()}]}
            )
    done = run_cli("sources", "--cache", str(cache_dir), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["down"]["runs"] == 3 and rows["down"]["ok_runs"] == 0
    assert rows["down"]["flag"].startswith("failed 3 runs")
    assert rows["up"]["flag"] == "" and rows["up"]["ok_runs"] == 3
    table = run_cli("sources", "--cache", str(cache_dir), cwd=tmp_path)
    assert table.returncode == 0
    assert "down" in table.stdout and "failed 3 runs in a row" in table.stdout

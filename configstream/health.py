"""Source health: what each source gave over the runs, and which to rest.

Every run records a row per source (status, HTTP code, bytes, seconds,
links found, parsed, rejected, configs only it had, alive count). A source
that failed several runs in a row, or has given nothing that no other source
had for a while, is flagged; flagged sources sit out later runs and are
tried again every `RETRY_EVERY` runs, so one that recovers comes back.
Nothing is removed from sources.yml.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from configstream.models import Entry, Status

FAILED_RUNS_TO_FLAG = 3
USELESS_RUNS_TO_FLAG = 6
RETRY_EVERY = 4


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """One source's record over the kept runs, newest figures first."""

    name: str
    runs: int
    ok_runs: int
    failed_streak: int
    useless_streak: int
    last: dict[str, Any]
    skipped_runs: int

    @property
    def flag(self) -> str:
        """Why the source should rest, or ''."""
        if self.failed_streak >= FAILED_RUNS_TO_FLAG:
            return f"failed {self.failed_streak} runs in a row"
        if self.useless_streak >= USELESS_RUNS_TO_FLAG:
            return f"nothing unique for {self.useless_streak} runs"
        return ""


def add_outcomes(rows: Sequence[dict[str, Any]], entries: Iterable[Entry]) -> None:
    """Add to each source's row the configs only it had and how many are alive.

    `alive_ratio` is alive over the unique configs it published (tested or
    not), so a source of duplicates of dead servers scores low.
    """
    only: dict[str, int] = {}
    published: dict[str, int] = {}
    alive: dict[str, int] = {}
    for entry in entries:
        if len(entry.sources) == 1:
            only[entry.sources[0]] = only.get(entry.sources[0], 0) + 1
        for name in entry.sources:
            published[name] = published.get(name, 0) + 1
            if entry.result.status == Status.ALIVE:
                alive[name] = alive.get(name, 0) + 1
    for row in rows:
        name = row["name"]
        row["only_here"] = only.get(name, 0)
        row["configs"] = published.get(name, 0)
        row["alive"] = alive.get(name, 0)
        row["alive_ratio"] = (
            round(alive.get(name, 0) / published[name], 3)
            if published.get(name)
            else 0.0
        )


def summarize(history: dict[str, list[dict[str, Any]]]) -> list[SourceHealth]:
    """Each source's health from its rows, oldest first (see `Cache.source_history`)."""
    summaries = []
    for name, rows in history.items():
        fetched = [row for row in rows if row.get("status") != "resting"]
        failed_streak = useless_streak = 0
        for row in reversed(fetched):
            if row.get("status") == "ok":
                break
            failed_streak += 1
        for row in reversed(fetched):
            if row.get("status") != "ok" or row.get("only_here", 0) > 0:
                break
            useless_streak += 1
        skipped = 0
        for row in reversed(rows):
            if row.get("status") != "resting":
                break
            skipped += 1
        summaries.append(
            SourceHealth(
                name=name,
                runs=len(fetched),
                ok_runs=sum(1 for row in fetched if row.get("status") == "ok"),
                failed_streak=failed_streak,
                useless_streak=useless_streak,
                last=fetched[-1] if fetched else rows[-1],
                skipped_runs=skipped,
            )
        )
    return sorted(summaries, key=lambda health: health.name)


def flag_rows(
    rows: Sequence[dict[str, Any]], history: dict[str, list[dict[str, Any]]]
) -> None:
    """Set each of this run's rows' `flag`, as `configstream sources` will
    show it once the row joins the source's history."""
    for row in rows:
        health = summarize({row["name"]: [*history.get(row["name"], []), row]})
        row["flag"] = health[0].flag


def resting(history: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Flagged sources that sit out this run, with the reason.

    A flagged source is fetched again once it has rested `RETRY_EVERY - 1`
    runs in a row; a good result clears its flag.
    """
    return {
        health.name: health.flag
        for health in summarize(history)
        if health.flag and health.skipped_runs < RETRY_EVERY - 1
    }

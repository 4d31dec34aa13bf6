"""The published set changes in one step: old set or new set, never a mix."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configstream.errors import OutputError
from configstream.models import Entry, ProbeResult, Proxy, Status
from configstream.render import write_outputs

STATS = {
    "fetch": {"ok": 1, "failed": 0, "sources": 1},
    "parse": {"found": 1, "parsed": 1, "rejected": 0},
    "dedupe": {"unique": 1, "duplicates": 0},
    "test": {"alive": 1, "dead": 0, "untestable": 0, "skipped": 0, "untested": 0},
    "seconds": {"total": 1.0},
    "sources": [],
}


def _entries(count: int, tag: str) -> list[Entry]:
    return [
        Entry(
            Proxy(
                "trojan",
                f"{tag}{index}.example.com",
                443,
                name=f"{tag}-{index}",
                password=f"pw-{tag}-{index}",
            ),
            sources=["s"],
            result=ProbeResult(Status.ALIVE, latency_ms=10.0 + index),
            country="DE" if index % 2 else "NL",
        )
        for index in range(count)
    ]


def _write(output: Path, count: int, tag: str) -> None:
    write_outputs(
        output,
        _entries(count, tag),
        json.loads(json.dumps(STATS)),
        test_url="http://127.0.0.1/",
    )


def _set_is_whole(output: Path) -> set[str]:
    """Every file the manifest names is there with its size; returns the tags."""
    manifest = json.loads((output / "manifest.json").read_text())
    for item in manifest["files"]:
        assert (output / item["name"]).stat().st_size == item["size"], item["name"]
    proxies = json.loads((output / "proxies.json").read_text())
    return {p["server"][0] for p in proxies}


def test_new_set_replaces_old_and_keeps_unlisted_files(tmp_path: Path) -> None:
    output = tmp_path / "output"
    _write(output, 6, "a")
    (output / "CNAME").write_text("lists.example.org\n")
    countries_before = {p.name for p in (output).rglob("*NL*")}
    _write(output, 1, "b")
    assert _set_is_whole(output) == {"b"}
    assert (output / "CNAME").read_text() == "lists.example.org\n"
    # A country the new set lacks is gone, not served stale.
    assert countries_before and not list(output.rglob("*DE*"))
    assert not list(tmp_path.glob(".output.*"))


def test_disk_full_while_writing_leaves_the_old_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the fifth file: the old set stays whole, nothing is left over."""
    output = tmp_path / "output"
    _write(output, 3, "a")
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    real_write = Path.write_bytes
    calls = []

    def full_disk(path: Path, data: bytes) -> int:
        calls.append(path)
        if len(calls) >= 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OutputError, match="No space left"):
        _write(output, 2, "b")
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".output.*"))


def test_leftovers_of_a_killed_write_are_cleared(tmp_path: Path) -> None:
    output = tmp_path / "output"
    _write(output, 2, "a")
    stale = tmp_path / ".output.staging-dead"
    stale.mkdir()
    (stale / "proxies.json").write_text("half")
    # Killed between the fallback's two renames: only the previous set exists.
    os.rename(output, tmp_path / ".output.previous")
    _write(output, 1, "b")
    assert _set_is_whole(output) == {"b"}
    assert not stale.exists() and not (tmp_path / ".output.previous").exists()


KILLER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_output_swap import _write
output = Path(sys.argv[1])
for round in range(10_000):
    _write(output, 300, "ab"[round % 2])
"""


def test_sigkill_during_writes_never_leaves_a_mix(tmp_path: Path) -> None:
    """Kill a process rewriting the set at random moments; check each time."""
    output = tmp_path / "output"
    _write(output, 300, "a")
    script = tmp_path / "writer.py"
    script.write_text(KILLER.format(root=str(Path(__file__).parents[1])))
    rng = __import__("random").Random(7)
    for _ in range(12):
        child = subprocess.Popen([sys.executable, str(script), str(output)])
        time.sleep(0.3 + rng.random() * 0.9)
        child.send_signal(signal.SIGKILL)
        child.wait()
        if not output.exists():
            # Only possible on the two-rename fallback; the next write heals it.
            assert (tmp_path / ".output.previous").is_dir()
            continue
        assert len(_set_is_whole(output)) == 1
    _write(output, 2, "b")
    assert _set_is_whole(output) == {"b"}

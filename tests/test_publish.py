"""`configstream publish` against a local bare repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A working repository whose `origin` is a bare repository beside it."""
    bare = tmp_path / "remote.git"
    _git("init", "--quiet", "--bare", str(bare), cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    _git("init", "--quiet", cwd=work)
    _git("remote", "add", "origin", str(bare), cwd=work)
    return work


def _output(folder: Path, alive: int) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "sub.txt").write_text(f"# {alive} links\n")
    (folder / "stats.json").write_text(json.dumps({"alive": alive}))
    (folder / "countries").mkdir(exist_ok=True)
    (folder / "countries" / "DE.txt").write_text("trojan://x@198.51.100.1:443\n")
    (folder / "manifest.json").write_text(json.dumps({"files": []}))
    return folder


def _branch(repo: Path) -> tuple[int, list[str]]:
    bare = repo.parent / "remote.git"
    count = int(_git("rev-list", "--count", "gh-pages", cwd=bare))
    files = _git("ls-tree", "-r", "--name-only", "gh-pages", cwd=bare).split()
    return count, sorted(files)


def test_first_unchanged_and_changed_publish(repo: Path) -> None:
    output = _output(repo / "output", alive=5)
    first = run_cli("publish", "--output", "output", cwd=repo)
    assert first.returncode == 0, first.stderr
    assert "first publish" in first.stdout
    assert _branch(repo) == (
        1,
        [".nojekyll", "countries/DE.txt", "manifest.json", "stats.json", "sub.txt"],
    )
    head = _git("rev-parse", "gh-pages", cwd=repo.parent / "remote.git")

    again = run_cli("publish", "--output", "output", cwd=repo)
    assert again.returncode == 0 and "nothing pushed" in again.stdout
    assert _git("rev-parse", "gh-pages", cwd=repo.parent / "remote.git") == head

    _output(output, alive=7)
    (output / "countries" / "DE.txt").unlink()
    changed = run_cli("publish", "--output", "output", cwd=repo)
    assert changed.returncode == 0, changed.stderr
    assert "3 files changed" in changed.stdout  # sub, stats, the removed list
    assert "countries/DE.txt" in changed.stdout and "stats.json" in changed.stdout
    count, files = _branch(repo)
    assert count == 1  # the history never grows
    assert "countries/DE.txt" not in files


def test_dry_run_pushes_nothing(repo: Path) -> None:
    _output(repo / "output", alive=1)
    done = run_cli("publish", "--output", "output", "--dry-run", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "would push" in done.stdout
    bare = repo.parent / "remote.git"
    missing = subprocess.run(
        ["git", "rev-parse", "--verify", "gh-pages"], cwd=bare, capture_output=True
    )
    assert missing.returncode != 0


def test_incomplete_output_is_refused(repo: Path) -> None:
    (repo / "output").mkdir()
    (repo / "output" / "sub.txt").write_text("half a set\n")
    done = run_cli("publish", "--output", "output", cwd=repo)
    assert done.returncode != 0
    assert "no complete output set" in done.stderr
    assert "Traceback" not in done.stderr

"""Shared fixtures: the shared corpus, loopback-only networking, the core."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from configstream.demo import World, start_world
from configstream.probe import ProbeSettings
from configstream.singbox import Core, locate_core

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CONFIGSTREAM_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "corpus" / "real"
LOOPBACK_ONLY = "127.0.0.0/8,::1/128"

# Everything the tests run may contact loopback only; the pipeline skips any
# server outside these networks without sending a packet.
os.environ["CONFIGSTREAM_ALLOW_NETWORKS"] = LOOPBACK_ONLY


def corpus_files() -> list[Path]:
    """Every subscription file of the shared corpus (not its notes)."""
    return sorted(
        path
        for path in CORPUS.rglob("*")
        if path.is_file() and path.name not in {"README.md", "SOURCES.txt"}
    )


@pytest.fixture(scope="session")
def core() -> Core:
    """The bundled sing-box core."""
    return locate_core()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `configstream ARGS` in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "configstream.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )


def run_untested(
    folder: Path, sources: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    """`configstream run --no-test` over `sources` (written to sources.yml in
    `folder`), writing `out/` and `cache/` there."""
    (folder / "sources.yml").write_text(yaml.safe_dump({"sources": sources}))
    return run_cli(
        "run", "--no-test", "--output", "out", "--cache", "cache", cwd=folder
    )


def world_run_args(world: World) -> list[str]:
    """`configstream run` arguments for a tested run over the demo world,
    writing `out/` and `cache/` in the working folder."""
    return [
        "run",
        "--sources",
        str(world.sources_file),
        "--output",
        "out",
        "--cache",
        "cache",
        "--test-url",
        world.test_url,
        "--trace-url",
        world.trace_url,
        "--geoip",
        str(world.geoip),
        "--timeout",
        "3",
        "--base-url",
        "https://lists.example.org/configstream/",
    ]


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    """The demo world, running on loopback for the whole session."""
    with start_world() as running:
        yield running


@pytest.fixture(scope="session")
def demo_run(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tested `configstream run --verbose` over the world: out/, cache/, log.txt."""
    folder = tmp_path_factory.mktemp("demo-run")
    done = run_cli(*world_run_args(world), "--verbose", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder / "log.txt").write_text(done.stdout + done.stderr)
    return folder


def loopback_probe(
    port: int, *, timeout: float = 3, concurrency: int = 8, trace: bool = False
) -> ProbeSettings:
    """Tester settings whose test URL (and trace, if asked) is the local
    HTTP server on `port`."""
    return ProbeSettings(
        test_url=f"http://127.0.0.1:{port}/generate_204",
        trace_url=f"http://127.0.0.1:{port}/cdn-cgi/trace" if trace else None,
        timeout=timeout,
        concurrency=concurrency,
    )

"""Shared fixtures: the shared corpus, loopback-only networking, the core."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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

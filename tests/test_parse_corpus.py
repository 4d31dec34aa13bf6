"""Every real subscription file of the shared corpus parses with no crash."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from configstream.parse import parse_link
from configstream.parse.subscription import parse_body
from configstream.render.links import to_link
from tests.conftest import CORPUS, corpus_files

COUNTS = json.loads((Path(__file__).parent / "data" / "corpus_counts.json").read_text())
FILES = corpus_files()


def test_corpus_is_present() -> None:
    """The corpus beside the repository is the one the counts were measured on."""
    assert len(FILES) == len(COUNTS) == 58


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_file_counts_match_measurement(path: Path) -> None:
    """Shape, links found, parsed and rejections by reason are as measured."""
    report = parse_body(path.read_bytes())
    expected = COUNTS[str(path.relative_to(CORPUS))]
    rejected = dict(sorted(Counter(r.reason for r in report.rejections).items()))
    assert (report.shape, report.found, len(report.proxies), rejected) == (
        expected["shape"],
        expected["found"],
        expected["parsed"],
        expected["rejected"],
    )
    # Every candidate is accounted for: parsed or rejected with a reason.
    assert report.found == len(report.proxies) + len(report.rejections)
    assert all(r.reason and r.where for r in report.rejections)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_every_proxy_survives_link_round_trip(path: Path) -> None:
    """Exporting each parsed proxy as a link and parsing it again loses nothing."""
    for proxy in parse_body(path.read_bytes()).proxies:
        link = to_link(proxy)
        assert link, f"{proxy.protocol} has no link form"
        again = parse_link(link)
        assert again == proxy, (
            f"{proxy.protocol} {proxy.endpoint} changed in a round trip"
        )
        assert again.name == proxy.name


def test_corpus_totals() -> None:
    """The corpus as a whole: most links parse and the rest carry reasons."""
    found = sum(v["found"] for v in COUNTS.values())
    parsed = sum(v["parsed"] for v in COUNTS.values())
    assert found > 80_000 and parsed / found > 0.8

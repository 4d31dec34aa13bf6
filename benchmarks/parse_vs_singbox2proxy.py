"""Share-link parse speed and fidelity: configstream against singbox2proxy.

Usage: python benchmarks/parse_vs_singbox2proxy.py [CORPUS_DIR] [--rounds N]
       [--cases CASES_JSON]

Reads every corpus file once, takes the share links out of the bodies that
are link lists (plain or base64), and times both `parse_link` functions on
that same list of strings, best of N rounds. Then times configstream's whole
path over the corpus (shape detection, decoding, parsing, de-duplication),
and finally runs singbox2proxy on the shared link cases to count where its
outbound differs from the expected fields. Parses only: nothing is contacted.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configstream.errors import SourceError
from configstream.parse import parse_body, parse_link
from configstream.parse.links import b64decode_lenient, clear_memo
from configstream.parse.subscription import (
    _ANY_LINK,
    _BASE64_LINE,
    _links_in_line,
    _to_text,
)
from configstream.singbox import import_singbox2proxy

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_CORPUS = SHARED / "corpus" / "real"
DEFAULT_CASES = SHARED / "cases" / "links.json"
# Shapes whose bodies are lists of share links (the rest are Clash/sing-box).
LINK_SHAPES = {"plain", "base64", "base64-lines"}
COMMENT_PREFIXES = ("#", "//", ";")


def import_singbox2proxy_parser() -> Callable[[str], Any]:
    """singbox2proxy's `parse_link`, imported without keeping its side effects.

    Importing the package installs SIGINT/SIGTERM/SIGHUP handlers (put back
    by configstream.singbox.import_singbox2proxy) and a stderr log handler
    that would print every rejected link; its logger is switched off so the
    timing measures parsing, not terminal output.
    """
    parse = import_singbox2proxy().parse_link
    logging.getLogger("singbox2proxy").disabled = True
    return parse


def read_bodies(corpus: Path) -> list[bytes]:
    return [
        path.read_bytes()
        for path in sorted(corpus.rglob("*"))
        if path.is_file() and path.name not in {"README.md", "SOURCES.txt"}
    ]


def _link_text(body: bytes) -> str | None:
    """The link-list text of a body, base64 decoded; None for other shapes."""
    try:
        shape = parse_body(body).shape
    except SourceError:
        return None
    if shape not in LINK_SHAPES:
        return None
    text = _to_text(body)
    if shape == "base64":
        return b64decode_lenient(text).decode("utf-8", "replace")
    return text


def _candidates(line: str) -> list[str]:
    """The link strings in one line, as configstream's plain reader finds them.

    Glued links are split; a line that is one base64-encoded link is decoded;
    a line with an unknown scheme is kept, since the other parser may know it.
    """
    found = _links_in_line(line)
    if not found and _BASE64_LINE.match(line):
        try:
            found = _links_in_line(b64decode_lenient(line).decode("utf-8").strip())
        except (ValueError, UnicodeDecodeError):
            found = []
    if not found and _ANY_LINK.match(line):
        found = [line]
    return found


def extract_links(bodies: Iterable[bytes]) -> list[str]:
    """Every share-link string in the link-list bodies, in corpus order."""
    links: list[str] = []
    for body in bodies:
        text = _link_text(body)
        if text is None:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith(COMMENT_PREFIXES):
                links.extend(_candidates(line))
    return links


@dataclass
class Timing:
    """Best-of-N wall time of one parser over the link list, and its verdicts."""

    seconds: float
    accepted: int
    raised: int
    accepted_by_scheme: collections.Counter[str]


def time_parser(parse: Callable[[str], Any], links: list[str], rounds: int) -> Timing:
    """Run `parse` over every link `rounds` times; keep the fastest round.

    A link counts as accepted when the parser returns a value and as raised
    when it raises anything at all (singbox2proxy lets KeyError and the like
    through for some malformed links). configstream's remembered results are
    forgotten before each round, so every round starts cold.
    """
    best = float("inf")
    accepted = raised = 0
    by_scheme: collections.Counter[str] = collections.Counter()
    for _ in range(rounds):
        clear_memo()
        gc.collect()
        accepted = raised = 0
        by_scheme.clear()
        started = time.perf_counter()
        for link in links:
            try:
                parse(link)
            except Exception:
                raised += 1
            else:
                accepted += 1
                by_scheme[link.partition("://")[0].lower()] += 1
        best = min(best, time.perf_counter() - started)
    return Timing(best, accepted, raised, by_scheme)


@dataclass
class CorpusTiming:
    """Best-of-N time of configstream's whole path over every corpus file."""

    seconds: float
    files: int
    candidates: int
    parsed: int
    unique: int


def time_corpus(bodies: list[bytes], rounds: int) -> CorpusTiming:
    """Detect, decode and parse every body, then de-duplicate with a set."""
    best = float("inf")
    candidates = parsed = unique = 0
    for _ in range(rounds):
        clear_memo()
        gc.collect()
        started = time.perf_counter()
        proxies = []
        candidates = 0
        for body in bodies:
            try:
                report = parse_body(body)
            except SourceError:
                continue
            candidates += report.found
            proxies.extend(report.proxies)
        unique = len(set(proxies))
        best = min(best, time.perf_counter() - started)
        parsed = len(proxies)
    return CorpusTiming(best, len(bodies), candidates, parsed, unique)


def mismatches(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Key paths where `actual` lacks or changes a value listed in `expected`.

    Values compare with their type, so `"2048"` does not match `2048`. A
    missing key whose expected value is sing-box's default (false, 0, empty)
    is no difference: sing-box reads the absence the same way.
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in expected.items():
            if key in actual:
                found += mismatches(value, actual[key], f"{path}.{key}")
            elif value or not isinstance(value, (bool, int, str, list, dict)):
                found.append(f"{path}.{key}")
        return found
    if expected != actual or type(expected) is not type(actual):
        return [path]
    return []


def _is_link_case(text: str) -> bool:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return bool(lines) and all(_ANY_LINK.match(line) for line in lines)


def _parse_each(parse: Callable[[str], Any], lines: list[str]) -> list[Any]:
    results: list[Any] = []
    for line in lines:
        try:
            results.append(parse(line))
        except Exception as exc:
            results.append(exc)
    return results


@dataclass
class CaseRow:
    """singbox2proxy's verdict on one shared case."""

    id: str
    kind: str
    differs: bool
    keys: list[str]
    names_lost: bool = False


def compare_case(parse: Callable[[str], Any], case: dict[str, Any]) -> CaseRow:
    """Compare singbox2proxy's outbounds with the case's expected fields.

    A link case is parsed line by line and the i-th expected outbound is
    compared with the i-th line's result on every listed key but `tag`:
    singbox2proxy tags every outbound 'proxy', so that loss is counted on
    its own. A subscription body is not a link, so a link parser has nothing
    to give for it; a `reject` case agrees when every line raises.
    """
    expected = case["expected"]
    lines = [line.strip() for line in case["input"].splitlines() if line.strip()]
    results = _parse_each(parse, lines)
    kind = "link" if _is_link_case(case["input"]) else "body"
    if expected["result"] == "reject":
        differs = not all(isinstance(result, Exception) for result in results)
        return CaseRow(case["id"], kind, differs, [])
    keys: list[str] = []
    names_lost = False
    for index, want in enumerate(expected.get("outbounds", [])):
        got = results[index] if kind == "link" and index < len(results) else None
        if not isinstance(got, dict):
            what = "no result" if got is None else type(got).__name__
            keys.append(f"[{index}] {what}")
            continue
        want = dict(want)
        tag = want.pop("tag", None)
        names_lost |= tag is not None and got.get("tag") != tag
        keys.extend(f"[{index}]{miss}" for miss in mismatches(want, got))
    return CaseRow(case["id"], kind, bool(keys), keys, names_lost)


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds else "-"


def print_speed(
    links: list[str],
    bodies: list[bytes],
    rounds: int,
    ours: Timing,
    theirs: Timing,
    corpus: CorpusTiming,
) -> None:
    print(
        f"corpus: {len(bodies)} files, {sum(map(len, bodies)):,} bytes; "
        f"{len(links):,} share links in the link-list bodies; best of {rounds}"
    )
    print()
    header = ("", "links/s", "seconds", "accepted", "raised")
    rows = [
        ("parse_link, configstream", ours),
        ("parse_link, singbox2proxy", theirs),
    ]
    print(f"{header[0]:<34}{header[1]:>10}{header[2]:>9}{header[3]:>10}{header[4]:>8}")
    for label, timing in rows:
        print(
            f"{label:<34}{_rate(len(links), timing.seconds):>10}{timing.seconds:>9.3f}"
            f"{timing.accepted:>10,}{timing.raised:>8,}"
        )
    speed = theirs.seconds / ours.seconds
    print(f"{'speed, configstream/singbox2proxy':<34}{speed:>9.2f}x")
    rate = _rate(corpus.candidates, corpus.seconds)
    print(
        f"{'whole corpus, configstream':<34}{rate:>10}{corpus.seconds:>9.3f}"
        f"{corpus.parsed:>10,}"
    )
    print(
        f"  (parse_body over {corpus.files} files: {corpus.candidates:,} candidates, "
        f"{corpus.parsed:,} parsed, {corpus.unique:,} unique after set())"
    )
    print()
    print("accepted by scheme, configstream/singbox2proxy of all:")
    total = collections.Counter(link.partition("://")[0].lower() for link in links)
    counts = [
        f"{scheme} {ours.accepted_by_scheme[scheme]}/"
        f"{theirs.accepted_by_scheme[scheme]} of {count}"
        for scheme, count in sorted(total.items())
    ]
    print("  " + ", ".join(counts))


def print_cases(rows: list[CaseRow], source: str) -> None:
    print()
    print(f"singbox2proxy on the {len(rows)} shared cases ({source}):")
    for row in rows:
        verdict = "differs" if row.differs else "agrees"
        detail = ", ".join(row.keys[:6]) + (" ..." if len(row.keys) > 6 else "")
        print(f"  {row.id:<38}{row.kind:<6}{verdict:<9}{detail}")
    links = [row for row in rows if row.kind == "link"]
    print(
        f"differs from the expected fields on {sum(r.differs for r in links)} of "
        f"{len(links)} link cases (tag ignored), {sum(r.differs for r in rows)} of "
        f"{len(rows)} cases in all; names (tag) lost in "
        f"{sum(r.names_lost for r in rows)} cases"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    args = parser.parse_args()
    other_parse = import_singbox2proxy_parser()

    bodies = read_bodies(args.corpus)
    links = extract_links(bodies)
    ours = time_parser(parse_link, links, args.rounds)
    theirs = time_parser(other_parse, links, args.rounds)
    corpus = time_corpus(bodies, args.rounds)
    # Each distinct string once: what parsing costs without any repeats.
    distinct = list(dict.fromkeys(links))
    ours_distinct = time_parser(parse_link, distinct, args.rounds)
    theirs_distinct = time_parser(other_parse, distinct, args.rounds)

    print_speed(links, bodies, args.rounds, ours, theirs, corpus)
    print()
    print(f"the {len(distinct):,} distinct link strings only, each parsed once:")
    for label, timing in (
        ("parse_link, configstream", ours_distinct),
        ("parse_link, singbox2proxy", theirs_distinct),
    ):
        print(
            f"{label:<34}{_rate(len(distinct), timing.seconds):>10}"
            f"{timing.seconds:>9.3f}"
        )
    cases = json.loads(args.cases.read_text(encoding="utf-8"))
    rows = [compare_case(other_parse, case) for case in cases]
    print_cases(rows, args.cases.name)


if __name__ == "__main__":
    main()

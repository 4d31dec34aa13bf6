"""Parse throughput and dedupe ratio over the shared corpus.

Usage: python benchmarks/parse_corpus.py [CORPUS_DIR] [--rounds N]

Reads every file once into memory, then times `parse_body` over all of them
for N rounds and reports links per second, the best round, and how many
unique proxies the corpus holds. Parses only: nothing is contacted.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from configstream.parse import parse_body
from configstream.parse.links import clear_memo

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bodies = [
        p.read_bytes()
        for p in sorted(args.corpus.rglob("*"))
        if p.is_file() and p.name not in {"README.md", "SOURCES.txt"}
    ]
    size = sum(len(b) for b in bodies)
    best = float("inf")
    for _ in range(args.rounds):
        clear_memo()  # every round starts cold, as a run does
        gc.collect()
        started = time.perf_counter()
        reports = [parse_body(body) for body in bodies]
        parsed = [p for r in reports for p in r.proxies]
        unique = set(parsed)
        best = min(best, time.perf_counter() - started)
    found = sum(r.found for r in reports)
    print(f"files: {len(bodies)}, bytes: {size:,}")
    print(f"candidates: {found:,}, parsed: {len(parsed):,}, unique: {len(unique):,}")
    print(
        f"best of {args.rounds}: {best:.2f} s, {found / best:,.0f} links/s, "
        f"{size / best / 1e6:.1f} MB/s"
    )


if __name__ == "__main__":
    main()

"""Fetch + decode + parse of 240 sources from a local HTTP server, cold and warm.

Usage: python benchmarks/sources_world.py [--sources N] [--rounds N]

Serves the shared corpus files (reused in turn until there are N sources)
from one HTTP server on 127.0.0.1 that answers with ETag and Last-Modified
and gives 304 to a matching conditional request. Each run is
`configstream run --no-test` in a child process on its own cache folder:

- cold: an empty cache, so every source is downloaded and parsed;
- warm: the same cache again, so every source answers 304 and its parse
  comes from the cache.

Reported per run: the seconds of the fetch + parse stages (from the run's
stats), the child's wall time, and its peak resident memory. Nothing outside
127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from configstream.demo import file_handler, serve_http

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"
# The run's child prints this line last: its peak memory after fetch + parse.
PEAK = "peak-rss-kb"


def corpus_bodies() -> list[bytes]:
    return [
        path.read_bytes()
        for path in sorted(CORPUS.rglob("*"))
        if path.is_file() and path.name not in {"README.md", "SOURCES.txt"}
    ]


def run_child(folder: Path, sources: Path) -> dict[str, float]:
    """One `configstream run --no-test` in a child; its figures."""
    code = (
        "import resource, sys\n"
        "from configstream.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "finally:\n"
        f"    print('{PEAK}', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "run",
            "--no-test",
            "--sources",
            str(sources),
            "--output",
            str(folder / "output"),
            "--cache",
            str(folder / "cache"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, CONFIGSTREAM_ALLOW_NETWORKS="127.0.0.0/8,::1/128"),
        timeout=600,
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0, 3):
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_kb = int(done.stdout.strip().splitlines()[-1].split()[1])
    stats = json.loads((folder / "output" / "stats.json").read_text())
    return {
        "fetch+parse s": stats["seconds"]["fetch"] + stats["seconds"]["parse"],
        "run s": stats["seconds"]["total"],
        "wall s": wall,
        "fetch+parse MB": stats["peak_memory_mb"]["fetch_parse"],
        "peak MB": peak_kb / 1024,
        "304": stats["parse"]["not_modified"],
        "parsed": stats["parse"]["parsed_sources"],
        "found": stats["parse"]["found"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=240)
    args = parser.parse_args()
    bodies = corpus_bodies()
    files = {
        f"/s{index}.txt": (200, bodies[index % len(bodies)])
        for index in range(args.sources)
    }
    served = sum(len(body) for _, body in files.values())
    with tempfile.TemporaryDirectory(prefix="configstream-sources-") as temp:
        folder = Path(temp)
        with serve_http(file_handler(files)) as port:
            sources = folder / "sources.yml"
            sources.write_text(
                yaml.safe_dump(
                    {
                        "sources": [
                            {
                                "name": f"s{index}",
                                "url": f"http://127.0.0.1:{port}{path}",
                            }
                            for index, path in enumerate(files)
                        ]
                    }
                )
            )
            print(
                f"{args.sources} sources, {served / 1e6:.1f} MB served from "
                f"{len(bodies)} corpus files"
            )
            cold = run_child(folder, sources)
            warm = run_child(folder, sources)
    print(f"{'':<8}" + "".join(f"{key:>15}" for key in cold))
    for label, figures in (("cold", cold), ("warm", warm)):
        print(
            f"{label:<8}"
            + "".join(
                f"{value:>15.2f}" if isinstance(value, float) else f"{value:>15,}"
                for value in figures.values()
            )
        )
    share = warm["fetch+parse s"] / cold["fetch+parse s"]
    print(f"warm fetch+parse is {share:.1%} of cold")


if __name__ == "__main__":
    main()

"""Write a run's stats as a Markdown table to the job summary.

Usage: python .github/scripts/run_summary.py OUTPUT_DIR
(environment: GITHUB_STEP_SUMMARY, and SINGBOX_PATH / GEOIP_SOURCE from the
setup action, empty when the bundled core or embedded database was used).
"""

import json
import os
import pathlib
import sys

output = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "output")

lines = ["## ConfigStream run", ""]
if not os.environ.get("SINGBOX_PATH"):
    lines += ["**The official sing-box could not be installed; the bundled "
              "core tested this run, so REALITY configs are untestable.**", ""]
lines += [f"GeoIP: {os.environ.get('GEOIP_SOURCE') or 'the embedded database'}", ""]
try:
    stats = json.loads((output / "stats.json").read_text(encoding="utf-8"))
    health = json.loads((output / "health.json").read_text(encoding="utf-8"))
except (OSError, ValueError) as exc:
    lines.append(f"No readable output: {exc}")
else:
    if health.get("degraded"):
        lines += [f"**Degraded: {health.get('reason')}** (previous lists kept)", ""]
    fetch, parse, test = stats["fetch"], stats["parse"], stats["test"]
    rows = [
        ("sources ok / failed / resting",
         f"{fetch['ok']} / {fetch['failed']} / {fetch.get('resting', 0)}"),
        ("sources unchanged (304 / same body)",
         f"{parse.get('not_modified', 0)} / {parse.get('same_body', 0)}"),
        ("links found / parsed / rejected",
         f"{parse['found']} / {parse['parsed']} / {parse['rejected']}"),
        ("unique configs", stats["dedupe"]["unique"]),
        ("alive / dead / untestable / skipped",
         f"{test['alive']} / {test['dead']} / {test['untestable']} / {test['skipped']}"),
        ("results reused from the cache", test.get("reused", 0)),
        ("seconds", stats["seconds"].get("total")),
    ]
    lines += ["| | |", "| --- | ---: |"]
    lines += [f"| {label} | {value} |" for label, value in rows]
with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as handle:
    handle.write("\n".join(lines) + "\n")

"""The dashboard's charts and QR codes, drawn as SVG files at build time.

Charts come from pygal and QR codes from segno; the page shows both through
`<img>`, so an SVG can never run a script in the page, whatever text (a
source name, say) it carries. Each chart is drawn twice, for the light and
the dark colour scheme.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pygal
import segno
from pygal.style import Style

# Latency buckets of the distribution chart, in milliseconds.
LATENCY_EDGES = (100, 200, 300, 500, 800, 1200, 2000)
TOP_BARS = 15
# The SVG is drawn 560 wide and shown about 360 wide, so fonts are large.
_FONT_SIZES = {
    "title_font_size": 22,
    "label_font_size": 15,
    "major_label_font_size": 15,
    "value_font_size": 15,
    "tooltip_font_size": 14,
}
_PALETTE = ("#0ea5e9", "#22c55e", "#f59e0b", "#a855f7", "#ef4444", "#14b8a6")


def _style(text: str, strong: str, grid: str) -> Style:
    return Style(
        background="transparent",
        plot_background="transparent",
        foreground=text,
        foreground_strong=strong,
        foreground_subtle=grid,
        colors=_PALETTE,
        font_family="system-ui, sans-serif",
        **_FONT_SIZES,
    )


STYLES = {
    "light": _style("#1e293b", "#0f172a", "#cbd5e1"),
    "dark": _style("#e2e8f0", "#f8fafc", "#334155"),
}


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _label(text: str) -> str:
    """Chart text without control characters, which XML cannot hold."""
    return _CONTROL.sub("", text)


def _config(chart_class: type, style: Style, title: str, **options: Any) -> Any:
    return chart_class(
        style=style,
        title=title,
        width=560,
        height=300,
        show_legend=False,
        js=[],  # no scripts: the SVG is shown through <img> anyway
        disable_xml_declaration=True,
        truncate_label=24,
        **options,
    )


def _count_ticks(largest: int) -> list[int]:
    """About five whole-number ticks from 0 to at least `largest`."""
    step = max(1, -(-largest // 5))
    return list(range(0, max(largest, 1) + step, step))


def _bars(style: Style, title: str, counts: Counter[str], horizontal: bool) -> bytes:
    top = counts.most_common(TOP_BARS)
    chart = _config(
        pygal.HorizontalBar if horizontal else pygal.Bar,
        style,
        title,
        y_labels=_count_ticks(max((count for _, count in top), default=0)),
        print_values=True,
        x_label_rotation=0 if horizontal else 30,
    )
    if horizontal:
        top.reverse()  # the largest bar on top
    chart.x_labels = [_label(label) for label, _ in top]
    chart.add("", [count for _, count in top])
    return str(chart.render(is_unicode=True)).encode("utf-8")


def _latency_counts(records: Sequence[dict[str, Any]]) -> Counter[str]:
    labels = [f"<{edge}" for edge in LATENCY_EDGES] + [f"≥{LATENCY_EDGES[-1]}"]
    counts: Counter[str] = Counter(dict.fromkeys(labels, 0))
    for record in records:
        latency = record.get("latency_ms")
        if latency is None:
            continue
        bucket = next(
            (f"<{edge}" for edge in LATENCY_EDGES if latency < edge), labels[-1]
        )
        counts[bucket] += 1
    return counts


def _latency(style: Style, records: Sequence[dict[str, Any]]) -> bytes:
    counts = _latency_counts(records)
    chart = _config(
        pygal.Bar,
        style,
        "Latency, ms (alive proxies)",
        y_labels=_count_ticks(max(counts.values(), default=0)),
        x_label_rotation=30,
    )
    chart.x_labels = list(counts)
    chart.add("", list(counts.values()))
    return str(chart.render(is_unicode=True)).encode("utf-8")


def _trend(style: Style, history: Sequence[dict[str, Any]]) -> bytes:
    chart = _config(
        pygal.Line,
        style,
        "Alive proxies per run",
        x_label_rotation=30,
        dots_size=3,
        y_labels=_count_ticks(max((run["alive"] for run in history), default=0)),
    )
    chart.x_labels = [
        datetime.fromtimestamp(run["finished_at"], UTC).strftime("%m-%d %H:%M")
        for run in history
    ]
    chart.x_labels_major_every = max(1, len(history) // 8)
    chart.show_minor_x_labels = False
    chart.add("alive", [run["alive"] for run in history])
    return str(chart.render(is_unicode=True)).encode("utf-8")


def chart_files(
    records: Sequence[dict[str, Any]],
    stats: dict[str, Any],
    history: Sequence[dict[str, Any]],
) -> dict[str, bytes]:
    """Every chart as `charts/NAME-SCHEME.svg`."""
    alive = [r for r in records if r.get("status") == "alive"] or list(records)
    sources = Counter(
        {
            str(row["name"]): int(row.get("alive") or 0)
            for row in stats.get("sources") or []
            if row.get("alive")
        }
    )
    files: dict[str, bytes] = {}
    for scheme, style in STYLES.items():
        drawn = {
            "protocols": _bars(
                style,
                "Protocols",
                Counter(str(r["protocol"]) for r in alive),
                horizontal=False,
            ),
            "countries": _bars(
                style,
                f"Countries (top {TOP_BARS})",
                Counter(str(r.get("country") or "unknown") for r in alive),
                horizontal=True,
            ),
            "latency": _latency(style, alive),
            "sources": _bars(
                style, f"Alive proxies by source (top {TOP_BARS})", sources, True
            ),
        }
        if len(history) >= 2:
            drawn["runs"] = _trend(style, history)
        files.update(
            {f"charts/{name}-{scheme}.svg": svg for name, svg in drawn.items()}
        )
    return files


def qr_svg(text: str) -> bytes:
    """A QR code of `text` as a small SVG (dark modules on a white quiet zone,
    which phone cameras need in either colour scheme)."""
    buffer = io.BytesIO()
    segno.make(text, error="m").save(
        buffer,
        kind="svg",
        scale=4,
        border=2,
        dark="#0f172a",
        light="#ffffff",
        xmldecl=False,
    )
    return buffer.getvalue()

"""`configstream convert`: one subscription format into another, offline.

The same readers and writers as the pipeline, without testing: a
subconverter for people who need one conversion. Names are kept (cleaned of
control characters and made unique), not rebuilt as the pipeline does.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from configstream.errors import SourceError
from configstream.models import Entry, Proxy, Rejection, identity
from configstream.parse import parse_body
from configstream.render import build_client_files, json_lines
from configstream.render.clash import dump_yaml

TARGETS = ("links", "base64", "clash", "singbox", "json")
# The url-test groups of converted files need some URL; this one is what
# most clients default to.
GROUP_TEST_URL = "https://cp.cloudflare.com/generate_204"
MAX_NAME_LENGTH = 120


@dataclass(slots=True)
class Conversion:
    """The converted text and what did not make it, per input."""

    text: str
    converted: int = 0
    duplicates: int = 0
    rejections: list[tuple[str, Rejection]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


def clean_name(name: str, proxy: Proxy) -> str:
    """A display name without control characters; a default when empty."""
    text = "".join(ch for ch in name if unicodedata.category(ch) != "Cc").strip()
    return text[:MAX_NAME_LENGTH] or f"{proxy.protocol} {proxy.endpoint}"


def _unique(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, number = name, 2
        while candidate in seen:
            candidate, number = f"{name} {number}", number + 1
        seen.add(candidate)
        result.append(candidate)
    return result


def _record(proxy: Proxy, name: str, link: str) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": proxy.protocol,
        "server": proxy.server,
        "port": proxy.port,
        "link": link,
        "id": identity(proxy),
    }


def convert(
    inputs: Sequence[tuple[str, bytes]], target: str, fmt: str = "auto"
) -> Conversion:
    """Convert bodies (label, bytes) into one document of `target` format.

    Duplicates across and within inputs are kept once, first name winning.
    """
    conversion = Conversion(text="")
    unique: dict[Proxy, Entry] = {}
    for label, body in inputs:
        try:
            report = parse_body(body, fmt)
        except SourceError as exc:
            conversion.unreadable.append((label, str(exc)))
            continue
        conversion.rejections.extend((label, r) for r in report.rejections)
        for proxy in report.proxies:
            if proxy in unique:
                conversion.duplicates += 1
            else:
                unique[proxy] = Entry(proxy=proxy, sources=[label])
    entries = list(unique.values())
    names = _unique([clean_name(e.proxy.name, e.proxy) for e in entries])
    files = build_client_files(entries, names, GROUP_TEST_URL)
    if target == "links":
        conversion.text = files.plain
    elif target == "base64":
        conversion.text = files.base64
    elif target == "clash":
        conversion.text = dump_yaml(files.clash)
    elif target == "singbox":
        conversion.text = json_lines(files.singbox)
    else:
        records = [
            _record(e.proxy, name, link)
            for e, name, link in zip(entries, names, files.links, strict=True)
        ]
        conversion.text = json_lines(records)
    wanted = {
        "links": "links",
        "base64": "links",
        "clash": "clash",
        "singbox": "singbox",
    }
    prefix = wanted.get(target, "none") + ":"
    conversion.left_out = {
        k: v for k, v in files.left_out.items() if k.startswith(prefix)
    }
    conversion.dropped = {
        k: v for k, v in files.dropped.items() if k.startswith(prefix)
    }
    # What the document holds: a proxy the target cannot express is not in it.
    conversion.converted = len(entries) - sum(conversion.left_out.values())
    return conversion


def report_problems(conversion: Conversion, stream: Any = sys.stderr) -> None:
    """One line per rejected line or entry, per unreadable input, per left-out kind."""
    for label, reason in conversion.unreadable:
        print(f"{label}: unreadable: {reason}", file=stream)
    for label, rejection in conversion.rejections:
        detail = f": {rejection.detail}" if rejection.detail else ""
        print(f"{label}: {rejection.where}: {rejection.reason}{detail}", file=stream)
    for reason, count in sorted(conversion.left_out.items()):
        print(f"left out {count}: {reason}", file=stream)
    for what, count in sorted(conversion.dropped.items()):
        print(f"written without {what}: {count} proxies", file=stream)

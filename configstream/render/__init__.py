"""Output stage: subscription files, client configs, JSON data and the page.

Every file is written to a staging folder first and moved into place only when
the whole set is complete, so a failed run never leaves a half-written set.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from configstream.errors import OutputError
from configstream.models import Entry, Status, identity
from configstream.outbound import Unrepresentable, to_outbound
from configstream.render.clash import clash_config, dump_yaml, to_clash
from configstream.render.links import to_link

log = logging.getLogger(__name__)

__all__ = ["PublishedFile", "display_name", "flag", "write_outputs"]


@dataclass(frozen=True, slots=True)
class PublishedFile:
    """A file of the output set, for the manifest."""

    name: str
    size: int


def flag(country: str | None) -> str:
    """The emoji flag of an ISO 3166 alpha-2 code; a globe when unknown."""
    if not country or len(country) != 2 or not country.isalpha():
        return "\U0001f310"
    return "".join(chr(0x1F1E6 + ord(ch) - ord("A")) for ch in country.upper())


def display_name(entry: Entry) -> str:
    """`🇩🇪 DE vless 120ms a1b2`: flag, country, protocol, latency, stable suffix.

    The name is made from the proxy's own data each run, never from the name
    it arrived with, so names cannot compound across runs.
    """
    country = entry.country or "XX"
    latency = entry.result.latency_ms
    speed = f" {round(latency)}ms" if latency is not None else ""
    suffix = identity(entry.proxy)[:4]
    return f"{flag(entry.country)} {country} {entry.proxy.protocol}{speed} {suffix}"


def _unique_names(entries: Sequence[Entry]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for entry in entries:
        name = display_name(entry)
        count = seen.get(name, 0)
        seen[name] = count + 1
        names.append(name if count == 0 else f"{name}-{count + 1}")
    return names


def _singbox_config(outbounds: list[dict[str, Any]], test_url: str) -> dict[str, Any]:
    tags = [ob["tag"] for ob in outbounds]
    groups: list[dict[str, Any]] = []
    if tags:
        groups = [
            {"type": "selector", "tag": "proxy", "outbounds": ["auto", *tags], "default": "auto"},
            {"type": "urltest", "tag": "auto", "outbounds": tags, "url": test_url,
             "interval": "10m", "tolerance": 50},
        ]
    return {
        "log": {"level": "warn"},
        "inbounds": [
            {"type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": 2080}
        ],
        "outbounds": [*groups, *outbounds, {"type": "direct", "tag": "direct"}],
        "route": {"final": "proxy" if tags else "direct"},
    }


def _proxy_record(entry: Entry, name: str, link: str) -> dict[str, Any]:
    result = entry.result
    return {
        "name": name,
        "link": link,
        "protocol": entry.proxy.protocol,
        "server": entry.proxy.server,
        "port": entry.proxy.port,
        "status": str(result.status),
        "latency_ms": result.latency_ms,
        "country": entry.country,
        "exit_ip": result.exit_ip,
        "tls": entry.proxy.tls is not None,
        "reality": bool(entry.proxy.tls and entry.proxy.tls.is_reality),
        "transport": entry.proxy.transport.type if entry.proxy.transport else "tcp",
        "sources": sorted(entry.sources),
        "id": identity(entry.proxy),
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("configstream.render", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _build_files(
    entries: Sequence[Entry], stats: dict[str, Any], test_url: str, title: str
) -> dict[str, str]:
    names = _unique_names(entries)
    links = [to_link(entry.proxy, name) for entry, name in zip(entries, names, strict=True)]

    clash_entries: list[dict[str, Any]] = []
    outbounds: list[dict[str, Any]] = []
    by_country: dict[str, list[str]] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    for entry, name in zip(entries, names, strict=True):
        try:
            clash_entries.append(to_clash(entry.proxy, name))
            by_country[entry.country or "XX"].append(name)
        except Unrepresentable as exc:
            skipped[f"clash: {exc.reason}"] += 1
        try:
            outbounds.append(to_outbound(entry.proxy, name))
        except Unrepresentable as exc:
            skipped[f"singbox: {exc.reason}"] += 1
    stats["output"] = {
        "proxies": len(entries),
        "clash": len(clash_entries),
        "singbox": len(outbounds),
        "left_out": dict(skipped),
    }

    text = "\n".join(link for link in links if link) + ("\n" if links else "")
    records = [
        _proxy_record(entry, name, link)
        for entry, name, link in zip(entries, names, links, strict=True)
    ]
    try:
        page = _environment().get_template("index.html.j2").render(
            title=title, stats=stats, proxies=records
        )
    except jinja2.TemplateError as exc:
        raise OutputError(f"cannot render index.html: {exc}") from exc
    return {
        "sub.txt": text,
        "sub_base64.txt": base64.b64encode(text.encode("utf-8")).decode("ascii") + "\n",
        "clash.yaml": dump_yaml(clash_config(clash_entries, dict(by_country), test_url)),
        "singbox.json": json.dumps(_singbox_config(outbounds, test_url), indent=2, ensure_ascii=False),
        "proxies.json": json.dumps(records, indent=2, ensure_ascii=False),
        "stats.json": json.dumps(stats, indent=2, ensure_ascii=False),
        "index.html": page,
    }


def write_outputs(
    output: Path,
    entries: Sequence[Entry],
    stats: dict[str, Any],
    *,
    test_url: str,
    title: str = "ConfigStream",
) -> list[PublishedFile]:
    """Write the whole output set into `output`, replacing the previous set.

    Entries are published in the order given. The new files are staged in a
    sibling folder and renamed into place one by one only after all of them
    were written, so an error while rendering leaves the old set untouched.

    Raises:
        OutputError: the folder cannot be written.
    """
    stats.setdefault("generated_at", datetime.now(UTC).isoformat(timespec="seconds"))
    files = _build_files(entries, stats, test_url, title)
    try:
        output.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output))
        try:
            published = []
            for name, content in files.items():
                (staging / name).write_text(content, encoding="utf-8")
                published.append(PublishedFile(name, len(content.encode("utf-8"))))
            manifest = {
                "generated_at": stats["generated_at"],
                "files": [{"name": f.name, "size": f.size} for f in published],
            }
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            for name in [*files, "manifest.json"]:
                os.replace(staging / name, output / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise OutputError(f"cannot write output to {output}: {exc.strerror}") from exc
    log.info("wrote %d files to %s", len(published) + 1, output)
    return published


def alive_first(entries: Sequence[Entry]) -> list[Entry]:
    """Order entries for publishing: alive by latency, then the rest."""
    def key(entry: Entry) -> tuple[int, float]:
        alive = entry.result.status is Status.ALIVE
        return (0 if alive else 1, entry.result.latency_ms or 0.0)

    return sorted(entries, key=key)

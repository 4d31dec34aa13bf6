"""Output stage: subscription files, client configs, JSON data and the page.

Every file is written to a staging folder first and moved into place only when
the whole set is complete, so a failed run never leaves a half-written set.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from configstream.errors import OutputError
from configstream.models import Entry, Status, identity
from configstream.outbound import Unrepresentable, to_outbound
from configstream.render.clash import clash_config, dump_yaml, to_clash
from configstream.render.fidelity import as_expressed
from configstream.render.links import to_link
from configstream.render.subscriptions import subscription_files

log = logging.getLogger(__name__)

__all__ = [
    "ClientFiles",
    "PublishedFile",
    "build_client_files",
    "display_name",
    "flag",
    "write_atomically",
    "write_health",
    "write_outputs",
]


@dataclass(frozen=True, slots=True)
class PublishedFile:
    """A file of the output set, for the manifest."""

    name: str
    size: int
    sha256: str


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
            {
                "type": "selector",
                "tag": "proxy",
                "outbounds": ["auto", *tags],
                "default": "auto",
            },
            {
                "type": "urltest",
                "tag": "auto",
                "outbounds": tags,
                "url": test_url,
                "interval": "10m",
                "tolerance": 50,
            },
        ]
    config: dict[str, Any] = {
        "log": {"level": "warn"},
        "inbounds": [
            {
                "type": "mixed",
                "tag": "mixed-in",
                "listen": "127.0.0.1",
                "listen_port": 2080,
            }
        ],
        "outbounds": [
            *groups,
            *(ob for ob in outbounds if ob["type"] != "wireguard"),
            {"type": "direct", "tag": "direct"},
        ],
        "route": {"final": "proxy" if tags else "direct"},
    }
    # WireGuard lives among the endpoints; groups still select it by tag.
    endpoints = [ob for ob in outbounds if ob["type"] == "wireguard"]
    if endpoints:
        config["endpoints"] = endpoints
    return config


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


def _asset(name: str) -> str:
    """A static file shipped beside the templates, published as is."""
    return (resources.files("configstream.render") / "templates" / name).read_text(
        "utf-8"
    )


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("configstream.render", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass(slots=True)
class ClientFiles:
    """Subscription and client-config documents for one list of proxies."""

    links: list[str]
    clash: dict[str, Any]
    singbox: dict[str, Any]
    left_out: dict[str, int]
    dropped: dict[str, int]

    @property
    def plain(self) -> str:
        kept = [link for link in self.links if link]
        return "\n".join(kept) + ("\n" if kept else "")

    @property
    def base64(self) -> str:
        return base64.b64encode(self.plain.encode("utf-8")).decode("ascii") + "\n"


def build_client_files(
    entries: Sequence[Entry], names: Sequence[str], test_url: str
) -> ClientFiles:
    """Links, a mihomo config and a sing-box config for `entries`.

    A proxy a target cannot express is left out of that target only, and
    counted in `left_out` under `target: reason`; a parameter a target has
    no field for is counted in `dropped` (see `render.fidelity`).
    """
    clash_entries: list[dict[str, Any]] = []
    outbounds: list[dict[str, Any]] = []
    by_country: dict[str, list[str]] = defaultdict(list)
    left_out: dict[str, int] = defaultdict(int)
    dropped: dict[str, int] = defaultdict(int)
    links = []
    for entry, name in zip(entries, names, strict=True):
        link = to_link(entry.proxy, name)
        links.append(link)
        if not link:
            left_out[f"links: {entry.proxy.protocol} has no share-link form"] += 1
        try:
            clash_entries.append(to_clash(entry.proxy, name))
            by_country[entry.country or "XX"].append(name)
            for field in as_expressed(entry.proxy, "clash")[1]:
                dropped[f"clash: {field}"] += 1
        except Unrepresentable as exc:
            left_out[f"clash: {exc.reason}"] += 1
        try:
            outbounds.append(to_outbound(entry.proxy, name))
            for field in as_expressed(entry.proxy, "singbox")[1]:
                dropped[f"singbox: {field}"] += 1
        except Unrepresentable as exc:
            left_out[f"singbox: {exc.reason}"] += 1
    return ClientFiles(
        links=links,
        clash=clash_config(clash_entries, dict(by_country), test_url),
        singbox=_singbox_config(outbounds, test_url),
        left_out=dict(left_out),
        dropped=dict(dropped),
    )


# Subscriptions the page offers first, with a copy button and a QR code.
MAIN_FILES = (
    ("sub_base64.txt", "All, base64 (v2rayN, v2rayNG, Hiddify, NekoBox)"),
    ("sub.txt", "All, plain links"),
    ("clash.yaml", "Clash / mihomo"),
    ("singbox.json", "sing-box"),
    ("secure.txt", "Secure only (TLS, REALITY, AEAD)"),
    ("fastest.txt", "The fastest 200"),
)


def _build_files(
    entries: Sequence[Entry],
    stats: dict[str, Any],
    test_url: str,
    title: str,
    base_url: str | None = None,
) -> dict[str, str | bytes]:
    names = _unique_names(entries)
    client = build_client_files(entries, names, test_url)
    stats["output"] = {
        "proxies": len(entries),
        "clash": len(client.clash["proxies"]),
        "singbox": sum(
            1
            for ob in [
                *client.singbox["outbounds"],
                *client.singbox.get("endpoints", []),
            ]
            if ob["type"] not in {"selector", "urltest", "direct"}
        ),
        "left_out": client.left_out,
        "dropped_fields": client.dropped,
    }
    records = [
        _proxy_record(entry, name, link)
        for entry, name, link in zip(entries, names, client.links, strict=True)
    ]
    lists = subscription_files(entries, client.links, title)
    # The page offers each plain list; its base64 twin sits beside it.
    offered = sorted(
        name
        for name in lists
        if name.endswith(".txt")
        and not name.endswith("_base64.txt")
        and not name.startswith(("chunks/", "sub."))
    )
    history = [
        *stats.get("history", []),
        {
            "finished_at": datetime.fromisoformat(stats["generated_at"]).timestamp(),
            "alive": stats["test"]["alive"],
        },
    ]
    # pygal and segno cost 50 ms to import; only writing the page needs them.
    from configstream.render.charts import chart_files, qr_svg

    charts = chart_files(records, stats, history)
    main = [
        {"file": name, "label": label}
        for name, label in MAIN_FILES
        if name in lists or name in {"clash.yaml", "singbox.json"}
    ]
    codes: dict[str, bytes] = {}
    if base_url:
        for item in main:
            item["qr"] = f"qr/{item['file']}.svg"
            codes[item["qr"]] = qr_svg(urllib.parse.urljoin(base_url, item["file"]))
    try:
        page = (
            _environment()
            .get_template("index.html.j2")
            .render(
                title=title,
                stats=stats,
                proxies=records,
                lists=offered,
                main=main,
                charts=sorted(
                    {name.split("/")[1].rsplit("-", 1)[0] for name in charts}
                ),
                sources=sorted(
                    stats.get("sources") or [],
                    key=lambda row: (-(row.get("alive") or 0), str(row["name"])),
                ),
                protocols=sorted({r["protocol"] for r in records}),
                countries=sorted({r["country"] or "XX" for r in records}),
            )
        )
    except jinja2.TemplateError as exc:
        raise OutputError(f"cannot render index.html: {exc}") from exc
    health = {
        "generated_at": stats["generated_at"],
        "degraded": False,
        "reason": "",
        "alive": stats["test"]["alive"],
        "published": len(entries),
        "unique": stats["dedupe"]["unique"],
        "sources_ok": stats["fetch"]["ok"],
        "sources_failed": stats["fetch"]["failed"],
    }
    return {
        **lists,
        **charts,
        **codes,
        "health.json": json.dumps(health, indent=2),
        "app.js": _asset("app.js"),
        "clash.yaml": dump_yaml(client.clash),
        "singbox.json": json_lines(client.singbox),
        "proxies.json": json_lines(records),
        "stats.json": json.dumps(stats, indent=2, ensure_ascii=False),
        "index.html": page,
    }


def json_lines(data: Any) -> str:
    """JSON with one top-level item per line: readable, diffable and fast.

    `json.dumps(indent=...)` runs Python's encoder, forty times slower than
    the C one; here each item is encoded compactly by the C encoder and the
    lines are laid out around it.
    """

    def compact(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    if isinstance(data, list):
        return "[\n" + ",\n".join(f"  {compact(item)}" for item in data) + "\n]\n"
    if not isinstance(data, dict):
        return compact(data) + "\n"
    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"    {compact(item)}" for item in value)
            parts.append(f"  {compact(key)}: [\n{items}\n  ]")
        else:
            parts.append(f"  {compact(key)}: {compact(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_atomically(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename.

    Raises:
        OutputError: the file cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            dir=path.parent,
            prefix=f".{path.name}.",
            delete=False,
        ) as handle:
            handle.write(text)
        os.replace(handle.name, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc


def write_outputs(
    output: Path,
    entries: Sequence[Entry],
    stats: dict[str, Any],
    *,
    test_url: str,
    title: str = "ConfigStream",
    base_url: str | None = None,
) -> list[PublishedFile]:
    """Write the whole output set into `output`, replacing the previous set.

    Entries are published in the order given. The new set is written whole
    into a sibling folder, then swapped with `output` in one atomic step
    (see `_swap`), so a crash at any moment leaves either the old set or the
    new one, never a mix; the manifest, written last, names the set. Files
    in `output` that no manifest listed (a CNAME, a README the maintainer
    added) are carried into the new set.

    Raises:
        OutputError: the folder cannot be written.
    """
    stats.setdefault("generated_at", datetime.now(UTC).isoformat(timespec="seconds"))
    files = _build_files(entries, stats, test_url, title, base_url)
    output = output.absolute()
    try:
        with _staged(output) as staging:
            published = []
            for name, content in files.items():
                data = content.encode("utf-8") if isinstance(content, str) else content
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(data)
                published.append(
                    PublishedFile(name, len(data), hashlib.sha256(data).hexdigest())
                )
            _carry_unlisted(output, staging, set(files))
            manifest = {
                "generated_at": stats["generated_at"],
                "files": [
                    {"name": f.name, "size": f.size, "sha256": f.sha256}
                    for f in published
                ],
            }
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    except OSError as exc:
        raise OutputError(f"cannot write output to {output}: {exc.strerror}") from exc
    log.info("wrote %d files to %s", len(published) + 1, output)
    return published


def write_health(output: Path, stats: dict[str, Any], reason: str) -> None:
    """Mark the published set as degraded, leaving every other file as it was.

    health.json and the manifest entry naming it change together: the set is
    staged (hard links to the unchanged files) and swapped like a new one.

    Raises:
        OutputError: the file cannot be written.
    """
    health = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "degraded": True,
        "reason": reason,
        "alive": stats["test"]["alive"],
        "unique": stats["dedupe"]["unique"],
        "sources_ok": stats["fetch"]["ok"],
        "sources_failed": stats["fetch"]["failed"],
    }
    text = json.dumps(health, indent=2)
    manifest_path = output / "manifest.json"
    if not manifest_path.is_file():
        write_atomically(output / "health.json", text)
        return
    output = output.absolute()
    try:
        manifest = json.loads(manifest_path.read_text())
        with _staged(output) as staging:
            shutil.copytree(output, staging, copy_function=os.link, dirs_exist_ok=True)
            data = text.encode("utf-8")
            for path in (staging / "health.json", staging / "manifest.json"):
                path.unlink(missing_ok=True)  # a new file, not the linked one
            (staging / "health.json").write_bytes(data)
            for item in manifest.get("files", []):
                if item.get("name") == "health.json":
                    item.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot mark {output} degraded: {exc}") from exc


@contextlib.contextmanager
def _staged(output: Path) -> Iterator[Path]:
    """A fresh folder beside `output` to fill; swapped in if the block ends
    without an error, removed in every case (after the swap it holds the
    previous set)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(output)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{output.name}.staging-", dir=output.parent)
    )
    try:
        yield staging
        _swap(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _swap(staging: Path, output: Path) -> None:
    """Put the staged set in `output`'s place in one step.

    Linux's renameat2(RENAME_EXCHANGE) swaps the two folders atomically; the
    old set then sits at `staging`. Where that call is missing, the folders
    are swapped with two renames, and a crash between them leaves the old
    set at `.NAME.previous`, which the next write puts back.
    """
    if not output.exists():
        os.rename(staging, output)
        staging.mkdir()  # the caller removes it
        return
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is not None:
        done = renameat2(
            _AT_FDCWD,
            os.fsencode(staging),
            _AT_FDCWD,
            os.fsencode(output),
            _RENAME_EXCHANGE,
        )
        if done == 0:
            return
        error = ctypes.get_errno()
        if error not in {errno.ENOSYS, errno.EINVAL}:
            raise OSError(error, os.strerror(error), str(output))
    previous = output.with_name(f".{output.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.rename(output, previous)
    os.rename(staging, output)
    os.rename(previous, staging)


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _remove_leftovers(output: Path) -> None:
    """Clear what an interrupted write left beside `output`."""
    previous = output.with_name(f".{output.name}.previous")
    if previous.is_dir() and not output.exists():
        os.rename(previous, output)  # killed between the two fallback renames
    for leftover in output.parent.glob(f".{output.name}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(previous, ignore_errors=True)


def _carry_unlisted(output: Path, staging: Path, new_names: set[str]) -> None:
    """Copy files of `output` that no manifest names into the staged set."""
    if not output.is_dir():
        return
    listed = _manifest_names(output) | {"manifest.json"}
    for path in output.rglob("*"):
        name = path.relative_to(output).as_posix()
        if path.is_file() and name not in listed and name not in new_names:
            if any(part.startswith(".staging-") for part in path.parts):
                continue
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staging / name)


def _manifest_names(output: Path) -> set[str]:
    try:
        manifest = json.loads((output / "manifest.json").read_text())
        names = {str(item["name"]) for item in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    # Only plain relative names inside the folder are ever removed.
    return {n for n in names if n and not n.startswith(("/", ".")) and ".." not in n}


def alive_first(entries: Sequence[Entry]) -> list[Entry]:
    """Order entries for publishing: alive by latency, then the rest."""

    def key(entry: Entry) -> tuple[int, float]:
        alive = entry.result.status is Status.ALIVE
        return (0 if alive else 1, entry.result.latency_ms or 0.0)

    return sorted(entries, key=key)

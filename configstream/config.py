"""Settings: the sources file and the options of a run, as typed objects.

This is the only module that reads sources.yml or the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from configstream.errors import SettingsError
from configstream.parse import FORMATS
from configstream.resolve import split_nameserver
from configstream.telegram import is_channel_url

ALLOW_ENV = "CONFIGSTREAM_ALLOW_NETWORKS"
# Tests in flight. Batches of 500 through up to three live cores keep them
# busy; 1,000 tests 3,000 loopback proxies in about 12 s on two cores, and
# the tester lowers it to fit the open-file limit and the memory available.
DEFAULT_CONCURRENCY = 1000
DEFAULT_TEST_URL = "https://cp.cloudflare.com/generate_204"
DEFAULT_TRACE_URL = "https://www.cloudflare.com/cdn-cgi/trace"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Source:
    """One subscription source: an http(s) URL or a local file path."""

    name: str
    url: str
    format: str = "auto"
    enabled: bool = True

    @property
    def is_remote(self) -> bool:
        return self.url.startswith(("http://", "https://"))

    @property
    def body_format(self) -> str:
        """The shape to read the body as (a channel's messages are a page)."""
        return "auto" if self.format == "telegram" else self.format

    @property
    def is_telegram(self) -> bool:
        """A Telegram channel's preview page (`t.me/s/NAME`, or any URL with
        `format: telegram`, which tests use on 127.0.0.1)."""
        return self.is_remote and (
            self.format == "telegram" or is_channel_url(self.url)
        )


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Everything one run needs, already validated."""

    sources: tuple[Source, ...]
    output: Path
    cache: Path
    test_url: str = DEFAULT_TEST_URL
    trace_url: str | None = DEFAULT_TRACE_URL
    timeout: float = 8.0
    concurrency: int = DEFAULT_CONCURRENCY
    geoip: Path | None = None
    allow_networks: tuple[Network, ...] = ()
    no_test: bool = False
    singbox: Path | None = None
    fetch_timeout: float = 20.0
    # A run with fewer alive proxies than this share of the last good run
    # keeps the previous output instead of publishing.
    min_alive_share: float = 0.2
    # Cached results younger than these are reused instead of testing again;
    # dead ones expire sooner, since free servers come back often.
    alive_ttl: float = 3 * 3600
    dead_ttl: float = 3600
    fresh: bool = False
    # Fetch flagged sources too (see configstream.health).
    all_sources: bool = False
    title: str = "ConfigStream"
    # (I, N): test only the I-th of N slices and write a partial result.
    shard: tuple[int, int] | None = None
    # Where output/ is published (the Pages URL); QR codes point there.
    base_url: str | None = None
    # DNS servers for proxy server names ("ADDRESS" or "ADDRESS:PORT");
    # empty: the system's, from /etc/resolv.conf.
    nameservers: tuple[str, ...] = ()


def _entry(raw: Any, index: int, path: Path) -> Source:
    """Entry `index` of the sources file at `path`; errors name both."""
    base = path.parent
    where = f"{path}: sources[{index}]"
    if not isinstance(raw, dict):
        raise SettingsError("must be a mapping with name and url", where)
    unknown = set(raw) - {"name", "url", "format", "enabled", "tags", "notes"}
    if unknown:
        raise SettingsError(f"unknown field(s) {', '.join(sorted(unknown))}", where)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SettingsError(
            "'name' must be 1-100 letters, digits, '.', '_' or '-'", where
        )
    where = f"{where} ({name})"
    url = raw.get("url")
    if not isinstance(url, str) or not url.strip():
        raise SettingsError("'url' must be a non-empty string", where)
    url = url.strip()
    if "://" in url and not url.startswith(("http://", "https://")):
        raise SettingsError(
            f"'url' scheme must be http or https, got {url.split('://')[0]!r}", where
        )
    if "://" in url:
        _check_url(url, where)
    else:
        url = str((base / url).resolve()) if not Path(url).is_absolute() else url
    fmt = raw.get("format", "auto") or "auto"
    if fmt not in (*FORMATS, "telegram"):
        raise SettingsError(
            f"'format' must be one of {', '.join((*FORMATS, 'telegram'))}, got {fmt!r}",
            where,
        )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SettingsError("'enabled' must be true or false", where)
    return Source(name=name, url=url, format=fmt, enabled=enabled)


def _check_url(url: str, where: str) -> None:
    """Refuse a URL no HTTP client could request, naming the entry."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port that is not a number or too big
    except ValueError as exc:
        raise SettingsError(f"'url' is not a valid URL: {exc}", where) from None
    if not parts.hostname:
        raise SettingsError("'url' has no host", where)
    if port == 0:
        raise SettingsError("'url' has port 0", where)


def load_sources(path: str | Path) -> tuple[Source, ...]:
    """Read and validate a sources file; relative paths are taken from its folder.

    Raises:
        SettingsError: the file is missing, not YAML, or an entry is invalid;
            the message names the entry and the field.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(
            f"cannot read sources file: {exc.strerror}", str(path)
        ) from exc
    except yaml.YAMLError as exc:
        # PyYAML's message spans several lines; the problem and its place
        # are what a user needs.
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "not valid YAML"
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SettingsError(f"not valid YAML: {place}{problem}", str(path)) from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
        raise SettingsError("must have a top-level 'sources:' list", str(path))
    sources = [_entry(raw, i, path) for i, raw in enumerate(data["sources"])]
    seen: set[str] = set()
    for index, source in enumerate(sources):
        if source.name in seen:
            raise SettingsError(
                f"duplicate name {source.name!r}", f"{path}: sources[{index}]"
            )
        seen.add(source.name)
    return tuple(sources)


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """Parse CIDR strings (comma-separated allowed) into networks.

    Raises:
        SettingsError: a value is not a network.
    """
    networks: list[Network] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise SettingsError(
                    f"{item!r} is not a network in CIDR form", "--allow-network"
                ) from None
    return tuple(networks)


def allowed_networks(cli_values: Sequence[str]) -> tuple[Network, ...]:
    """Networks from --allow-network plus the CONFIGSTREAM_ALLOW_NETWORKS variable."""
    return parse_networks([*cli_values, os.environ.get(ALLOW_ENV, "")])


def parse_nameservers(values: Sequence[str]) -> tuple[str, ...]:
    """DNS servers from --dns: an IP address, optionally with :PORT
    (IPv6 with a port in brackets, "[::1]:53").

    Raises:
        SettingsError: a value is not an address, or the port is out of range.
    """
    servers: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                host, port = split_nameserver(item)
                ipaddress.ip_address(host)
                if not 0 < port < 65536:
                    raise ValueError
            except ValueError:
                raise SettingsError(
                    f"{item!r} is not a DNS server address (IP or IP:PORT)", "--dns"
                ) from None
            servers.append(item)
    return tuple(servers)

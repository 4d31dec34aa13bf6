"""Typed records passed between the pipeline stages.

A `Proxy` is one server configuration, whatever shape it arrived in (share
link, Clash entry, sing-box outbound). Its equality and hash ignore the display
name, so a `Proxy` is its own de-duplication key: two configs are the same when
protocol, address, port, credentials, transport and TLS settings agree.

`Proxy`, `Tls` and `Transport` are values: hashed, shared between entries and
remembered by the parser, so no code assigns to their fields (make a changed
copy with `dataclasses.replace`). They are not declared frozen because a
frozen dataclass sets each field through `object.__setattr__`, which made
building one nine times slower, a quarter of the time of parsing a link.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import gc
import hashlib
import json
import operator
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(slots=True, unsafe_hash=True)
class Transport:
    """A V2Ray-style transport under the proxy protocol.

    `type` is the name used in share links (`ws`, `grpc`, `http`,
    `httpupgrade`, `xhttp`, `kcp`, `quic`, ...). `options` keeps link-only
    parameters (gRPC `mode`, `authority`, ...) so a link round-trip loses
    nothing even where sing-box has no field for them.
    """

    type: str
    path: str = ""
    host: str = ""
    service_name: str = ""
    max_early_data: int = 0
    early_data_header: str = ""
    options: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class Tls:
    """TLS or REALITY settings of a client connection."""

    server_name: str = ""
    insecure: bool = False
    alpn: tuple[str, ...] = ()
    fingerprint: str = ""
    reality_public_key: str = ""
    reality_short_id: str = ""
    reality_spider_x: str = ""

    @property
    def is_reality(self) -> bool:
        return bool(self.reality_public_key)


@dataclass(slots=True, unsafe_hash=True)
class Proxy:
    """One proxy server configuration.

    Fields that a protocol does not use stay at their empty default. `name` is
    excluded from equality and hashing (see the module docstring).
    """

    protocol: str
    server: str
    port: int
    name: str = field(default="", compare=False)
    uuid: str = ""
    password: str = ""
    username: str = ""
    method: str = ""
    alter_id: int = 0
    flow: str = ""
    plugin: str = ""
    plugin_opts: str = ""
    ports: tuple[str, ...] = ()
    obfs: str = ""
    obfs_password: str = ""
    congestion_control: str = ""
    udp_relay_mode: str = ""
    up_mbps: int = 0
    down_mbps: int = 0
    transport: Transport | None = None
    tls: Tls | None = None
    options: tuple[tuple[str, str], ...] = ()

    @property
    def endpoint(self) -> str:
        """`host:port` as used in logs; never carries a credential."""
        host = f"[{self.server}]" if ":" in self.server else self.server
        return f"{host}:{self.port}"


_PROXY_FIELDS = tuple(f.name for f in dataclasses.fields(Proxy))
_ALL_FIELDS = operator.attrgetter(*_PROXY_FIELDS)
_NAME_INDEX = _PROXY_FIELDS.index("name")
_IDENTITY_FIELDS = tuple(f.name for f in dataclasses.fields(Proxy) if f.compare)


def renamed(proxy: Proxy, name: str) -> Proxy:
    """The same proxy under another name (a quarter of `dataclasses.replace`'s
    cost, which matters when most of a corpus is renamed copies)."""
    if proxy.name == name:
        return proxy
    values = list(_ALL_FIELDS(proxy))
    values[_NAME_INDEX] = name
    return Proxy(*values)


class Status(enum.StrEnum):
    """Outcome of testing one proxy."""

    ALIVE = "alive"
    DEAD = "dead"
    UNTESTABLE = "untestable"
    SKIPPED = "skipped"
    UNTESTED = "untested"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What testing one proxy found; `reason` explains any status but alive."""

    status: Status
    latency_ms: float | None = None
    exit_ip: str | None = None
    reason: str = ""


@dataclass(slots=True)
class Entry:
    """A unique proxy with the sources that published it and its results."""

    proxy: Proxy
    sources: list[str] = field(default_factory=list)
    result: ProbeResult = ProbeResult(Status.UNTESTED)
    country: str | None = None
    # True when the result came from the cache instead of a test this run.
    reused: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """A line or entry that could not be parsed, with the counted reason."""

    reason: str
    detail: str
    where: str


@dataclass(slots=True)
class ParseReport:
    """The result of reading one subscription body.

    For line-based shapes, `lines` counts every line and `ignored_lines` the
    blank, comment and header lines (and page text in HTML); the rest hold
    the `found` candidates, more than one where links were glued together.
    """

    shape: str
    proxies: list[Proxy] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    found: int = 0
    lines: int = 0
    ignored_lines: int = 0


# A run asks for each proxy's key five times (cache lookup and store, name
# suffix, published id, shard); equal proxies have equal keys, so the
# answer is remembered by the proxy itself.
@functools.lru_cache(maxsize=1 << 18)
def identity(proxy: Proxy) -> str:
    """A stable text key of what makes a proxy unique (never its name).

    Used where a key must survive across runs (the cache, name suffixes);
    within one run the `Proxy` itself serves as the key.
    """
    values = [getattr(proxy, name) for name in _IDENTITY_FIELDS]
    # Tls and Transport become lists of their values in field order, which
    # is several times cheaper than dataclasses.asdict.
    values = [
        [getattr(value, name) for name in value.__slots__]
        if isinstance(value, (Tls, Transport))
        else value
        for value in values
    ]
    text = json.dumps(values, ensure_ascii=False)
    return hashlib.blake2s(text.encode("utf-8"), digest_size=12).hexdigest()


_pause_lock = threading.Lock()
# Blocks inside `collector_paused` (the parse worker and the event loop may
# both be in one), and whether the collector was on before the first.
_pause_depth = 0
_collector_was_on = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause CPython's cycle collector while records are built in bulk.

    Each collection pass is triggered by new containers and walks the ones
    that survive, so building tens of thousands of records keeps it busy
    for nothing: records, their tuples and the lists holding them form no
    cycles, and reference counting frees them. Measured: the corpus parse
    of benchmarks/parse_corpus.py went from 1.40 to 1.31 s; in a process
    already holding the corpus's parses (as a run does), parsing every file
    again took 1.58 s with it and 1.18 s without, and unpacking a kept merge
    of 28,663 proxies 0.29 s and 0.11 s. Nestable and shared between
    threads; the collector runs again (and catches up) when the last block
    ends.
    """
    global _pause_depth, _collector_was_on
    with _pause_lock:
        if _pause_depth == 0:
            _collector_was_on = gc.isenabled()
            gc.disable()
        _pause_depth += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pause_depth -= 1
            if _pause_depth == 0 and _collector_was_on:
                gc.enable()

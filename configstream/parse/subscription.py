"""Subscription bodies: detect the shape from the content, then parse it.

Shapes: `plain` (share links one per line, with comments, glued links and
per-line base64), `base64` (a whole body of base64 that decodes to another
shape), `clash` (YAML or JSON with `proxies:`), `singbox` (JSON with
`outbounds`), `sip008` (Shadowsocks server lists) and `html` (a page whose
text carries links). The file name never decides the shape.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import yaml
import yaml_rs

from configstream.errors import LinkError, SourceError
from configstream.models import ParseReport, Proxy, Rejection, collector_paused
from configstream.parse.entries import (
    is_singbox_proxy,
    parse_clash_entry,
    parse_singbox_outbound,
)
from configstream.parse.links import SPLIT_SCHEMES, b64decode_lenient, parse_link

FORMATS = ("auto", "plain", "base64", "clash", "singbox")

# Glued links are found by looking back from each '://' for the longest
# known scheme: at 'vless://' the whole scheme matches, so its tail 'ss://'
# is never a start, while a link glued to a name ('#node1vless://') is.
_SCHEMES_LONGEST_FIRST = sorted(SPLIT_SCHEMES, key=len, reverse=True)
_SPLIT_SCHEME_SET = frozenset(SPLIT_SCHEMES)
_ANY_LINK = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{1,20}://")
# Share of control or replacement characters above which a body is binary;
# a few stray NUL bytes in a long list are bad lines, not a binary file.
BINARY_SHARE = 0.1
_JUNK_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffd]")
_BASE64_LINE = re.compile(r"^[A-Za-z0-9+/_=-]{16,}$")
_HTML = re.compile(r"^\s*<(?:!doctype\s+html|html|head|body)\b", re.I)
_PROXIES_KEY = re.compile(r"^proxies\s*:", re.M)


# libyaml's parser when PyYAML was built with it: about ten times faster on
# the large Clash files publishers produce.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TextLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """A safe YAML loader that keeps every scalar except null as text.

    YAML 1.1 reads a REALITY short id such as `01234567` as an octal number
    and `1e10` as a float; Clash fields are converted by their readers
    instead, where the field's type is known.
    """


_TextLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag in {"tag:yaml.org,2002:null", "tag:yaml.org,2002:merge"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> list[Any]:
    """Load every YAML document in `text`, scalars kept as text."""
    return [doc for doc in yaml.load_all(text, Loader=_TextLoader) if doc is not None]


# Clash keys (mihomo's proxy fields) that hold a number or a flag: their
# typed YAML 1.2 values turn back into text without changing what a reader
# makes of them. A typed value under any other key may have lost its
# spelling (a short id `01234567` read as 1234567).
_TYPED_KEYS = frozenset(
    """port serverPort alterId aid alter-id up down max-early-data cwnd mtu
    recv-window recv-window-conn version udp-over-tcp-version heartbeat-interval
    request-timeout max-udp-relay-packet-size max-open-streams hop-interval
    persistent-keepalive keepalive-interval idle-session-check-interval
    idle-session-timeout min-idle-session tls udp tfo mptcp xudp
    skip-cert-verify allowInsecure disable-sni reduce-rtt fast-open
    disable-mtu-discovery v2ray-http-upgrade v2ray-http-upgrade-fast-open
    udp-over-tcp packet-addr global-padding authenticated-length enable
    """.split()
)


class _Inexact(Exception):
    """A typed value whose original spelling only PyYAML's text reader keeps."""


def _as_text(value: Any, key: str = "") -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "<<" in value:
            raise _Inexact  # YAML 1.1 merge keys are not YAML 1.2
        return {str(k): _as_text(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    if key in _TYPED_KEYS:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
    raise _Inexact


def _load_clash_fast(text: str) -> list[Any] | None:
    """A one-document Clash config read by yaml-rs, scalars as text.

    yaml-rs (Rust) reads a large Clash file five to seven times faster than
    libyaml with PyYAML's constructor, but types scalars the YAML 1.2 way: a
    short id `01234567` becomes 1234567. So its result is only used when
    every typed value in the proxies can be turned back into the exact text
    (numbers and booleans in number and flag fields); anything else (a float,
    a number where text belongs, merge keys, a duplicate key, an error)
    returns None and PyYAML reads the body instead. Only the `proxies`
    lists are kept.
    """
    try:
        data = yaml_rs.loads(text, parse_datetime=False)
    except Exception:  # yaml-rs raises its own error types and ValueError
        return None
    # Several documents arrive as a list of them.
    docs = data if isinstance(data, list) else [data]
    found = [
        doc["proxies"]
        for doc in docs
        if isinstance(doc, dict) and isinstance(doc.get("proxies"), list)
    ]
    if not found:
        return None
    try:
        return [
            {"proxies": [_as_text(entry) for entry in found_list]}
            for found_list in found
        ]
    except (_Inexact, RecursionError):
        return None


def _to_text(body: bytes | str) -> str:
    if isinstance(body, str):
        text = body
    else:
        text = body.decode("utf-8", errors="replace")
    text = text.lstrip("\ufeff")
    sample = text[:65536]
    junk = len(_JUNK_CHARACTER.findall(sample))
    if junk > BINARY_SHARE * len(sample):
        raise SourceError("body is binary data, not text")
    return text


def _links_in_line(line: str) -> list[str]:
    position = line.find("://")
    if position == -1:
        return []
    if (
        line[:position].lower() in _SPLIT_SCHEME_SET
        and "://" not in line[position + 3 :]
    ):
        return [line]  # the common case: the line is one link
    # Find each '://' and look back for a known scheme ending there; a regex
    # scanning for the scheme word backtracks quadratically over the long
    # base64 runs inside vmess links.
    starts = []
    longest = len(_SCHEMES_LONGEST_FIRST[0])
    while position != -1:
        word = line[max(0, position - longest) : position].lower()
        scheme = next((x for x in _SCHEMES_LONGEST_FIRST if word.endswith(x)), None)
        if scheme is not None:
            starts.append(position - len(scheme))
        position = line.find("://", position + 3)
    if not starts:
        return []
    ends = starts[1:] + [len(line)]
    return [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]


def _collect(
    report: ParseReport,
    items: Iterable[Any],
    parse: Callable[[Any], Proxy],
    where: str,
) -> None:
    # Lists repeat the very same line often (a third of the corpus); a text
    # item is parsed once and its result reused, a proxy being immutable.
    seen: dict[str, Proxy | LinkError] = {}
    for index, item in enumerate(items, start=1):
        report.found += 1
        known = seen.get(item) if isinstance(item, str) else None
        try:
            if known is None:
                try:
                    known = parse(item)
                except LinkError as exc:
                    known = exc
                if isinstance(item, str):
                    seen[item] = known
            if isinstance(known, LinkError):
                raise known
            report.proxies.append(known)
        except LinkError as exc:
            report.rejections.append(
                Rejection(exc.reason, exc.detail, f"{where} {index}")
            )
        except (RecursionError, MemoryError, ValueError, TypeError, KeyError) as exc:
            # A reader bug or a pathological item: this item is lost, not
            # the source. Counted apart, so it is noticed and fixed.
            report.rejections.append(
                Rejection("reader-error", type(exc).__name__, f"{where} {index}")
            )


def _parse_plain(
    text: str, shape: str = "plain", links_only: bool = False
) -> ParseReport:
    """Read a list of share links line by line.

    With `links_only`, lines without a link are page text, not rejections.
    """
    report = ParseReport(shape=shape)
    links: list[str] = []
    for line in text.splitlines():
        report.lines += 1
        line = line.strip()
        if not line or line.startswith(("#", "//", ";")):
            report.ignored_lines += 1
            continue
        found = _links_in_line(line)
        if not found and _BASE64_LINE.match(line):
            # Some lists carry lines that are each one base64-encoded link.
            try:
                decoded = b64decode_lenient(line).decode("utf-8").strip()
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            found = _links_in_line(decoded)
        if not found and links_only:
            report.ignored_lines += 1
            continue
        if not found:
            match = _ANY_LINK.match(line)
            links.append(line if match else "")
            continue
        links.extend(found)

    def parse(link: str) -> Proxy:
        if not link:
            raise LinkError("not-a-link", "line is neither a share link nor a comment")
        return parse_link(link)

    _collect(report, links, parse, "line")
    return report


def _parse_clash(docs: list[Any]) -> ParseReport:
    report = ParseReport(shape="clash")
    entries: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("proxies"), list):
            entries.extend(doc["proxies"])
    _collect(report, entries, parse_clash_entry, "proxy")
    return report


def _parse_singbox(data: dict[str, Any]) -> ParseReport:
    report = ParseReport(shape="singbox")
    items = [
        item
        for key in ("outbounds", "endpoints")
        for item in (data.get(key) or [])
        if is_singbox_proxy(item)
    ]
    _collect(report, items, parse_singbox_outbound, "outbound")
    return report


def _parse_sip008(data: dict[str, Any]) -> ParseReport:
    report = ParseReport(shape="sip008")

    def parse(server: Any) -> Proxy:
        if not isinstance(server, dict):
            raise LinkError("bad-entry", "server is not an object")
        outbound = {
            "type": "shadowsocks",
            "tag": server.get("remarks") or "",
            "server": server.get("server"),
            "server_port": server.get("server_port"),
            "method": server.get("method"),
            "password": server.get("password"),
            "plugin": server.get("plugin"),
            "plugin_opts": server.get("plugin_opts"),
        }
        return parse_singbox_outbound(outbound)

    _collect(report, data.get("servers") or [], parse, "server")
    return report


def _parse_json(data: Any) -> ParseReport | None:
    if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
        return _parse_plain("\n".join(data))
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("outbounds"), list) or isinstance(
        data.get("endpoints"), list
    ):
        return _parse_singbox(data)
    if isinstance(data.get("proxies"), list):
        return _parse_clash([data])
    if isinstance(data.get("servers"), list):
        return _parse_sip008(data)
    return None


def _try_yaml(text: str) -> ParseReport | None:
    try:
        docs = _load_clash_fast(text) or load_yaml(text)
    except yaml.YAMLError as exc:
        raise SourceError(
            f"body looks like Clash YAML but does not load: {exc}"
        ) from None
    if not any(
        isinstance(d, dict) and isinstance(d.get("proxies"), list) for d in docs
    ):
        return None
    return _parse_clash(docs)


def _parse_html(text: str) -> ParseReport:
    # Telegram preview pages and similar carry links as escaped page text.
    body = re.sub(r"<br\s*/?>", "\n", text, flags=re.I)
    body = html.unescape(re.sub(r"<[^>]+>", "\n", body))
    report = _parse_plain(body, shape="html", links_only=True)
    if not report.found:
        raise SourceError(
            "body is an HTML page (an error or login page?), not a node list: "
            "it holds no share links and is not base64, YAML or JSON"
        )
    return report


def parse_body(body: bytes | str, fmt: str = "auto", *, _depth: int = 0) -> ParseReport:
    """Parse a whole subscription body into proxies and counted rejections.

    Args:
        body: the raw body as downloaded.
        fmt: a shape from `FORMATS`; `auto` detects it from the content.

    Raises:
        SourceError: the body is empty, binary, an HTML page without links,
            or not readable in the requested or any known shape.
    """
    with collector_paused():
        return _parse_body(body, fmt, _depth)


def _parse_body(body: bytes | str, fmt: str, depth: int) -> ParseReport:
    text = _to_text(body)
    stripped = text.strip()
    if not stripped:
        raise SourceError("body is empty")
    if fmt == "plain":
        return _parse_plain(text)
    if fmt == "clash":
        report = _try_yaml(text)
        if report is None:
            raise SourceError("body has no Clash 'proxies:' list")
        return report
    if fmt == "singbox":
        try:
            report = _parse_json(json.loads(stripped))
        except RecursionError:
            raise SourceError("body is JSON nested too deeply to read") from None
        except json.JSONDecodeError as exc:
            raise SourceError(f"body is not JSON: {exc}") from None
        if report is None:
            raise SourceError("body has no sing-box 'outbounds' list")
        return report
    if fmt == "base64":
        return _parse_base64(stripped, depth)

    if _HTML.match(stripped):
        return _parse_html(stripped)
    if stripped[0] in "{[":
        try:
            data = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            data = None
        report = _parse_json(data) if data is not None else None
        if report is not None:
            return report
    if _PROXIES_KEY.search(text) or (stripped[0] == "{" and "proxies" in stripped):
        report = _try_yaml(text)
        if report is not None:
            return report
    # Base64 never contains '://', so any body holding it is read as a list.
    if "://" in stripped:
        return _parse_plain(text)
    if _is_base64_per_line(stripped):
        return _parse_plain(text, shape="base64-lines")
    if depth == 0:
        return _parse_base64(stripped, depth)
    raise SourceError(
        "body is not share links, base64, Clash YAML, sing-box JSON or SIP008 JSON"
    )


def _is_base64_per_line(text: str) -> bool:
    """Whether every line is one whole base64-encoded link on its own.

    A wrapped base64 body fails this: its later lines decode to the middle
    of a link, not to a scheme.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    for line in lines:
        try:
            decoded = b64decode_lenient(line).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        if not _ANY_LINK.match(decoded):
            return False
    return True


def _parse_base64(text: str, depth: int) -> ParseReport:
    try:
        decoded = b64decode_lenient(text)
    except ValueError:
        raise SourceError(
            "body is not share links, base64, Clash YAML, sing-box JSON or SIP008 JSON"
        ) from None
    try:
        report = parse_body(decoded, _depth=depth + 1)
    except SourceError as exc:
        raise SourceError(f"body is base64, but the decoded text: {exc}") from None
    report.shape = "base64"
    return report

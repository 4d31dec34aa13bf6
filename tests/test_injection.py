"""Hostile text in proxies and sources: every output reads back, nothing runs.

Each payload below goes into every free-text field a subscription controls
(name, password, user name, SNI, WebSocket path and Host, gRPC service, obfs
password, plugin path, SSR parameters) through the real readers, and into the
source names and errors of the run's stats. The output set is then read back
with strict parsers and opened in Chromium.
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
import yaml_rs
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    expect,
)

from configstream.errors import ConfigStreamError
from configstream.models import Entry, ProbeResult, Proxy, Status
from configstream.parse import FORMATS, parse_body, parse_clash_entry, parse_link
from configstream.parse.validate import split_plugin_options
from configstream.render import build_client_files, write_outputs
from configstream.render.links import to_link
from configstream.singbox import Core, check_config_file
from tests.browser import chromium, served

PWNED = Path("/tmp/pwned")
TOUCH = f"touch {PWNED}"
# One of each kind of trouble; every one is a complete attack on its own.
PAYLOADS = {
    "yaml": f"key: value\n- item &a *a !!python/object/apply:os.system ['{TOUCH}'] {{}} [] # note ' \"",
    "json": '"}, {"type": "direct", "tag": "x", "x": "',
    "script": "</script><script>window.__pwned=1</script>",
    "img": '"><img src=x onerror="window.__pwned=1">',
    "js-url": "javascript:window.__pwned=1//",
    "shell": f"$({TOUCH}) `{TOUCH}`; {TOUCH} | sh",
    "line-breaks": "a\u2028b\u2029c\u0085d\r\ne\rf\x1cg\x1dh\x1ei\x0bj\x0ck\nl",
    "bidi": "\u202egnp.exe\u202c \u2066isolate\u2069 \u200f",
    "controls": "nul\x00soh\x01bel\x07esc\x1b[31mdel\x7fc1\x9f",
    "emoji": "\U0001f3f4\u200d\u2620\ufe0f \U0001f44d\U0001f3fd \U0001f1ef\U0001f1f5",
}
# Just under the readers' 2,048-character limit per field (longer values are
# refused as too-long, see test_10kb_fields_are_refused_when_read).
LONG_PAYLOADS = {
    "long-ascii": "A" * 1_200,
    "long-mixed": ("<b>\"'&;:\u2028\U0001f600" * 150)[:1_200],
}
ALL_PAYLOADS = {**PAYLOADS, **LONG_PAYLOADS}
TITLE = (
    "ConfigStream </title><script>window.__pwned=1</script>"
    '<img src=x onerror="window.__pwned=1"> \u2028\x00 \U0001f3f4\u200d\u2620\ufe0f'
)
UUID = "8f3c2a8e-3b1e-4c1a-9d1e-0a6b5c4d3e2f"
LOOPBACK = "127.0.0.1"
FIRST_PORT = 20_000
# The subscription shapes the entries arrive in, each read by parse_body.
READERS = ("singbox", "clash", "links")


def _tls(text: str) -> dict[str, Any]:
    return {"enabled": True, "server_name": f"sni {text}"}


# Each slot is one way a proxy reaches the output with hostile text in it:
# the reader's shape and a maker of its entry (text, port) -> dict or link.
SLOTS: dict[str, tuple[str, Callable[[str, int], Any]]] = {
    "trojan-ws": (
        "singbox",
        lambda text, port: {
            "type": "trojan",
            "password": f"pw {text}",
            "tls": _tls(text),
            "transport": {
                "type": "ws",
                "path": f"/ws {text}",
                "headers": {"Host": f"host {text}"},
            },
        },
    ),
    "vmess-httpupgrade": (
        "singbox",
        lambda text, port: {
            "type": "vmess",
            "uuid": UUID,
            "tls": _tls(text),
            "transport": {
                "type": "httpupgrade",
                "path": f"/up {text}",
                "host": f"host {text}",
            },
        },
    ),
    "vless-grpc": (
        "singbox",
        lambda text, port: {
            "type": "vless",
            "uuid": UUID,
            "tls": _tls(text),
            "transport": {"type": "grpc", "service_name": f"svc {text}"},
        },
    ),
    "shadowsocks": (
        "singbox",
        lambda text, port: {
            "type": "shadowsocks",
            "method": "aes-128-gcm",
            "password": f"pw {text}",
        },
    ),
    "shadowsocks-plugin": (
        "singbox",
        lambda text, port: {
            "type": "shadowsocks",
            "method": "chacha20-ietf-poly1305",
            "password": f"pw {text}",
            "plugin": "v2ray-plugin",
            "plugin_opts": f"mode=websocket;path=/v2 {text}",
        },
    ),
    "hysteria2": (
        "singbox",
        lambda text, port: {
            "type": "hysteria2",
            "password": f"pw {text}",
            "obfs": {"type": "salamander", "password": f"obfs {text}"},
            "tls": _tls(text),
        },
    ),
    "hysteria": (
        "singbox",
        lambda text, port: {
            "type": "hysteria",
            "auth_str": f"pw {text}",
            "obfs": f"obfs {text}",
            "tls": _tls(text),
        },
    ),
    "tuic": (
        "singbox",
        lambda text, port: {
            "type": "tuic",
            "uuid": UUID,
            "password": f"pw {text}",
            "tls": _tls(text),
        },
    ),
    "anytls": (
        "singbox",
        lambda text, port: {
            "type": "anytls",
            "password": f"pw {text}",
            "tls": _tls(text),
        },
    ),
    "socks": (
        "singbox",
        lambda text, port: {
            "type": "socks",
            "username": f"user {text}",
            "password": f"pw {text}",
        },
    ),
    "http-tls": (
        "singbox",
        lambda text, port: {
            "type": "http",
            "username": f"user {text}",
            "password": f"pw {text}",
            "tls": _tls(text),
        },
    ),
    "ssh": (
        "clash",
        lambda text, port: {
            "type": "ssh",
            "username": f"user {text}",
            "password": f"pw {text}",
        },
    ),
    "ssr": (
        "clash",
        lambda text, port: {
            "type": "ssr",
            "cipher": "aes-256-cfb",
            "password": f"pw {text}",
            "obfs": "plain",
            "protocol": "origin",
            "obfs-param": f"obfs {text}",
            "protocol-param": f"proto {text}",
        },
    ),
    "vmess-h2": (
        "clash",
        lambda text, port: {
            "type": "vmess",
            "uuid": UUID,
            "network": "h2",
            "tls": True,
            "servername": f"sni {text}",
            "h2-opts": {"path": f"/h2 {text}", "host": [f"host {text}"]},
        },
    ),
    "trojan-link": (
        "links",
        lambda text, port: (
            f"trojan://{quote(f'pw {text}', safe='')}@{LOOPBACK}:{port}"
            f"?security=tls&sni={quote(f'sni {text}', safe='')}"
            f"&type=ws&path={quote(f'/ws {text}', safe='')}"
        ),
    ),
}
# A user name holding ':' is written as a link that reads back split at it.
COLON_USER_SLOTS = {"socks", "http-tls", "ssh"}


def _body(reader: str, items: list[Any]) -> str:
    """A subscription body of one shape holding `items`."""
    if reader == "singbox":
        return json.dumps({"outbounds": items}, ensure_ascii=False)
    if reader == "clash":
        return yaml.safe_dump({"proxies": items}, allow_unicode=True, width=1 << 20)
    return "\n".join(items) + "\n"


def _item(reader: str, made: Any, text: str, port: int) -> Any:
    if reader == "links":
        return f"{made}#{quote(text, safe='')}"
    server = {"server": LOOPBACK}
    if reader == "singbox":
        return {"tag": text, **server, "server_port": port, **made}
    return {"name": text, **server, "port": port, **made}


@dataclass(frozen=True)
class Hostile:
    """One published entry: which payload and slot made it."""

    payload: str
    slot: str
    entry: Entry


def _read(reader: str, items: list[Any]) -> list[Proxy]:
    report = parse_body(_body(reader, items))
    assert report.rejections == [], report.rejections
    assert len(report.proxies) == len(items)
    return report.proxies


def _source_name(payload: str) -> str:
    return f"source {payload} {ALL_PAYLOADS[payload]}"


def _hostile_entries() -> list[Hostile]:
    """Every payload in every slot, read by the real readers, with results."""
    made: list[tuple[str, str, str, Any]] = []
    port = FIRST_PORT
    for payload, text in ALL_PAYLOADS.items():
        for slot, (reader, maker) in SLOTS.items():
            if reader == "links" and payload in LONG_PAYLOADS:
                continue  # refused as too long on the way in, rightly
            port += 1
            item = _item(reader, maker(text, port), text, port)
            made.append((payload, slot, reader, item))
    proxies: dict[int, Proxy] = {}
    for reader in READERS:
        chosen = [i for i, (_, _, r, _) in enumerate(made) if r == reader]
        read = _read(reader, [made[i][3] for i in chosen])
        proxies.update(zip(chosen, read, strict=True))
    hostile = []
    for index, (payload, slot, _, _) in enumerate(made):
        proxy = proxies[index]
        text = ALL_PAYLOADS[payload]
        kind = index % 3
        result = [
            ProbeResult(Status.ALIVE, 80.0 + index, exit_ip=text),
            ProbeResult(Status.DEAD, reason=text),
            ProbeResult(Status.UNTESTED),
        ][kind]
        entry = Entry(
            proxy=proxy,
            sources=[_source_name(payload), "plain source"],
            result=result,
            country=["JP", "DE", None][kind],
        )
        hostile.append(Hostile(payload, slot, entry))
    return hostile


def _stats(hostile: list[Hostile]) -> dict[str, Any]:
    statuses = [h.entry.result.status for h in hostile]
    alive = statuses.count(Status.ALIVE)
    rows = [
        {
            "name": _source_name(payload),
            "status": "failed",
            "error": text,
            "http_status": 200,
            "alive": len(ALL_PAYLOADS) - number,
        }
        for number, (payload, text) in enumerate(ALL_PAYLOADS.items())
    ]
    rows.append({"name": "plain source", "status": "ok", "error": None, "alive": 1})
    return {
        "test": {
            "tested": alive + statuses.count(Status.DEAD),
            "alive": alive,
            "dead": statuses.count(Status.DEAD),
            "untestable": 0,
            "untested": statuses.count(Status.UNTESTED),
        },
        "dedupe": {"unique": len(hostile)},
        "fetch": {"ok": 1, "failed": len(ALL_PAYLOADS)},
        "sources": rows,
        "history": [
            {"finished_at": 1_760_000_000.0, "alive": 3},
            {"finished_at": 1_760_014_400.0, "alive": 5},
        ],
    }


def _file_state() -> tuple[int, int] | None:
    try:
        status = PWNED.stat()
    except FileNotFoundError:
        return None
    return status.st_mtime_ns, status.st_ino


@dataclass
class Published:
    """The written output set and what it was made from."""

    folder: Path
    hostile: list[Hostile]
    stats: dict[str, Any]
    records: list[dict[str, Any]]
    pwned_before: tuple[int, int] | None

    @property
    def entries(self) -> list[Entry]:
        return [h.entry for h in self.hostile]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    """The whole output set written from the hostile entries."""
    pwned_before = _file_state()
    hostile = _hostile_entries()
    stats = _stats(hostile)
    folder = tmp_path_factory.mktemp("hostile") / "out"
    write_outputs(
        folder,
        [h.entry for h in hostile],
        stats,
        test_url=f"http://{LOOPBACK}/generate_204",
        title=TITLE,
        base_url=f"http://{LOOPBACK}:8000/",
    )
    records = _strict_json((folder / "proxies.json").read_bytes())
    return Published(folder, hostile, stats, records, pwned_before)


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
    return dict(pairs)


def _strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 has it: UTF-8, no NaN or Infinity, no repeated keys."""
    return json.loads(
        data.decode("utf-8"),
        parse_constant=_no_constant,
        object_pairs_hook=_no_duplicates,
    )


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _name(folder: Path, path: Path) -> str:
    return path.relative_to(folder).as_posix()


def test_hostile_text_reaches_the_outputs(published: Published) -> None:
    """The readers kept the payloads, so the other tests check something."""
    singbox = (published.folder / "singbox.json").read_text(encoding="utf-8")
    assert "</script><script>window.__pwned=1</script>" in singbox
    assert "\u2028" in singbox and "\U0001f3f4" in singbox
    proxies = [h.entry.proxy for h in published.hostile]
    assert any("\x00" in p.password for p in proxies)
    assert any("\u2028" in (p.transport.path if p.transport else "") for p in proxies)
    assert any(p.tls and "\u202e" in p.tls.server_name for p in proxies)
    assert len(published.records) == len(published.hostile)


def test_every_file_has_a_strict_reader(published: Published) -> None:
    """No output is of a kind the tests below do not read back."""
    kinds = {path.suffix for path in _files(published.folder)}
    assert kinds <= {".json", ".yaml", ".txt", ".svg", ".html", ".js"}
    for path in _files(published.folder):
        path.read_bytes().decode("utf-8")  # strict: any bad byte raises


def test_json_files_are_strict_json(published: Published) -> None:
    """Every .json file loads strictly and holds the values it was given."""
    folder = published.folder
    for path in folder.rglob("*.json"):
        _strict_json(path.read_bytes())
    stats = _strict_json((folder / "stats.json").read_bytes())
    assert stats["sources"] == published.stats["sources"]
    for record, hostile in zip(published.records, published.hostile, strict=True):
        entry = hostile.entry
        assert record["sources"] == sorted(entry.sources)
        assert record["exit_ip"] == entry.result.exit_ip
        assert record["server"] == entry.proxy.server


def _client_files(published: Published) -> Any:
    names = [record["name"] for record in published.records]
    return build_client_files(
        published.entries, names, f"http://{LOOPBACK}/generate_204"
    )


def test_clash_yaml_reads_the_same_in_both_loaders(published: Published) -> None:
    """PyYAML and yaml-rs both load clash.yaml into the config that was meant."""
    text = (published.folder / "clash.yaml").read_text(encoding="utf-8")
    by_pyyaml = yaml.safe_load(text)
    by_rust = yaml_rs.loads(text, parse_datetime=False)
    assert by_pyyaml["proxies"] == by_rust["proxies"]
    assert by_pyyaml == by_rust
    assert by_pyyaml == _client_files(published).clash
    # A payload that escaped its string would show up as YAML structure.
    for event in yaml.parse(text):
        assert not isinstance(event, yaml.AliasEvent), event
        assert getattr(event, "anchor", None) is None, event
        assert getattr(event, "tag", None) is None, event


def test_singbox_json_is_the_meant_config(published: Published) -> None:
    config = _strict_json((published.folder / "singbox.json").read_bytes())
    assert config == _client_files(published).singbox


def test_singbox_json_passes_core_check(published: Published, core: Core) -> None:
    """`sing-box check` accepts singbox.json with every hostile field in it."""
    is_valid, message = check_config_file(core, published.folder / "singbox.json")
    assert is_valid, message


def _plain_lists(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.txt") if not p.stem.endswith("_base64")]


def _link_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line and not line.startswith("#")]


def test_lists_hold_one_published_link_per_line(published: Published) -> None:
    """Every line of every list is a whole link, whichever characters split lines."""
    links = {record["link"] for record in published.records if record["link"]}
    folder = published.folder
    for path in _plain_lists(folder):
        text = path.read_text(encoding="utf-8")
        # str.splitlines also breaks at U+2028, NEL and the other separators
        # some clients honour; a link must hold none of them.
        assert text.splitlines() == text.removesuffix("\n").split("\n"), path
        lines = _link_lines(text)
        assert lines and set(lines) <= links, _name(folder, path)
    everything = _link_lines((folder / "sub.txt").read_text(encoding="utf-8"))
    assert everything == [record["link"] for record in published.records]


def test_base64_lists_decode_to_their_plain_twins(published: Published) -> None:
    folder = published.folder
    for path in _plain_lists(folder):
        twin = path.with_name(f"{path.stem}_base64.txt")
        decoded = base64.b64decode(twin.read_bytes().strip(), validate=True)
        plain = path.read_text(encoding="utf-8")
        body = "".join(line for line in plain.splitlines(True) if line[0] != "#")
        assert decoded.decode("utf-8") == body, _name(folder, path)


def _round_trip_failures(published: Published, slot: str, payloads: Any) -> list[str]:
    """Links of `slot` whose parse differs from the proxy they were written from."""
    failures = []
    for hostile, record in zip(published.hostile, published.records, strict=True):
        if hostile.slot != slot or hostile.payload not in payloads:
            continue
        try:
            proxy = parse_link(record["link"])
        except Exception as exc:  # noqa: BLE001 - a refusal is the failure shown
            failures.append(f"{hostile.payload}: {exc}")
            continue
        if proxy != hostile.entry.proxy:
            failures.append(f"{hostile.payload}: {proxy} != {hostile.entry.proxy}")
    return failures


def _slot_params() -> list[Any]:
    # COLON_USER_SLOTS put a ':' inside user names: they read back whole only
    # because the user is split from the password before percent-decoding.
    return [pytest.param(slot, id=slot) for slot in SLOTS]


@pytest.mark.parametrize("slot", _slot_params())
def test_share_links_round_trip(published: Published, slot: str) -> None:
    """parse_link reads each published link back into an equal proxy."""
    assert _round_trip_failures(published, slot, PAYLOADS) == []


def test_share_links_with_long_fields_round_trip(published: Published) -> None:
    failures = [
        failure
        for slot in SLOTS
        for failure in _round_trip_failures(published, slot, LONG_PAYLOADS)
    ]
    assert failures == []


@pytest.mark.parametrize(
    "body",
    [
        '{"outbounds": [{"type": "trojan", "tag": "t", "server": "127.0.0.1", '
        '"server_port": 443, "password": "' + "p" * 10_240 + '"}]}',
        "proxies:\n  - {name: n, type: trojan, server: 127.0.0.1, port: 443, "
        "password: pw, sni: " + "a" * 10_240 + "}\n",
    ],
    ids=["singbox-password", "clash-sni"],
)
def test_10kb_fields_are_refused_when_read(body: str) -> None:
    """A field no link could carry is refused with a reason, not published."""
    report = parse_body(body)
    assert report.proxies == []
    assert [r.reason for r in report.rejections] == ["too-long"]


def _svgs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.svg"))


def _check_svg(folder: Path, path: Path) -> None:
    root = ElementTree.fromstring(path.read_bytes())
    for element in root.iter():
        for attribute, value in element.attrib.items():
            assert not attribute.lower().startswith("on"), _name(folder, path)
            assert not value.strip().lower().startswith("javascript:")


def test_svg_files_are_well_formed_xml(published: Published) -> None:
    """Charts and QR codes are XML that no payload turned into markup."""
    folder = published.folder
    checked = _svgs(folder)
    assert checked
    for path in checked:
        _check_svg(folder, path)


def test_sources_chart_is_well_formed_xml(published: Published) -> None:
    folder = published.folder
    charts = [p for p in _svgs(folder) if p.name.startswith("sources-")]
    assert len(charts) == 2
    for path in charts:
        _check_svg(folder, path)


@pytest.fixture(scope="module")
def site(published: Published) -> Iterator[str]:
    """The output folder served on 127.0.0.1; yields its base URL."""
    with served(published.folder) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


# Records the page's Content-Security-Policy refusals; Playwright adds this
# script itself, so the policy does not apply to it.
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__violations.push(event.violatedDirective + " " + event.blockedURI);
});
"""
# Every text node and attribute of the page, as the parser built them.
PAGE_STRINGS = """() => {
  const texts = [];
  const walker = document.createTreeWalker(document.documentElement, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) texts.push(walker.currentNode.data);
  const attributes = [];
  for (const element of document.querySelectorAll("*"))
    for (const attribute of element.attributes)
      attributes.push([element.tagName, attribute.name, attribute.value]);
  return {texts: texts, attributes: attributes};
}"""
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "data"}


@dataclass
class Visit:
    """An open dashboard and everything it did that it should not have."""

    page: Page
    context: BrowserContext
    site: str
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def pwned(self, page: Page | None = None) -> str:
        return (page or self.page).evaluate("typeof window.__pwned")


@pytest.fixture(scope="module")
def visit(browser: Browser, site: str) -> Iterator[Visit]:
    """index.html in a fresh context that may reach the test site only."""
    context = browser.new_context()
    context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=site.rstrip("/")
    )
    page = context.new_page()
    seen = Visit(page, context, site)

    def guard(route: Any) -> None:
        seen.requests.append(route.request.url)
        if route.request.url.startswith(site):
            route.continue_()
        else:
            route.abort()

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    context.route("**/*", guard)
    context.add_init_script(WATCH_VIOLATIONS)
    # On the context, so pages opened later by a test are watched too.
    context.on("dialog", on_dialog)
    context.on(
        "console",
        lambda m: seen.errors.append(m.text) if m.type == "error" else None,
    )
    context.on("weberror", lambda error: seen.errors.append(f"uncaught: {error.error}"))
    page.goto(site + "index.html", wait_until="load")
    try:
        yield seen
    finally:
        context.close()


def _as_parsed(text: str) -> str:
    """Text as an HTML parser keeps it: line ends unified, NUL dropped or
    replaced (which one depends on where it stands, so both go)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\x00", "").replace("\ufffd", "")


def _collapsed(text: str) -> str:
    return re.sub(r"[\t\n\f\r ]+", " ", text).strip("\t\n\f\r ")


def test_page_runs_no_injected_script(visit: Visit) -> None:
    """Loading, filtering and copying run nothing and open no dialog."""
    page = visit.page
    page.locator("#filter").fill(PAYLOADS["img"])
    page.locator("#filter").fill("")
    page.locator("#proxies th[data-key=name] button").click()
    page.locator("#protocol").select_option("trojan")
    page.locator("#protocol").select_option("")
    button = page.locator("#proxies button.copy[data-link]").first
    link = button.get_attribute("data-link")
    button.click()
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == link
    page.locator("details summary").first.click()  # shows a QR code
    page.wait_for_load_state("networkidle")
    assert visit.pwned() == "undefined"
    assert visit.dialogs == []
    assert page.evaluate("window.__violations") == []
    assert visit.errors == []


def test_page_loads_only_its_own_files(visit: Visit) -> None:
    """No payload made the page ask for anything (`<img src=x>`, say)."""
    allowed = re.compile(r"(index\.html|app\.js|(charts|qr)/[\w.-]+\.svg)\Z")
    for url in visit.requests:
        assert url.startswith(visit.site), url
        assert allowed.match(url.removeprefix(visit.site)), url


def test_page_holds_no_injected_markup(visit: Visit) -> None:
    """The DOM has one script (app.js), no handler attributes, no script URLs."""
    strings = visit.page.evaluate(PAGE_STRINGS)
    scripts = [a for a in strings["attributes"] if a[0] == "SCRIPT"]
    assert scripts == [["SCRIPT", "src", "app.js"]]
    assert visit.page.locator("script").count() == 1
    for tag, name, value in strings["attributes"]:
        assert not name.lower().startswith("on"), (tag, name, value)
        if name.lower() in URL_ATTRIBUTES:
            assert not value.strip().lower().startswith("javascript:"), value
    for tag, name, value in strings["attributes"]:
        if tag == "IMG" and name == "src":
            assert re.match(r"(charts|qr)/[\w.-]+\.svg\Z", value), value


def test_hostile_text_is_shown_as_text(visit: Visit, published: Published) -> None:
    """The title and the sources' names and errors read as typed, not as markup."""
    page = visit.page
    title = _as_parsed(TITLE)
    assert page.locator("h1").text_content() == title
    assert _collapsed(title) in _as_parsed(page.title())
    cells = page.eval_on_selector_all(
        "#sources tbody tr",
        "rows => rows.map(r => [r.cells[0].textContent, "
        "r.cells[r.cells.length - 1].textContent])",
    )
    rows = published.stats["sources"]
    assert sorted(cells) == sorted(
        [_as_parsed(row["name"]), _as_parsed(row["error"] or "")] for row in rows
    )


def test_rows_show_generated_names_and_copy_exact_links(
    visit: Visit, published: Published
) -> None:
    """Names are the generated ones, never a source's, and buttons hold the links."""
    rows = visit.page.eval_on_selector_all(
        "#proxies tbody tr[data-search]",
        "rows => rows.map(r => [r.cells[0].textContent, "
        "(r.querySelector('button[data-link]') || {dataset: {}}).dataset.link || ''])",
    )
    assert sorted(rows) == sorted([r["name"], r["link"]] for r in published.records)
    hostile_names = {_as_parsed(text) for text in ALL_PAYLOADS.values()}
    assert not hostile_names & {_as_parsed(name) for name, _ in rows}


def test_svg_opened_directly_runs_no_injected_script(
    visit: Visit, published: Published
) -> None:
    """Each chart and QR code, opened on its own, runs no payload."""
    page = visit.context.new_page()
    try:
        for path in _svgs(published.folder):
            page.goto(visit.site + _name(published.folder, path), wait_until="load")
            assert visit.pwned(page) == "undefined", path.name
    finally:
        page.close()
    assert visit.dialogs == []


# JSON's \\u escapes can spell half a surrogate pair, which no UTF-8 file holds;
# json.dumps writes the escape, so these bodies are plain ASCII.
SURROGATE_BODIES = {
    "singbox-json": json.dumps(
        {
            "outbounds": [
                {
                    "type": "trojan",
                    "tag": "surrogate",
                    "server": LOOPBACK,
                    "server_port": 443,
                    "password": "pw\udcff",
                    "tls": {"enabled": True},
                }
            ]
        }
    ),
    "vmess-link": "vmess://"
    + base64.b64encode(
        json.dumps(
            {
                "v": "2",
                "ps": "surrogate",
                "add": LOOPBACK,
                "port": "443",
                "id": UUID,
                "net": "ws",
                "path": "/ws\udcff",
            }
        ).encode("ascii")
    ).decode("ascii"),
}


@pytest.mark.parametrize("body", SURROGATE_BODIES.values(), ids=SURROGATE_BODIES)
def test_lone_surrogate_is_refused_or_written(body: str, tmp_path: Path) -> None:
    """Half a surrogate pair costs at most its proxy, never the output set."""
    entries = [Entry(proxy=p, sources=["s"]) for p in parse_body(body).proxies]
    stats = {
        "test": {"tested": 0, "alive": 0, "dead": 0, "untestable": 0, "untested": 1},
        "dedupe": {"unique": len(entries)},
        "fetch": {"ok": 1, "failed": 0},
    }
    write_outputs(tmp_path / "out", entries, stats, test_url=f"http://{LOOPBACK}/")
    for path in _files(tmp_path / "out"):
        path.read_bytes().decode("utf-8")


def test_plugin_path_cannot_add_plugin_options() -> None:
    """A ';' in a plugin option value is escaped (SIP003), not a new option."""
    proxy = parse_clash_entry(
        {
            "type": "ss",
            "name": "plugin",
            "server": LOOPBACK,
            "port": 8388,
            "cipher": "aes-128-gcm",
            "password": "pw",
            "plugin": "v2ray-plugin",
            "plugin-opts": {"mode": "websocket", "path": "/x;tls;host=evil.example"},
        }
    )
    options = split_plugin_options(proxy.plugin_opts)
    assert ("path", "/x;tls;host=evil.example") in options
    assert [key for key, _ in options] == ["mode", "path"]
    again = parse_link(to_link(proxy))
    assert again == proxy


FUZZ_CRASHES = Path(__file__).parent / "data" / "fuzz_crashes"


def _body_reader(fmt: str) -> Callable[[bytes], Any]:
    return lambda data: parse_body(data, fmt)


# The byte layout of fuzz/atheris_parsers.py: the first byte picks the reader.
FUZZ_READERS: list[Callable[[bytes], Any]] = [
    lambda data: parse_link(data.decode("utf-8", errors="replace")),
    *(_body_reader(fmt) for fmt in FORMATS),
]


@pytest.mark.parametrize(
    "path",
    sorted(FUZZ_CRASHES.glob("*.bin")),
    ids=lambda path: path.stem,
)
def test_saved_fuzz_crash_is_refused_cleanly(path: Path) -> None:
    """An input that once crashed a reader is read or refused with our error."""
    data = path.read_bytes()
    # Two entry readers follow these in the fuzzer's list of eight.
    reader = data[0] % (len(FUZZ_READERS) + 2)
    assert reader < len(FUZZ_READERS), "an entry reader's input: replay it by hand"
    try:
        FUZZ_READERS[reader](data[1:])
    except ConfigStreamError:
        pass


def test_no_payload_ran_a_command(published: Published, visit: Visit) -> None:
    """After writing, checking and browsing, /tmp/pwned is as it was."""
    assert _file_state() == published.pwned_before

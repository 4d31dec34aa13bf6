"""The parser's shortcuts give exactly what the slow, exact paths give.

Two shortcuts make the corpus parse fast: a remembered result per link
without its name, and yaml-rs for Clash files. Each must agree with the path
it replaces, and must step aside where it cannot be exact.
"""

from __future__ import annotations

import gc
import types
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import configstream.parse.subscription
from configstream.errors import LinkError, SourceError
from configstream.models import collector_paused
from configstream.parse import load_yaml, parse_link
from configstream.parse.links import _parse_fresh, clear_memo, unquote_lenient
from configstream.parse.subscription import _load_clash_fast, parse_body
from tests.conftest import CORPUS, corpus_files

UUID = "0f8c2b4e-1d3a-4c5b-9e6f-7a8b9c0d1e2f"
CLASH_FILES = [path for path in corpus_files() if path.suffix in {".yaml", ".yml"}]


def _fresh(link: str) -> object:
    try:
        return _parse_fresh(link, link.partition("://")[0].lower())
    except LinkError as exc:
        return ("rejected", exc.reason)


def _remembered(link: str) -> object:
    try:
        return parse_link(link)
    except LinkError as exc:
        return ("rejected", exc.reason)


@pytest.mark.parametrize(
    "links",
    [
        [
            f"vless://{UUID}@a.example.com:443?security=tls&type=ws#first%20name",
            f"vless://{UUID}@a.example.com:443?security=tls&type=ws#%F0%9F%87%A9%F0%9F%87%AA%20second",
            f"vless://{UUID}@a.example.com:443?security=tls&type=ws",
            f"vless://{UUID}@a.example.com:443?security=tls&type=ws#50%off",
        ],
        [
            "trojan://secret@b.example.com:443#one",
            "trojan://secret@b.example.com:443#two#with#hashes",
        ],
        [
            # vmess carries its name inside the body; the fragment is a hint.
            "vmess://eyJhZGQiOiJjLmV4YW1wbGUuY29tIiwicG9ydCI6NDQzLCJpZCI6IjBmOGMyYjRl"
            "LTFkM2EtNGM1Yi05ZTZmLTdhOGI5YzBkMWUyZiIsInBzIjoiaW5zaWRlIn0=#outside",
            "vmess://eyJhZGQiOiJjLmV4YW1wbGUuY29tIiwicG9ydCI6NDQzLCJpZCI6IjBmOGMyYjRl"
            "LTFkM2EtNGM1Yi05ZTZmLTdhOGI5YzBkMWUyZiIsInBzIjoiaW5zaWRlIn0=#other",
        ],
        [
            # A vmess body labelled ss:// keeps the vmess naming rule.
            "ss://eyJhZGQiOiJjLmV4YW1wbGUuY29tIiwicG9ydCI6NDQzLCJpZCI6IjBmOGMyYjRl"
            "LTFkM2EtNGM1Yi05ZTZmLTdhOGI5YzBkMWUyZiIsInBzIjoiaW5zaWRlIn0=#x",
            "ss://eyJhZGQiOiJjLmV4YW1wbGUuY29tIiwicG9ydCI6NDQzLCJpZCI6IjBmOGMyYjRl"
            "LTFkM2EtNGM1Yi05ZTZmLTdhOGI5YzBkMWUyZiIsInBzIjoiaW5zaWRlIn0=#y",
        ],
        [
            "ss://YWVzLTI1Ni1nY206cGFzcw@d.example.com:8388#a",
            "ss://YWVzLTI1Ni1nY206cGFzcw@d.example.com:8388#b",
        ],
        [
            "trojan://@e.example.com:443#no-password",
            "trojan://@e.example.com:443#again",
            "vless://not-a-uuid-and-far-too-long-to-be-a-short-id@f.example.com:443#x",
            "vless://not-a-uuid-and-far-too-long-to-be-a-short-id@f.example.com:443#y",
        ],
    ],
    ids=["vless", "trojan", "vmess", "ss-labelled-vmess", "ss", "rejects"],
)
def test_remembered_result_equals_fresh_parse(links: list[str]) -> None:
    """Repeats of a link, renamed or not, parse exactly as a first sight does."""
    clear_memo()
    for link in links:
        fresh, remembered = _fresh(link), _remembered(link)
        assert remembered == fresh
        if not isinstance(fresh, tuple):
            assert remembered.name == fresh.name  # equality ignores names


def test_repeated_rejection_is_a_new_error_each_time() -> None:
    clear_memo()
    errors = []
    for _ in range(3):
        with pytest.raises(LinkError) as info:
            parse_link("trojan://@e.example.com:443#x")
        errors.append(info.value)
    assert len({id(error) for error in errors}) == 3
    assert {error.reason for error in errors} == {"missing-credential"}


@pytest.mark.parametrize("path", CLASH_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_fast_yaml_agrees_with_pyyaml_on_corpus(path) -> None:
    """yaml-rs's proxies, turned back to text, are PyYAML's proxies."""
    text = path.read_bytes().decode("utf-8", "replace")
    fast = _load_clash_fast(text)
    exact = [
        doc["proxies"]
        for doc in load_yaml(text)
        if isinstance(doc, dict) and isinstance(doc.get("proxies"), list)
    ]
    if fast is not None:
        assert [doc["proxies"] for doc in fast] == exact


def test_fast_yaml_is_used_for_most_of_the_corpus() -> None:
    """The shortcut is worth having: it reads most real Clash files."""
    used = sum(
        _load_clash_fast(path.read_bytes().decode("utf-8", "replace")) is not None
        for path in CLASH_FILES
    )
    assert used >= len(CLASH_FILES) // 2


@pytest.mark.parametrize(
    "value",
    [
        "short-id: 01234567",  # YAML 1.2 would read an octal-looking number
        "short-id: 12345678",
        "password: 1e5",
        "password: True",
        "uuid: 0x1F",
        "password: .inf",
    ],
)
def test_fast_yaml_steps_aside_where_text_would_change(value: str) -> None:
    """A typed value in a text field goes to PyYAML, which keeps the text."""
    key, _, raw = value.partition(": ")
    text = (
        "proxies:\n"
        "  - {name: a, type: vless, server: g.example.com, port: 443,\n"
        f"     uuid: {UUID}, tls: true, {key}: {raw}}}\n"
    )
    assert _load_clash_fast(text) is None
    assert load_yaml(text)[0]["proxies"][0][key] == raw


def test_fast_yaml_steps_aside_for_merge_keys_and_duplicates() -> None:
    merge = (
        "base: &base {type: ss, cipher: aes-128-gcm, password: p}\n"
        "proxies:\n  - {<<: *base, name: m, server: h.example.com, port: 1}\n"
    )
    duplicate = "proxies:\n  - {name: a, name: b, type: ss}\n"
    assert _load_clash_fast(merge) is None
    assert _load_clash_fast(duplicate) is None
    report = parse_body(merge)
    assert [(p.server, p.method, p.password) for p in report.proxies] == [
        ("h.example.com", "aes-128-gcm", "p")
    ]


def test_fast_yaml_reads_several_documents() -> None:
    text = (
        "proxies:\n  - {name: a, type: trojan, server: i.example.com, port: 443,"
        " password: one}\n"
        "---\n"
        "proxies:\n  - {name: b, type: trojan, server: j.example.com, port: 443,"
        " password: two}\n"
    )
    fast = _load_clash_fast(text)
    assert fast is not None
    assert [doc["proxies"][0]["password"] for doc in fast] == ["one", "two"]
    assert [p.server for p in parse_body(text).proxies] == [
        "i.example.com",
        "j.example.com",
    ]


# Text as names and queries hold it: escapes of any byte (valid UTF-8 or
# not, split sequences too), broken escapes, stray '%', ASCII and other
# characters.
_PIECES = st.one_of(
    st.binary(min_size=1, max_size=6).map(
        lambda data: "".join(f"%{byte:02X}" for byte in data)
    ),
    st.binary(min_size=1, max_size=3).map(
        lambda data: "".join(f"%{byte:02x}" for byte in data)
    ),
    st.sampled_from(["%", "%%", "%4", "%zz", "%-1", "50%off", "%F0%9F", "%E2%82"]),
    st.text(min_size=1, max_size=5),
)


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_lenient_unquote_equals_urllib(text: str) -> None:
    """The decoder of names and query values is urllib's, only faster."""
    assert unquote_lenient(text) == unquote(text, errors="replace")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%F0%9F%87%A9%F0%9F%87%AA%20DE", "\U0001f1e9\U0001f1ea DE"),
        ("50%off", "50%off"),
        ("%2Fws%3Fed%3D2048", "/ws?ed=2048"),
        ("bad%F0%9Fend", "bad\ufffdend"),
    ],
)
def test_lenient_unquote_examples(text: str, expected: str) -> None:
    assert unquote_lenient(text) == expected


def test_collector_is_paused_while_parsing_and_back_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsing pauses the cycle collector (nested pauses keep it paused) and
    leaves it as it found it, on errors too."""
    seen: list[bool] = []
    real_to_text = configstream.parse.subscription._to_text

    def spy(body: bytes | str) -> str:
        seen.append(gc.isenabled())
        return real_to_text(body)

    assert gc.isenabled()
    monkeypatch.setattr(configstream.parse.subscription, "_to_text", spy)
    with collector_paused():
        parse_body(f"vless://{UUID}@a.example.com:443#x")
        assert not gc.isenabled()
    with pytest.raises(SourceError):
        parse_body(b"")
    assert seen == [False, False]
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()


def test_remembered_rejection_keeps_no_frame_of_the_body_alive() -> None:
    """A rejection is remembered without the error it was raised from: that
    error's traceback would keep the frames reading the body (and the body's
    text and lines) alive for as long as the result is remembered."""
    clear_memo()
    # The legacy ss body is not base64: rejected from inside an except block.
    body = "\n".join(["ss://not-base64-at-all!#x", f"vless://{UUID}@a.example.com:443"])
    report = parse_body(body)
    assert [r.reason for r in report.rejections] == ["bad-encoding"]
    gc.collect()
    readers = {"_parse_plain", "_parse_body", "parse_body", "_collect"}
    alive = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, types.FrameType) and obj.f_code.co_name in readers
    ]
    assert alive == []

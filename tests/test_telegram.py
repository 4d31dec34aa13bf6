"""Telegram channel sources: preview pages, older pages, only new messages."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from configstream.demo import serve_http
from configstream.telegram import is_channel_url, messages, older_page
from tests.conftest import run_untested

PAGE_SIZE = 10


class Channel:
    """A channel's messages, served the way t.me/s/NAME pages them."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def message(self, post: int) -> str:
        # A link as Telegram shows it: HTML-escaped, among other text.
        link = (
            f"trojan://secret-{post}@198.51.100.{post}:443"
            f"?security=tls&amp;sni=s{post}.example.com#post%20{post}"
        )
        return (
            f'<div class="tgme_widget_message" data-post="chan/{post}">'
            f'<div class="tgme_widget_message_text">New config:<br/><code>{link}</code>'
            f"<br/>Join us!</div></div>"
        )

    def page(self, before: int | None) -> str:
        newest = self.count if before is None else before - 1
        posts = range(max(1, newest - PAGE_SIZE + 1), newest + 1)
        body = "".join(self.message(post) for post in posts)
        return f"<!DOCTYPE html><html><head><title>chan</title></head><body>{body}</body></html>"


@pytest.fixture
def channel() -> Iterator[tuple[Channel, str]]:
    state = Channel(25)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            parts = urllib.parse.urlsplit(self.path)
            with state.lock:
                state.requests.append(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            before = int(query["before"]) if "before" in query else None
            data = state.page(before).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serve_http(Handler) as port:
        yield state, f"http://127.0.0.1:{port}/s/chan"


def _run(folder: Path, url: str) -> dict[str, Any]:
    done = run_untested(folder, [{"name": "chan", "url": url, "format": "telegram"}])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "out" / "stats.json").read_text())


def _servers(folder: Path) -> set[str]:
    proxies = json.loads((folder / "out" / "proxies.json").read_text())
    return {p["server"] for p in proxies}


def test_first_read_follows_older_pages_then_only_new_messages(
    channel: tuple[Channel, str], tmp_path: Path
) -> None:
    state, url = channel
    first = _run(tmp_path, url)
    # Three pages at most: messages 25..16, 15..6, 5..1.
    assert len(state.requests) == 3
    assert [urllib.parse.urlsplit(r).query for r in state.requests] == [
        "",
        "before=16",
        "before=6",
    ]
    assert _servers(tmp_path) == {f"198.51.100.{n}" for n in range(1, 26)}
    assert first["parse"]["rejected"] == 0

    state.requests.clear()
    state.count = 27  # two new messages
    second = _run(tmp_path, url)
    assert len(state.requests) == 1  # the newest page reaches known messages
    assert second["parse"]["found"] == 2  # only the new messages were parsed
    assert _servers(tmp_path) == {f"198.51.100.{n}" for n in range(1, 28)}

    state.requests.clear()
    third = _run(tmp_path, url)
    assert len(state.requests) == 1
    assert third["parse"]["not_modified"] == 1
    assert _servers(tmp_path) == {f"198.51.100.{n}" for n in range(1, 28)}


def test_links_in_messages_are_unescaped(channel: tuple[Channel, str]) -> None:
    from configstream.parse import parse_body
    from configstream.telegram import page_of

    state, _ = channel
    blocks = [html for _, html in messages(state.page(None))]
    report = parse_body(page_of(blocks))
    assert len(report.proxies) == PAGE_SIZE
    assert {p.tls.server_name for p in report.proxies} == {
        f"s{n}.example.com" for n in range(16, 26)
    }


def test_channel_urls_and_older_pages() -> None:
    assert is_channel_url("https://t.me/s/somechannel")
    assert not is_channel_url("https://t.me/somechannel")
    assert not is_channel_url("https://example.com/s/x")
    assert (
        older_page("https://t.me/s/chan?before=99", 42)
        == "https://t.me/s/chan?before=42"
    )
    assert messages("<html>no posts</html>") == []

"""Source downloads against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from configstream import fetch
from configstream.cache import DATABASE_NAME
from configstream.config import Source
from configstream.demo import World, file_handler, serve_http
from configstream.fetch import (
    ATTEMPTS,
    MAX_PER_HOST,
    MAX_REDIRECTS,
    RETRY_STATUSES,
    FetchResult,
    Validators,
    fetch_all,
    fetch_source,
)
from tests.conftest import run_cli, world_run_args

BODY = b"vless://11111111-2222-3333-4444-555555555555@127.0.0.1:443#one\n"
ETAG = '"v1-abc"'
MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
# Backoff from a base this small is a few hundredths of a second, so any long
# wait a test measures comes from Retry-After.
FAST = 0.01


class _Handler(BaseHTTPRequestHandler):
    """Keep-alive handler with a one-call reply; quiet in the test log."""

    protocol_version = "HTTP/1.1"

    def reply(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


Answer = Callable[[_Handler], None]
Serve = Callable[[Answer], int]


@pytest.fixture(scope="module")
def _shared_server() -> Iterator[tuple[int, list[Answer]]]:
    """One server for the module, answering with the last installed answer.

    Stopping a server waits out its half-second poll, so a server per test
    would double this file's run time.
    """
    answers: list[Answer] = []

    class Handler(_Handler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            answers[-1](self)

    with serve_http(Handler) as port:
        yield port, answers


@pytest.fixture
def serve(
    _shared_server: tuple[int, list[Answer]],
) -> Iterator[Serve]:
    """Install a test's answer on the shared server; returns the port."""
    port, answers = _shared_server

    def install(answer: Answer) -> int:
        answers.append(answer)
        return port

    yield install
    answers.clear()


def _source(port: int, path: str = "/sub.txt", name: str = "src") -> Source:
    return Source(name=name, url=f"http://127.0.0.1:{port}{path}")


def _fetch(
    sources: list[Source],
    timeout: float = 2.0,
    validators: Mapping[str, Validators] | None = None,
    progress: Callable[[FetchResult], None] | None = None,
) -> list[FetchResult]:
    return asyncio.run(
        fetch_all(
            sources, timeout, progress=progress, validators=validators, retry_base=FAST
        )
    )


def _fetch_one(
    source: Source, validators: Validators | None = None, timeout: float = 2.0
) -> FetchResult:
    given = {source.name: validators} if validators else None
    return _fetch([source], timeout, given)[0]


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _released(event: threading.Event) -> Iterator[threading.Event]:
    """Set `event` on exit, so handler threads stalled on it finish."""
    try:
        yield event
    finally:
        event.set()


# Conditional requests


def test_etag_is_sent_back_and_304_means_not_modified(serve: Serve) -> None:
    """The first fetch keeps the ETag; sent back as If-None-Match it earns a 304."""
    seen: list[str | None] = []

    def answer(request: _Handler) -> None:
        seen.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == ETAG:
            request.reply(304, headers={"ETag": ETAG})
        else:
            request.reply(200, BODY, {"ETag": ETAG})

    port = serve(answer)
    first = _fetch_one(_source(port))
    second = _fetch_one(_source(port), Validators(etag=first.etag))

    assert (first.status, first.body, first.etag) == (200, BODY, ETAG)
    assert not first.not_modified and first.is_ok
    assert second.status == 304 and second.not_modified
    assert second.body is None and second.is_ok and second.error == ""
    assert seen == [None, ETAG]


def test_last_modified_is_sent_back_as_if_modified_since(serve: Serve) -> None:
    """Last-Modified comes back as If-Modified-Since and earns a 304."""
    seen: list[tuple[str | None, str | None]] = []

    def answer(request: _Handler) -> None:
        since = request.headers.get("If-Modified-Since")
        seen.append((since, request.headers.get("If-None-Match")))
        if since == MODIFIED:
            request.reply(304)
        else:
            request.reply(200, BODY, {"Last-Modified": MODIFIED})

    port = serve(answer)
    first = _fetch_one(_source(port))
    second = _fetch_one(_source(port), Validators(last_modified=first.last_modified))

    assert (first.body, first.last_modified, first.etag) == (BODY, MODIFIED, None)
    assert second.not_modified and second.body is None and second.is_ok
    assert seen == [(None, None), (MODIFIED, None)]


def test_stale_etag_gets_the_new_body(serve: Serve) -> None:
    """A validator the server no longer matches brings a 200 with the new body."""
    port = serve(lambda request: request.reply(200, BODY + b"new\n", {"ETag": '"v2"'}))

    result = _fetch_one(_source(port), Validators(etag=ETAG))

    assert not result.not_modified
    assert (result.body, result.etag) == (BODY + b"new\n", '"v2"')


def test_unasked_304_is_an_error(serve: Serve) -> None:
    """A 304 to a plain request leaves nothing to reuse, so the source failed."""
    port = serve(lambda request: request.reply(304))

    result = _fetch_one(_source(port))

    assert not result.is_ok and not result.not_modified
    assert result.error == "HTTP 304"


# Retries


def test_retry_after_is_honoured_over_a_tiny_backoff(serve: Serve) -> None:
    """A 429 with Retry-After: 1 is asked again after a second, then succeeds."""
    arrivals: list[float] = []

    def answer(request: _Handler) -> None:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            request.reply(429, b"slow down\n", {"Retry-After": "1"})
        else:
            request.reply(200, BODY)

    result = _fetch_one(_source(serve(answer)))

    assert result.is_ok and result.body == BODY
    assert result.attempts == 2 and len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.9
    assert result.seconds >= 0.9


def test_retry_after_as_http_date_is_honoured(serve: Serve) -> None:
    """Retry-After may be an HTTP date; the wait lasts until then."""
    arrivals: list[float] = []

    def answer(request: _Handler) -> None:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            # Whole seconds only: two from now is one to two from now.
            when = email.utils.formatdate(time.time() + 2, usegmt=True)
            request.reply(503, headers={"Retry-After": when})
        else:
            request.reply(200, BODY)

    result = _fetch_one(_source(serve(answer)))

    assert result.is_ok and result.attempts == 2
    assert arrivals[1] - arrivals[0] >= 0.9


def test_retry_after_is_capped(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server asking for an hour's pause gets MAX_RETRY_AFTER at most."""
    monkeypatch.setattr(fetch, "MAX_RETRY_AFTER", 0.3)
    arrivals: list[float] = []

    def answer(request: _Handler) -> None:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            request.reply(503, headers={"Retry-After": "3600"})
        else:
            request.reply(200, BODY)

    result = _fetch_one(_source(serve(answer)))

    assert result.is_ok and result.attempts == 2
    assert 0.25 <= arrivals[1] - arrivals[0] < 1.5


def test_server_errors_are_retried_until_success(serve: Serve) -> None:
    """Two 500s, then a 200: the third attempt's body is kept."""
    count = 0

    def answer(request: _Handler) -> None:
        nonlocal count
        count += 1
        if count <= 2:
            request.reply(500, b"oops\n")
        else:
            request.reply(200, BODY)

    result = _fetch_one(_source(serve(answer)))

    assert result.is_ok and result.body == BODY and result.error == ""
    assert result.attempts == 3 == count


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_each_transient_status_is_retried(serve: Serve, status: int) -> None:
    count = 0

    def answer(request: _Handler) -> None:
        nonlocal count
        count += 1
        request.reply(status if count == 1 else 200, BODY)

    result = _fetch_one(_source(serve(answer)))

    assert result.is_ok and result.status == 200
    assert result.attempts == 2 == count


def test_persistent_503_gives_up_after_all_attempts(serve: Serve) -> None:
    """A source that always answers 503 fails after ATTEMPTS tries, saying so."""
    count = 0

    def answer(request: _Handler) -> None:
        nonlocal count
        count += 1
        request.reply(503, b"busy\n")

    result = _fetch_one(_source(serve(answer)))

    assert not result.is_ok and result.body is None
    assert result.status == 503
    assert result.attempts == ATTEMPTS == count
    assert "503" in result.error and f"after {ATTEMPTS} attempts" in result.error


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_client_errors_are_final(serve: Serve, status: int) -> None:
    """A 4xx other than 408, 425 and 429 is not asked again."""
    count = 0

    def answer(request: _Handler) -> None:
        nonlocal count
        count += 1
        request.reply(status, b"no\n")

    result = _fetch_one(_source(serve(answer)))

    assert not result.is_ok and result.body is None
    assert result.status == status and result.error == f"HTTP {status}"
    assert result.attempts == 1 == count


def test_refused_connection_is_retried_then_reported() -> None:
    result = _fetch_one(_source(_closed_port()))

    assert not result.is_ok
    assert result.attempts == ATTEMPTS
    assert result.error.startswith("ConnectError")


# Timeouts, redirects and size


@pytest.mark.parametrize("stall", ["before-headers", "mid-body"])
def test_stalled_server_times_out_in_bounded_time(serve: Serve, stall: str) -> None:
    """A server that stops sending longer than the timeout ends in 'timeout'."""
    release = threading.Event()

    def answer(request: _Handler) -> None:
        with contextlib.suppress(OSError):
            if stall == "before-headers":
                release.wait(10)
            request.send_response(200)
            request.send_header("Content-Length", str(len(BODY)))
            request.end_headers()
            request.wfile.write(BODY[:10])
            request.wfile.flush()
            release.wait(10)
            request.wfile.write(BODY[10:])

    with _released(release):
        started = time.monotonic()
        result = _fetch_one(_source(serve(answer)), timeout=0.5)
        elapsed = time.monotonic() - started

    assert not result.is_ok and result.body is None
    assert "timeout" in result.error
    assert result.attempts == ATTEMPTS
    assert elapsed < 5.0


def test_trickling_body_times_out_in_bounded_time(serve: Serve) -> None:
    """A body sent a byte at a time, each gap under the timeout, still times out."""
    release = threading.Event()
    body = BODY[:40]

    def answer(request: _Handler) -> None:
        with contextlib.suppress(OSError):
            request.send_response(200)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            for index in range(len(body)):
                request.wfile.write(body[index : index + 1])
                request.wfile.flush()
                if release.wait(0.15):
                    return

    async def bounded(source: Source) -> FetchResult | None:
        # 40 bytes at 0.15 s each take 6 s; a 0.3 s timeout should end it sooner.
        with contextlib.suppress(TimeoutError):
            results = await asyncio.wait_for(
                fetch_all([source], 0.3, retry_base=FAST), 2.0
            )
            return results[0]
        return None

    with _released(release):
        result = asyncio.run(bounded(_source(serve(answer))))

    assert result is not None, "fetch still running after 2 s with a 0.3 s timeout"
    assert not result.is_ok and "timeout" in result.error


def _hops(request: _Handler) -> None:
    """`/hop/N` redirects to `/hop/N-1` and `/hop/0` is the body; /a and /b loop."""
    if request.path in {"/a", "/b"}:
        target = "/b" if request.path == "/a" else "/a"
        request.reply(302, headers={"Location": target})
        return
    left = int(request.path.rsplit("/", 1)[1])
    if left == 0:
        request.reply(200, BODY)
    else:
        request.reply(302, headers={"Location": f"/hop/{left - 1}"})


def test_redirect_loop_is_cut_off(serve: Serve) -> None:
    result = _fetch_one(_source(serve(_hops), "/a"))

    assert not result.is_ok and result.body is None
    assert "redirects" in result.error and str(MAX_REDIRECTS) in result.error
    assert result.attempts == 1


@pytest.mark.parametrize(
    ("hops", "is_ok"), [(MAX_REDIRECTS, True), (MAX_REDIRECTS + 1, False)]
)
def test_redirects_are_followed_up_to_the_limit(
    serve: Serve, hops: int, is_ok: bool
) -> None:
    result = _fetch_one(_source(serve(_hops), f"/hop/{hops}"))

    assert result.is_ok is is_ok
    assert (result.body == BODY) is is_ok


@pytest.mark.parametrize(
    ("size", "is_ok"), [(1000, True), (1001, False), (5000, False)]
)
def test_body_over_the_cap_is_rejected(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, size: int, is_ok: bool
) -> None:
    """A body of exactly the cap is kept; one byte more is refused."""
    monkeypatch.setattr(fetch, "MAX_BODY_BYTES", 1000)
    port = serve(lambda request: request.reply(200, b"x" * size))

    result = _fetch_one(_source(port))

    assert result.is_ok is is_ok
    if is_ok:
        assert result.body == b"x" * size
    else:
        assert result.body is None
        assert result.error == "body larger than 1000 bytes"
        assert result.attempts == 1


@pytest.mark.parametrize(("plain_size", "is_ok"), [(3000, True), (4_000_000, False)])
def test_gzip_body_is_capped_after_decoding(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, plain_size: int, is_ok: bool
) -> None:
    """The cap counts decoded bytes: a small gzip bomb is refused, small text kept."""
    cap = 4096
    monkeypatch.setattr(fetch, "MAX_BODY_BYTES", cap)
    plain = b"\0" * plain_size
    compressed = gzip.compress(plain, compresslevel=9)
    assert len(compressed) < cap
    port = serve(
        lambda request: request.reply(200, compressed, {"Content-Encoding": "gzip"})
    )

    result = _fetch_one(_source(port))

    assert result.is_ok is is_ok
    if is_ok:
        assert result.body == plain
    else:
        assert result.body is None and "larger than" in result.error


# Many sources


def test_fetch_all_keeps_order_and_isolates_failures(serve: Serve) -> None:
    """Results follow input order though the first source answers last, failing
    sources (404, refused, missing file) leave the others intact, and one host
    never sees more than MAX_PER_HOST requests at once."""
    lock = threading.Lock()
    active = peak = 0

    def answer(request: _Handler) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.3 if request.path == "/s0" else 0.05)
        with lock:
            active -= 1
        if request.path == "/s7":
            request.reply(404)
        else:
            request.reply(200, request.path.encode())

    port = serve(answer)
    sources = [_source(port, f"/s{i}", f"s{i}") for i in range(20)]
    sources.insert(3, _source(_closed_port(), "/x", "refused"))
    sources.insert(5, Source(name="no-file", url="/nonexistent/configstream.txt"))
    finished: list[str] = []

    results = _fetch(sources, progress=lambda r: finished.append(r.source.name))

    names = [s.name for s in sources]
    assert [r.source.name for r in results] == names
    assert finished != names and sorted(finished) == sorted(names)
    assert {r.source.name for r in results if not r.is_ok} == {
        "s7",
        "refused",
        "no-file",
    }
    for result in results:
        if result.is_ok:
            assert result.body == f"/{result.source.name}".encode()
    assert 2 <= peak <= MAX_PER_HOST


def test_busy_host_does_not_starve_other_hosts(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source on a quiet host starts at once while a busy host's queue waits."""
    monkeypatch.setattr(fetch, "MAX_CONCURRENT_FETCHES", 4)
    monkeypatch.setattr(fetch, "MAX_PER_HOST", 2)

    def slow(request: _Handler) -> None:
        time.sleep(0.3)
        request.reply(200, BODY)

    class Quick(_Handler):
        def do_GET(self) -> None:  # noqa: N802
            self.reply(200, BODY)

    busy = serve(slow)
    done_at: dict[str, float] = {}
    with serve_http(Quick) as quiet:
        sources = [_source(busy, f"/{i}", f"busy{i}") for i in range(8)]
        sources.append(_source(quiet, "/", "quiet"))
        started = time.monotonic()
        results = _fetch(
            sources,
            progress=lambda r: done_at.update({r.source.name: time.monotonic()}),
        )

    assert all(r.is_ok for r in results)
    # The busy host may use two of the four slots; two stay for the quiet one.
    assert done_at["quiet"] - started < 0.25


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:abc/", "http://127.0.0.1:99999/", "http://[::1/"],
    ids=["port-not-a-number", "port-out-of-range", "unclosed-bracket"],
)
def test_malformed_url_fails_only_its_source(serve: Serve, url: str) -> None:
    """load_sources accepts any http:// string, so fetch_all must survive it."""
    port = serve(lambda request: request.reply(200, BODY))
    good = _source(port)

    results = _fetch([Source(name="malformed", url=url), good])

    assert [r.is_ok for r in results] == [False, True]
    assert results[0].error and results[1].body == BODY


# Local files and the client itself


def test_local_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "sub.txt"
    path.write_bytes(BODY)

    result = _fetch_one(Source(name="local", url=str(path)))

    assert result.is_ok and result.body == BODY and result.error == ""


def test_missing_local_file_gives_a_clear_error(tmp_path: Path) -> None:
    result = _fetch_one(Source(name="local", url=str(tmp_path / "absent.txt")))

    assert not result.is_ok and result.body is None
    assert result.error == "cannot read file: No such file or directory"


def test_local_file_over_the_cap_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "MAX_BODY_BYTES", 1000)
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 1001)

    result = _fetch_one(Source(name="local", url=str(path)))

    assert not result.is_ok and result.error == "file larger than 1000 bytes"


def test_bodies_waiting_for_the_parser_hold_up_new_downloads(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parser slower than the network does not make every body wait in
    memory at once: past the limit of waiting bytes no download starts."""
    size, count = 100_000, 24
    monkeypatch.setattr(fetch, "MAX_WAITING_BYTES", size)
    port = serve(lambda handler: handler.reply(200, b"x" * size))
    sources = [_source(port, f"/s{i}.txt", f"s{i}") for i in range(count)]
    held, peak = 0, 0

    async def slow_parser(result: FetchResult) -> None:
        nonlocal held, peak
        held += result.size
        peak = max(peak, held)
        await asyncio.sleep(0.02)
        held -= result.size

    results = asyncio.run(fetch_all(sources, 2.0, retry_base=FAST, consume=slow_parser))
    assert all(r.is_ok for r in results)
    # Downloads already under way when the limit is crossed still finish:
    # at most one per slot of the host beyond the limit.
    assert peak <= size + fetch.MAX_PER_HOST * size < count * size


def test_fetch_source_uses_the_callers_client(serve: Serve) -> None:
    """fetch_source sends the caller's validators through the caller's client."""
    seen: list[tuple[str | None, str | None]] = []

    def answer(request: _Handler) -> None:
        seen.append(
            (request.headers.get("X-Caller"), request.headers.get("If-None-Match"))
        )
        request.reply(304)

    async def run(source: Source) -> FetchResult:
        async with httpx.AsyncClient(headers={"X-Caller": "yes"}) as client:
            return await fetch_source(
                client, source, Validators(etag=ETAG), retry_base=FAST
            )

    result = asyncio.run(run(_source(serve(answer))))

    assert result.not_modified and result.attempts == 1
    assert seen == [("yes", ETAG)]


def test_requests_name_configstream_as_user_agent(serve: Serve) -> None:
    agents: list[str | None] = []

    def answer(request: _Handler) -> None:
        agents.append(request.headers.get("User-Agent"))
        request.reply(200, BODY)

    _fetch_one(_source(serve(answer)))

    assert agents == [fetch.USER_AGENT]
    assert agents[0] is not None and agents[0].startswith("ConfigStream/")


# The pipeline


def test_second_run_reuses_the_first_runs_fetches(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unchanged sources answer 304 on a second run: no parse, cached results."""
    monkeypatch.chdir(tmp_path)
    runs = []
    for _ in range(2):
        done = run_cli(*world_run_args(world), cwd=Path.cwd())
        assert done.returncode == 0, done.stderr[-3000:]
        stats = json.loads((tmp_path / "out" / "stats.json").read_text())
        proxies = json.loads((tmp_path / "out" / "proxies.json").read_text())
        alive = {(p["protocol"], p["port"], p["exit_ip"]) for p in proxies}
        runs.append((stats, alive))
    (cold, cold_alive), (warm, warm_alive) = runs

    assert cold["parse"]["not_modified"] == 0 and cold["parse"]["parsed_sources"] >= 4
    assert warm["parse"]["not_modified"] >= 4
    assert warm["parse"]["parsed_sources"] == 0
    assert warm["test"]["reused"] > 0
    assert warm_alive == cold_alive and len(cold_alive) == len(world.live)


def test_unchanged_sources_reuse_the_kept_merge(tmp_path: Path) -> None:
    """All sources unchanged: the last run's merge is read whole instead of
    every kept parse; one changed body (or an unreadable kept merge) means
    merging again. The output is the same either way."""
    links = [
        f"trojan://secret-{i}@127.0.0.{i % 5 + 1}:{2000 + i}?security=tls#n{i}"
        for i in range(30)
    ]
    files = {
        "/a.txt": (200, "\n".join(links[:20]).encode()),
        "/b.txt": (200, "\n".join(links[10:25]).encode()),
        "/c.txt": (200, "\n".join(links[20:]).encode()),
    }

    def run() -> tuple[dict[str, Any], list[Any], list[Any]]:
        done = run_cli(
            "run", "--no-test", "--output", "out", "--cache", "cache", cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-3000:]
        stats = json.loads((tmp_path / "out" / "stats.json").read_text())
        proxies = json.loads((tmp_path / "out" / "proxies.json").read_text())
        kept = [
            {
                k: v
                for k, v in row.items()
                if k not in {"http_status", "seconds", "bytes", "parse"}
            }
            for row in stats["sources"]
        ]
        return stats, proxies, kept

    with serve_http(file_handler(files)) as port:
        (tmp_path / "sources.yml").write_text(
            yaml.safe_dump(
                {
                    "sources": [
                        {"name": name[1:2], "url": f"http://127.0.0.1:{port}{name}"}
                        for name in files
                    ]
                }
            )
        )
        cold, cold_proxies, cold_rows = run()
        warm, warm_proxies, warm_rows = run()
        assert not cold["parse"]["reused_merge"]
        assert warm["parse"]["reused_merge"] and warm["parse"]["not_modified"] == 3
        assert warm_proxies == cold_proxies and warm_rows == cold_rows
        assert {k: warm["parse"][k] for k in ("found", "parsed", "rejected")} == {
            k: cold["parse"][k] for k in ("found", "parsed", "rejected")
        }
        assert len(cold_proxies) == 30
        assert next(p for p in cold_proxies if p["port"] == 2015)["sources"] == [
            "a",
            "b",
        ]

        files["/c.txt"] = (
            200,
            "\n".join(
                [*links[20:], links[0].replace("secret-0", "secret-new")]
            ).encode(),
        )
        changed, changed_proxies, _ = run()
        assert not changed["parse"]["reused_merge"]
        assert changed["parse"]["not_modified"] == 2
        assert len(changed_proxies) == 31

        again, again_proxies, _ = run()
        assert again["parse"]["reused_merge"] and again_proxies == changed_proxies

        with sqlite3.connect(tmp_path / "cache" / DATABASE_NAME) as db:
            db.execute("UPDATE merged_parse SET value = x'00c1'")
        spoiled, spoiled_proxies, _ = run()
        assert not spoiled["parse"]["reused_merge"]
        assert spoiled_proxies == changed_proxies


def test_mirror_arriving_during_its_bodys_parse_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sources with one body, the second in while the first is still
    being parsed: the body is parsed once and both get its report."""
    import configstream.pipeline as pipeline
    from configstream.cache import Cache

    calls: list[bytes] = []
    real_parse = pipeline.parse_body

    def slow_parse(body: bytes | str, fmt: str = "auto") -> Any:
        calls.append(bytes(body) if isinstance(body, bytes) else body.encode())
        time.sleep(0.3)
        return real_parse(body, fmt)

    monkeypatch.setattr(pipeline, "parse_body", slow_parse)
    body = b"trojan://secret@127.0.0.1:2000?security=tls#one\n"
    sources = [Source(name=name, url=f"http://127.0.0.1:1/{name}.txt") for name in "ab"]

    async def read_both(cache: Cache) -> pipeline._SourceReader:
        reader = pipeline._SourceReader(cache, {})
        try:
            await asyncio.gather(
                *(reader(FetchResult(s, body=body, size=len(body))) for s in sources)
            )
        finally:
            reader.close()
        return reader

    with Cache.open(tmp_path) as cache:
        reader = asyncio.run(read_both(cache))
    assert len(calls) == 1
    hows = sorted(outcome[1] for outcome in reader.outcomes.values())
    assert hows == ["parsed", "same-body"]
    assert not reader.parsing

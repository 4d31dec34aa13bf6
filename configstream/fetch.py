"""Download subscription sources concurrently with one httpx client."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import tenacity

from configstream import __version__, telegram
from configstream.config import Source

log = logging.getLogger(__name__)

# A body above this is not a subscription; the cap keeps one source from
# exhausting memory.
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_CONCURRENT_FETCHES = 32
# Many sources live on one host (raw.githubusercontent.com); more parallel
# requests than this to one host only earn 429s.
MAX_PER_HOST = 6
# Downloaded bodies not yet taken by `consume` (waiting for the parser)
# stop new downloads from starting above this many bytes: a local or fast
# network outruns the parser, and 240 bodies waiting held 85 MB. With 8 MB
# the fetch stage of benchmarks/sources_world.py peaks at 145-148 MB, with
# 16 MB at 153 MB, in the same time.
MAX_WAITING_BYTES = 8 * 1024 * 1024
MAX_REDIRECTS = 5
# Transient failures are tried this many times in all, waiting about 0.5,
# 1, 2 s (with jitter) in between, or what Retry-After asks, up to a cap.
ATTEMPTS = 3
MAX_RETRY_AFTER = 30.0
# A download may last this many times the per-read timeout in all.
TOTAL_TIMEOUT_FACTOR = 4
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = f"ConfigStream/{__version__} (+subscription aggregator)"


@dataclass(slots=True)
class Validators:
    """What a conditional request sends: the last ETag and Last-Modified."""

    etag: str | None = None
    last_modified: str | None = None
    # Telegram channels: the newest message id read so far.
    cursor: int | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(slots=True)
class FetchResult:
    """One source's download: the body, or why there is none.

    A 304 answer has no body and `not_modified` set: the caller reuses what
    it kept from the last fetch.
    """

    source: Source
    body: bytes | None = None
    status: int | None = None
    error: str = ""
    seconds: float = 0.0
    attempts: int = 0
    # Bytes of the body; kept when the body itself is let go after parsing.
    size: int = 0
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None
    # Telegram channels: the newest message id, and whether the body holds
    # only the messages after the last run's (to join with what was kept).
    cursor: int | None = None
    incremental: bool = False

    @property
    def is_ok(self) -> bool:
        # The body may already be parsed and let go (see fetch_all's consume).
        return not self.error


class _TooLarge(Exception):
    pass


class _Transient(Exception):
    """A status worth asking again for; `retry_after` is the server's wish."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _is_transient(exc: BaseException) -> bool:
    # A download that outlived its total time (TimeoutError) is not retried:
    # a server that slow would only make the run wait as long again.
    return isinstance(
        exc, (_Transient, httpx.TimeoutException, httpx.TransportError)
    ) and not isinstance(exc, httpx.UnsupportedProtocol)


class _Wait(tenacity.wait.wait_base):
    """Exponential backoff with jitter, or the server's Retry-After if longer."""

    def __init__(self, base: float) -> None:
        self.backoff = tenacity.wait_exponential_jitter(multiplier=base, jitter=base)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = self.backoff(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, MAX_RETRY_AFTER))
        return float(wait)


async def _download(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[httpx.Response, bytes]:
    """GET `url`: the response and its body, read under the size cap."""
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code in RETRY_STATUSES:
            raise _Transient(
                response.status_code, _retry_after(response.headers.get("Retry-After"))
            )
        chunks: list[bytes] = []
        size = 0
        # Counting decoded bytes as they stream also stops decompression bombs.
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TooLarge
            chunks.append(chunk)
        return response, b"".join(chunks)


async def fetch_source(
    client: httpx.AsyncClient,
    source: Source,
    validators: Validators | None = None,
    retry_base: float = 0.5,
    total_timeout: float = 60.0,
) -> FetchResult:
    """Fetch one source; failures are recorded in the result, never raised.

    With `validators`, the request is conditional and a 304 sets
    `not_modified`. Timeouts, connection errors, 408, 429 and 5xx are tried
    again (see `ATTEMPTS`); other answers are final.
    """
    result = FetchResult(source)
    started = time.perf_counter()

    async def attempt(
        url: str, headers: dict[str, str]
    ) -> tuple[httpx.Response, bytes]:
        result.attempts += 1
        # The client's timeout bounds each read; this bounds the whole
        # download, which a server could trickle forever.
        async with asyncio.timeout(total_timeout):
            return await _download(client, url, headers)

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(_is_transient),
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=_Wait(retry_base),
        reraise=True,
    )

    async def get(url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
        # A fresh copy per request: each page of a channel gets its attempts.
        return await retrying.copy()(attempt, url, headers)

    try:
        if source.is_telegram:
            await _fetch_channel(result, get, validators)
        elif source.is_remote:
            headers = validators.headers() if validators else {}
            response, body = await get(source.url, headers)
            result.status = response.status_code
            result.etag = response.headers.get("ETag")
            result.last_modified = response.headers.get("Last-Modified")
            if result.status == 304 and validators is not None:
                result.not_modified = True
            elif result.status >= 300:
                result.error = f"HTTP {result.status}"
            else:
                result.body = body
        else:
            result.body = await asyncio.to_thread(Path(source.url).read_bytes)
            if len(result.body) > MAX_BODY_BYTES:
                result.body, result.error = (
                    None,
                    f"file larger than {MAX_BODY_BYTES} bytes",
                )
    except _Transient as exc:
        result.status = exc.status
        result.error = f"HTTP {exc.status} after {result.attempts} attempts"
    except _TooLarge:
        result.error = f"body larger than {MAX_BODY_BYTES} bytes"
    except (httpx.TimeoutException, TimeoutError):
        result.error = f"timeout after {result.attempts} attempts"
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, OverflowError):
        result.error = "the URL cannot be requested (bad host or port)"
    except httpx.TooManyRedirects:
        result.error = f"more than {MAX_REDIRECTS} redirects"
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    except OSError as exc:
        result.error = f"cannot read file: {exc.strerror}"
    except Exception as exc:  # noqa: BLE001 (one source never stops the rest)
        # Network stacks raise odd types for odd URLs (an ExceptionGroup
        # around an OverflowError for port 99999); the type is enough to say.
        result.error = f"unexpected error: {type(exc).__name__}"
    result.seconds = time.perf_counter() - started
    result.size = len(result.body) if result.body is not None else 0
    if result.error:
        log.warning("source %s failed: %s", source.name, result.error)
    return result


async def _fetch_channel(
    result: FetchResult,
    get: Callable[[str, dict[str, str]], Awaitable[tuple[httpx.Response, bytes]]],
    validators: Validators | None,
) -> None:
    """Read a Telegram channel's new messages (see configstream.telegram).

    The body becomes the HTML of the messages newer than `validators.cursor`
    (all of them on a first read); none new is `not_modified`.
    """
    last_seen = validators.cursor if validators else None
    url = result.source.url
    blocks: dict[int, str] = {}
    newest = last_seen
    for _ in range(telegram.MAX_PAGES):
        response, body = await get(url, {})
        result.status = response.status_code
        if result.status >= 300:
            result.error = f"HTTP {result.status}"
            return
        found = telegram.messages(body.decode("utf-8", "replace"))
        if not found:
            break
        newest = max(newest or 0, *(post for post, _ in found))
        fresh = {
            post: html for post, html in found if last_seen is None or post > last_seen
        }
        blocks.update(fresh)
        oldest = min(post for post, _ in found)
        if len(fresh) < len(found) or oldest <= 1:
            break  # reached what the last run read, or the channel's start
        url = telegram.older_page(result.source.url, oldest)
    result.cursor = newest
    result.incremental = last_seen is not None
    if last_seen is not None and not blocks:
        result.not_modified = True
        return
    result.body = telegram.page_of([blocks[post] for post in sorted(blocks)])


async def fetch_all(
    sources: Sequence[Source],
    timeout: float,
    progress: Callable[[FetchResult], None] | None = None,
    validators: Mapping[str, Validators] | None = None,
    retry_base: float = 0.5,
    consume: Callable[[FetchResult], Awaitable[None]] | None = None,
) -> list[FetchResult]:
    """Fetch every source concurrently, in input order.

    `validators` maps a source name to what its last fetch left, for a
    conditional request. `consume` is awaited with each result as soon as
    it is in (it may take the body, to parse it and let it go).
    """
    limit = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
    per_host: dict[str, asyncio.Semaphore] = {}
    # Bytes of finished downloads that `consume` has not finished with.
    waiting = 0
    drained = asyncio.Condition()
    client = httpx.AsyncClient(
        http2=True,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        limits=httpx.Limits(max_connections=MAX_CONCURRENT_FETCHES),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    )
    validators = validators or {}

    async def one(source: Source) -> FetchResult:
        nonlocal waiting
        try:
            host = urllib.parse.urlsplit(source.url).netloc
        except ValueError:
            host = source.url  # fetch_source reports the bad URL
        host_limit = per_host.setdefault(host, asyncio.Semaphore(MAX_PER_HOST))
        # The host's slot first: a source waiting for a busy host must not
        # hold one of the slots other hosts could use.
        async with host_limit, limit:
            if consume:
                async with drained:
                    await drained.wait_for(lambda: waiting < MAX_WAITING_BYTES)
            result = await fetch_source(
                client,
                source,
                validators.get(source.name),
                retry_base,
                total_timeout=timeout * TOTAL_TIMEOUT_FACTOR,
            )
        if consume:
            held = result.size
            waiting += held
            try:
                await consume(result)
            finally:
                async with drained:
                    waiting -= held
                    drained.notify_all()
        if progress:
            progress(result)
        return result

    async with client:
        return list(await asyncio.gather(*(one(s) for s in sources)))

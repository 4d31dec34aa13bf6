"""Download subscription sources concurrently with one httpx client."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from configstream import __version__
from configstream.config import Source

log = logging.getLogger(__name__)

# A body above this is not a subscription; the cap keeps one source from
# exhausting memory.
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_CONCURRENT_FETCHES = 32
MAX_REDIRECTS = 5
USER_AGENT = f"ConfigStream/{__version__} (+subscription aggregator)"


@dataclass(slots=True)
class FetchResult:
    """One source's download: the body, or why there is none."""

    source: Source
    body: bytes | None = None
    status: int | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def is_ok(self) -> bool:
        return self.body is not None


class _TooLarge(Exception):
    pass


async def _download(client: httpx.AsyncClient, url: str) -> tuple[int, bytes]:
    async with client.stream("GET", url) as response:
        chunks: list[bytes] = []
        size = 0
        # Counting decoded bytes as they stream also stops decompression bombs.
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TooLarge
            chunks.append(chunk)
        return response.status_code, b"".join(chunks)


async def fetch_source(client: httpx.AsyncClient, source: Source) -> FetchResult:
    """Fetch one source; failures are recorded in the result, never raised."""
    result = FetchResult(source)
    started = time.perf_counter()
    try:
        if source.is_remote:
            result.status, body = await _download(client, source.url)
            if result.status >= 400:
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
    except _TooLarge:
        result.error = f"body larger than {MAX_BODY_BYTES} bytes"
    except httpx.TimeoutException:
        result.error = "timeout"
    except httpx.TooManyRedirects:
        result.error = f"more than {MAX_REDIRECTS} redirects"
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    except OSError as exc:
        result.error = f"cannot read file: {exc.strerror}"
    result.seconds = time.perf_counter() - started
    if result.error:
        log.warning("source %s failed: %s", source.name, result.error)
    return result


async def fetch_all(
    sources: Sequence[Source],
    timeout: float,
    progress: Callable[[FetchResult], None] | None = None,
) -> list[FetchResult]:
    """Fetch every source concurrently, in input order."""
    limit = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
    client = httpx.AsyncClient(
        http2=True,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    )

    async def one(source: Source) -> FetchResult:
        async with limit:
            result = await fetch_source(client, source)
        if progress:
            progress(result)
        return result

    async with client:
        return list(await asyncio.gather(*(one(s) for s in sources)))

"""The production pipeline: fetch, parse, dedupe, test, geo, publish.

Each stage takes models in and gives models out; this module only wires them
together, counts what happened and times each stage into the stats.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import ipaddress
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from configstream import __version__, telegram
from configstream.cache import (
    Cache,
    FetchState,
    exclusive,
    pack,
    pack_report,
    proxy_from_data,
    proxy_to_data,
    unpack,
    unpack_report,
)
from configstream.config import Network, RunSettings, Source
from configstream.errors import SourceError
from configstream.fetch import FetchResult, Validators, fetch_all
from configstream.geo import GeoIP
from configstream.health import add_outcomes, flag_rows, resting
from configstream.models import (
    Entry,
    ParseReport,
    ProbeResult,
    Proxy,
    Status,
    collector_paused,
    identity,
)
from configstream.parse import parse_body
from configstream.parse.links import clear_memo
from configstream.probe import ProbeSettings, ProxyTester
from configstream.render import alive_first, write_health, write_outputs
from configstream.resolve import Resolver
from configstream.shard import read_partials, shard_of, write_partial
from configstream.singbox import locate_core

log = logging.getLogger(__name__)

# Earlier runs shown in the dashboard's trend chart.
HISTORY_ON_PAGE = 60


class Reporter(Protocol):
    """Receives progress; the CLI draws it, tests may ignore it."""

    def stage(self, name: str, total: int | None) -> None: ...

    def advance(self, count: int = 1) -> None: ...


class _Silent:
    def stage(self, name: str, total: int | None) -> None:
        log.info("stage %s (%s items)", name, total if total is not None else "?")

    def advance(self, count: int = 1) -> None:
        pass


@dataclass(slots=True)
class RunOutcome:
    """What a run produced: the stats and the published entries."""

    stats: dict[str, Any]
    published: list[Entry] = field(default_factory=list)
    degraded: str = ""


class _SourceReader:
    """Parses each body as its download finishes, then lets the body go.

    Holding every body until all sources are in would make peak memory grow
    with the number of sources; this way at most the bodies in flight are
    held. Parsing and decoding run on one worker thread so the event loop
    keeps serving the other downloads; the cache is used from the loop's
    thread only. A body seen before in this run (mirrors publish the same
    file) is parsed once.
    """

    def __init__(self, cache: Cache, kept: dict[str, FetchState]) -> None:
        self.cache, self.kept = cache, kept
        # Per source: (body hash, how it was read), or why it could not be.
        self.outcomes: dict[str, tuple[str, str] | SourceError] = {}
        # Unchanged bodies whose kept parse is read only if needed: when
        # the whole merge cannot be reused (see `_merge_sources`).
        self.kept_by_digest: dict[str, str] = {}
        # A merge worth keeping for the next run: (key, merge).
        self.to_keep: tuple[str, _Merged] | None = None
        self.worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="parse"
        )
        # Parse reports and their packed form by body hash, for this run.
        self.reports: dict[str, ParseReport] = {}
        self.packed: dict[str, bytes] = {}
        # Parses under way by body hash: a mirror's copy that arrives while
        # its body is being parsed waits for that parse instead of repeating it.
        self.parsing: dict[str, asyncio.Future[ParseReport]] = {}

    async def _in_worker(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.worker, function, *args
        )

    async def __call__(self, result: FetchResult) -> None:
        source = result.source
        state = self.kept.get(source.name)
        try:
            if result.not_modified and state is not None:
                self.kept_by_digest.setdefault(state.body_hash, source.name)
                self.outcomes[source.name] = (state.body_hash, "not-modified")
                return
            if result.body is None:
                return
            body, result.body = result.body, None
            digest = hashlib.blake2b(body, digest_size=16).hexdigest()
            if (
                state is not None
                and state.body_hash == digest
                and not (result.incremental)
            ):
                self.kept_by_digest.setdefault(digest, source.name)
                self.outcomes[source.name] = (digest, "same-body")
                self._record(source, result, state, digest)
                return
            if digest in self.reports:
                report, how = self.reports[digest], "same-body"
            elif digest in self.parsing:
                report, how = await self.parsing[digest], "same-body"
            else:
                parse = asyncio.ensure_future(
                    self._in_worker(parse_body, body, source.body_format)
                )
                self.parsing[digest] = parse
                try:
                    report, how = await parse, "parsed"
                finally:
                    del self.parsing[digest]
            if result.incremental and state is not None:
                # A channel's new messages join the configs kept from the
                # messages read on earlier runs.
                kept = self._stored(source.name, state.body_hash)
                report = telegram.joined(report, kept)
                digest = hashlib.blake2b(
                    f"{digest}+{state.body_hash}".encode(), digest_size=16
                ).hexdigest()
            self.reports[digest] = report
        except SourceError as exc:
            self.outcomes[source.name] = exc
            return
        except Exception as exc:  # noqa: BLE001 (one source never stops the rest)
            # A reader bug or a body nothing was ready for: this source is
            # lost, not the run. The type is enough to find it again.
            log.error("source %s: reading failed with %r", source.name, exc)
            self.outcomes[source.name] = SourceError(
                f"body could not be read ({type(exc).__name__})"
            )
            return
        self.outcomes[source.name] = (digest, how)
        if source.is_remote:
            unchanged = state is not None and state.body_hash == digest
            if not unchanged and digest not in self.packed:
                self.packed[digest] = await self._in_worker(pack_report, report)
            self._record(source, result, state, digest)

    def _record(
        self,
        source: Source,
        result: FetchResult,
        state: FetchState | None,
        digest: str,
    ) -> None:
        if not source.is_remote:
            return
        unchanged = state is not None and state.body_hash == digest
        self.cache.record_fetch_state(
            source.name,
            source.url,
            FetchState(result.etag, result.last_modified, digest, result.cursor),
            None if unchanged else self.packed[digest],
        )

    def report(self, digest: str) -> ParseReport:
        """The parse of a body read this run, or the kept parse of an
        unchanged one (read from the cache now).

        Raises:
            SourceError: the kept parse is unreadable; it is forgotten, so
                the next run downloads the source again.
        """
        if digest not in self.reports:
            name = self.kept_by_digest[digest]
            blob = self.cache.stored_report(name)
            try:
                if blob is None:
                    raise ValueError("no stored parse")
                self.reports[digest] = unpack_report(blob)
            except ValueError as exc:
                self.cache.forget_fetch_state(name)
                raise SourceError(
                    f"the kept parse of the unchanged body is unreadable ({exc}); "
                    "the next run downloads it again"
                ) from None
        return self.reports[digest]

    def _stored(self, name: str, digest: str) -> ParseReport:
        """The kept parse of a source's last body (a channel's earlier
        messages; small, so read on the loop's thread)."""
        self.kept_by_digest.setdefault(digest, name)
        return self.report(digest)

    def close(self) -> None:
        self.worker.shutdown(wait=True)


def _peak_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass(slots=True)
class _Merged:
    """The sources' parses merged in sources-file order: the unique entries
    (each with the sources that published it) and each source's figures."""

    entries: dict[Proxy, Entry]
    rows: dict[str, dict[str, Any]]


def _merge_key(order: Sequence[tuple[str, str]]) -> str:
    """Names the merge of these sources' bodies, by this version's readers."""
    text = "\n".join(f"{name}\t{digest}" for name, digest in order)
    return hashlib.blake2b(
        f"{__version__}\n{text}".encode(), digest_size=16
    ).hexdigest()


def _pack_merged(merged: _Merged) -> bytes:
    return pack(
        {
            "entries": [
                [proxy_to_data(e.proxy), e.sources] for e in merged.entries.values()
            ],
            "rows": merged.rows,
        }
    )


def _unpack_merged(blob: bytes) -> _Merged:
    """Raises ValueError when the blob is not a kept merge."""
    try:
        with collector_paused():
            data = unpack(blob)
            entries: dict[Proxy, Entry] = {}
            for values, sources in data["entries"]:
                proxy = proxy_from_data(values)
                entries[proxy] = Entry(proxy=proxy, sources=sources)
        return _Merged(entries, data["rows"])
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"kept merge is unreadable: {exc!r}") from None


def _merge_reports(
    order: Sequence[tuple[str, str]],
    report_of: Callable[[str], ParseReport],
    errors: dict[str, SourceError],
) -> _Merged:
    """Merge the parses of `order` ((source, body hash) pairs); a source
    whose kept parse turns out unreadable goes to `errors`."""
    entries: dict[Proxy, Entry] = {}
    rows: dict[str, dict[str, Any]] = {}
    # Mirrors publish the same body; its report is one object, merged once.
    merged: dict[int, list[Entry]] = {}
    for name, digest in order:
        try:
            report = report_of(digest)
        except SourceError as exc:
            errors[name] = exc
            continue
        unique_before = len(entries)
        if id(report) not in merged:
            touched: dict[Proxy, Entry] = {}
            for proxy in report.proxies:
                if proxy not in touched:
                    entry = entries.get(proxy)
                    if entry is None:
                        entries[proxy] = entry = Entry(proxy=proxy)
                    touched[proxy] = entry
            merged[id(report)] = list(touched.values())
        for entry in merged[id(report)]:
            if name not in entry.sources:
                entry.sources.append(name)
        rows[name] = {
            "shape": report.shape,
            "lines": report.lines,
            "ignored_lines": report.ignored_lines,
            "found": report.found,
            "parsed": len(report.proxies),
            "rejected": dict(Counter(r.reason for r in report.rejections)),
            "new_unique": len(entries) - unique_before,
        }
    return _Merged(entries, rows)


def _merge_sources(
    fetched: Sequence[FetchResult], reader: _SourceReader, cache: Cache
) -> tuple[_Merged, dict[str, SourceError], bool]:
    """The merge of this run's parses: when every body is the one the last
    run merged, the kept merge is read instead of every kept parse.

    Returns the merge, the sources that turned out unreadable, and whether
    the kept merge was used.
    """
    order = [
        (r.source.name, outcome[0])
        for r in fetched
        if isinstance(outcome := reader.outcomes.get(r.source.name), tuple)
    ]
    key = _merge_key(order)
    kept = cache.merged_parse(key)
    if kept is not None:
        try:
            return _unpack_merged(kept), {}, True
        except ValueError as exc:
            log.warning("%s; merging the sources again", exc)
    errors: dict[str, SourceError] = {}
    merged = _merge_reports(order, reader.report, errors)
    if not errors:
        reader.to_keep = (key, merged)
    return merged, errors, False


def _parse_sources(
    fetched: Sequence[FetchResult],
    stats: dict[str, Any],
    reporter: Reporter,
    outcomes: dict[str, tuple[str, str] | SourceError],
    merged: _Merged,
) -> tuple[dict[Proxy, Entry], list[dict[str, Any]]]:
    """Per-source rows and the parse totals, in the order of the sources file."""
    per_source: list[dict[str, Any]] = []
    rejected: Counter[str] = Counter()
    reuse: Counter[str] = Counter()
    found = parsed = unreadable = lines = ignored = 0
    for result in fetched:
        source = result.source
        row: dict[str, Any] = {
            "name": source.name,
            "status": "ok" if result.is_ok else "failed",
            "http_status": result.status,
            "bytes": result.size,
            "seconds": round(result.seconds, 3),
            "error": result.error,
        }
        per_source.append(row)
        reporter.advance()
        outcome = outcomes.get(source.name)
        if outcome is None:
            continue
        if isinstance(outcome, SourceError):
            row.update(status="unreadable", error=str(outcome))
            unreadable += 1
            log.warning("source %s is unreadable: %s", source.name, outcome)
            continue
        how = outcome[1]
        figures = merged.rows[source.name]
        reuse[how] += 1
        row["parse"] = how
        rejected.update(figures["rejected"])
        found += figures["found"]
        parsed += figures["parsed"]
        lines += figures["lines"]
        ignored += figures["ignored_lines"]
        row.update(figures)
        log.info(
            "source %s: %s, %d parsed, %d rejected",
            source.name,
            figures["shape"],
            figures["parsed"],
            sum(figures["rejected"].values()),
        )
    stats["parse"] = {
        "lines": lines,
        "ignored_lines": ignored,
        "found": found,
        "parsed": parsed,
        "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(rejected.most_common()),
        "unreadable_sources": unreadable,
        # Sources whose last parse was reused: answered 304, or the same body.
        "not_modified": reuse["not-modified"],
        "same_body": reuse["same-body"],
        "parsed_sources": reuse["parsed"],
    }
    return merged.entries, per_source


def _in_networks(address: str, networks: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return any(ip.version == net.version and ip in net for net in networks)


async def _check_allowed(
    proxy: Proxy, networks: Sequence[Network], resolver: Resolver
) -> ProbeResult | None:
    """Skip a proxy whose server lies outside the allowed networks; a name
    that does not resolve is dead (the core could not reach it either)."""
    answer = await resolver.resolve(proxy.server)
    if not answer.addresses:
        return ProbeResult(Status.DEAD, reason="server name does not resolve")
    if all(_in_networks(a, networks) for a in answer.addresses):
        return None
    return ProbeResult(Status.SKIPPED, reason="server outside the allowed networks")


async def test_entries(
    entries: list[Entry],
    settings: RunSettings,
    reporter: Reporter,
    stats: dict[str, Any],
    cache: Cache | None = None,
    resolver: Resolver | None = None,
) -> None:
    """Test entries in place: skip those outside the allowed networks, run the rest.

    With a cache (and not `settings.fresh`), results still within their time
    to live are reused instead of testing again. `resolver` answers server
    names for the allowed-network check and the tester's pre-check, and
    keeps them for the geo stage.

    Sets each entry's result and writes the counts into `stats["test"]`.

    Raises:
        CoreError: no usable sing-box core.
    """
    reporter.stage("test", len(entries))
    to_test: list[Entry] = []
    if cache is not None and not settings.fresh:
        cache.preload(identity(entry.proxy) for entry in entries)
    resolver = resolver or Resolver(settings.nameservers)
    verdicts: list[ProbeResult | None] = [None] * len(entries)
    if settings.allow_networks:
        # Names are resolved concurrently (a few hundred distinct hosts in a
        # real run), each once: the resolver shares lookups of one name.
        verdicts = list(
            await asyncio.gather(
                *(
                    _check_allowed(e.proxy, settings.allow_networks, resolver)
                    for e in entries
                )
            )
        )
    for entry, verdict in zip(entries, verdicts, strict=True):
        cached = None
        if verdict is None and cache is not None and not settings.fresh:
            cached = cache.fresh_result(
                identity(entry.proxy), settings.alive_ttl, settings.dead_ttl
            )
        if cached is not None:
            entry.result, entry.reused = cached, True
            reporter.advance()
        elif verdict is None:
            to_test.append(entry)
        else:
            entry.result = verdict
            reporter.advance()
    if to_test:
        core = locate_core(settings.singbox)
        stats["core"] = {
            "path": str(core.path),
            "version": core.version,
            "utls": core.has_utls,
        }
        probe = ProbeSettings(
            test_url=settings.test_url,
            trace_url=settings.trace_url,
            timeout=settings.timeout,
            concurrency=settings.concurrency,
            nameservers=settings.nameservers,
        )
        tester = ProxyTester(core, probe, progress=reporter.advance, resolver=resolver)
        results = await tester.test([entry.proxy for entry in to_test])
        for entry in to_test:
            entry.result = results[entry.proxy]
    statuses = Counter(entry.result.status for entry in entries)
    stats["test"] = {
        "tested": statuses[Status.ALIVE] + statuses[Status.DEAD],
        "alive": statuses[Status.ALIVE],
        "dead": statuses[Status.DEAD],
        "untestable": statuses[Status.UNTESTABLE],
        "skipped": statuses[Status.SKIPPED],
        "untested": statuses[Status.UNTESTED],
        "dead_by_reason": dict(
            Counter(e.result.reason for e in entries if e.result.status is Status.DEAD)
        ),
        "untestable_by_reason": dict(
            Counter(
                e.result.reason for e in entries if e.result.status is Status.UNTESTABLE
            )
        ),
        "test_url": settings.test_url,
        "reused": sum(1 for e in entries if e.reused),
    }


def _locate(
    entries: Sequence[Entry],
    settings: RunSettings,
    stats: dict[str, Any],
    resolver: Resolver | None = None,
) -> None:
    """Country of each entry: by its exit address when the test saw one, else
    by its server's address (a name only when the run already resolved it)."""
    with GeoIP(settings.geoip) as geo:
        for entry in entries:
            country = geo.country(entry.result.exit_ip)
            if country is None:
                known = (resolver.cached(entry.proxy.server) if resolver else None) or (
                    entry.proxy.server,
                )
                country = geo.country(known[0])
            entry.country = country
        stats["geo"] = {
            "database": geo.path.name,
            "by_country": dict(
                Counter(e.country or "unknown" for e in entries).most_common()
            ),
        }


async def _run_pipeline(
    settings: RunSettings, cache: Cache, reporter: Reporter | None = None
) -> RunOutcome:
    reporter = reporter or _Silent()
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    stats: dict[str, Any] = {"version": __version__}
    resolver = Resolver(settings.nameservers)

    mark = time.perf_counter()
    enabled = [s for s in settings.sources if s.enabled]
    history = cache.source_history()
    rest = {} if settings.all_sources else resting(history)
    sources = [s for s in enabled if s.name not in rest]
    for name, why in rest.items():
        log.info("source %s rests this run: %s", name, why)
    reporter.stage("fetch", len(sources))
    # A source's last parse is kept with its validators; without one there
    # is nothing a 304 could reuse, so the request is not conditional.
    kept = {
        source.name: state
        for source in sources
        if source.is_remote
        and (state := cache.fetch_state(source.name, source.url)) is not None
        and not settings.fresh
    }
    reader = _SourceReader(cache, kept)
    try:
        fetched = await fetch_all(
            sources,
            settings.fetch_timeout,
            lambda _: reporter.advance(),
            validators={
                name: Validators(state.etag, state.last_modified, state.cursor)
                for name, state in kept.items()
                if state.etag or state.last_modified or state.cursor
            },
            consume=reader,
        )
    finally:
        reader.close()
    seconds["fetch"] = time.perf_counter() - mark

    mark = time.perf_counter()
    reporter.stage("parse", len(fetched))
    merged, errors, reused_merge = _merge_sources(fetched, reader, cache)
    reader.outcomes.update(errors)
    unique, per_source = _parse_sources(
        fetched, stats, reporter, reader.outcomes, merged
    )
    stats["parse"]["reused_merge"] = reused_merge
    to_keep = reader.to_keep
    del reader, merged  # its reports are merged; let them go
    clear_memo()
    ok = sum(1 for result in fetched if result.is_ok)
    per_source += [
        {"name": s.name, "status": "resting", "error": rest[s.name]}
        for s in enabled
        if s.name in rest
    ]
    stats["fetch"] = {
        "sources": len(sources),
        "disabled": len(settings.sources) - len(enabled),
        "resting": len(enabled) - len(sources),
        "ok": ok,
        "failed": len(sources) - ok,
    }
    stats["sources"] = per_source
    seconds["parse"] = time.perf_counter() - mark
    peak_mb = {"fetch_parse": _peak_mb()}
    if to_keep is not None:
        # Outside the parse stage's figure: work for the next run.
        mark = time.perf_counter()
        cache.keep_merged_parse(to_keep[0], _pack_merged(to_keep[1]))
        seconds["keep_merge"] = time.perf_counter() - mark
        del to_keep

    entries = list(unique.values())
    stats["dedupe"] = {
        "unique": len(entries),
        "duplicates": stats["parse"]["parsed"] - len(entries),
    }
    if settings.shard is not None:
        index, count = settings.shard
        entries = [e for e in entries if shard_of(e.proxy, count) == index]
        stats["shard"] = {"index": index, "count": count, "entries": len(entries)}
    stats["by_protocol"] = dict(
        Counter(e.proxy.protocol for e in entries).most_common()
    )

    mark = time.perf_counter()
    if settings.no_test:
        _test_skipped(entries, stats)
    else:
        await test_entries(entries, settings, reporter, stats, cache, resolver)
    seconds["test"] = time.perf_counter() - mark
    add_outcomes(per_source, entries)
    flag_rows(per_source, history)
    stats["history"] = _history(cache)

    mark = time.perf_counter()
    published = [
        e for e in entries if e.result.status in (Status.ALIVE, Status.UNTESTED)
    ]
    # An alive proxy whose trace failed is placed by its server's address;
    # UDP protocols skip the pre-check, so their names may not be known yet.
    unplaced = {
        e.proxy.server
        for e in published
        if e.result.status is Status.ALIVE and not e.result.exit_ip
    }
    await asyncio.gather(*(resolver.resolve(host) for host in unplaced))
    _locate(published, settings, stats, resolver)
    stats["dns"] = {"queries": resolver.queries, "reused": resolver.hits}
    await resolver.aclose()
    seconds["geo"] = time.perf_counter() - mark

    seconds["total"] = time.perf_counter() - started
    stats["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    # Peak resident memory of the process up to the end of each stage.
    stats["peak_memory_mb"] = {**peak_mb, "run": _peak_mb()}
    if settings.shard is not None:
        path = write_partial(settings.output, stats, entries)
        log.info("shard %d of %d written to %s", *settings.shard, path)
        return RunOutcome(stats=stats, published=published)
    return _publish(entries, published, stats, settings, cache, reporter)


def _publish(
    entries: list[Entry],
    published: list[Entry],
    stats: dict[str, Any],
    settings: RunSettings,
    cache: Cache,
    reporter: Reporter,
) -> RunOutcome:
    """Write the outputs (or keep the last good ones) and record the run."""
    mark = time.perf_counter()
    reporter.stage("publish", 1)
    published = alive_first(published)
    degraded = _degraded(stats, settings, cache.last_good_alive())
    if degraded:
        # Keep the last good lists: clients would rather have yesterday's
        # working configs than today's empty file.
        log.error("run degraded, previous output kept: %s", degraded)
        write_health(settings.output, stats, degraded)
    else:
        write_outputs(
            settings.output,
            published,
            stats,
            test_url=settings.test_url,
            title=settings.title,
            base_url=settings.base_url,
        )
    stats["seconds"]["output"] = round(time.perf_counter() - mark, 3)
    reporter.advance()
    stats["degraded"] = degraded
    cache.record_results(entries)
    cache.record_run(stats)
    return RunOutcome(stats=stats, published=published, degraded=degraded)


def _degraded(
    stats: dict[str, Any], settings: RunSettings, last_good: int | None
) -> str:
    """Why this run must not replace the published lists, or ''."""
    if settings.no_test:
        return ""
    alive = stats["test"]["alive"]
    if alive == 0:
        return "no proxy passed the test"
    if last_good and alive < settings.min_alive_share * last_good:
        return (
            f"{alive} alive is below {settings.min_alive_share:.0%} of the last good "
            f"run's {last_good}"
        )
    return ""


async def run_pipeline(
    settings: RunSettings, reporter: Reporter | None = None
) -> RunOutcome:
    """Run every stage once and publish the result into `settings.output`.

    Holds the cache folder's lock for the whole run (see `cache.exclusive`).
    Failed sources and dead proxies are counted, never raised.

    Raises:
        CacheError: another run keeps the cache locked.
        CoreError: testing was asked for and no usable sing-box exists.
        OutputError: the output folder cannot be written.
    """
    with exclusive(settings.cache), Cache.open(settings.cache) as cache:
        return await _run_pipeline(settings, cache, reporter)


async def merge_partials(
    paths: Sequence[Path], settings: RunSettings, reporter: Reporter | None = None
) -> RunOutcome:
    """Combine the shards' partial results and publish them as one run.

    Raises:
        ShardError: a partial is unreadable, from another split, or missing.
        CacheError, OutputError: as for `run_pipeline`.
    """
    entries, stats = read_partials(paths)
    published = [
        e for e in entries if e.result.status in (Status.ALIVE, Status.UNTESTED)
    ]
    with exclusive(settings.cache), Cache.open(settings.cache) as cache:
        flag_rows(stats["sources"], cache.source_history())
        stats["history"] = _history(cache)
        return _publish(
            entries, published, stats, settings, cache, reporter or _Silent()
        )


def _history(cache: Cache) -> list[dict[str, Any]]:
    return [
        {
            "finished_at": run["finished_at"],
            "alive": (run.get("test") or {}).get("alive", 0),
            "unique": (run.get("dedupe") or {}).get("unique", 0),
        }
        for run in cache.runs()[-HISTORY_ON_PAGE:]
    ]


def _test_skipped(entries: Sequence[Entry], stats: dict[str, Any]) -> None:
    stats["test"] = {
        "tested": 0,
        "alive": 0,
        "dead": 0,
        "untestable": 0,
        "skipped": 0,
        "untested": len(entries),
        "dead_by_reason": {},
        "untestable_by_reason": {},
    }

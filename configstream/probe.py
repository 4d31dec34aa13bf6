"""Test proxies for real through the sing-box core.

Each batch of proxies becomes one core process: outbound `p-N` is reached
through a `mixed` inbound on its own loopback port, so an ordinary HTTP client
(httpx, using the inbound as an HTTP proxy) can fetch any http:// or https://
URL through any proxy. This costs a port per proxy but keeps the test honest:
the Clash API delay endpoint would rewrite http:// test URLs to a fixed https
one and leaves the QUIC handshake out of hysteria2/tuic figures.

Latency is the wall time from sending the request to the local inbound until
the test URL's full response arrived. It includes the proxy's handshake (TCP,
TLS or QUIC) and the request through it, the same work for every protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from configstream.errors import CoreError
from configstream.models import ProbeResult, Proxy, Status
from configstream.outbound import Unrepresentable, secrets_of, to_outbound
from configstream.resolve import Resolver, split_nameserver
from configstream.singbox import Core, find_bad_outbound, reserve_ports, run_core

log = logging.getLogger(__name__)

# One core carries this many outbounds and inbounds: cheap to start (6,000
# with an inbound each take about 1.5 s and 135 MB), and small enough that
# the cores of a run come and go in step with the tests (see LIVE_CORES):
# 3,000 proxies took 12 s in batches of 500 against 14.5 s in batches of
# 1,000 (benchmarks/tester_world.py, concurrency 1,000).
BATCH_SIZE = 500
# Cores alive at most at once. A batch ends only when its slowest tests run
# out their timeout, so the next batch's core starts as soon as every test
# of the running ones has a slot: its tests take the slots freed meanwhile,
# and a run costs about one timeout, not one per batch. Three keep 1,000
# tests busy; a fourth gained no time and cost 30 to 50 MB.
LIVE_CORES = 3
# The TCP pre-check only asks whether anything listens; a short limit keeps
# unroutable servers from holding a slot for the whole test timeout.
PRECHECK_TIMEOUT = 2.0
UDP_PROTOCOLS = frozenset({"hysteria", "hysteria2", "tuic", "wireguard"})
# Each `sing-box check` round removes one bad outbound; a batch with more
# unloadable configs than this is split instead of checked one by one.
MAX_CHECK_ROUNDS = 64
TRACE_BYTES = 4096
# Addresses of one server name the pre-check tries before calling it dead.
MAX_ADDRESSES = 2

Progress = Callable[[int], None]
# A server's addresses and port: what the pre-check dials once.
Target = tuple[tuple[str, ...], int]


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How to test: URLs, limits and time allowed per proxy."""

    test_url: str
    trace_url: str | None
    timeout: float
    concurrency: int
    # DNS servers for server names ("IP" or "IP:PORT"); empty: the system's.
    nameservers: tuple[str, ...] = ()


def make_ssl_context() -> ssl.SSLContext:
    """The system trust store plus the file named by SSL_CERT_FILE, if any."""
    context = ssl.create_default_context()
    system = ssl.get_default_verify_paths().openssl_cafile
    if system and os.path.exists(system):
        context.load_verify_locations(cafile=system)
    extra = os.environ.get("SSL_CERT_FILE")
    if extra and os.path.exists(extra):
        context.load_verify_locations(cafile=extra)
    return context


def parse_trace(body: str) -> str | None:
    """Read `ip=` from a Cloudflare trace body (`key=value` lines)."""
    for line in body.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ip" and value.strip():
            return value.strip()
    return None


def _scrub(text: str, proxy: Proxy) -> str:
    for secret in secrets_of(proxy):
        text = text.replace(secret, "***")
    return text


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    return type(exc).__name__


async def _probe_one(
    port: int, settings: ProbeSettings, context: ssl.SSLContext
) -> ProbeResult:
    proxy_url = f"http://127.0.0.1:{port}"
    timeout = httpx.Timeout(settings.timeout)
    async with httpx.AsyncClient(
        proxy=proxy_url, verify=context, timeout=timeout, trust_env=False
    ) as client:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(settings.timeout):
                response = await client.get(settings.test_url)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return ProbeResult(Status.DEAD, reason=_reason(exc))
        latency = (time.perf_counter() - started) * 1000
        if response.status_code == 502:
            # The mixed inbound answers 502 when its outbound cannot connect.
            return ProbeResult(Status.DEAD, reason="proxy failed to connect")
        if response.status_code >= 400:
            return ProbeResult(
                Status.DEAD, reason=f"test URL answered {response.status_code}"
            )
        exit_ip = None
        if settings.trace_url:
            try:
                async with asyncio.timeout(settings.timeout):
                    trace = await client.get(settings.trace_url)
                exit_ip = parse_trace(trace.text[:TRACE_BYTES])
            except (httpx.HTTPError, TimeoutError, OSError) as exc:
                log.debug("trace through port %d failed: %s", port, _reason(exc))
        return ProbeResult(Status.ALIVE, latency_ms=round(latency, 1), exit_ip=exit_ip)


def _batch_config(
    outbounds: Sequence[dict[str, Any]],
    ports: Sequence[int],
    nameservers: Sequence[str] = (),
) -> dict[str, Any]:
    inbounds = [
        {"type": "mixed", "tag": f"in-{i}", "listen": "127.0.0.1", "listen_port": port}
        for i, port in enumerate(ports)
    ]
    rules = [
        {"inbound": [f"in-{i}"], "outbound": ob["tag"]}
        for i, ob in enumerate(outbounds)
    ]
    # WireGuard is an endpoint in sing-box; routing names it like an outbound.
    config: dict[str, Any] = {
        "log": {"level": "error"},
        "inbounds": inbounds,
        "outbounds": [ob for ob in outbounds if ob["type"] != "wireguard"],
        "route": {"rules": rules},
    }
    endpoints = [ob for ob in outbounds if ob["type"] == "wireguard"]
    if endpoints:
        config["endpoints"] = endpoints
    if nameservers:
        # The core resolves server names through the same servers as the
        # pre-check, so both see the same addresses.
        config["dns"] = {
            "servers": [
                {"type": "udp", "tag": f"dns-{i}", "server": host, "server_port": port}
                for i, (host, port) in enumerate(map(split_nameserver, nameservers))
            ]
        }
        config["route"]["default_domain_resolver"] = "dns-0"
    return config


def _batch_index(
    outbounds: Sequence[dict[str, Any]], kind: str, index: int
) -> int | None:
    """Map `sing-box check`'s `outbound[N]` or `endpoint[N]` back to the batch."""
    is_endpoint = kind == "endpoint"
    positions = [
        i
        for i, ob in enumerate(outbounds)
        if (ob["type"] == "wireguard") == is_endpoint
    ]
    return positions[index] if index < len(positions) else None


_STARTED_TAG = re.compile(r"\[p-(\d+)\]")


def _started_index(stderr: str, size: int) -> int | None:
    """The batch position of the outbound a failed start names by tag."""
    match = _STARTED_TAG.search(stderr)
    if match is None or int(match.group(1)) >= size:
        return None
    return int(match.group(1))


def _combine(first: ProbeResult, second: ProbeResult) -> ProbeResult:
    if second.status is not Status.ALIVE:
        return ProbeResult(Status.DEAD, reason=f"flaky: second round {second.reason}")
    rounds = [first.latency_ms or 0.0, second.latency_ms or 0.0]
    return ProbeResult(
        Status.ALIVE,
        latency_ms=round(statistics.median(rounds), 1),
        exit_ip=first.exit_ip or second.exit_ip,
    )


# A batch whose core dies or cannot start is tried this many times in all.
BATCH_ATTEMPTS = 2
# Halvings of failing batches allowed per tester: one bad config in a batch
# of 1,000 needs about 20; a core that fails for every config stops here.
MAX_SPLITS = 64
# How long a batch with failures waits to see whether its core died.
CORE_EXIT_GRACE = 0.3


class _CoreDied(Exception):
    """The core exited while its batch was being tested."""

    def __init__(self, code: int) -> None:
        super().__init__(f"sing-box exited with code {code} during the batch")


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, CoreError):
        return f"no free local port for the core's inbounds: {exc.strerror or exc}"
    return f"the core failed: {str(exc).splitlines()[0][:160]}"


# Descriptors kept free for everything else (logs, the cache, httpx pools).
FD_RESERVE = 256


def fd_budget(requested: int, limits: tuple[int, int] | None = None) -> tuple[int, int]:
    """How many tests may be in flight, and how many outbounds a core may
    hold, given the open-file limit.

    The soft limit is raised to the hard one first (the core inherits it).
    The core needs one descriptor per inbound of its batch plus two per
    connection in flight (accepted and outgoing); this process one per
    connection. What is left after `FD_RESERVE` is shared: a batch gets at
    most half, the connections the rest.
    """
    if limits is None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            with contextlib.suppress(ValueError, OSError):
                wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
    else:
        soft, hard = limits
    usable = max(4, soft - FD_RESERVE)
    batch = max(1, min(BATCH_SIZE, usable // 2))
    concurrency = max(1, min(requested, (usable - batch) // 2))
    if (concurrency, batch) != (requested, BATCH_SIZE) and concurrency < requested:
        log.warning(
            "concurrency %d lowered to %d (batches of %d): the open-file limit is %d",
            requested,
            concurrency,
            batch,
            soft,
        )
    return concurrency, batch


# Memory per outbound with its inbound in a core, and per test in flight
# (the core's connection pair and this process's httpx client). Measured on
# 1.14.4 in benchmarks/tester_world.py's world of eight protocols: a core
# with 500 outbounds holds about 45 MB before any connection (TLS settings
# are most of it) and about 100 MB with 500 tests through it; this process
# about 90 MB with 1,000 in flight.
OUTBOUND_BYTES = 96 << 10
CONNECTION_BYTES = 128 << 10
# Share of the memory available at start that testing may plan to use.
MEMORY_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes this process may still use: the smaller of the system's
    MemAvailable and the room left under a cgroup v2 limit; None if unknown."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    return min(found) if found else None


def memory_budget(
    concurrency: int, batch: int, available: int | None
) -> tuple[int, int]:
    """Concurrency and batch size lowered until the live cores' outbounds and
    the tests in flight fit in `MEMORY_SHARE` of the available memory."""
    if available is None:
        return concurrency, batch
    allowed = int(available * MEMORY_SHARE)
    per_outbound = OUTBOUND_BYTES * LIVE_CORES
    fitted_batch = max(1, min(batch, allowed // 2 // per_outbound))
    room = allowed - fitted_batch * per_outbound
    fitted = max(1, min(concurrency, room // CONNECTION_BYTES))
    if (fitted, fitted_batch) != (concurrency, batch):
        log.warning(
            "concurrency %d lowered to %d (batches of %d): %d MB of memory available",
            concurrency,
            fitted,
            fitted_batch,
            available >> 20,
        )
    return fitted, fitted_batch


class ProxyTester:
    """Tests proxies in batches, one core process per batch."""

    def __init__(
        self,
        core: Core,
        settings: ProbeSettings,
        progress: Progress | None = None,
        resolver: Resolver | None = None,
    ):
        self.core = core
        self.resolver = resolver or Resolver(settings.nameservers)
        self._splits = 0
        # Whether the core loads a config without proxies (asked once, when
        # a check fails without naming an outbound).
        self._empty_loads: bool | None = None
        self.settings = settings
        self.progress = progress or (lambda done: None)
        self.context = make_ssl_context()
        concurrency, self.batch_size = memory_budget(
            *fd_budget(settings.concurrency), available_memory()
        )
        self.limit = asyncio.Semaphore(concurrency)
        self.cores = asyncio.Semaphore(LIVE_CORES)
        # Held from choosing a batch's ports until its core listens on them,
        # so two batches starting together never pick the same free port.
        self.starting = asyncio.Lock()

    async def test(self, proxies: Sequence[Proxy]) -> dict[Proxy, ProbeResult]:
        """Test every proxy; every input gets a result, whatever fails."""
        results: dict[Proxy, ProbeResult] = {}
        runnable: list[tuple[Proxy, dict[str, Any]]] = []
        for proxy in proxies:
            try:
                outbound = to_outbound(
                    proxy, f"p-{len(runnable)}", has_utls=self.core.has_utls
                )
            except Unrepresentable as exc:
                results[proxy] = ProbeResult(Status.UNTESTABLE, reason=exc.reason)
                self.progress(1)
                continue
            runnable.append((proxy, outbound))
        refused = await self._precheck([proxy for proxy, _ in runnable])
        for proxy, reason in refused.items():
            results[proxy] = ProbeResult(Status.DEAD, reason=reason)
            self.progress(1)
        runnable = [(p, ob) for p, ob in runnable if p not in refused]

        async def run(
            batch: list[tuple[Proxy, dict[str, Any]]], dispatched: asyncio.Event
        ) -> None:
            try:
                results.update(await self._test_batch(batch, dispatched))
            finally:
                dispatched.set()
                self.cores.release()

        tasks: list[asyncio.Task[None]] = []
        try:
            for start in range(0, len(runnable), self.batch_size):
                await self.cores.acquire()
                dispatched = asyncio.Event()
                batch = runnable[start : start + self.batch_size]
                tasks.append(asyncio.create_task(run(batch, dispatched)))
                # Tests take slots in the order they ask, so the earlier
                # batches' tests go first and their cores stop sooner.
                await dispatched.wait()
                if tasks[-1].done() and tasks[-1].exception() is not None:
                    break  # a core that fails for every config; raised below
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            # Cancelled batches stop their cores before the run goes on.
            await asyncio.gather(*tasks, return_exceptions=True)
        return results

    async def _precheck(self, proxies: Sequence[Proxy]) -> dict[Proxy, str]:
        """TCP-connect once per address:port; those that refuse are dead.

        Server names are resolved first (each once, through the run's
        resolver), so two names of one server cost one connect. QUIC-based
        protocols and WireGuard run over UDP, where a connect proves nothing,
        so they skip this pass.
        """
        tcp = [p for p in proxies if p.protocol not in UDP_PROTOCOLS]
        timeout = min(PRECHECK_TIMEOUT, self.settings.timeout)
        names = {p.server for p in tcp}
        answers = dict(
            zip(
                names,
                await asyncio.gather(*(self.resolver.resolve(n) for n in names)),
                strict=True,
            )
        )

        async def connect(target: Target) -> tuple[Target, str]:
            addresses, port = target
            reason = ""
            async with self.limit:
                # Like the core's dialer, try the next address when one
                # fails; the first that accepts settles it.
                for address in addresses[:MAX_ADDRESSES]:
                    try:
                        _, writer = await asyncio.wait_for(
                            asyncio.open_connection(address, port), timeout
                        )
                    except TimeoutError:
                        reason = "tcp connect timeout"
                        continue
                    except ConnectionRefusedError:
                        reason = "tcp connect refused"
                        continue
                    except OSError as exc:
                        reason = f"tcp connect failed: {type(exc).__name__}"
                        continue
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return target, ""
            return target, reason

        targets = {
            p: (answers[p.server].addresses, p.port)
            for p in tcp
            if answers[p.server].addresses
        }
        verdicts = dict(
            await asyncio.gather(*(connect(t) for t in set(targets.values())))
        )
        refused = {
            p: "server name does not resolve"
            for p in tcp
            if not answers[p.server].addresses
        }
        refused.update(
            (p, verdicts[target]) for p, target in targets.items() if verdicts[target]
        )
        return refused

    async def _loadable(
        self,
        batch: list[tuple[Proxy, dict[str, Any]]],
        results: dict[Proxy, ProbeResult],
    ) -> list[tuple[Proxy, dict[str, Any]]]:
        # `sing-box check` names the first outbound it cannot load; drop it
        # as untestable and ask again, so one bad config never costs the
        # others in its batch their test.
        for _ in range(MAX_CHECK_ROUNDS):
            outbounds = [dict(ob, tag=f"p-{i}") for i, (_, ob) in enumerate(batch)]
            found, message = await find_bad_outbound(
                self.core, _batch_config(outbounds, [0] * len(outbounds))
            )
            if found is None and not message:
                return batch
            index = _batch_index(outbounds, *found) if found else None
            if index is None:
                return await self._split_unnamed(batch, results, message)
            proxy = batch[index][0]
            reason = _scrub(
                message.split(f"{found[0]}[{found[1]}]:", 1)[-1].strip(), proxy
            )
            results[proxy] = ProbeResult(
                Status.UNTESTABLE, reason=f"core refused: {reason}"[:300]
            )
            self.progress(1)
            batch = batch[:index] + batch[index + 1 :]
        half = len(batch) // 2
        return await self._loadable(batch[:half], results) + await self._loadable(
            batch[half:], results
        )

    async def _split_unnamed(
        self,
        batch: list[tuple[Proxy, dict[str, Any]]],
        results: dict[Proxy, ProbeResult],
        message: str,
    ) -> list[tuple[Proxy, dict[str, Any]]]:
        # `sing-box check` failed without naming an outbound. If it loads a
        # batch of none, the fault is in the proxies: halve until each bad
        # one stands alone (about 2 log2(n) checks per bad config).
        if self._empty_loads is None:
            found, empty_message = await find_bad_outbound(
                self.core, _batch_config([], [], self.settings.nameservers)
            )
            self._empty_loads = found is None and not empty_message
        if not self._empty_loads:
            raise CoreError("sing-box rejects the batch config", message)
        if len(batch) == 1:
            proxy = batch[0][0]
            reason = _scrub(message.splitlines()[-1] if message else "", proxy)
            results[proxy] = ProbeResult(
                Status.UNTESTABLE, reason=f"core refused: {reason}"[:300]
            )
            self.progress(1)
            return []
        half = len(batch) // 2
        return await self._loadable(batch[:half], results) + await self._loadable(
            batch[half:], results
        )

    async def _test_batch(
        self, batch: list[tuple[Proxy, dict[str, Any]]], dispatched: asyncio.Event
    ) -> dict[Proxy, ProbeResult]:
        """Test one batch; `dispatched` is set once each of its tests has
        had a slot (or the batch is over)."""
        results: dict[Proxy, ProbeResult] = {}
        batch = await self._loadable(batch, results)
        counted: set[Proxy] = set()
        if batch:
            await self._run_or_split(
                batch, results, counted, BATCH_ATTEMPTS, dispatched
            )
        for proxy, _ in batch:
            if proxy not in counted:
                self.progress(1)
        return results

    async def _run_or_split(
        self,
        batch: list[tuple[Proxy, dict[str, Any]]],
        results: dict[Proxy, ProbeResult],
        counted: set[Proxy],
        attempts: int,
        dispatched: asyncio.Event,
    ) -> None:
        no_port, reason = False, ""
        attempt = 0
        while attempt < attempts:
            attempt += 1
            try:
                results.update(await self._run_batch(batch, counted, dispatched))
                return
            except CoreError as exc:
                # A config `check` accepts can still fail at start (an
                # outbound that cannot start names itself by tag): drop it
                # and start the rest, without spending an attempt.
                index = _started_index(exc.stderr_tail, len(batch))
                if index is not None:
                    proxy = batch[index][0]
                    message = exc.stderr_tail.strip().splitlines()[-1]
                    results[proxy] = ProbeResult(
                        Status.UNTESTABLE,
                        reason=f"core refused at start: {_scrub(message, proxy)}"[:300],
                    )
                    batch = batch[:index] + batch[index + 1 :]
                    attempt -= 1
                    if not batch:
                        return
                    continue
                reason = _failure_reason(exc)
                if attempt < attempts:
                    log.warning("batch of %d: %s; trying it again", len(batch), reason)
            except (_CoreDied, OSError) as exc:
                no_port = isinstance(exc, OSError) and not isinstance(exc, CoreError)
                # A core that dies (killed, out of memory) or cannot start
                # (a reserved port taken meanwhile) says nothing about the
                # proxies at first: the batch is tried once more.
                reason = _failure_reason(exc)
                if attempt < attempts:
                    log.warning("batch of %d: %s; trying it again", len(batch), reason)
                    continue
        # Twice in a row may be one config the core cannot start or survive
        # (a panic on dial): halve the batch, each half in a core of its
        # own, until the culprits stand alone. No free port is not the
        # proxies' fault, and a core that fails for everything stops
        # the halving at MAX_SPLITS.
        if len(batch) > 1 and not no_port and self._splits < MAX_SPLITS:
            self._splits += 1
            log.warning(
                "batch of %d: %s; halving it to find the config at fault",
                len(batch),
                reason,
            )
            half = len(batch) // 2
            await self._run_or_split(batch[:half], results, counted, 1, dispatched)
            await self._run_or_split(batch[half:], results, counted, 1, dispatched)
            return
        log.error("batch of %d: %s; its proxies are untestable", len(batch), reason)
        for proxy, _ in batch:
            results[proxy] = ProbeResult(Status.UNTESTABLE, reason=reason)

    async def _run_batch(
        self,
        batch: list[tuple[Proxy, dict[str, Any]]],
        counted: set[Proxy],
        dispatched: asyncio.Event,
    ) -> dict[Proxy, ProbeResult]:
        """One core for the batch, every proxy probed through it.

        Raises:
            CoreError: the core did not start.
            _CoreDied: the core exited while the batch was being tested.
            OSError: no free local ports for the inbounds.
        """
        results: dict[Proxy, ProbeResult] = {}
        outbounds = [dict(ob, tag=f"p-{i}") for i, (_, ob) in enumerate(batch)]
        log.info("testing %d proxies through one sing-box", len(batch))

        waiting = len(batch)

        async def one(index: int) -> None:
            nonlocal waiting
            async with self.limit:
                waiting -= 1
                if not waiting:
                    dispatched.set()
                result = await _probe_one(ports[index], self.settings, self.context)
            if result.status is Status.ALIVE:
                # A second round weeds out configs that work only now and
                # then; alive means passing both, latency is their median.
                async with self.limit:
                    again = await _probe_one(ports[index], self.settings, self.context)
                result = _combine(result, again)
            proxy = batch[index][0]
            log.debug(
                "%s %s: %s %s",
                proxy.protocol,
                proxy.endpoint,
                result.status,
                result.reason,
            )
            results[proxy] = result
            if proxy not in counted:
                counted.add(proxy)
                self.progress(1)

        async with contextlib.AsyncExitStack() as stack:
            async with self.starting:
                ports = reserve_ports(len(batch))
                config = _batch_config(outbounds, ports, self.settings.nameservers)
                proc = await stack.enter_async_context(
                    run_core(self.core, config, ports)
                )
            await asyncio.gather(*(one(i) for i in range(len(batch))))
            if any(r.status is not Status.ALIVE for r in results.values()):
                # Probes see a dead core's connections reset before asyncio
                # reaps it: give the exit a moment to show before trusting
                # the failures as the proxies' own.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), CORE_EXIT_GRACE)
            if proc.returncode is not None:
                raise _CoreDied(proc.returncode)
        return results

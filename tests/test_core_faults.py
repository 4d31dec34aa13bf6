"""Faults of the real sing-box core: killed mid-batch, an unusable binary, no
free port, and what a stopped run leaves behind.

Every proxy tested here is a server of the loopback demo world; no public
host is resolved or contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import configstream.probe
from configstream.cache import DATABASE_NAME, Cache
from configstream.demo import TraceHandler, World, black_hole_listener, serve_http
from configstream.errors import SourceError
from configstream.models import ProbeResult, Proxy, Status
from configstream.outbound import Unrepresentable, to_outbound
from configstream.parse import parse_body
from configstream.probe import ProbeSettings, ProxyTester
from configstream.singbox import Core, reserve_ports
from tests.conftest import loopback_probe, run_cli, world_run_args

# Long enough that a core can be killed while every probe of its batch is
# still waiting for the test URL, short enough to keep each test a few seconds.
SLOW_ANSWER = 0.5
# Small batches, so one world gives a killed batch and untouched ones.
SMALL_BATCH = 4


# -- the world's proxies -----------------------------------------------------


@dataclass(frozen=True)
class WorldProxies:
    """The world's loopback proxies, read from its own subscriptions."""

    live: list[Proxy]  # each answers; in the order of `world.live`
    wrong: list[Proxy]  # a live server's port with wrong credentials
    loopback: list[Proxy]  # every loopback proxy the subscriptions hold


@pytest.fixture(scope="module")
def world_proxies(world: World) -> WorldProxies:
    """The world's proxies, sorted into live, wrong-credential and all loopback."""
    sources = yaml.safe_load(world.sources_file.read_text())["sources"]
    found: list[Proxy] = []
    with httpx.Client(trust_env=False, timeout=10) as client:
        for source in sources:
            response = client.get(source["url"])
            if response.status_code != 200:
                continue
            try:
                found += parse_body(response.content).proxies
            except SourceError:
                continue
    # The world also lists a server outside loopback, which must never be
    # contacted; direct use of the tester has no network filter, so drop it.
    loopback = [
        p for p in dict.fromkeys(found) if ipaddress.ip_address(p.server).is_loopback
    ]
    secrets = set(world.secrets)
    by_server = {
        (p.protocol, p.port, p.uuid in secrets or p.password in secrets): p
        for p in loopback
    }
    live = [by_server[(s.protocol, s.port, True)] for s in world.live]
    live_ports = {(s.protocol, s.port) for s in world.live}
    wrong = [
        p for p in loopback if (p.protocol, p.port) in live_ports and p not in live
    ]
    assert len(live) == len(world.live) and len(wrong) >= 2
    return WorldProxies(live=live, wrong=wrong, loopback=loopback)


# -- finding and killing the core --------------------------------------------


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces; the fields after it
    # are state, then the parent pid.
    return int(stat.rpartition(")")[2].split()[1])


def _running_cores(core: Core) -> dict[int, list[str]]:
    """`sing-box run` processes whose parent is this test process, by pid."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or _parent_pid(int(entry.name)) != os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if Path(argv[0]) == core.path and argv[1:2] == ["run"]:
            found[int(entry.name)] = argv
    return found


def _server_ports(argv: list[str]) -> set[int]:
    """The server ports of the outbounds in a running core's config file."""
    try:
        config = json.loads(Path(argv[argv.index("-c") + 1]).read_text())
    except (OSError, ValueError):
        return set()
    outbounds = config.get("outbounds", []) + config.get("endpoints", [])
    return {ob["server_port"] for ob in outbounds if "server_port" in ob}


def _is_gone(pid: int) -> bool:
    """True once the process is gone and reaped (a zombie still has /proc)."""
    return not Path(f"/proc/{pid}").exists()


class _SlowTestUrl:
    """A loopback test URL that answers after SLOW_ANSWER seconds; counts requests."""

    def __init__(self) -> None:
        self.requests: list[float] = []
        seen = self.requests

        class Handler(TraceHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/generate_204"):
                    seen.append(time.monotonic())
                    time.sleep(SLOW_ANSWER)
                super().do_GET()

        self.handler = Handler


@dataclass
class _CoreKiller:
    """Watches the cores this process starts; SIGKILLs those carrying one proxy.

    A core is killed only once one of its probes has reached the test URL,
    so the kill lands in the middle of its batch, not before or after it.
    """

    core: Core
    marker_port: int
    kills: int
    slow: _SlowTestUrl
    seen: dict[int, bool] = field(default_factory=dict)  # pid -> carries marker
    killed: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def watch(self, ignore: set[int]) -> None:
        while not self.stop.is_set():
            for pid, argv in _running_cores(self.core).items():
                if pid in ignore or pid in self.seen:
                    continue
                carries = self.marker_port in _server_ports(argv)
                self.seen[pid] = carries
                if carries and len(self.killed) < self.kills:
                    self._kill_mid_batch(pid)
            time.sleep(0.01)

    def _kill_mid_batch(self, pid: int) -> None:
        before = len(self.slow.requests)
        deadline = time.monotonic() + 10
        while len(self.slow.requests) == before:
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)

    @property
    def marked(self) -> list[int]:
        return [pid for pid, carries in self.seen.items() if carries]


@dataclass
class _KilledRun:
    results: dict[Proxy, ProbeResult]
    killer: _CoreKiller
    world_cores: set[int]


def _test_with_kills(
    core: Core, proxies: list[Proxy], kills: int, monkeypatch: pytest.MonkeyPatch
) -> _KilledRun:
    """Test `proxies` in small batches, killing up to `kills` cores of the first."""
    monkeypatch.setattr(configstream.probe, "BATCH_SIZE", SMALL_BATCH)
    slow = _SlowTestUrl()
    # The world's own server core is a child of this process too.
    world_cores = set(_running_cores(core))
    killer = _CoreKiller(core, proxies[0].port, kills, slow)
    watcher = threading.Thread(target=killer.watch, args=(world_cores,), daemon=True)
    with serve_http(slow.handler) as port:
        settings = loopback_probe(port, timeout=5, concurrency=16)
        watcher.start()
        try:
            results = asyncio.run(ProxyTester(core, settings).test(proxies))
        finally:
            killer.stop.set()
            watcher.join(timeout=15)
    return _KilledRun(results, killer, world_cores)


def _batch_order(world_proxies: WorldProxies) -> list[Proxy]:
    """Live proxies first, then the wrong ones: three batches of SMALL_BATCH."""
    proxies = world_proxies.live + world_proxies.wrong
    # The first proxy marks the first batch's cores by its server port.
    assert sum(p.port == proxies[0].port for p in proxies) == 1
    assert len(proxies) > 2 * SMALL_BATCH
    return proxies


def _assert_no_core_left(run: _KilledRun) -> None:
    deadline = time.monotonic() + 5
    while not all(_is_gone(pid) for pid in run.killer.seen):
        assert time.monotonic() < deadline, "a tester core outlived the test"
        time.sleep(0.05)
    assert set(_running_cores(run.killer.core)) == run.world_cores


def test_core_killed_mid_batch_costs_no_other_batch(
    core: Core, world_proxies: WorldProxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of a batch's core: no exception, every proxy a result, others intact."""
    proxies = _batch_order(world_proxies)
    run = _test_with_kills(core, proxies, 1, monkeypatch)
    assert len(run.killer.killed) == 1, "the first batch's core was not killed"
    assert len(run.killer.seen) >= 3, "the proxies were not split into batches"
    assert set(run.results) == set(proxies)
    for proxy in proxies[SMALL_BATCH:]:
        expected = Status.ALIVE if proxy in world_proxies.live else Status.DEAD
        assert run.results[proxy].status is expected, (proxy.protocol, run.results)
    _assert_no_core_left(run)


def test_core_killed_mid_batch_is_retried_once(
    core: Core, world_proxies: WorldProxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose core dies is tested again in a new core, and only once."""
    proxies = _batch_order(world_proxies)
    run = _test_with_kills(core, proxies, 1, monkeypatch)
    assert len(run.killer.killed) == 1
    first_batch = proxies[:SMALL_BATCH]
    assert [run.results[p].status for p in first_batch] == [Status.ALIVE] * len(
        first_batch
    ), [run.results[p] for p in first_batch]
    assert len(run.killer.marked) == 2, "expected the first try and one retry"
    _assert_no_core_left(run)


def test_core_that_dies_for_one_config_is_halved_down_to_it(
    core: Core, world_proxies: WorldProxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A core killed every time it carries one proxy: after the retry the batch
    is halved, each half in a core of its own, until that proxy stands alone.
    Only it is lost; its batch-mates get their real results."""
    proxies = _batch_order(world_proxies)
    run = _test_with_kills(core, proxies, 100, monkeypatch)
    culprit = proxies[0]
    # The batch of 4 twice, then its half of 2, then the culprit alone.
    assert len(run.killer.marked) == 4, run.killer.seen
    assert len(run.killer.killed) == 4
    assert run.results[culprit].status is Status.UNTESTABLE
    assert re.search(r"sing-box|core", run.results[culprit].reason)
    for proxy in proxies[1:]:
        expected = Status.ALIVE if proxy in world_proxies.live else Status.DEAD
        assert run.results[proxy].status is expected, (proxy.protocol, run.results)
    _assert_no_core_left(run)


def test_next_batch_starts_while_the_last_waits_out_its_silent_proxies(
    core: Core, world_proxies: WorldProxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once every test of a batch has a slot, the next batch's core starts:
    a batch of proxies that never answer does not hold up the live ones
    behind it for its whole timeout."""
    monkeypatch.setattr(configstream.probe, "BATCH_SIZE", SMALL_BATCH)
    live = world_proxies.live[:SMALL_BATCH]
    lifetimes: list[tuple[set[int], float, float]] = []
    real_run_core = configstream.probe.run_core

    @contextlib.asynccontextmanager
    async def timed_run_core(
        core: Core, config: dict[str, Any], ready_ports: Any = ()
    ) -> AsyncIterator[Any]:
        servers = {ob.get("server_port") for ob in config["outbounds"]}
        async with real_run_core(core, config, ready_ports) as proc:
            started = time.monotonic()
            try:
                yield proc
            finally:
                lifetimes.append((servers, started, time.monotonic()))

    monkeypatch.setattr(configstream.probe, "run_core", timed_run_core)
    # A listener that accepts TCP and never answers; UDP on its port is
    # closed, which QUIC clients ignore: silent either way.
    with black_hole_listener() as hole, serve_http(TraceHandler) as port:
        silent = [dataclasses.replace(p, port=hole) for p in live]
        settings = loopback_probe(port, concurrency=2 * SMALL_BATCH)
        results = asyncio.run(ProxyTester(core, settings).test(silent + live))
    assert [results[p].status for p in silent] == [Status.DEAD] * len(silent)
    assert [results[p].status for p in live] == [Status.ALIVE] * len(live)
    silent_core = next(t for t in lifetimes if hole in t[0])
    live_core = next(t for t in lifetimes if hole not in t[0])
    # The live batch's core started before the silent batch's core stopped.
    assert live_core[1] < silent_core[2], lifetimes


def test_quic_proxies_on_a_udp_port_that_drops_everything_are_dead(
    core: Core, world_proxies: WorldProxies
) -> None:
    """hysteria2 and tuic towards a UDP socket that never reads: no answer
    and no ICMP either, so each is dead by the timeout (not untestable), and
    the live copies in the same batch still pass."""
    quic = [p for p in world_proxies.live if p.protocol in {"hysteria2", "tuic"}]
    assert {p.protocol for p in quic} == {"hysteria2", "tuic"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        silent = [dataclasses.replace(p, port=port) for p in quic]
        with serve_http(TraceHandler) as http_port:
            settings = loopback_probe(http_port)
            results = asyncio.run(ProxyTester(core, settings).test(silent + quic))
    for proxy in silent:
        assert results[proxy].status is Status.DEAD, results[proxy]
        assert results[proxy].reason, results[proxy]
    assert [results[p].status for p in quic] == [Status.ALIVE] * len(quic)


# -- an unusable --singbox ---------------------------------------------------


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _make_missing(folder: Path) -> Path:
    return folder / "no-such-sing-box"


def _make_not_executable(folder: Path) -> Path:
    path = folder / "sing-box"
    path.write_text("#!/bin/sh\necho 'sing-box version 1.14.4'\n")
    path.chmod(0o644)
    return path


def _make_garbage(folder: Path) -> Path:
    return _script(folder / "sing-box", "echo 'hello, I am a toaster'\n")


def _error_text(stderr: str) -> str:
    """The CLI's error message, from `error:` to the end, without whitespace.

    Whitespace goes so that a message wrapped by the terminal width still
    compares whole; keeping it on one line is tested on its own.
    """
    assert "error:" in stderr, stderr[-2000:]
    return re.sub(r"\s", "", stderr[stderr.index("error:") :])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_make_missing, "sing-box binary not found at"),
        (_make_not_executable, "is not executable"),
        (_make_garbage, "does not identify itself as sing-box"),
    ],
    ids=["missing", "not-executable", "garbage-version"],
)
def test_unusable_singbox_is_a_clear_error(
    world: World, tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    """`run --singbox` at an unusable file: exit 2, the error names it, no traceback."""
    binary = make(tmp_path)
    done = run_cli(*world_run_args(world), "--singbox", str(binary), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    error = _error_text(done.stderr)
    assert re.sub(r"\s", "", message) in error
    assert re.sub(r"\s", "", str(binary)) in error
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_too_old_singbox_is_named_in_the_error(world: World, tmp_path: Path) -> None:
    """A binary claiming sing-box 0.1.0: the error names that version."""
    binary = _script(
        tmp_path / "sing-box",
        'if [ "$1" = version ]; then echo "sing-box version 0.1.0"; exit 0; fi\n'
        'echo "unknown command $1" >&2; exit 1\n',
    )
    done = run_cli(*world_run_args(world), "--singbox", str(binary), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "0.1.0" in _error_text(done.stderr)


def test_core_error_stays_on_one_line_in_a_log(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error about a missing core at a long path is one greppable line."""
    monkeypatch.delenv("COLUMNS", raising=False)
    binary = tmp_path / ("deep-" * 20) / "sing-box"
    done = run_cli(*world_run_args(world), "--singbox", str(binary), cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(str(binary)), errors


# -- no free port ------------------------------------------------------------


def _no_free_port(count: int) -> list[int]:
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def test_no_free_port_leaves_every_proxy_a_result(
    core: Core, world_proxies: WorldProxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No port for the inbounds: the batch is untestable with a reason, the rest kept."""
    monkeypatch.setattr(configstream.probe, "reserve_ports", _no_free_port)
    settings = ProbeSettings(
        test_url="http://127.0.0.1:9/generate_204",
        trace_url=None,
        timeout=3,
        concurrency=16,
    )
    proxies = world_proxies.loopback
    results = asyncio.run(ProxyTester(core, settings).test(proxies))
    assert set(results) == set(proxies)
    for proxy in world_proxies.live:
        assert results[proxy].status in (Status.UNTESTABLE, Status.SKIPPED)
        assert "port" in results[proxy].reason.lower(), results[proxy]
    unrepresentable = []
    for proxy in proxies:
        try:
            to_outbound(proxy, "p", has_utls=core.has_utls)
        except Unrepresentable as exc:
            unrepresentable.append(proxy)
            assert results[proxy] == ProbeResult(Status.UNTESTABLE, reason=exc.reason)
    refused = [p for p, r in results.items() if r.reason == "tcp connect refused"]
    # The world holds both kinds, so the checks above were not vacuous.
    assert unrepresentable and refused
    assert all(results[p].status is Status.DEAD for p in refused)
    assert not any(r.status is Status.ALIVE for r in results.values())


_PATCHED_CLI = """\
import errno, os, sys
import configstream.probe

def _no_free_port(count):
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))

configstream.probe.reserve_ports = _no_free_port
from configstream.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _output_sizes(output: Path) -> dict[str, int]:
    manifest = json.loads((output / "manifest.json").read_text())
    return {item["name"]: item["size"] for item in manifest["files"]}


def _assert_output_whole(
    output: Path, sizes: dict[str, int], manifest: dict[str, int] | None = None
) -> None:
    """The files named by `sizes` are all there, each at its size, and the
    manifest is still the one that listed `manifest` (by default `sizes`)."""
    assert _output_sizes(output) == (sizes if manifest is None else manifest)
    for name, size in sizes.items():
        assert (output / name).is_file(), name
        assert (output / name).stat().st_size == size, name


def _assert_cache_whole(folder: Path, runs: int) -> None:
    connection = sqlite3.connect(folder / DATABASE_NAME)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        connection.close()
    with Cache.open(folder) as cache:
        assert len(cache.runs()) == runs


@pytest.fixture
def finished_run(world: World, tmp_path: Path) -> dict[str, int]:
    """A completed `configstream run` in tmp_path; its output files and sizes."""
    done = run_cli(*world_run_args(world), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = _output_sizes(tmp_path / "out")
    assert "proxies.json" in sizes
    return sizes


def test_no_free_port_ends_run_without_traceback(
    world: World, tmp_path: Path, finished_run: dict[str, int]
) -> None:
    """No port for the core: a clear message and exit code, previous output kept."""
    script = tmp_path / "no_free_port.py"
    script.write_text(_PATCHED_CLI)
    done = subprocess.run(
        [sys.executable, str(script), *world_run_args(world), "--fresh"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # 2: an error line; 3: a degraded run that kept the previous output.
    assert done.returncode in (2, 3), done.stderr[-2000:]
    assert re.search(r"port|address already in use", done.stderr, re.IGNORECASE)
    out = tmp_path / "out"
    if done.returncode == 3:
        # A degraded run rewrites health.json, and the manifest entry
        # naming it, by design, and nothing else.
        health = json.loads((out / "health.json").read_text())
        assert health["degraded"] is True
        now = dict(
            finished_run, **{"health.json": (out / "health.json").stat().st_size}
        )
        _assert_output_whole(out, now)
    else:
        _assert_output_whole(out, finished_run)
    _assert_cache_whole(tmp_path / "cache", runs=1 if done.returncode == 2 else 2)


@contextlib.contextmanager
def _first_reservation_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[list[int]]]:
    """reserve_ports whose first answer is bound by someone else before the core."""
    reservations: list[list[int]] = []
    holders: list[socket.socket] = []

    def reserve(count: int) -> list[int]:
        ports = reserve_ports(count)
        reservations.append(ports)
        if len(reservations) == 1:
            # Bound, not listening: the core's bind fails with EADDRINUSE,
            # and a readiness probe finds nothing that accepts.
            for port in ports:
                holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                holder.bind(("127.0.0.1", port))
                holders.append(holder)
        return ports

    monkeypatch.setattr(configstream.probe, "reserve_ports", reserve)
    try:
        yield reservations
    finally:
        for holder in holders:
            holder.close()


def test_port_taken_before_the_core_binds_it_is_retried(
    core: Core,
    world: World,
    world_proxies: WorldProxies,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reserved port taken by another process: the batch gets fresh ports."""
    settings = ProbeSettings(
        test_url=world.test_url, trace_url=None, timeout=3, concurrency=16
    )
    with _first_reservation_taken(monkeypatch) as reservations:
        results = asyncio.run(ProxyTester(core, settings).test(world_proxies.live))
    assert len(reservations) == 2
    assert {results[p].status for p in world_proxies.live} == {Status.ALIVE}


# -- SIGTERM and what stays behind -------------------------------------------


def _cores_of(pid: int) -> set[int]:
    """sing-box processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent_pid(int(entry.name)) == pid:
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"sing-box" in argv[0] and b"run" in argv:
                found.add(int(entry.name))
    return found


def test_sigterm_mid_run_keeps_cache_and_previous_output_whole(
    world: World, tmp_path: Path, finished_run: dict[str, int]
) -> None:
    """SIGTERM while testing: the cache passes integrity_check, the last output stays."""
    # --fresh makes the second run test everything again; the world's
    # never-answering listener holds the test stage open for the timeout.
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "configstream.cli",
            *world_run_args(world),
            "--fresh",
            "--timeout",
            "6",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 30
        while not _cores_of(child.pid):
            assert child.poll() is None, "the run ended before testing"
            assert time.monotonic() < deadline, "the run never started its core"
            time.sleep(0.02)
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, stderr[-2000:]
    _assert_cache_whole(tmp_path / "cache", runs=1)
    _assert_output_whole(tmp_path / "out", finished_run)

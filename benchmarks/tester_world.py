"""Three testers side by side on one loopback world of proxies, with ground truth.

Usage: python benchmarks/tester_world.py [--proxies 3000] [--timeout 5]
           [--concurrency 200] [--naive-sample 300] [--only abc] [--seed 1]

The world (all on 127.0.0.1) holds proxies of every protocol the demo world
serves: vmess over WebSocket, vless, trojan over TLS, shadowsocks (aes-128-gcm
and 2022), socks, hysteria2 and tuic, in equal shares. 40% are valid users of
one sing-box server process (alive), 30% point at a closed port (refused) and
30% at a listener that never answers (black hole: a TCP listener that accepts
and stays silent, or a UDP socket that never reads). Every contender fetches
the same trace URL through each proxy with the same timeout:

  a  the naive design: one sing-box process per proxy through singbox2proxy's
     `SingBoxProxy`, 32 threads each starting a proxy, fetching once, stopping
     it; run on a random sample (--naive-sample) and its wall time scaled
     linearly to the whole world, labelled as extrapolated;
  b  singbox2proxy's batch engine, `SingBoxBatch(links).check(...)` with its
     defaults (30 outbounds per process) and 100 workers;
  c  ConfigStream's tester (`ProxyTester`), which also tests every survivor a
     second time.

a and b get each proxy as the share link ConfigStream writes for it; links
that singbox2proxy's own parser rejects or reads differently are counted and
reported per protocol, since no tester can pass them. singbox2proxy fetches
through `requests` (its `http` extra), over SOCKS for b (`socks`, PySocks):
without them every check of a and b fails before sending anything, so the
benchmark stops and asks for them (`pip install -e '.[bench]'`).

Reported per contender: wall seconds, peak memory of this process and all its
children (sampled from /proc every 0.1 s), precision and recall against the
ground truth, and recall per protocol where it is not 100%. For ConfigStream,
the lower bound S + max(T, W/C), the tighter S + ceil(W/C) x T, and its ratio
to each; and speed ratios of c
against a and b. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import importlib.util
import logging
import math
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configstream.config import DEFAULT_CONCURRENCY
from configstream.demo import (
    DEMO_SNI,
    LOOPBACK,
    CoreThread,
    tls_keypair,
)
from configstream.models import Proxy, Status, Tls, Transport
from configstream.outbound import to_outbound
from configstream.probe import ProbeSettings, ProxyTester
from configstream.render.links import to_link
from configstream.singbox import (
    Core,
    import_singbox2proxy,
    locate_core,
    reserve_ports,
    run_core,
)

# The protocols of the demo world, each an equal share of every fate.
KINDS = (
    "vmess",
    "vless",
    "trojan",
    "shadowsocks",
    "shadowsocks-2022",
    "socks",
    "hysteria2",
    "tuic",
)
QUIC_KINDS = frozenset({"hysteria2", "tuic"})
ALIVE_SHARE, REFUSED_SHARE = 0.4, 0.3
# The figures for the two singbox2proxy designs.
NAIVE_WORKERS = 32
BATCH_WORKERS = 100
# Starts of a bare core timed for S in the lower bound; the median is kept.
STARTUP_SAMPLES = 3
SS_METHOD = "aes-128-gcm"
SS2022_METHOD = "2022-blake3-aes-128-gcm"


# -- Measuring ---------------------------------------------------------------


def _tree(root: int, skip: frozenset[int] = frozenset()) -> dict[int, int]:
    """Resident kB of a process and all its descendants, from /proc; the
    processes in `skip` and their descendants are left out."""
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in found or pid in skip:
            continue
        found[pid] = 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found[pid] = int(line.split()[1])
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    stack.extend(
                        int(c) for c in (task / "children").read_text().split()
                    )
    return found


@contextlib.contextmanager
def _peak_memory() -> Iterator[Callable[[], float]]:
    peak = [0.0]
    stop = threading.Event()
    # The world's own processes (its server core) are running already; their
    # memory is not the contender's.
    world = frozenset(_tree(os.getpid())) - {os.getpid()}

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], sum(_tree(os.getpid(), world).values()) / 1024)
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()


@dataclass(slots=True)
class Outcome:
    """What one contender found, how long it took and what it held."""

    seconds: float
    peak_mb: float
    tested: set[Proxy]
    found: set[Proxy]
    # Size of the sample actually run when `seconds` is scaled up from it.
    sample: int | None = None
    notes: list[str] = field(default_factory=list)


# -- The world ---------------------------------------------------------------


class _BlackHoles:
    """A TCP listener that accepts and stays silent, and a UDP socket that
    never reads; `release` drops the held connections between contenders."""

    def __init__(self) -> None:
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((LOOPBACK, 0))
        self.tcp.listen(4096)
        self.tcp.settimeout(0.2)
        # Bound, so the kernel sends no ICMP "port unreachable" either.
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((LOOPBACK, 0))
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                connection = self.tcp.accept()[0]
                with self.lock:
                    self.held.append(connection)

    def release(self) -> None:
        # Held connections keep the clients' ports busy (FIN_WAIT2) after a
        # contender's cores have exited; the next contender should not pay
        # for them.
        with self.lock:
            held, self.held = self.held, []
        for connection in held:
            connection.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.release()
        self.tcp.close()
        self.udp.close()


def _free_udp_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(slots=True)
class World:
    """The proxies, their ground truth and the server config behind them."""

    server_config: dict[str, Any]
    ready_ports: list[int]
    proxies: list[Proxy] = field(default_factory=list)
    kind: dict[Proxy, str] = field(default_factory=dict)
    fate: dict[Proxy, str] = field(default_factory=dict)

    @property
    def alive(self) -> set[Proxy]:
        return {p for p, f in self.fate.items() if f == "alive"}

    def add(self, proxy: Proxy, kind: str, fate: str) -> None:
        self.proxies.append(proxy)
        self.kind[proxy] = kind
        self.fate[proxy] = fate


def _account(kind: str, rng: random.Random, ss2022_key: str) -> dict[str, str]:
    """Fresh credentials of `kind`, as Proxy fields."""
    secret = base64.urlsafe_b64encode(rng.randbytes(12)).decode()
    user_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind in {"vmess", "vless"}:
        return {"uuid": user_id}
    if kind == "tuic":
        return {"uuid": user_id, "password": secret}
    if kind == "shadowsocks-2022":
        # Multi-user form: the server's key, then the user's own key.
        user_key = base64.b64encode(rng.randbytes(16)).decode()
        return {"password": f"{ss2022_key}:{user_key}"}
    if kind == "socks":
        return {"username": f"u{rng.getrandbits(32):x}", "password": secret}
    return {"password": secret}


def _proxy(kind: str, port: int, account: dict[str, str]) -> Proxy:
    tls = Tls(server_name=DEMO_SNI, insecure=True)
    quic_tls = Tls(server_name=DEMO_SNI, insecure=True, alpn=("h3",))
    if kind == "vmess":
        ws = Transport(type="ws", path="/bench-ws", host=DEMO_SNI)
        return Proxy("vmess", LOOPBACK, port, method="auto", transport=ws, **account)
    if kind == "trojan":
        return Proxy("trojan", LOOPBACK, port, tls=tls, **account)
    if kind == "shadowsocks":
        return Proxy("shadowsocks", LOOPBACK, port, method=SS_METHOD, **account)
    if kind == "shadowsocks-2022":
        return Proxy("shadowsocks", LOOPBACK, port, method=SS2022_METHOD, **account)
    if kind == "hysteria2":
        return Proxy("hysteria2", LOOPBACK, port, tls=quic_tls, **account)
    if kind == "tuic":
        return Proxy(
            "tuic", LOOPBACK, port, congestion_control="bbr", tls=quic_tls, **account
        )
    return Proxy(kind, LOOPBACK, port, **account)


def _server_user(kind: str, account: dict[str, str]) -> dict[str, str]:
    if kind == "shadowsocks-2022":
        user_key = account["password"].partition(":")[2]
        return {"name": user_key[:8], "password": user_key}
    if kind == "socks":
        return {"username": account["username"], "password": account["password"]}
    return dict(account)


def _inbound(
    kind: str, tls_files: tuple[Path, Path], ss2022_key: str
) -> dict[str, Any]:
    key, cert = tls_files
    tls = {"enabled": True, "certificate_path": str(cert), "key_path": str(key)}
    inbound: dict[str, Any] = {"type": kind.removesuffix("-2022")}
    if kind == "vmess":
        inbound["transport"] = {"type": "ws", "path": "/bench-ws"}
    elif kind == "trojan":
        inbound["tls"] = tls
    elif kind == "shadowsocks-2022":
        inbound |= {"method": SS2022_METHOD, "password": ss2022_key}
    elif kind == "tuic":
        inbound |= {"congestion_control": "bbr", "tls": tls | {"alpn": ["h3"]}}
    elif kind == "hysteria2":
        inbound["tls"] = tls | {"alpn": ["h3"]}
    return inbound


def _fates(count: int) -> list[str]:
    alive, refused = int(count * ALIVE_SHARE), int(count * REFUSED_SHARE)
    return (
        ["alive"] * alive
        + ["refused"] * refused
        + ["black hole"] * (count - alive - refused)
    )


def build_world(
    count: int, tls_files: tuple[Path, Path], holes: _BlackHoles, rng: random.Random
) -> World:
    """Plan `count` proxies of every kind in equal shares, and their server.

    Users of one kind share one inbound, except plain shadowsocks, which has
    one password per server: each of its alive proxies gets an inbound of
    its own.
    """
    ss2022_key = base64.b64encode(rng.randbytes(16)).decode()
    fates = _fates(count)
    ss_alive = sum(
        1
        for i, f in enumerate(fates)
        if f == "alive" and KINDS[i % len(KINDS)] == "shadowsocks"
    )
    tcp_ports = reserve_ports(len(KINDS) - len(QUIC_KINDS) + ss_alive + 1)
    udp_ports = _free_udp_ports(len(QUIC_KINDS) + 1)
    closed_tcp, closed_udp = tcp_ports.pop(), udp_ports.pop()
    shared_port = {
        kind: (udp_ports if kind in QUIC_KINDS else tcp_ports).pop()
        for kind in KINDS
        if kind != "shadowsocks"
    }
    inbounds = {k: _inbound(k, tls_files, ss2022_key) for k in shared_port}
    world = World({}, [])
    extra_inbounds: list[dict[str, Any]] = []

    for index, fate in enumerate(fates):
        kind = KINDS[index % len(KINDS)]
        quic = kind in QUIC_KINDS
        account = _account(kind, rng, ss2022_key)
        if fate == "refused":
            port = closed_udp if quic else closed_tcp
        elif fate == "black hole":
            port = holes.udp.getsockname()[1] if quic else holes.tcp.getsockname()[1]
        elif kind == "shadowsocks":
            port = tcp_ports.pop()
            extra_inbounds.append(
                {"type": "shadowsocks", "method": SS_METHOD, "listen_port": port}
                | {"password": account["password"]}
            )
        else:
            port = shared_port[kind]
            inbounds[kind].setdefault("users", []).append(_server_user(kind, account))
        world.add(_proxy(kind, port, account), kind, fate)

    for kind, port in shared_port.items():
        inbounds[kind]["listen_port"] = port
    listed = [*inbounds.values(), *extra_inbounds]
    for number, inbound in enumerate(listed):
        inbound |= {"tag": f"in-{number}", "listen": LOOPBACK}
    world.server_config = {
        "log": {"level": "error"},
        "inbounds": listed,
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }
    world.ready_ports = [
        i["listen_port"] for i in listed if i["type"] not in {"hysteria2", "tuic"}
    ]
    return world


# -- Scoring -----------------------------------------------------------------


def _score(outcome: Outcome, world: World) -> tuple[float, float]:
    truth = world.alive & outcome.tested
    hits = len(outcome.found & truth)
    precision = hits / len(outcome.found) if outcome.found else 1.0
    return precision, (hits / len(truth) if truth else 1.0)


def _recall_by_kind(outcome: Outcome, world: World) -> str:
    """Recall per kind where it is below 100%, e.g. `tuic 0%, socks 96%`."""
    parts = []
    for kind in KINDS:
        truth = {p for p in world.alive & outcome.tested if world.kind[p] == kind}
        if truth and (share := len(outcome.found & truth) / len(truth)) < 1:
            parts.append(f"{kind} {share:.0%}")
    return ", ".join(parts)


async def _core_start_seconds(core: Core) -> float:
    """Seconds from spawning a core with one inbound until that port answers."""
    port = reserve_ports(1)[0]
    config = {
        "log": {"level": "error"},
        "inbounds": [
            {"type": "socks", "tag": "in", "listen": LOOPBACK, "listen_port": port}
        ],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }
    started = time.perf_counter()
    async with run_core(core, config, [port]):
        return time.perf_counter() - started


def _misread_by_kind(world: World, parse_link: Callable[[str], Any]) -> str:
    """Kinds whose links singbox2proxy's parser rejects or reads into another
    outbound than ours, e.g. `tuic 100%`: those proxies cannot pass in a or b
    whatever the tester does."""
    misread: Counter[str] = Counter()
    for proxy in world.alive:
        ours = _comparable(to_outbound(proxy, "proxy"))
        try:
            theirs = _comparable(parse_link(to_link(proxy, "proxy")))
        except Exception:  # noqa: BLE001 - a rejected link is a misread one
            theirs = None
        misread[world.kind[proxy]] += theirs != ours
    total = Counter(world.kind[p] for p in world.alive)
    return ", ".join(
        f"{kind} {misread[kind] / total[kind]:.0%}" for kind in KINDS if misread[kind]
    )


def _comparable(outbound: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _comparable(value) if isinstance(value, dict) else value
        for key, value in outbound.items()
        if value not in ("", None, {}) and key != "tag"
    }


# -- Contenders ----------------------------------------------------------------


def _run_configstream(world: World, core: Core, url: str, args: Any) -> Outcome:
    settings = ProbeSettings(
        test_url=url, trace_url=None, timeout=args.timeout, concurrency=args.concurrency
    )
    with _peak_memory() as peak:
        started = time.perf_counter()
        results = asyncio.run(ProxyTester(core, settings).test(world.proxies))
        seconds = time.perf_counter() - started
    found = {p for p, r in results.items() if r.status is Status.ALIVE}
    outcome = Outcome(seconds, peak(), set(world.proxies), found)
    missed = Counter(results[p].reason for p in world.alive - found)
    if missed:
        outcome.notes.append(f"alive proxies reported otherwise: {_top(missed)}")
    return outcome


def _import_singbox2proxy() -> Any:
    """singbox2proxy, imported without keeping the signal handlers it installs."""
    for extra, module in (("http", "requests"), ("socks", "socks")):
        if importlib.util.find_spec(module) is None:
            sys.exit(
                f"singbox2proxy fetches through '{module}' (its '{extra}' extra): "
                "pip install -e '.[bench]', or pass --only c"
            )
    singbox2proxy = import_singbox2proxy()
    # Every failed fetch is logged at ERROR; the outcomes are counted here.
    singbox2proxy.disable_logging()
    return singbox2proxy


def _run_naive(world: World, core: Core, url: str, args: Any) -> Outcome:
    library = _import_singbox2proxy()
    library_core = library.SingBoxCore(str(core.path))
    sample = random.Random(args.seed).sample(
        world.proxies, min(args.naive_sample, len(world.proxies))
    )
    links = {to_link(p, f"p{i}"): p for i, p in enumerate(sample)}

    def check(link: str) -> str | None:
        # The whole life of one proxy: its own sing-box process, one fetch
        # (no retries, as the other two contenders), then the process stops.
        try:
            proxy = library.SingBoxProxy(link, core=library_core)
        except Exception as exc:  # noqa: BLE001 - every start failure is counted
            return _shorten(f"start: {type(exc).__name__}: {exc}")
        try:
            answer = proxy.get(url, timeout=args.timeout, retries=0)
            return None if answer.status_code == 200 else f"HTTP {answer.status_code}"
        except Exception as exc:  # noqa: BLE001 - a dead proxy, by whatever error
            return _shorten(f"{type(exc).__name__}: {exc}")
        finally:
            proxy.stop()

    with (
        _peak_memory() as peak,
        concurrent.futures.ThreadPoolExecutor(NAIVE_WORKERS) as pool,
    ):
        started = time.perf_counter()
        errors = dict(zip(links, pool.map(check, links), strict=True))
        seconds = time.perf_counter() - started
    found = {links[link] for link, error in errors.items() if error is None}
    outcome = Outcome(seconds, peak(), set(sample), found, sample=len(sample))
    missed = Counter(
        error for link, error in errors.items() if links[link] in world.alive and error
    )
    if missed:
        outcome.notes.append(f"alive proxies reported dead: {_top(missed)}")
    return outcome


def _run_batch(world: World, core: Core, url: str, args: Any) -> Outcome:
    library = _import_singbox2proxy()
    links = [to_link(p, f"p{i}") for i, p in enumerate(world.proxies)]
    by_link = dict(zip(links, world.proxies, strict=True))
    with _peak_memory() as peak:
        started = time.perf_counter()
        batch = library.SingBoxBatch(links, core=library.SingBoxCore(str(core.path)))
        with batch:
            # The library logs a start failure without sing-box's words; its
            # own list of processes still holds the stderr of those that died.
            failures = _start_failures(batch)
            results = batch.check(
                test_url=url, timeout=args.timeout, workers=BATCH_WORKERS
            )
        seconds = time.perf_counter() - started
    found = {by_link[r.url] for r in results if r.working and r.url in by_link}
    outcome = Outcome(seconds, peak(), set(world.proxies), found)
    processes = len(range(0, len(links), batch.batch_size))
    if failures:
        # Proxies of a batch whose core failed are left out of check()'s
        # results altogether (parse errors are reported there).
        outcome.notes.append(
            f"sing-box failed to start for {sum(failures.values())} of {processes} "
            f"batches, {len(links) - len(results)} proxies never tested: "
            f"{_top(failures)}"
        )
    missed = Counter(
        r.error and _shorten(r.error)
        for r in results
        if r.url in by_link and by_link[r.url] in world.alive and not r.working
    )
    if missed:
        outcome.notes.append(f"alive proxies reported dead: {_top(missed)}")
    return outcome


def _start_failures(batch: Any) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for process in batch._processes:  # noqa: SLF001 - read only, for the message
        if process.poll() is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            lines = process.stderr.read().decode(errors="replace").strip().splitlines()
            reasons[_shorten(lines[-1] if lines else f"exit {process.returncode}")] += 1
    return reasons


def _shorten(message: str) -> str:
    """A message without colour codes, port numbers and addresses, to count it."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", message)
    message = re.sub(r"\b127\.0\.0\.1:\d+", "127.0.0.1:PORT", message)
    message = re.sub(r"\bport=\d+", "port=PORT", message)
    message = re.sub(r"\[socks-\d+\]", "[socks-N]", message)
    message = re.sub(r"^FATAL\[\d+\] ", "", message.splitlines()[0] if message else "")
    # Errors of requests put the cause last: keep both ends.
    return message if len(message) <= 160 else f"{message[:70]} ... {message[-80:]}"


def _top(counts: Counter[str]) -> str:
    return "; ".join(f"{n} x {reason}" for reason, n in counts.most_common(3))


CONTENDERS = {
    "a": ("singbox2proxy SingBoxProxy, one process per proxy", _run_naive),
    "b": ("singbox2proxy SingBoxBatch(...).check()", _run_batch),
    "c": ("ConfigStream ProxyTester", _run_configstream),
}


# -- Report --------------------------------------------------------------------


def _label(key: str, args: Any) -> str:
    setting = {
        "a": f"{NAIVE_WORKERS} threads",
        "b": f"{BATCH_WORKERS} workers",
        "c": f"concurrency {args.concurrency}",
    }[key]
    return f"{key}: {CONTENDERS[key][0]}, {setting}"


def _wall(outcome: Outcome, full: int) -> tuple[float, str]:
    """Wall seconds for the whole world, and how to print them."""
    if not outcome.sample or outcome.sample >= full:
        return outcome.seconds, f"{outcome.seconds:.1f} s"
    wall = outcome.seconds * full / outcome.sample
    return wall, (
        f"{wall:.0f} s EXTRAPOLATED ({outcome.seconds:.1f} s on a random "
        f"{outcome.sample}, x {full / outcome.sample:.1f})"
    )


def _report(
    outcomes: dict[str, Outcome], world: World, startup: float, args: Any
) -> None:
    full, fates = len(world.proxies), Counter(world.fate.values())
    print(
        f"\nworld: {full} proxies ({', '.join(KINDS)}; equal shares), "
        f"{fates['alive']} alive, {fates['refused']} refused, "
        f"{fates['black hole']} black holes; timeout {args.timeout:g} s; "
        "one fetch of the trace URL per proxy (c: a second one for survivors)"
    )
    print(
        "| contender | wall | peak memory (process tree, world left out) "
        "| precision | recall |"
    )
    print("|---|---|---|---|---|")
    walls: dict[str, float] = {}
    for key, outcome in outcomes.items():
        precision, recall = _score(outcome, world)
        walls[key], shown = _wall(outcome, full)
        print(
            f"| {_label(key, args)} | {shown} | {outcome.peak_mb:.0f} MB | "
            f"{precision:.1%} | {recall:.1%} |"
        )
    for key, outcome in outcomes.items():
        if by_kind := _recall_by_kind(outcome, world):
            print(f"  {key}: recall below 100% for {by_kind}")
        for note in outcome.notes:
            print(f"  {key}: {note}")
    if {"a", "b"} & set(outcomes):
        parse_link = _import_singbox2proxy().parse_link
        if misread := _misread_by_kind(world, parse_link):
            which = ", ".join(key for key in "ab" if key in outcomes)
            print(
                f"  {which}: alive links singbox2proxy's parse_link rejects or reads "
                f"differently from ConfigStream: {misread}"
            )
    if "c" not in outcomes:
        return

    # Lower bound for ConfigStream: one core start, then each proxy that can
    # only end by the timeout holds one of C slots for T seconds. QUIC
    # clients ignore ICMP "port unreachable", so a closed UDP port is silent.
    silent = sum(
        1
        for p, fate in world.fate.items()
        if fate == "black hole" or (fate == "refused" and world.kind[p] in QUIC_KINDS)
    )
    bound = startup + max(args.timeout, silent * args.timeout / args.concurrency)
    print(
        f"lower bound for c: S + max(T, W/C) = {startup:.2f} + max({args.timeout:g}, "
        f"{silent} x {args.timeout:g} / {args.concurrency}) = {bound:.1f} s "
        "(S: one core start, measured; W: black holes and closed UDP ports); "
        f"c / bound = {walls['c'] / bound:.2f}"
    )
    # A slot holds one silent proxy at a time for T, so when W > C some slot
    # holds ceil(W/C) of them one after another: a tighter bound.
    waves = math.ceil(silent / args.concurrency)
    tight = startup + waves * args.timeout
    print(
        f"schedule bound for c: S + ceil(W/C) x T = {startup:.2f} + {waves} x "
        f"{args.timeout:g} = {tight:.1f} s; c / schedule bound = "
        f"{walls['c'] / tight:.2f}"
    )
    for key in ("a", "b"):
        if key in walls:
            extrapolated = " (a's wall extrapolated)" if outcomes[key].sample else ""
            print(
                f"speed c vs {key}: {walls[key] / walls['c']:.1f}x faster{extrapolated}"
            )


@contextlib.contextmanager
def _trace_server() -> Iterator[int]:
    """The world's test URL, served by a process of its own: in this one it
    would take the interpreter from whichever tester runs here, and a real
    test URL is not served by the tester's interpreter either."""
    code = (
        "import sys, time\n"
        "from configstream.demo import TraceHandler, serve_http\n"
        "with serve_http(TraceHandler) as port:\n"
        "    print(port, flush=True)\n"
        "    while True:\n"
        "        time.sleep(3600)\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline())
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="ConfigStream's tests in flight (default: its own default)",
    )
    parser.add_argument(
        "--naive-sample",
        type=int,
        default=300,
        help="proxies run by contender a; its wall time is scaled to the world",
    )
    parser.add_argument(
        "--only", default="abc", help="contenders to run, e.g. c or bc (default abc)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    chosen = [key for key in CONTENDERS if key in args.only]
    if not chosen or set(args.only) - set(CONTENDERS):
        parser.error("--only takes letters among a, b, c")
    if {"a", "b"} & set(chosen):
        _import_singbox2proxy()
    logging.basicConfig(level=logging.WARNING)

    core = locate_core()
    startup = sorted(
        asyncio.run(_core_start_seconds(core)) for _ in range(STARTUP_SAMPLES)
    )[STARTUP_SAMPLES // 2]
    holes = _BlackHoles()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tls_files = tls_keypair(core, Path(tmp))
            world = build_world(
                args.proxies, tls_files, holes, random.Random(args.seed)
            )
            with (
                CoreThread(core, world.server_config, world.ready_ports),
                _trace_server() as http_port,
            ):
                url = f"http://{LOOPBACK}:{http_port}/cdn-cgi/trace"
                outcomes = {}
                for key in chosen:
                    print(f"running {_label(key, args)} ...", flush=True)
                    outcomes[key] = CONTENDERS[key][1](world, core, url, args)
                    # Each contender starts without the last one's sockets.
                    holes.release()
                    time.sleep(1)
                _report(outcomes, world, startup, args)
    finally:
        holes.close()


if __name__ == "__main__":
    main()

"""Server names: resolved by c-ares against a real DNS server on loopback,
kept for their TTL, shared by the allowed-network check, the tester's
pre-check, the core and geo.

The DNS server (dnslib, on 127.0.0.1) answers only the names of its zone and
NXDOMAIN for everything else; no query leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from dnslib import AAAA, QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from configstream import pipeline
from configstream.config import RunSettings, parse_nameservers, parse_networks
from configstream.demo import World
from configstream.errors import SettingsError
from configstream.models import ProbeResult, Proxy, Status
from configstream.parse import parse_body
from configstream.pipeline import Entry
from configstream.probe import ProbeSettings, ProxyTester
from configstream.render.links import to_link
from configstream.resolve import MIN_TTL, NEGATIVE_TTL, Resolver, split_nameserver
from tests.conftest import run_cli


@dataclass
class Zone(BaseResolver):
    """Names to (addresses, TTL); counts the questions asked per name."""

    records: dict[str, tuple[list[str], int]]
    asked: Counter[str] = field(default_factory=Counter)
    asked_a: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, request, handler):  # noqa: ANN001, ANN201 (dnslib's API)
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.asked[name] += 1
            self.asked_a[name] += request.q.qtype == QTYPE.A
        if name not in self.records:
            reply.header.rcode = 3  # NXDOMAIN
            return reply
        addresses, ttl = self.records[name]
        for address in addresses:
            is_v6 = ":" in address
            if request.q.qtype == (QTYPE.AAAA if is_v6 else QTYPE.A):
                rdata = AAAA(address) if is_v6 else A(address)
                rtype = QTYPE.AAAA if is_v6 else QTYPE.A
                reply.add_answer(RR(request.q.qname, rtype, rdata=rdata, ttl=ttl))
        return reply

    def names_asked(self) -> set[str]:
        with self.lock:
            return set(self.asked)

    def questions(self, name: str) -> int:
        """Lookups of a name (c-ares asks A and AAAA: two questions each)."""
        with self.lock:
            return self.asked[name]


@contextlib.contextmanager
def dns_server(records: dict[str, tuple[list[str], int]]) -> Iterator[tuple[Zone, str]]:
    zone = Zone(records)
    server = DNSServer(
        zone, port=0, address="127.0.0.1", logger=DNSLogger("-request,-reply")
    )
    server.start_thread()
    try:
        yield zone, f"127.0.0.1:{server.server.server_address[1]}"
    finally:
        server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ZONE = {
    "inside.example.test": (["127.0.0.5"], 300),
    "outside.example.test": (["203.0.113.7"], 300),
    "mixed.example.test": (["127.0.0.6", "198.51.100.9"], 300),
    "dual.example.test": (["::1", "127.0.0.8"], 300),
    "short.example.test": (["127.0.0.9"], 1),
}


def test_names_resolved_ipv4_first_and_kept_for_their_ttl() -> None:
    clock = Clock()

    async def scenario(server: str) -> tuple[list[tuple[str, ...]], list[int]]:
        resolver = Resolver([server], clock=clock)
        found, queries = [], []
        for step in (0, 0, 299, 2):
            clock.now += step
            found.append(await resolver.addresses("DUAL.example.test."))
            queries.append(resolver.queries)
        await resolver.aclose()
        return found, queries

    with dns_server(ZONE) as (zone, server):
        found, queries = asyncio.run(scenario(server))
        assert zone.questions("dual.example.test") == 2  # A and AAAA
    assert set(found) == {("127.0.0.8", "::1")}
    # Asked again only once the record's 300 s had passed. (c-ares may then
    # answer from its own cache, which runs on real time.)
    assert queries == [1, 1, 1, 2]


def test_a_tiny_ttl_is_held_for_the_floor_then_asked_again() -> None:
    clock = Clock()

    async def scenario(server: str) -> None:
        resolver = Resolver([server], clock=clock)
        await resolver.resolve("short.example.test")
        clock.now += MIN_TTL - 1
        await resolver.resolve("short.example.test")
        assert resolver.cached("short.example.test") == ("127.0.0.9",)
        clock.now += 2
        assert resolver.cached("short.example.test") is None
        # Past the record's real 1 s too, so no cache below ours holds it.
        await asyncio.sleep(1.2)
        await resolver.resolve("short.example.test")
        await resolver.aclose()

    with dns_server(ZONE) as (zone, server):
        asyncio.run(scenario(server))
        # The A record asked for twice (c-ares may keep the empty AAAA).
        assert zone.asked_a["short.example.test"] == 2


def test_concurrent_lookups_of_one_name_share_one_query() -> None:
    async def scenario(server: str) -> tuple[list[tuple[str, ...]], int, int]:
        resolver = Resolver([server])
        found = await asyncio.gather(
            *(resolver.addresses("inside.example.test") for _ in range(200))
        )
        await resolver.aclose()
        return found, resolver.queries, resolver.hits

    with dns_server(ZONE) as (zone, server):
        found, queries, hits = asyncio.run(scenario(server))
        assert zone.questions("inside.example.test") == 2
    assert set(found) == {("127.0.0.5",)}
    assert (queries, hits) == (1, 199)


def test_a_missing_name_is_remembered_briefly() -> None:
    clock = Clock()

    async def scenario(server: str) -> str:
        resolver = Resolver([server], clock=clock)
        answer = await resolver.resolve("gone.example.test")
        assert answer.addresses == ()
        await resolver.resolve("gone.example.test")
        assert resolver.queries == 1
        clock.now += NEGATIVE_TTL + 1
        await resolver.resolve("gone.example.test")
        assert resolver.queries == 2
        await resolver.aclose()
        return answer.error

    with dns_server(ZONE) as (zone, server):
        error = asyncio.run(scenario(server))
        assert zone.questions("gone.example.test") >= 2
    assert "not found" in error.lower()


def test_literals_and_hosts_file_names_ask_no_server() -> None:
    async def scenario(server: str) -> list[tuple[str, ...]]:
        resolver = Resolver([server])
        found = [
            await resolver.addresses("127.0.0.3"),
            await resolver.addresses("::1"),
            await resolver.addresses("localhost"),
        ]
        await resolver.aclose()
        return found

    with dns_server(ZONE) as (zone, server):
        v4, v6, local = asyncio.run(scenario(server))
        assert zone.names_asked() == set()
    assert (v4, v6) == (("127.0.0.3",), ("::1",))
    assert "127.0.0.1" in local


def test_unreachable_dns_server_gives_a_clear_answer_not_a_hang() -> None:
    # A UDP port nobody reads: c-ares times out and the name counts as
    # unresolved instead of raising into the run.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]

        async def scenario() -> str:
            resolver = Resolver([f"127.0.0.1:{port}"], timeout=0.2, tries=1)
            answer = await resolver.resolve("inside.example.test")
            await resolver.aclose()
            assert answer.addresses == ()
            return answer.error

        assert asyncio.run(asyncio.wait_for(scenario(), 10))


def test_allowed_network_check_uses_real_answers() -> None:
    networks = parse_networks(["127.0.0.0/8", "::1/128"])
    hosts = [*ZONE, "gone.example.test", "127.0.0.9"]
    proxies = [
        Proxy("trojan", host, port, password="p")
        for host in hosts
        for port in (443, 8443, 2053)
    ]

    async def scenario(server: str) -> list[ProbeResult | None]:
        resolver = Resolver([server])
        verdicts = await asyncio.gather(
            *(pipeline._check_allowed(p, networks, resolver) for p in proxies)
        )
        await resolver.aclose()
        return list(verdicts)

    with dns_server(ZONE) as (zone, server):
        verdicts = dict(zip(proxies, asyncio.run(scenario(server)), strict=True))
        # One lookup (A and AAAA) per name, whatever the number of proxies.
        assert all(zone.questions(name) == 2 for name in zone.names_asked())
        assert zone.names_asked() == set(hosts) - {"127.0.0.9"}
    by_host = {p.server: verdicts[p] for p in proxies}
    assert by_host["inside.example.test"] is None
    assert by_host["dual.example.test"] is None
    assert by_host["127.0.0.9"] is None
    assert by_host["outside.example.test"].status is Status.SKIPPED
    assert by_host["mixed.example.test"].status is Status.SKIPPED
    assert by_host["gone.example.test"].status is Status.DEAD
    assert by_host["gone.example.test"].reason == "server name does not resolve"


def test_precheck_dials_each_address_once_across_names(core) -> None:  # noqa: ANN001
    accepted: list[int] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    records = {
        "a.example.test": (["127.0.0.1"], 300),
        "b.example.test": (["127.0.0.1"], 300),
        "closed.example.test": (["127.0.0.1"], 300),
    }
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    proxies = [
        Proxy("trojan", "a.example.test", port, password="p"),
        Proxy("trojan", "b.example.test", port, password="q"),
        Proxy("trojan", "127.0.0.1", port, password="r"),
        Proxy("trojan", "closed.example.test", closed_port, password="s"),
        Proxy("trojan", "gone.example.test", port, password="t"),
    ]
    try:
        with dns_server(records) as (_, server):
            settings = ProbeSettings("http://127.0.0.1:9/", None, 2.0, 10, (server,))

            async def scenario() -> dict[Proxy, str]:
                tester = ProxyTester(core, settings)
                refused = await tester._precheck(proxies)
                await tester.resolver.aclose()
                return refused

            refused = asyncio.run(scenario())
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert len(accepted) == 1  # three names of one address:port, one connect
    assert refused == {
        proxies[3]: "tcp connect refused",
        proxies[4]: "server name does not resolve",
    }


def test_geo_places_a_named_server_by_its_resolved_address(
    world: World, tmp_path: Path
) -> None:
    live = world.live[0]
    settings = RunSettings(
        sources=(), output=tmp_path, cache=tmp_path, geoip=world.geoip
    )
    named = Entry(proxy=Proxy("trojan", "named.example.test", 443, password="p"))
    named.result = ProbeResult(Status.ALIVE, latency_ms=1.0)
    unknown = Entry(proxy=Proxy("trojan", "other.example.test", 443, password="p"))
    unknown.result = ProbeResult(Status.ALIVE, latency_ms=1.0)

    async def scenario(server: str) -> None:
        resolver = Resolver([server])
        await resolver.resolve("named.example.test")
        pipeline._locate([named, unknown], settings, {}, resolver)
        await resolver.aclose()

    with dns_server({"named.example.test": ([live.exit_ip], 300)}) as (_, server):
        asyncio.run(scenario(server))
    assert named.country == live.country
    assert unknown.country is None


def test_nameserver_values_are_checked() -> None:
    assert parse_nameservers(["127.0.0.1:5353,::1", "[::1]:53"]) == (
        "127.0.0.1:5353",
        "::1",
        "[::1]:53",
    )
    assert split_nameserver("[::1]:5353") == ("::1", 5353)
    assert split_nameserver("::1") == ("::1", 53)
    for bad in ("dns.example.test", "127.0.0.1:0", "127.0.0.1:99999", "1.2.3"):
        with pytest.raises(SettingsError) as caught:
            parse_nameservers([bad])
        assert "--dns" in str(caught.value)


def _live_links(demo_run: Path) -> list[Proxy]:
    """The demo world's live TCP-based proxies, as the demo run found them."""
    rows = json.loads((demo_run / "out" / "proxies.json").read_text())
    links = "\n".join(
        r["link"] for r in rows if r["protocol"] in {"trojan", "vless", "vmess"}
    )
    return parse_body(links.encode()).proxies


def test_check_tests_named_servers_through_the_given_dns(
    world: World, demo_run: Path, tmp_path: Path
) -> None:
    # The pre-check (c-ares) and the core (its own DNS client) both ask the
    # loopback server given by --dns; a name it does not know is dead.
    live = _live_links(demo_run)
    assert len(live) == 3, "the demo world lost its live vmess/vless/trojan"
    named = [
        replace(p, server=f"live{i}.example.test", name=f"named-{i}")
        for i, p in enumerate(live)
    ]
    named.append(replace(live[0], server="gone.example.test", name="gone"))
    (tmp_path / "links.txt").write_text("\n".join(map(to_link, named)) + "\n")
    records = {f"live{i}.example.test": (["127.0.0.1"], 300) for i in range(len(live))}
    with dns_server(records) as (zone, server):
        done = run_cli(
            "check",
            "links.txt",
            "--json",
            "--dns",
            server,
            "--allow-network",
            "127.0.0.0/8",
            "--test-url",
            world.test_url,
            "--trace-url",
            world.trace_url,
            "--timeout",
            "3",
            cwd=tmp_path,
        )
        asked = zone.names_asked()
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    for i in range(len(live)):
        assert rows[f"named-{i}"]["status"] == "alive", (rows[f"named-{i}"], named[i])
        assert rows[f"named-{i}"]["exit_ip"]
    assert rows["gone"]["status"] == "dead"
    assert rows["gone"]["reason"] == "server name does not resolve"
    assert asked == set(records) | {"gone.example.test"}

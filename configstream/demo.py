"""`configstream demo`: the whole pipeline on a small offline world.

The world lives on 127.0.0.0/8 only: a sing-box process runs real proxy
servers (vmess, vless, trojan, shadowsocks, shadowsocks 2022, hysteria2, tuic,
socks), a local HTTP server publishes subscriptions of all four shapes plus an
HTML error page and a 404, and a test/trace endpoint answers `generate_204`
and a Cloudflare-style trace. Each server leaves through its own loopback
address (127.0.0.2, 127.0.0.3, ...), so the trace reports a distinct exit IP
per server, and a small GeoIP database maps those addresses to countries.

The world also holds configs that must not come out alive: wrong
credentials, a closed port, a listener that accepts and never answers, a
REALITY and an SSR config the bundled core cannot run, and a server outside
the allowed networks that is never contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import email.utils
import hashlib
import json
import random
import secrets
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from configstream.config import load_sources, parse_networks
from configstream.models import Proxy, Tls, Transport
from configstream.outbound import to_outbound
from configstream.render.clash import to_clash
from configstream.render.links import to_link
from configstream.singbox import Core, locate_core, reserve_ports, run_core

LOOPBACK = "127.0.0.1"
DEMO_SNI = "demo.configstream.test"
# A documentation address (RFC 5737): outside the allowed loopback networks,
# so the pipeline must skip it without sending a packet.
OUTSIDE_SERVER = "203.0.113.9"
# Kept in the cache folder: the seed and ports of the last demo world.
WORLD_STATE = "demo-world.json"


@dataclass(frozen=True, slots=True)
class LiveServer:
    """A server of the world that must be reported alive."""

    protocol: str
    port: int
    exit_ip: str
    country: str


@dataclass(slots=True)
class World:
    """A running demo world and what the pipeline should find in it."""

    sources_file: Path
    test_url: str
    trace_url: str
    geoip: Path
    live: list[LiveServer] = field(default_factory=list)
    dead: int = 0
    untestable: int = 0
    skipped: int = 0
    secrets: list[str] = field(default_factory=list)


def _udp_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TraceHandler(BaseHTTPRequestHandler):
    """`/generate_204` and a Cloudflare-format `/cdn-cgi/trace`."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path.startswith("/generate_204"):
            self.send_response(204)
            self.end_headers()
            return
        if self.path.startswith("/cdn-cgi/trace"):
            body = f"fl=demo\nh={self.headers.get('Host', '')}\nip={self.client_address[0]}\n"
            body += "visit_scheme=http\nloc=XX\n"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def file_handler(files: dict[str, tuple[int, bytes]]) -> type[BaseHTTPRequestHandler]:
    """A handler serving fixed (status, body) pairs by path; 404 for the rest.

    Answers of status 200 carry an ETag (a hash of the body) and a fixed
    Last-Modified, and a matching conditional request gets 304, as GitHub's
    raw file server does.
    """
    modified = email.utils.formatdate(usegmt=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle's algorithm the
        # second waits for the client's delayed ACK, 40 ms per request.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802
            status, body = files.get(self.path, (404, b"not found\n"))
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            # If-None-Match, when sent, decides alone (RFC 9110, 13.2.2).
            match = self.headers.get("If-None-Match")
            if status == 200 and (
                match == etag
                if match is not None
                else self.headers.get("If-Modified-Since") == modified
            ):
                status, body = 304, b""
            self.send_response(status)
            if status in {200, 304}:
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", modified)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops SYNs when hundreds of tests arrive at
    # once; the retransmit then costs seconds and reads as a slow proxy.
    request_queue_size = 1024
    daemon_threads = True


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[int]:
    """Serve `handler` on 127.0.0.1 until the block exits; yields the port."""
    server = _Server((LOOPBACK, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def black_hole_listener(port: int = 0) -> Iterator[int]:
    """A TCP listener that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen(1024)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        for sock in held:
            sock.close()
        listener.close()


def _write_geoip(path: Path, countries: dict[str, str]) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(
        ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country"
    )
    for address, code in countries.items():
        writer.insert_network(IPSet([f"{address}/32"]), {"country": {"iso_code": code}})
    writer.to_db_file(str(path))


def tls_keypair(core: Core, folder: Path) -> tuple[Path, Path]:
    """A self-signed key and certificate for DEMO_SNI, made by sing-box."""
    done = subprocess.run(
        [str(core.path), "generate", "tls-keypair", DEMO_SNI],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    key, _, cert = done.stdout.partition("-----END PRIVATE KEY-----")
    key_path, cert_path = folder / "demo.key", folder / "demo.crt"
    key_path.write_text(key + "-----END PRIVATE KEY-----\n")
    cert_path.write_text(cert.strip() + "\n")
    return key_path, cert_path


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _token(rng: random.Random) -> str:
    return base64.urlsafe_b64encode(rng.randbytes(12)).decode().rstrip("=")


@dataclass(slots=True)
class _Ports:
    """Every port a world listens on, kept so the next demo run can reuse it."""

    tcp: list[int]
    udp: list[int]
    black_hole: int
    sources: int
    trace: int

    @classmethod
    def fresh(cls) -> _Ports:
        tcp = reserve_ports(10)
        return cls(tcp[:7], _udp_ports(2), tcp[7], tcp[8], tcp[9])

    def all_free(self) -> bool:
        """Whether every port can be bound now (another program may hold one)."""
        wanted = (
            [(socket.SOCK_STREAM, p) for p in self.tcp]
            + [
                (socket.SOCK_STREAM, p)
                for p in (self.black_hole, self.sources, self.trace)
            ]
            + [(socket.SOCK_DGRAM, p) for p in self.udp]
        )
        for kind, port in wanted:
            with socket.socket(socket.AF_INET, kind) as probe:
                # As the servers do: a port whose old connections linger in
                # TIME_WAIT can be listened on again.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((LOOPBACK, port))
                except OSError:
                    return False
        return True


def _world_state(keep: Path | None) -> tuple[int, _Ports]:
    """The seed and ports of the last demo world kept in `keep`, or new ones.

    Keeping them makes a second `configstream demo` meet the same servers,
    credentials and source URLs, so it can reuse the first run's cache.
    The credentials are demo values for loopback servers, so a seeded
    generator is enough.
    """
    state_file = keep / WORLD_STATE if keep else None
    if state_file is not None and state_file.is_file():
        try:
            data = json.loads(state_file.read_text())
            seed, ports = int(data["seed"]), _Ports(**data["ports"])
            if ports.all_free():
                return seed, ports
        except (ValueError, TypeError, KeyError, OSError):
            pass
    seed, ports = secrets.randbits(64), _Ports.fresh()
    if state_file is not None:
        with contextlib.suppress(OSError):
            state_file.parent.mkdir(parents=True, exist_ok=True)
            state_file.write_text(
                json.dumps({"seed": seed, "ports": dataclasses.asdict(ports)})
            )
    return seed, ports


@dataclass(slots=True)
class _Plan:
    """The servers, configs and sources of a world before it starts."""

    rng: random.Random = field(default_factory=random.Random)
    inbounds: list[dict[str, Any]] = field(default_factory=list)
    outbounds: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    good: list[tuple[Proxy, LiveServer]] = field(default_factory=list)
    bad: list[Proxy] = field(default_factory=list)


def _plan_servers(
    tls_files: tuple[Path, Path], ports: _Ports, rng: random.Random
) -> tuple[_Plan, World]:
    key_path, cert_path = tls_files
    tcp, udp, black_hole = ports.tcp, ports.udp, ports.black_hole
    tls_in = {
        "enabled": True,
        "certificate_path": str(cert_path),
        "key_path": str(key_path),
    }
    quic_tls = dict(tls_in, alpn=["h3"])
    client_tls = Tls(server_name=DEMO_SNI, insecure=True)
    quic_client_tls = Tls(server_name=DEMO_SNI, insecure=True, alpn=("h3",))
    ids = {name: _uuid(rng) for name in ("vmess", "vless", "tuic")}
    words = {name: _token(rng) for name in ("trojan", "ss", "hy2", "tuic", "socks")}
    ss2022_key = base64.b64encode(rng.randbytes(16)).decode()
    ws = Transport(type="ws", path="/demo-ws", host=DEMO_SNI)

    servers: list[tuple[str, int, dict[str, Any], Proxy, str]] = [
        (
            "vmess",
            tcp[0],
            {
                "type": "vmess",
                "users": [{"uuid": ids["vmess"], "alterId": 0}],
                "transport": {"type": "ws", "path": "/demo-ws"},
            },
            Proxy(
                "vmess",
                LOOPBACK,
                tcp[0],
                uuid=ids["vmess"],
                method="auto",
                transport=ws,
            ),
            "DE",
        ),
        (
            "vless",
            tcp[1],
            {"type": "vless", "users": [{"uuid": ids["vless"]}]},
            Proxy("vless", LOOPBACK, tcp[1], uuid=ids["vless"]),
            "JP",
        ),
        (
            "trojan",
            tcp[2],
            {"type": "trojan", "users": [{"password": words["trojan"]}], "tls": tls_in},
            Proxy("trojan", LOOPBACK, tcp[2], password=words["trojan"], tls=client_tls),
            "US",
        ),
        (
            "shadowsocks",
            tcp[3],
            {"type": "shadowsocks", "method": "aes-128-gcm", "password": words["ss"]},
            Proxy(
                "shadowsocks",
                LOOPBACK,
                tcp[3],
                method="aes-128-gcm",
                password=words["ss"],
            ),
            "NL",
        ),
        (
            "shadowsocks",
            tcp[4],
            {
                "type": "shadowsocks",
                "method": "2022-blake3-aes-128-gcm",
                "password": ss2022_key,
            },
            Proxy(
                "shadowsocks",
                LOOPBACK,
                tcp[4],
                method="2022-blake3-aes-128-gcm",
                password=ss2022_key,
            ),
            "FR",
        ),
        (
            "socks",
            tcp[5],
            {
                "type": "socks",
                "users": [{"username": "demo", "password": words["socks"]}],
            },
            Proxy("socks", LOOPBACK, tcp[5], username="demo", password=words["socks"]),
            "GB",
        ),
        (
            "hysteria2",
            udp[0],
            {
                "type": "hysteria2",
                "users": [{"password": words["hy2"]}],
                "tls": quic_tls,
            },
            Proxy(
                "hysteria2",
                LOOPBACK,
                udp[0],
                password=words["hy2"],
                tls=quic_client_tls,
            ),
            "SG",
        ),
        (
            "tuic",
            udp[1],
            {
                "type": "tuic",
                "users": [{"uuid": ids["tuic"], "password": words["tuic"]}],
                "congestion_control": "bbr",
                "tls": quic_tls,
            },
            Proxy(
                "tuic",
                LOOPBACK,
                udp[1],
                uuid=ids["tuic"],
                password=words["tuic"],
                congestion_control="bbr",
                tls=quic_client_tls,
            ),
            "CA",
        ),
    ]
    plan = _Plan(rng=rng)
    countries: dict[str, str] = {}
    for index, (kind, port, inbound, proxy, country) in enumerate(servers):
        exit_ip = f"127.0.0.{index + 2}"
        countries[exit_ip] = country
        tag = f"in-{index}"
        plan.inbounds.append(dict(inbound, tag=tag, listen=LOOPBACK, listen_port=port))
        plan.outbounds.append(
            {"type": "direct", "tag": f"out-{index}", "inet4_bind_address": exit_ip}
        )
        plan.rules.append({"inbound": [tag], "outbound": f"out-{index}"})
        plan.good.append((proxy, LiveServer(kind, port, exit_ip, country)))

    closed = tcp[6]  # reserved and released: nothing listens there
    plan.bad = [
        Proxy("vless", LOOPBACK, tcp[1], uuid=_uuid(rng)),
        Proxy(
            "trojan",
            LOOPBACK,
            tcp[2],
            password="wrong-" + words["trojan"],
            tls=client_tls,
        ),
        Proxy(
            "hysteria2",
            LOOPBACK,
            udp[0],
            password="wrong-" + words["hy2"],
            tls=quic_client_tls,
        ),
        Proxy(
            "shadowsocks",
            LOOPBACK,
            closed,
            method="aes-256-gcm",
            password="closed-port",
        ),
        Proxy("vmess", LOOPBACK, black_hole, uuid=_uuid(rng), method="auto"),
    ]
    world = World(
        sources_file=Path(),
        test_url="",
        trace_url="",
        geoip=Path(),
        dead=len(plan.bad),
        untestable=3,
        skipped=1,
        secrets=[*ids.values(), *words.values(), ss2022_key],
    )
    world.live = [live for _, live in plan.good]
    return plan, world


def _untestable_and_outside(rng: random.Random) -> list[str]:
    reality = Proxy(
        "vless",
        LOOPBACK,
        9,
        uuid=_uuid(rng),
        flow="xtls-rprx-vision",
        tls=Tls(
            server_name="www.example.com",
            fingerprint="chrome",
            reality_public_key=base64.urlsafe_b64encode(rng.randbytes(32))
            .decode()
            .rstrip("="),
            reality_short_id="6ba85179e30d4fc2",
        ),
    )
    xhttp = Proxy(
        "vless",
        LOOPBACK,
        9,
        uuid=_uuid(rng),
        transport=Transport(type="xhttp", path="/x"),
    )
    ssr = Proxy(
        "ssr",
        LOOPBACK,
        9,
        method="aes-256-cfb",
        password="ssr-demo",
        obfs="plain",
        options=(("protocol", "origin"),),
    )
    outside = Proxy("trojan", OUTSIDE_SERVER, 443, password="outside", tls=Tls())
    return [
        to_link(reality, "reality"),
        to_link(xhttp, "xhttp"),
        to_link(ssr, "ssr"),
        to_link(outside, "outside"),
    ]


def _subscription_files(plan: _Plan) -> dict[str, tuple[int, bytes]]:
    good = [proxy for proxy, _ in plan.good]
    bad = plan.bad
    plain_links = [
        to_link(p, f"demo {p.protocol} {i}") for i, p in enumerate(good[:3] + bad[:2])
    ]
    plain = "#profile-title: ConfigStream demo\n# comment line\n\n"
    plain += (
        "\n".join(plain_links + _untestable_and_outside(plan.rng))
        + "\nthis line is junk\n"
    )
    b64_links = [to_link(p, f"b64 {p.protocol}") for p in good[2:5] + bad[2:3]]
    clash = {
        "proxies": [
            to_clash(p, f"clash {i}") for i, p in enumerate(good[5:7] + bad[3:4])
        ]
    }
    singbox = {
        "outbounds": [
            {"type": "selector", "tag": "select", "outbounds": ["sb-0"]},
            *[
                to_outbound(p, f"sb-{i}")
                for i, p in enumerate([good[7], good[0], bad[4]])
            ],
            {"type": "direct", "tag": "direct"},
        ]
    }
    html = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>403</body></html>"
    return {
        "/plain.txt": (200, plain.encode()),
        "/base64.txt": (200, base64.b64encode("\r\n".join(b64_links).encode())),
        "/clash.yaml": (200, yaml.safe_dump(clash, allow_unicode=True).encode()),
        "/singbox.json": (200, json.dumps(singbox).encode()),
        "/challenge.html": (200, html),
    }


@contextlib.contextmanager
def start_world(core: Core | None = None, keep: Path | None = None) -> Iterator[World]:
    """Start the demo world on loopback; everything stops when the block exits.

    With `keep` (a folder), the world's seed and ports are stored there and
    the next world started with it is the same one, where its ports are free.
    """
    core = core or locate_core()
    seed, ports = _world_state(keep)
    with contextlib.ExitStack() as stack:
        folder = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="configstream-demo-")
            )
        )
        stack.enter_context(black_hole_listener(ports.black_hole))
        plan, world = _plan_servers(
            tls_keypair(core, folder), ports, random.Random(seed)
        )
        trace_port = stack.enter_context(serve_http(TraceHandler, ports.trace))
        source_port = stack.enter_context(
            serve_http(file_handler(_subscription_files(plan)), ports.sources)
        )
        server_config = {
            "log": {"level": "error"},
            "inbounds": plan.inbounds,
            "outbounds": plan.outbounds,
            "route": {"rules": plan.rules},
        }
        runner = CoreThread(
            core,
            server_config,
            [
                i["listen_port"]
                for i in plan.inbounds
                if i["type"] not in {"hysteria2", "tuic"}
            ],
        )
        stack.enter_context(runner)

        base = f"http://{LOOPBACK}:{source_port}"
        sources = {
            "sources": [
                {"name": "demo-plain", "url": f"{base}/plain.txt"},
                {"name": "demo-base64", "url": f"{base}/base64.txt", "format": "auto"},
                {"name": "demo-clash", "url": f"{base}/clash.yaml"},
                {"name": "demo-singbox", "url": f"{base}/singbox.json"},
                {"name": "demo-challenge-page", "url": f"{base}/challenge.html"},
                {"name": "demo-missing", "url": f"{base}/gone.txt"},
            ]
        }
        world.sources_file = folder / "sources.yml"
        world.sources_file.write_text(yaml.safe_dump(sources))
        world.test_url = f"http://{LOOPBACK}:{trace_port}/generate_204"
        world.trace_url = f"http://{LOOPBACK}:{trace_port}/cdn-cgi/trace"
        world.geoip = folder / "demo-country.mmdb"
        _write_geoip(world.geoip, {live.exit_ip: live.country for live in world.live})
        yield world


class CoreThread:
    """Runs the world's sing-box server process on its own event loop thread."""

    def __init__(
        self, core: Core, config: dict[str, Any], ready_ports: list[int]
    ) -> None:
        self.core, self.config, self.ready_ports = core, config, ready_ports
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stop_event: asyncio.Event | None = None
        self.done: Any = None

    async def _main(self, started: Any) -> None:
        self.stop_event = asyncio.Event()
        try:
            async with run_core(self.core, self.config, self.ready_ports):
                started.set_result(None)
                await self.stop_event.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    def __enter__(self) -> CoreThread:
        import concurrent.futures

        self.thread.start()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.done = asyncio.run_coroutine_threadsafe(self._main(started), self.loop)
        started.result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        with contextlib.suppress(Exception):
            self.done.result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def run_demo(
    args: argparse.Namespace,
    make_settings: Callable[..., Any],
    run: Callable[[Any], Any],
    print_summary: Callable[[dict[str, Any], Path], None],
) -> int:
    """Start the world, run the pipeline on it, print what it found."""
    with start_world(locate_core(args.singbox), keep=args.cache) as world:
        settings = make_settings(
            args,
            sources=load_sources(world.sources_file),
            test_url=world.test_url,
            trace_url=world.trace_url,
            geoip=args.geoip or world.geoip,
            allow_networks=parse_networks(
                [*args.allow_network, "127.0.0.0/8", "::1/128"]
            ),
            title="ConfigStream demo",
            # QR codes need an address; the demo's files live in the folder.
            base_url=args.base_url or args.output.resolve().as_uri() + "/",
        )
        stats = asyncio.run(run(settings))
    print_summary(stats, settings.output)
    alive = stats["test"]["alive"]
    expected = len(world.live) if not settings.no_test else 0
    print(f"demo world: {expected} live servers, {alive} reported alive")
    return 0

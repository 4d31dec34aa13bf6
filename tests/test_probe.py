"""The tester against real sing-box servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from configstream.demo import TraceHandler, serve_http
from configstream.models import Proxy, Status
from configstream.probe import ProbeSettings, ProxyTester, parse_trace
from configstream.singbox import Core, reserve_ports, run_core

PASSWORD = "probe-test-password"


@contextlib.contextmanager
def _https_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for that IP."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), TraceHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert
    finally:
        server.shutdown()
        server.server_close()


def _ss_server_config(port: int) -> dict[str, Any]:
    return {
        "log": {"level": "error"},
        "inbounds": [
            {
                "type": "shadowsocks",
                "tag": "ss",
                "listen": "127.0.0.1",
                "listen_port": port,
                "method": "aes-128-gcm",
                "password": PASSWORD,
            }
        ],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }


async def _test_through_server(
    core: Core, proxies: list[Proxy], settings: ProbeSettings, server_port: int
) -> dict[Proxy, Any]:
    async with run_core(core, _ss_server_config(server_port), [server_port]):
        return await ProxyTester(core, settings).test(proxies)


def test_https_test_url_verified_with_ssl_cert_file(
    core: Core, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https test URL works through a proxy when SSL_CERT_FILE trusts its cert."""
    [server_port] = reserve_ports(1)
    good = Proxy(
        "shadowsocks", "127.0.0.1", server_port, method="aes-128-gcm", password=PASSWORD
    )
    with _https_server(tmp_path) as (https_port, cert):
        settings = ProbeSettings(
            test_url=f"https://127.0.0.1:{https_port}/generate_204",
            trace_url=f"https://127.0.0.1:{https_port}/cdn-cgi/trace",
            timeout=5,
            concurrency=4,
        )
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = asyncio.run(_test_through_server(core, [good], settings, server_port))
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = asyncio.run(
            _test_through_server(core, [good], settings, server_port)
        )
    assert trusted[good].status is Status.ALIVE
    assert trusted[good].exit_ip == "127.0.0.1"
    assert untrusted[good].status is Status.DEAD


def test_config_the_core_refuses_does_not_cost_the_batch(core: Core) -> None:
    """A config sing-box cannot load is untestable; the rest of its batch is tested."""
    [server_port, closed] = reserve_ports(2)
    good = Proxy(
        "shadowsocks", "127.0.0.1", server_port, method="aes-128-gcm", password=PASSWORD
    )
    refused = Proxy(
        "shadowsocks",
        "127.0.0.1",
        server_port,
        method="no-such-cipher",
        password=PASSWORD,
    )
    wrong = Proxy(
        "shadowsocks",
        "127.0.0.1",
        server_port,
        method="aes-128-gcm",
        password="not-the-password",
    )
    nothing = Proxy(
        "shadowsocks", "127.0.0.1", closed, method="aes-128-gcm", password=PASSWORD
    )
    with serve_http(TraceHandler) as http_port:
        settings = ProbeSettings(
            test_url=f"http://127.0.0.1:{http_port}/generate_204",
            trace_url=f"http://127.0.0.1:{http_port}/cdn-cgi/trace",
            timeout=3,
            concurrency=4,
        )
        results = asyncio.run(
            _test_through_server(
                core, [refused, good, wrong, nothing], settings, server_port
            )
        )
    assert results[refused].status is Status.UNTESTABLE
    assert "no-such-cipher" in results[refused].reason
    assert PASSWORD not in results[refused].reason
    assert results[good].status is Status.ALIVE and results[good].latency_ms > 0
    assert results[wrong].status is Status.DEAD
    assert results[nothing].status is Status.DEAD


@pytest.mark.parametrize(
    ("body", "ip"),
    [
        ("fl=1\nh=x\nip=198.51.100.7\nts=1\n", "198.51.100.7"),
        ("ip=2001:db8::1\r\nloc=DE\r\n", "2001:db8::1"),
        ("visit_scheme=https\nloc=DE\n", None),
        ("<html>ip=</html>", None),
    ],
)
def test_parse_trace_reads_the_ip_line(body: str, ip: str | None) -> None:
    assert parse_trace(body) == ip


class _OnceHandler(TraceHandler):
    """Answers the test URL once, then fails: a proxy that works now and then."""

    served = 0

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/generate_204":
            type(self).served += 1
            if type(self).served > 1:
                self.send_error(503)
                return
        super().do_GET()


def test_second_round_failure_is_dead_as_flaky(core: Core) -> None:
    """Alive needs both rounds; a refused server is dropped by the TCP pre-check."""
    [server_port, closed] = reserve_ports(2)
    good = Proxy(
        "shadowsocks", "127.0.0.1", server_port, method="aes-128-gcm", password=PASSWORD
    )
    nothing = Proxy(
        "shadowsocks", "127.0.0.1", closed, method="aes-128-gcm", password=PASSWORD
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OnceHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        settings = ProbeSettings(
            test_url=f"http://127.0.0.1:{port}/generate_204",
            trace_url=None,
            timeout=3,
            concurrency=4,
        )
        results = asyncio.run(
            _test_through_server(core, [good, nothing], settings, server_port)
        )
    finally:
        server.shutdown()
        server.server_close()
    assert results[good].status is Status.DEAD
    assert results[good].reason.startswith("flaky: second round")
    assert results[nothing] == results[nothing].__class__(
        Status.DEAD, reason="tcp connect refused"
    )


@pytest.mark.parametrize(
    ("requested", "soft", "expected"),
    [
        (200, 1024, (192, 384)),
        (200, 4096, (200, 1000)),
        (5000, 4096, (1420, 1000)),
        (3, 1 << 20, (3, 1000)),
    ],
)
def test_concurrency_and_batch_fit_the_open_file_limit(
    requested: int, soft: int, expected: tuple[int, int]
) -> None:
    """A batch's inbounds plus two descriptors per test fit under the limit."""
    from configstream.probe import FD_RESERVE, fd_budget

    concurrency, batch = fd_budget(requested, (soft, soft))
    assert (concurrency, batch) == expected
    assert batch + 2 * concurrency <= soft - FD_RESERVE


def test_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    import resource

    from configstream.probe import fd_budget

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 512:
            resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        fd_budget(10)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= min(hard, 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

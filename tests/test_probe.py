"""The tester against real sing-box servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import configstream.probe
from configstream.demo import TraceHandler, serve_http
from configstream.errors import CoreError
from configstream.models import Proxy, Status
from configstream.probe import ProbeSettings, ProxyTester, parse_trace
from configstream.singbox import Core, reserve_ports, run_core
from tests.conftest import loopback_probe

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
        settings = loopback_probe(http_port, concurrency=4, trace=True)
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
        settings = loopback_probe(port, concurrency=4)
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
        (200, 4096, (200, 500)),
        (5000, 4096, (1670, 500)),
        (3, 1 << 20, (3, 500)),
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


def _ss_servers_config(ports: list[int]) -> dict[str, Any]:
    config = _ss_server_config(ports[0])
    config["inbounds"] = [
        dict(config["inbounds"][0], tag=f"ss-{i}", listen_port=port)
        for i, port in enumerate(ports)
    ]
    return config


def _run_with_poison(
    core: Core,
    monkeypatch: pytest.MonkeyPatch,
    poison_at: int,
    spoil: Any,
    count: int = 6,
) -> tuple[list[Proxy], dict[Proxy, Any]]:
    """Test `count` working ss proxies (one server port each) in one batch,
    with `spoil(outbound)` applied to the outbound of the one at `poison_at`."""
    ports = reserve_ports(count)
    proxies = [
        Proxy("shadowsocks", "127.0.0.1", p, method="aes-128-gcm", password=PASSWORD)
        for p in ports
    ]
    real = configstream.probe.to_outbound

    def to_outbound(proxy: Proxy, tag: str, **kwargs: Any) -> dict[str, Any]:
        outbound = real(proxy, tag, **kwargs)
        return spoil(outbound) if proxy is proxies[poison_at] else outbound

    monkeypatch.setattr(configstream.probe, "to_outbound", to_outbound)

    async def scenario(settings: ProbeSettings) -> dict[Proxy, Any]:
        async with run_core(core, _ss_servers_config(ports), ports):
            return await ProxyTester(core, settings).test(proxies)

    with serve_http(TraceHandler) as http_port:
        settings = loopback_probe(http_port)
        return proxies, asyncio.run(scenario(settings))


def test_config_failing_at_core_start_is_dropped_by_its_tag(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sing-box check` accepts a detour to a missing outbound; `run` refuses
    it at start and names the outbound's tag. Only that proxy is lost."""
    proxies, results = _run_with_poison(
        core, monkeypatch, 3, lambda ob: dict(ob, detour="no-such-outbound")
    )
    poisoned = results[proxies[3]]
    assert poisoned.status is Status.UNTESTABLE
    assert poisoned.reason.startswith("core refused at start:")
    assert "no-such-outbound" in poisoned.reason
    assert PASSWORD not in poisoned.reason
    others = [results[p].status for i, p in enumerate(proxies) if i != 3]
    assert others == [Status.ALIVE] * 5


def test_check_failure_naming_no_outbound_is_bisected(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A core whose `check` names no outbound (other versions word errors
    differently): the batch is halved until the bad config stands alone."""
    real = configstream.probe.find_bad_outbound
    checks: list[int] = []

    async def unnamed(core: Core, config: dict[str, Any]) -> tuple[Any, str]:
        checks.append(len(config["outbounds"]))
        found, message = await real(core, config)
        # The same verdict, with the index taken out of the wording.
        return None, re.sub(r"outbounds?\[\d+\]", "an outbound", message)

    monkeypatch.setattr(configstream.probe, "find_bad_outbound", unnamed)
    proxies, results = _run_with_poison(
        core, monkeypatch, 5, lambda ob: dict(ob, method="no-such-cipher"), count=8
    )
    bad = results[proxies[5]]
    assert bad.status is Status.UNTESTABLE
    assert "no-such-cipher" in bad.reason and PASSWORD not in bad.reason
    assert [results[p].status for p in proxies if p is not proxies[5]] == [
        Status.ALIVE
    ] * 7
    # 8 -> 4 -> 2 -> 1, each failing half checked, each good half once, plus
    # one check of an empty config: far fewer than one check per proxy pair.
    assert len(checks) <= 2 * 3 + 2, checks


def test_a_core_that_refuses_even_an_empty_config_is_an_error(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When nothing loads, halving would only waste time: the run stops."""

    async def refuses(core: Core, config: dict[str, Any]) -> tuple[Any, str]:
        return None, "FATAL something is wrong with this core"

    monkeypatch.setattr(configstream.probe, "find_bad_outbound", refuses)
    with pytest.raises(CoreError):
        _run_with_poison(core, monkeypatch, 0, lambda ob: ob, count=4)


@pytest.mark.parametrize(
    ("available_mb", "lowered"),
    [(None, False), (24_000, False), (256, True), (64, True), (32, True)],
)
def test_concurrency_and_batch_fit_the_available_memory(
    available_mb: int | None, lowered: bool
) -> None:
    """What is planned fits in the memory share, and nothing is lowered
    further than needed: half the share goes to the live cores' outbounds,
    the rest to the tests in flight."""
    from configstream.probe import (
        CONNECTION_BYTES,
        LIVE_CORES,
        MEMORY_SHARE,
        OUTBOUND_BYTES,
        memory_budget,
    )

    requested = (1000, 500)
    available = None if available_mb is None else available_mb << 20
    concurrency, batch = memory_budget(*requested, available)
    assert ((concurrency, batch) != requested) is lowered
    if available is None:
        return
    share = available * MEMORY_SHARE
    cores = LIVE_CORES * batch * OUTBOUND_BYTES
    # Every live core may hold a whole batch.
    assert cores + concurrency * CONNECTION_BYTES <= share
    assert batch == requested[1] or cores + LIVE_CORES * OUTBOUND_BYTES > share / 2
    assert (
        concurrency == requested[0]
        or cores + (concurrency + 1) * CONNECTION_BYTES > share
    )


def test_no_memory_at_all_still_tests_one_at_a_time() -> None:
    from configstream.probe import memory_budget

    assert memory_budget(1000, 500, 0) == (1, 1)


def test_available_memory_is_read_from_this_machine() -> None:
    from configstream.probe import available_memory

    found = available_memory()
    assert found is not None and 0 < found < 1 << 50

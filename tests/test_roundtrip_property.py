"""Round-trip properties of the exporters against the readers, with hypothesis.

The strategies below build proxies that are already in the normal form every
reader ends in (`parse.validate`), so each property can demand exact equality:

(a) share link:  parse_link(to_link(p)) == p, name included;
(b) sing-box:    parse_singbox_outbound(to_outbound(p, p.name)) == p, for
                 what sing-box can express;
(c) Clash:       parse_clash_entry(to_clash(p, p.name)) == p, through the
                 YAML text we publish, for what mihomo can express.

What sing-box and mihomo cannot carry is spelled out in `singbox_view` and
`clash_view`: each maps a proxy to the proxy the reader is expected to give
back. Everything not listed there must survive unchanged.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configstream.models import Proxy, Tls, Transport
from configstream.outbound import Unrepresentable, to_outbound
from configstream.parse import (
    load_yaml,
    parse_clash_entry,
    parse_link,
    parse_singbox_outbound,
)
from configstream.parse.validate import (
    FINGERPRINTS,
    SS2022_KEY_BYTES,
    SS_METHODS,
    VMESS_SECURITY,
)
from configstream.render.clash import dump_yaml, to_clash
from configstream.render.links import to_link

# Each property runs once per protocol, so every protocol gets its share of
# examples; the option-rich ones get more. About 300 examples per property
# keeps the whole file near five seconds.
EXAMPLES = {
    "vmess": 50,
    "vless": 60,
    "trojan": 40,
    "shadowsocks": 50,
    "hysteria2": 30,
    "hysteria": 20,
    "tuic": 25,
    "socks": 20,
}


def _settings(protocol: str) -> settings:
    # Failures print their shrunk example; no example database is kept.
    return settings(
        max_examples=EXAMPLES[protocol],
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


EARLY_DATA_HEADER = "Sec-WebSocket-Protocol"

# ---------------------------------------------------------------- addresses
#
# Strategies are built once at import: building them inside every draw costs
# more than the round trips under test.

PORTS = st.integers(1, 65535)
_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
# A DNS label: no '-' at either end.
_LABELS = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(_LABEL_CHARS),
    st.text(_LABEL_CHARS + "-", max_size=8),
    st.sampled_from(_LABEL_CHARS),
)
_DOMAINS = st.sampled_from(["example.com", "example.net", "example.org"])
# Lower-case names under the documentation domains.
DNS_NAMES = st.one_of(_DOMAINS, st.builds(lambda a, b: f"{a}.{b}", _LABELS, _DOMAINS))
MAYBE_DNS_NAME = st.one_of(st.just(""), DNS_NAMES)
IPV4 = st.integers(0, 255).map(lambda n: f"203.0.113.{n}")
# 2001:db8::/32, written the way check_host writes it (compressed).
IPV6 = st.integers(0, 2**96 - 1).map(
    lambda n: str(ipaddress.IPv6Address((0x20010DB8 << 96) | n))
)
SERVERS = st.one_of(IPV4, IPV6, DNS_NAMES)


def _is_name(server: str) -> bool:
    return not (":" in server or server.replace(".", "").isdigit())


# -------------------------------------------------------------- text fields

# Emoji flags, the characters links must escape, and words a YAML loader
# would read as null, a number or a boolean, mixed into any other text.
_AWKWARD = [
    *"#%&?=/+:;@[] ",
    *["🇯🇵", "🇩🇪", "🚀", "%off", "%2", "#01"],
    *["null", "~", "0x1F", "1e5", "no"],
]
_ANY_CHAR = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
# Display names as publishers write them; every reader strips the ends.
NAMES = st.lists(st.one_of(st.sampled_from(_AWKWARD), _ANY_CHAR), max_size=12).map(
    lambda parts: "".join(parts).strip()
)
# Passwords with the characters that break naive link parsers. No outer
# whitespace: see test_round_trip_keeps_outer_spaces_of_a_password.
SECRETS = (
    st.lists(st.one_of(st.sampled_from(_AWKWARD), _ANY_CHAR), min_size=1, max_size=12)
    .map("".join)
    .map(str.strip)
    .filter(bool)
)
MAYBE_SECRET = st.one_of(st.just(""), SECRETS)
UUIDS = st.uuids().map(str)

_SEGMENTS = st.text("abcXYZ019-._~%@+:=,!$# ", min_size=1, max_size=8)
_QUERIES = st.lists(
    st.tuples(st.sampled_from(["token", "k", "x-id"]), st.text("abc123", max_size=4)),
    min_size=1,
    max_size=2,
).map(lambda items: "?" + "&".join(f"{k}={v}" for k, v in items))
# Absolute request paths, sometimes with a query that is not Xray's `ed=`.
PATHS = st.builds(
    lambda segments, query: ("/" + "/".join(segments)).strip() + query,
    st.lists(_SEGMENTS, max_size=3),
    st.one_of(st.just(""), _QUERIES),
)
SERVICE_NAMES = st.text("abcXYZ019-_./", max_size=12)


# -------------------------------------------------------------- transports


@st.composite
def transports(draw: st.DrawFn) -> Transport | None:
    """None (plain TCP) or one of the V2Ray transports, in normal form."""
    kinds = ["tcp", "ws", "grpc", "http", "httpupgrade", "tcp-http"]
    kind = draw(st.sampled_from(kinds))
    host = draw(MAYBE_DNS_NAME)
    if kind == "tcp":
        return None
    if kind == "ws":
        early = draw(st.sampled_from([2048, 0, 2560]))
        return Transport(
            type="ws",
            path=draw(PATHS),
            host=host,
            max_early_data=early,
            early_data_header=EARLY_DATA_HEADER if early else "",
        )
    if kind == "grpc":
        # Only a non-default mode is kept; 'gun' is dropped by the readers,
        # and so is a Host, which gRPC has no use for.
        options = draw(st.sampled_from([(), (("mode", "multi"),)]))
        return Transport(type="grpc", service_name=draw(SERVICE_NAMES), options=options)
    if kind == "http":
        # h2 takes a comma-separated list of hosts.
        hosts = draw(st.lists(DNS_NAMES, max_size=2, unique=True))
        return Transport(type="http", path=draw(PATHS), host=",".join(hosts))
    if kind == "httpupgrade":
        return Transport(type="httpupgrade", path=draw(PATHS), host=host)
    # V2Ray's TCP with an HTTP header disguise.
    return Transport(
        type="http", path=draw(PATHS), host=host, options=(("tcp-http", "1"),)
    )


TRANSPORTS = transports()

# --------------------------------------------------------------------- TLS

_ALPNS = st.lists(
    st.sampled_from(["h2", "http/1.1", "h3"]), max_size=3, unique=True
).map(tuple)
_FINGERPRINTS = st.sampled_from(["", *sorted(FINGERPRINTS)])
_SHORT_IDS = st.binary(max_size=8).map(bytes.hex)
_PUBLIC_KEYS = st.binary(min_size=32, max_size=32).map(
    lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")
)
_SPIDER_X = st.sampled_from(["", "/", "/search?q=1", "/a b#c"])


def _draw_tls(
    draw: st.DrawFn,
    server: str,
    *,
    reality: bool = False,
    fingerprint: bool = True,
    vmess_host: str = "",
) -> Tls:
    """TLS settings with the SNI a reader settles on when a link names none.

    That is the server's own name, or nothing for an IP address; VMess takes
    the first Host header instead (v2rayN's rule, applied in parse.validate).
    """
    default_sni = vmess_host.split(",")[0] or (server if _is_name(server) else "")
    tls = Tls(
        server_name=draw(DNS_NAMES) if draw(st.booleans()) else default_sni,
        insecure=draw(st.booleans()),
        alpn=draw(_ALPNS),
        fingerprint=draw(_FINGERPRINTS) if fingerprint else "",
    )
    if not reality:
        return tls
    return dataclasses.replace(
        tls,
        # REALITY needs uTLS; parse.validate fills in chrome when none is named.
        fingerprint=tls.fingerprint or "chrome",
        reality_public_key=draw(_PUBLIC_KEYS),
        reality_short_id=draw(_SHORT_IDS),
        reality_spider_x=draw(_SPIDER_X),
    )


# ----------------------------------------------------------------- proxies


@st.composite
def vmess_proxies(draw: st.DrawFn) -> Proxy:
    server = draw(SERVERS)
    transport = draw(TRANSPORTS)
    host = transport.host if transport is not None else ""
    tls = _draw_tls(draw, server, vmess_host=host) if draw(st.booleans()) else None
    return Proxy(
        protocol="vmess",
        server=server,
        port=draw(PORTS),
        name=draw(NAMES),
        uuid=draw(UUIDS),
        method=draw(st.sampled_from(sorted(VMESS_SECURITY))),
        alter_id=draw(st.sampled_from([0, 0, 1, 64])),
        transport=transport,
        tls=tls,
    )


@st.composite
def vless_proxies(draw: st.DrawFn) -> Proxy:
    server = draw(SERVERS)
    security = draw(st.sampled_from(["reality", "tls", "none"]))
    # REALITY and Vision mostly run on plain TCP.
    tls = None
    if security != "none":
        tls = _draw_tls(draw, server, reality=security == "reality")
    transport = None if tls is not None and draw(st.booleans()) else draw(TRANSPORTS)
    # Vision needs TLS or REALITY and runs on plain TCP.
    if tls is not None and transport is None:
        flows = ["xtls-rprx-vision", "", "xtls-rprx-vision-udp443"]
        flow = draw(st.sampled_from(flows))
    else:
        flow = ""
    return Proxy(
        protocol="vless",
        server=server,
        port=draw(PORTS),
        name=draw(NAMES),
        uuid=draw(UUIDS),
        flow=flow,
        transport=transport,
        tls=tls,
    )


@st.composite
def trojan_proxies(draw: st.DrawFn) -> Proxy:
    server = draw(SERVERS)
    return Proxy(
        protocol="trojan",
        server=server,
        port=draw(PORTS),
        name=draw(NAMES),
        password=draw(SECRETS),
        transport=draw(TRANSPORTS),
        # `security=none` is rare but valid for trojan links.
        tls=_draw_tls(draw, server) if draw(st.integers(0, 4)) else None,
    )


def _ss2022_keys(size: int) -> st.SearchStrategy[str]:
    key = st.binary(min_size=size, max_size=size).map(
        lambda raw: base64.b64encode(raw).decode()
    )
    # Multi-user servers take IDENTITY_KEY:USER_KEY.
    return st.one_of(key, st.builds(lambda a, b: f"{a}:{b}", key, key))


_SS2022_KEYS = {method: _ss2022_keys(size) for method, size in SS2022_KEY_BYTES.items()}


@st.composite
def _obfs_local(draw: st.DrawFn) -> tuple[str, str]:
    # parse.validate sorts the options into PLUGIN_KEYS order.
    parts = [f"obfs={draw(st.sampled_from(['http', 'tls']))}"]
    host = draw(MAYBE_DNS_NAME)
    if host:
        parts.append(f"obfs-host={host}")
    return "obfs-local", ";".join(parts)


@st.composite
def _v2ray_plugin(draw: st.DrawFn) -> tuple[str, str]:
    # In PLUGIN_KEYS order, as for simple-obfs.
    parts = [f"mode={draw(st.sampled_from(['websocket', 'quic']))}"]
    if draw(st.booleans()):
        parts.append("tls")
    host = draw(MAYBE_DNS_NAME)
    if host:
        parts.append(f"host={host}")
    path = draw(st.sampled_from(["", "/", "/ray", "/a-b_c"]))
    if path:
        parts.append(f"path={path}")
    if draw(st.booleans()):
        parts.append(f"mux={draw(st.integers(0, 8))}")
    return "v2ray-plugin", ";".join(parts)


# SIP003 plugins with options in the order the readers keep them.
_PLUGINS = st.one_of(st.just(("", "")), _obfs_local(), _v2ray_plugin())
# 'plain' is read as its alias 'none'. The 2022 ciphers, with their checked
# key sizes, get half the draws.
_SS_METHODS = st.one_of(
    st.sampled_from(sorted(SS2022_KEY_BYTES)),
    st.sampled_from(sorted(SS_METHODS - {"plain"})),
)


@st.composite
def shadowsocks_proxies(draw: st.DrawFn) -> Proxy:
    method = draw(_SS_METHODS)
    password = draw(_SS2022_KEYS.get(method, SECRETS))
    plugin, plugin_opts = draw(_PLUGINS)
    return Proxy(
        protocol="shadowsocks",
        server=draw(SERVERS),
        port=draw(PORTS),
        name=draw(NAMES),
        method=method,
        password=password,
        plugin=plugin,
        plugin_opts=plugin_opts,
    )


_SPANS = st.tuples(PORTS, st.integers(0, 2000)).map(
    lambda t: f"{t[0]}:{min(t[0] + t[1], 65535)}"
)
_RANGES = st.lists(_SPANS, min_size=1, max_size=3).map(tuple)


def _draw_hop_ports(draw: st.DrawFn, port: int) -> tuple[str, ...]:
    """Port-hopping lists as sing-box `start:end` strings.

    A list that starts with the main port on its own also carries a range:
    see test_link_round_trip_keeps_a_lone_main_port_list.
    """
    shape = draw(st.sampled_from(["none", "ranges", "main-first"]))
    if shape == "none":
        return ()
    ranges = draw(_RANGES)
    if ranges[0] == f"{port}:{port}":
        ranges = (*ranges, "1:65535")
    return (f"{port}:{port}", *ranges) if shape == "main-first" else ranges


@st.composite
def hysteria2_proxies(draw: st.DrawFn) -> Proxy:
    server = draw(SERVERS)
    port = draw(PORTS)
    obfs = draw(st.sampled_from(["", "salamander"]))
    mbps = st.sampled_from([0, 0, 10, 100, 1000])
    return Proxy(
        protocol="hysteria2",
        server=server,
        port=port,
        name=draw(NAMES),
        password=draw(SECRETS),
        ports=_draw_hop_ports(draw, port),
        obfs=obfs,
        obfs_password=draw(SECRETS) if obfs else "",
        up_mbps=draw(mbps),
        down_mbps=draw(mbps),
        # QUIC protocols always run TLS, even when a link does not say so.
        tls=_draw_tls(draw, server, fingerprint=False),
    )


_HYSTERIA_MBPS = st.sampled_from([0, 10, 50, 100])


@st.composite
def hysteria_proxies(draw: st.DrawFn) -> Proxy:
    server = draw(SERVERS)
    return Proxy(
        protocol="hysteria",
        server=server,
        port=draw(PORTS),
        name=draw(NAMES),
        password=draw(MAYBE_SECRET),
        obfs_password=draw(MAYBE_SECRET),
        up_mbps=draw(_HYSTERIA_MBPS),
        down_mbps=draw(_HYSTERIA_MBPS),
        # QUIC protocols carry no uTLS fingerprint (parse.validate drops it).
        tls=_draw_tls(draw, server, fingerprint=False),
    )


@st.composite
def tuic_proxies(draw: st.DrawFn) -> Proxy:
    server = draw(SERVERS)
    return Proxy(
        protocol="tuic",
        server=server,
        port=draw(PORTS),
        name=draw(NAMES),
        uuid=draw(UUIDS),
        password=draw(MAYBE_SECRET),
        congestion_control=draw(st.sampled_from(["", "bbr", "cubic", "new_reno"])),
        udp_relay_mode=draw(st.sampled_from(["", "native", "quic"])),
        tls=_draw_tls(draw, server, fingerprint=False),
    )


@st.composite
def socks_proxies(draw: st.DrawFn) -> Proxy:
    # The link carries USER:PASS as one base64 text, so the user has no ':'.
    # A password comes only with a user: see
    # test_round_trip_keeps_a_socks_password_without_user.
    username = draw(st.one_of(st.just(""), SECRETS.filter(lambda s: ":" not in s)))
    return Proxy(
        protocol="socks",
        server=draw(SERVERS),
        port=draw(PORTS),
        name=draw(NAMES),
        username=username,
        password=draw(MAYBE_SECRET) if username else "",
    )


# Every protocol the share-link exporter supports.
STRATEGIES = {
    "vmess": vmess_proxies(),
    "vless": vless_proxies(),
    "trojan": trojan_proxies(),
    "shadowsocks": shadowsocks_proxies(),
    "hysteria2": hysteria2_proxies(),
    "hysteria": hysteria_proxies(),
    "tuic": tuic_proxies(),
    "socks": socks_proxies(),
}


# ------------------------------------------------------------------- views
#
# sing-box cannot express, so `singbox_view` drops or rewrites:
#   - the display name beyond the outbound tag: the name survives only as the
#     tag the caller passes (tags must be unique in one config, so the
#     published file may suffix them; here the tag is the name itself);
#   - REALITY spider-x (`spx`): no field;
#   - gRPC `mode=multi` and any other transport option: no field;
#   - V2Ray's TCP HTTP header disguise: sing-box folds it into its `http`
#     transport, so the `tcp-http` marker is lost;
#   - VLESS flow `xtls-rprx-vision-udp443`: sing-box has only the Vision flow;
#   - Hysteria (v1) without bandwidth: sing-box needs figures, 10/50 Mbps are
#     filled in;
#   - Shadowsocks cipher `chacha20`: not implemented (Unrepresentable).
#
# mihomo cannot express, so `clash_view` drops or rewrites:
#   - REALITY spider-x, gRPC mode, the Vision `-udp443` variant and the
#     Hysteria (v1) bandwidth defaults, as for sing-box (mihomo does keep the
#     TCP HTTP disguise, as `network: http`);
#   - v2ray-plugin `mux=N`: mihomo has no concurrency figure for it;
#   - Trojan without TLS: mihomo's trojan is TLS only (Unrepresentable).


def _common_view(proxy: Proxy) -> Proxy:
    changes: dict[str, object] = {}
    if proxy.tls is not None and proxy.tls.reality_spider_x:
        changes["tls"] = dataclasses.replace(proxy.tls, reality_spider_x="")
    if proxy.flow:
        changes["flow"] = "xtls-rprx-vision"
    if proxy.protocol == "hysteria":
        changes["up_mbps"] = proxy.up_mbps or 10
        changes["down_mbps"] = proxy.down_mbps or 50
    return dataclasses.replace(proxy, **changes)  # type: ignore[arg-type]


def singbox_view(proxy: Proxy) -> Proxy:
    """The proxy a sing-box outbound of `proxy` can give back."""
    transport = proxy.transport
    if transport is not None:
        transport = dataclasses.replace(transport, options=())
    return dataclasses.replace(_common_view(proxy), transport=transport)


def clash_view(proxy: Proxy) -> Proxy:
    """The proxy a mihomo entry of `proxy` can give back."""
    transport = proxy.transport
    if transport is not None and transport.type == "grpc":
        transport = dataclasses.replace(transport, options=())
    options = proxy.plugin_opts.split(";")
    plugin_opts = ";".join(item for item in options if not item.startswith("mux="))
    view = _common_view(proxy)
    return dataclasses.replace(view, transport=transport, plugin_opts=plugin_opts)


def through_singbox(proxy: Proxy) -> Proxy:
    outbound = json.loads(json.dumps(to_outbound(proxy, proxy.name)))
    return parse_singbox_outbound(outbound)


def through_clash(proxy: Proxy) -> Proxy:
    # Through the YAML text we publish, so quoting is part of the round trip.
    text = dump_yaml({"proxies": [to_clash(proxy, proxy.name)]})
    return parse_clash_entry(load_yaml(text)[0]["proxies"][0])


def _assert_same(got: Proxy, want: Proxy) -> None:
    # Field by field first, so a failure names the field that changed.
    assert dataclasses.asdict(got) == dataclasses.asdict(want)
    assert got == want
    assert got.name == want.name


# -------------------------------------------------------------- properties


def _draw(data: st.DataObject, protocol: str) -> Proxy:
    return data.draw(STRATEGIES[protocol], label="proxy")


@pytest.mark.parametrize("protocol", STRATEGIES)
def test_link_round_trip_keeps_every_field(protocol: str) -> None:
    """parse_link(to_link(p)) == p, name included."""

    @_settings(protocol)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        proxy = _draw(data, protocol)
        _assert_same(parse_link(to_link(proxy)), proxy)

    check()


@pytest.mark.parametrize("protocol", STRATEGIES)
def test_singbox_round_trip_keeps_what_singbox_expresses(protocol: str) -> None:
    """An outbound read back is the proxy minus what sing-box has no field for."""

    @_settings(protocol)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        proxy = _draw(data, protocol)
        if proxy.protocol == "shadowsocks" and proxy.method == "chacha20":
            with pytest.raises(Unrepresentable):
                to_outbound(proxy, proxy.name)
            return
        _assert_same(through_singbox(proxy), singbox_view(proxy))

    check()


@pytest.mark.parametrize("protocol", STRATEGIES)
def test_clash_round_trip_keeps_what_mihomo_expresses(protocol: str) -> None:
    """A published Clash entry read back is the proxy minus what mihomo lacks."""

    @_settings(protocol)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        proxy = _draw(data, protocol)
        if proxy.protocol == "trojan" and proxy.tls is None:
            with pytest.raises(Unrepresentable):
                to_clash(proxy, proxy.name)
            return
        _assert_same(through_clash(proxy), clash_view(proxy))

    check()


# ------------------------------------------------------- normalised forms
#
# Inputs that have two spellings of one config read as the single normal form,
# so every exporter writes it back unchanged.


def test_lone_main_port_list_is_no_hopping() -> None:
    """`mport=443` on port 443 is plain port 443, and round-trips as such."""
    proxy = parse_link("hy2://fake-auth@example.com:443?mport=443&sni=example.com#hop")
    assert proxy.ports == ()
    _assert_same(parse_link(to_link(proxy)), proxy)


@pytest.mark.parametrize(
    "through", [through_singbox, through_clash], ids=["singbox", "clash"]
)
def test_outer_spaces_of_a_password_are_dropped_everywhere(
    through: Callable[[Proxy], Proxy],
) -> None:
    """A link's password loses outer spaces, as YAML and JSON readers drop them."""
    proxy = parse_link("trojan://%20fake-pass%20@example.com:443?sni=example.com#t")
    assert proxy.password == "fake-pass"
    _assert_same(through(proxy), proxy)


def test_hysteria_fingerprint_is_dropped() -> None:
    """QUIC has no uTLS fingerprint: `fp=` on a Hysteria link is not kept."""
    proxy = parse_link("hysteria://example.com:443?auth=fake&fp=chrome#h")
    assert proxy.tls is not None and proxy.tls.fingerprint == ""
    _assert_same(parse_link(to_link(proxy)), proxy)


def test_socks_password_without_user_is_dropped() -> None:
    """SOCKS5 sends no password without a user name, so none is kept."""
    proxy = parse_link("socks://:fake-pass@203.0.113.5:1080#s")
    assert (proxy.username, proxy.password) == ("", "")
    _assert_same(parse_link(to_link(proxy)), proxy)

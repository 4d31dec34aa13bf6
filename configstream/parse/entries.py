"""Clash/mihomo proxy entries and sing-box outbounds into `Proxy` models.

Both readers take plain dicts that came out of YAML or JSON. Clash values
arrive as text (see `parse.subscription.load_yaml`), so every number and flag
is converted here, where its field is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from configstream.errors import LinkError
from configstream.models import Proxy, Tls, Transport
from configstream.parse.links import (
    _check_host,
    _check_port,
    _default_sni,
    _flag,
    _port_ranges,
    build_transport,
)
from configstream.parse.validate import (
    check_unicode,
    join_plugin_options,
    validate,
)

# The outbound fields each sing-box proxy type uses.
_SINGBOX_FIELDS = {
    "vmess": {"uuid", "method", "transport"},
    "vless": {"uuid", "flow", "transport"},
    "trojan": {"password", "transport"},
    "shadowsocks": {"method", "password", "plugin"},
    "hysteria2": {"password", "obfs"},
    "hysteria": {"password", "obfs"},
    "tuic": {"uuid", "password", "tuic"},
    "socks": {"username", "password"},
    "http": {"username", "password"},
    "anytls": {"password"},
    "naive": {"username", "password"},
    "ssh": {"username", "password"},
}
# sing-box outbound types that route traffic rather than describe a server.
_SINGBOX_NON_PROXY = {"selector", "urltest", "direct", "block", "dns"}


def _scalar(value: Any) -> str:
    """A scalar's text; a mapping or list where text belongs is an error.

    Turning one into text with str() would also expand YAML aliases: a ten
    byte `name: *a9` can stand for a billion strings.
    """
    if isinstance(value, (Mapping, list)):
        raise LinkError("bad-field", f"a {type(value).__name__} where text belongs")
    return check_unicode(str(value).strip())


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return _scalar(value[0]) if value else ""
    return _scalar(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _host_header(headers: Mapping[str, Any]) -> str:
    """The Host header, whatever its case; a list of hosts joined by commas."""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == "host":
            return _joined(value)
    return ""


def _joined(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(text for text in map(_scalar, value) if text)
    return _text(value)


def _list(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(text for text in map(_scalar, value) if text)
    if isinstance(value, str) and value.strip():
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return ()


def _bandwidth(entry: Mapping[str, Any], key: str) -> int:
    """Mbps from Clash's `up` / `down`, written `100` or `100 Mbps`."""
    return _int(_text(entry.get(key)).split(" ")[0], key)


def _int(value: Any, field: str) -> int:
    text = _text(value)
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise LinkError("bad-field", f"{field} {text[:20]!r} is not a number") from None


def _clash_transport(entry: Mapping[str, Any]) -> Transport | None:
    network = _text(entry.get("network")) or "tcp"
    if network == "ws":
        opts = _mapping(entry.get("ws-opts"))
        headers = _mapping(opts.get("headers")) or _mapping(entry.get("ws-headers"))
        path = _text(opts.get("path")) or _text(entry.get("ws-path")) or "/"
        if _flag(opts.get("v2ray-http-upgrade")):
            # mihomo writes HTTPUpgrade as a ws-opts flag.
            return build_transport("httpupgrade", path=path, host=_host_header(headers))
        transport = build_transport("ws", path=path, host=_host_header(headers))
        early = _int(opts.get("max-early-data"), "max-early-data")
        if transport is not None and early:
            header = (
                _text(opts.get("early-data-header-name")) or "Sec-WebSocket-Protocol"
            )
            transport = Transport(
                type="ws",
                path=transport.path,
                host=transport.host,
                max_early_data=early,
                early_data_header=header,
            )
        return transport
    if network == "grpc":
        opts = _mapping(entry.get("grpc-opts"))
        return build_transport(
            "grpc", service_name=_text(opts.get("grpc-service-name"))
        )
    if network in {"h2", "http"}:
        opts = _mapping(
            entry.get("h2-opts") if network == "h2" else entry.get("http-opts")
        )
        headers = _mapping(opts.get("headers"))
        host = _joined(opts.get("host")) or _host_header(headers)
        if network == "http":
            # Clash's `network: http` is V2Ray's TCP HTTP header disguise.
            return build_transport(
                "tcp", path=_text(opts.get("path")), host=host, header_type="http"
            )
        return build_transport("http", path=_text(opts.get("path")), host=host)
    if network == "httpupgrade":
        opts = _mapping(entry.get("http-upgrade-opts") or entry.get("ws-opts"))
        headers = _mapping(opts.get("headers"))
        return build_transport(
            "httpupgrade", path=_text(opts.get("path")), host=_host_header(headers)
        )
    return build_transport(network)


def _wireguard_options(
    *,
    public_key: str,
    addresses: list[str],
    reserved: Any,
    mtu: str,
    pre_shared_key: str,
) -> tuple[tuple[str, str], ...]:
    def with_prefix(address: str) -> str:
        return (
            address
            if "/" in address
            else address + ("/128" if ":" in address else "/32")
        )

    if isinstance(reserved, list):
        reserved = ",".join(map(_scalar, reserved))
    options = [
        ("public-key", public_key),
        ("address", ",".join(with_prefix(a) for a in addresses)),
        ("reserved", _text(reserved)),
        ("mtu", mtu),
        ("pre-shared-key", pre_shared_key),
    ]
    return tuple((k, v) for k, v in options if v)


def _clash_tls(entry: Mapping[str, Any], default_on: bool) -> Tls | None:
    if not (_flag(entry.get("tls")) or default_on):
        return None
    reality = _mapping(entry.get("reality-opts"))
    server = _text(entry.get("server")).lower()
    return Tls(
        server_name=_text(entry.get("servername") or entry.get("sni"))
        or _default_sni(server),
        insecure=_flag(entry.get("skip-cert-verify")),
        alpn=_list(entry.get("alpn")),
        fingerprint=_text(entry.get("client-fingerprint")),
        reality_public_key=_text(reality.get("public-key")),
        reality_short_id=_text(reality.get("short-id")),
    )


def _clash_plugin(entry: Mapping[str, Any]) -> tuple[str, str]:
    plugin = _text(entry.get("plugin"))
    opts = _mapping(entry.get("plugin-opts"))
    if not plugin and entry.get("obfs"):
        # Legacy Clash wrote simple-obfs as top-level obfs / obfs-host keys.
        plugin, opts = (
            "obfs",
            {"mode": entry.get("obfs"), "host": entry.get("obfs-host")},
        )
    if not plugin:
        return "", ""
    if plugin == "obfs":
        pairs: list[tuple[str, str | None]] = [("obfs", _text(opts.get("mode")))]
        if opts.get("host"):
            pairs.append(("obfs-host", _text(opts.get("host"))))
        return "obfs-local", join_plugin_options(pairs)
    if plugin == "v2ray-plugin":
        pairs = [("mode", _text(opts.get("mode")) or "websocket")]
        if _flag(opts.get("tls")):
            pairs.append(("tls", None))
        for key in ("host", "path"):
            if opts.get(key):
                pairs.append((key, _text(opts.get(key))))
        return "v2ray-plugin", join_plugin_options(pairs)
    # SIP003 escaping keeps a ';' in a value (a path such as
    # `/x;tls;host=evil.example`) from adding options of its own.
    return plugin, join_plugin_options([(str(k), _text(v)) for k, v in opts.items()])


def parse_clash_entry(entry: Any) -> Proxy:
    """Read one item of a Clash/mihomo `proxies:` list, checked and normalised.

    Raises:
        LinkError: the entry is not a mapping, has an unknown `type`, or a
            field is unusable.
    """
    return validate(_clash_entry(entry))


def _clash_entry(entry: Any) -> Proxy:
    if not isinstance(entry, Mapping):
        raise LinkError("bad-entry", "proxy entry is not a mapping")
    kind = _text(entry.get("type")).lower()
    base = {
        "server": _check_host(_text(entry.get("server"))),
        "port": _check_port(_text(entry.get("port"))),
        "name": _text(entry.get("name")),
    }
    if kind == "vmess":
        return Proxy(
            protocol="vmess",
            uuid=_text(entry.get("uuid")),
            alter_id=_int(entry.get("alterId"), "alterId"),
            method=_text(entry.get("cipher")) or "auto",
            transport=_clash_transport(entry),
            tls=_clash_tls(entry, False),
            **base,
        )
    if kind == "vless":
        return Proxy(
            protocol="vless",
            uuid=_text(entry.get("uuid")),
            flow=_text(entry.get("flow")),
            transport=_clash_transport(entry),
            tls=_clash_tls(entry, False),
            **base,
        )
    if kind == "trojan":
        return Proxy(
            protocol="trojan",
            password=_text(entry.get("password")),
            transport=_clash_transport(entry),
            tls=_clash_tls(entry, True),
            **base,
        )
    if kind == "ss":
        plugin, plugin_opts = _clash_plugin(entry)
        return Proxy(
            protocol="shadowsocks",
            method=_text(entry.get("cipher")).lower(),
            password=_text(entry.get("password")),
            plugin=plugin,
            plugin_opts=plugin_opts,
            **base,
        )
    if kind in {"hysteria2", "hy2"}:
        ports = _port_ranges(_text(entry.get("ports"))) if entry.get("ports") else ()
        return Proxy(
            protocol="hysteria2",
            # Some converters put the auth string under `uuid`.
            password=_text(
                entry.get("password") or entry.get("auth") or entry.get("uuid")
            ),
            ports=ports,
            obfs=_text(entry.get("obfs")),
            obfs_password=_text(entry.get("obfs-password")),
            up_mbps=_bandwidth(entry, "up"),
            down_mbps=_bandwidth(entry, "down"),
            tls=_clash_tls(entry, True),
            **base,
        )
    if kind == "hysteria":
        return Proxy(
            protocol="hysteria",
            password=_text(entry.get("auth-str") or entry.get("auth")),
            obfs_password=_text(entry.get("obfs")),
            up_mbps=_bandwidth(entry, "up"),
            down_mbps=_bandwidth(entry, "down"),
            tls=_clash_tls(entry, True),
            **base,
        )
    if kind == "tuic":
        return Proxy(
            protocol="tuic",
            uuid=_text(entry.get("uuid")),
            password=_text(entry.get("password")),
            congestion_control=_text(entry.get("congestion-controller")),
            udp_relay_mode=_text(entry.get("udp-relay-mode")),
            tls=_clash_tls(entry, True),
            **base,
        )
    if kind in {"socks5", "http"}:
        return Proxy(
            protocol="socks" if kind == "socks5" else "http",
            username=_text(entry.get("username")),
            password=_text(entry.get("password")),
            tls=_clash_tls(entry, False),
            **base,
        )
    if kind == "anytls":
        return Proxy(
            protocol="anytls",
            password=_text(entry.get("password")),
            tls=_clash_tls(entry, True),
            **base,
        )
    if kind == "ssh":
        return Proxy(
            protocol="ssh",
            username=_text(entry.get("username")),
            password=_text(entry.get("password")),
            **base,
        )
    if kind == "wireguard":
        addresses = [_text(entry.get(k)) for k in ("ip", "ipv6") if _text(entry.get(k))]
        return Proxy(
            protocol="wireguard",
            password=_text(entry.get("private-key")),
            options=_wireguard_options(
                public_key=_text(entry.get("public-key")),
                addresses=addresses,
                reserved=entry.get("reserved"),
                mtu=_text(entry.get("mtu")),
                pre_shared_key=_text(entry.get("pre-shared-key")),
            ),
            **base,
        )
    if kind == "ssr":
        return Proxy(
            protocol="ssr",
            method=_text(entry.get("cipher")),
            password=_text(entry.get("password")),
            obfs=_text(entry.get("obfs")),
            options=(
                ("protocol", _text(entry.get("protocol"))),
                ("protocol-param", _text(entry.get("protocol-param"))),
                ("obfs-param", _text(entry.get("obfs-param"))),
            ),
            **base,
        )
    raise LinkError(
        "unsupported-type", f"clash proxy type {kind[:20]!r} is not supported"
    )


def _singbox_transport(data: Mapping[str, Any]) -> Transport | None:
    kind = _text(data.get("type"))
    if not kind:
        return None
    host = _host_header(_mapping(data.get("headers"))) or _joined(data.get("host"))
    # Through build_transport, so an Xray-style '?ed=' left in a ws path by
    # converters becomes early-data fields, as it would from a link.
    transport = build_transport(
        kind,
        path=_text(data.get("path")),
        host=host,
        service_name=_text(data.get("service_name")),
    )
    early = _int(data.get("max_early_data"), "max_early_data")
    if transport is not None and early:
        header = _text(data.get("early_data_header_name")) or "Sec-WebSocket-Protocol"
        transport = Transport(
            type=transport.type,
            path=transport.path,
            host=transport.host,
            max_early_data=early,
            early_data_header=header,
        )
    return transport


def _singbox_tls(data: Mapping[str, Any], server: str) -> Tls | None:
    if not data or not data.get("enabled"):
        return None
    reality = _mapping(data.get("reality"))
    utls = _mapping(data.get("utls"))
    return Tls(
        server_name=_text(data.get("server_name")) or _default_sni(server),
        insecure=bool(data.get("insecure")),
        alpn=_list(data.get("alpn")),
        fingerprint=_text(utls.get("fingerprint")) if utls.get("enabled") else "",
        reality_public_key=_text(reality.get("public_key"))
        if reality.get("enabled")
        else "",
        reality_short_id=_text(reality.get("short_id"))
        if reality.get("enabled")
        else "",
    )


def is_singbox_proxy(outbound: Any) -> bool:
    """Tell whether a sing-box outbound describes a server (not a selector)."""
    return not (
        isinstance(outbound, Mapping)
        and _text(outbound.get("type")) in _SINGBOX_NON_PROXY
    )


def parse_singbox_outbound(outbound: Any) -> Proxy:
    """Read one sing-box outbound into a `Proxy`, checked and normalised.

    Raises:
        LinkError: the item is not a mapping, its type is unsupported, or a
            field is unusable.
    """
    return validate(_singbox_outbound(outbound))


def _singbox_wireguard(endpoint: Mapping[str, Any]) -> Proxy:
    peers = endpoint.get("peers") or []
    peer = _mapping(peers[0] if isinstance(peers, list) and peers else {})
    server = _text(peer.get("address") or endpoint.get("server"))
    port = peer.get("port") or endpoint.get("server_port")
    addresses = endpoint.get("address") or endpoint.get("local_address") or []
    return Proxy(
        protocol="wireguard",
        server=_check_host(server),
        port=_check_port(_text(port)),
        name=_text(endpoint.get("tag")),
        password=_text(endpoint.get("private_key")),
        options=_wireguard_options(
            public_key=_text(peer.get("public_key") or endpoint.get("peer_public_key")),
            addresses=[_text(a) for a in addresses]
            if isinstance(addresses, list)
            else [],
            reserved=peer.get("reserved") or endpoint.get("reserved"),
            mtu=_text(endpoint.get("mtu")),
            pre_shared_key=_text(
                peer.get("pre_shared_key") or endpoint.get("pre_shared_key")
            ),
        ),
    )


def _singbox_outbound(outbound: Any) -> Proxy:
    if not isinstance(outbound, Mapping):
        raise LinkError("bad-entry", "outbound is not an object")
    kind = _text(outbound.get("type")).lower()
    if kind == "wireguard":
        return _singbox_wireguard(outbound)
    if kind not in _SINGBOX_FIELDS:
        raise LinkError(
            "unsupported-type", f"sing-box outbound type {kind[:20]!r} is not supported"
        )
    obfs = _mapping(outbound.get("obfs"))
    obfs_password = _text(obfs.get("password")) if obfs else _text(outbound.get("obfs"))
    # Checked like a link's port list, whatever shape the value has.
    hop_ranges = _list(outbound.get("server_ports"))
    ports = _port_ranges(",".join(hop_ranges)) if hop_ranges else ()
    server = _check_host(_text(outbound.get("server")))
    uses = _SINGBOX_FIELDS[kind]
    tls = _singbox_tls(_mapping(outbound.get("tls")), server)
    if kind in {"hysteria2", "hysteria", "tuic", "anytls", "naive"}:
        tls = tls or Tls(server_name=_default_sni(server))
    version = _text(outbound.get("version")) if kind == "socks" else ""

    def field(name: str, value: str) -> str:
        # Converters leave stray keys (a uuid on a hysteria2 outbound, ...);
        # only the fields the protocol uses are read.
        return value if name in uses else ""

    return Proxy(
        protocol=kind,
        server=server,
        port=_check_port(_text(outbound.get("server_port"))),
        name=_text(outbound.get("tag")),
        uuid=field("uuid", _text(outbound.get("uuid"))),
        password=field(
            "password",
            _text(outbound.get("password") or outbound.get("auth_str"))
            or (_text(outbound.get("uuid")) if kind == "hysteria2" else ""),
        ),
        username=field(
            "username", _text(outbound.get("username") or outbound.get("user"))
        ),
        method=field(
            "method",
            _text(outbound.get("method") or outbound.get("security"))
            or ("auto" if kind == "vmess" else ""),
        ),
        alter_id=_int(outbound.get("alter_id"), "alter_id") if kind == "vmess" else 0,
        flow=field("flow", _text(outbound.get("flow"))),
        plugin=field("plugin", _text(outbound.get("plugin"))),
        plugin_opts=field("plugin", _text(outbound.get("plugin_opts"))),
        ports=ports if kind == "hysteria2" else (),
        obfs=_text(obfs.get("type")) if kind == "hysteria2" else "",
        obfs_password=field("obfs", obfs_password),
        congestion_control=field("tuic", _text(outbound.get("congestion_control"))),
        udp_relay_mode=field("tuic", _text(outbound.get("udp_relay_mode"))),
        up_mbps=_int(outbound.get("up_mbps"), "up_mbps") if "obfs" in uses else 0,
        down_mbps=_int(outbound.get("down_mbps"), "down_mbps") if "obfs" in uses else 0,
        transport=_singbox_transport(_mapping(outbound.get("transport")))
        if "transport" in uses
        else None,
        tls=tls,
        options=(("version", version),) if version and version != "5" else (),
    )

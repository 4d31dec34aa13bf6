"""`Proxy` models into sing-box outbound objects.

The same conversion feeds the tester and the published `singbox.json`, so a
config is tested exactly as users receive it. Configs sing-box cannot express
raise `Unrepresentable` with the reason; the tester reports them as
untestable, never as dead.
"""

from __future__ import annotations

from typing import Any

from configstream.errors import ConfigStreamError
from configstream.models import Proxy, Tls, Transport

# Transports sing-box implements; xhttp, kcp and the like have no counterpart.
SINGBOX_TRANSPORTS = {"ws", "grpc", "http", "httpupgrade", "quic"}
SINGBOX_SS_PLUGINS = {"", "obfs-local", "v2ray-plugin"}
# Shadowsocks ciphers sing-box implements (the original 'chacha20' is not one).
SINGBOX_SS_METHODS = frozenset(
    """none aes-128-gcm aes-192-gcm aes-256-gcm chacha20-ietf-poly1305
    xchacha20-ietf-poly1305 2022-blake3-aes-128-gcm 2022-blake3-aes-256-gcm
    2022-blake3-chacha20-poly1305 aes-128-ctr aes-192-ctr aes-256-ctr aes-128-cfb
    aes-192-cfb aes-256-cfb rc4-md5 chacha20-ietf xchacha20""".split()
)
# Hysteria v1 refuses to start without bandwidth figures; these are the
# values most clients fill in when a link leaves them out.
HYSTERIA_DEFAULT_UP_MBPS = 10
HYSTERIA_DEFAULT_DOWN_MBPS = 50


class Unrepresentable(ConfigStreamError):
    """A config that sing-box (or this build of it) cannot run."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def secrets_of(proxy: Proxy) -> tuple[str, ...]:
    """The credential values of a proxy, for scrubbing them from messages."""
    values = (proxy.uuid, proxy.password, proxy.obfs_password, proxy.username)
    keys = (proxy.tls.reality_public_key,) if proxy.tls else ()
    return tuple(v for v in values + keys if v and len(v) >= 3)


def _tls(tls: Tls | None, *, has_utls: bool) -> dict[str, Any] | None:
    if tls is None:
        return None
    data: dict[str, Any] = {"enabled": True}
    if tls.server_name:
        data["server_name"] = tls.server_name
    data["insecure"] = tls.insecure
    if tls.alpn:
        data["alpn"] = list(tls.alpn)
    if tls.is_reality and not has_utls:
        raise Unrepresentable("REALITY needs uTLS, which this sing-box build lacks")
    if tls.fingerprint and has_utls:
        data["utls"] = {"enabled": True, "fingerprint": tls.fingerprint}
    elif tls.is_reality:
        data["utls"] = {"enabled": True, "fingerprint": "chrome"}
    if tls.is_reality:
        data["reality"] = {
            "enabled": True,
            "public_key": tls.reality_public_key,
            "short_id": tls.reality_short_id,
        }
    return data


def _transport(transport: Transport | None) -> dict[str, Any] | None:
    if transport is None:
        return None
    kind = transport.type
    if kind not in SINGBOX_TRANSPORTS:
        raise Unrepresentable(f"sing-box has no '{kind}' transport")
    data: dict[str, Any] = {"type": kind}
    if kind == "ws":
        data["path"] = transport.path or "/"
        if transport.host:
            data["headers"] = {"Host": transport.host}
        if transport.max_early_data:
            data["max_early_data"] = transport.max_early_data
            data["early_data_header_name"] = transport.early_data_header
    elif kind == "grpc":
        data["service_name"] = transport.service_name
    elif kind == "http":
        if transport.host:
            data["host"] = [h.strip() for h in transport.host.split(",") if h.strip()]
        if transport.path:
            data["path"] = transport.path
    elif kind == "httpupgrade":
        if transport.host:
            data["host"] = transport.host
        data["path"] = transport.path or "/"
    return data


def reserved_bytes(proxy: Proxy) -> list[int]:
    """WireGuard's three `reserved` bytes (Cloudflare WARP) as numbers.

    Raises:
        Unrepresentable: the value is not a list of numbers.
    """
    try:
        return [int(x) for x in dict(proxy.options)["reserved"].split(",")]
    except (KeyError, ValueError):
        raise Unrepresentable("wireguard reserved bytes are not numbers") from None


def _wireguard_endpoint(proxy: Proxy, tag: str) -> dict[str, Any]:
    """WireGuard is an endpoint in sing-box 1.11 and later, not an outbound."""
    options = dict(proxy.options)
    peer: dict[str, Any] = {
        "address": proxy.server,
        "port": proxy.port,
        "public_key": options["public-key"],
        "allowed_ips": ["0.0.0.0/0", "::/0"],
    }
    if options.get("pre-shared-key"):
        peer["pre_shared_key"] = options["pre-shared-key"]
    if options.get("reserved"):
        peer["reserved"] = reserved_bytes(proxy)
    endpoint: dict[str, Any] = {
        "type": "wireguard",
        "tag": tag,
        "address": [_with_prefix(a) for a in options["address"].split(",")],
        "private_key": proxy.password,
        "peers": [peer],
    }
    if options.get("mtu", "").isdigit():
        endpoint["mtu"] = int(options["mtu"])
    return endpoint


def _with_prefix(address: str) -> str:
    address = address.strip()
    if "/" in address:
        return address
    return address + ("/128" if ":" in address else "/32")


def to_outbound(proxy: Proxy, tag: str, *, has_utls: bool = True) -> dict[str, Any]:
    """Build the sing-box outbound for a proxy.

    Args:
        proxy: the config to convert.
        tag: the outbound tag.
        has_utls: whether the target core was built with uTLS; without it,
            fingerprints are dropped and REALITY is unrepresentable.

    Raises:
        Unrepresentable: sing-box cannot run this config.
    """
    out: dict[str, Any] = {
        "type": proxy.protocol,
        "tag": tag,
        "server": proxy.server,
        "server_port": proxy.port,
    }
    kind = proxy.protocol
    if kind == "vmess":
        out.update(
            uuid=proxy.uuid, security=proxy.method or "auto", alter_id=proxy.alter_id
        )
    elif kind == "vless":
        out["uuid"] = proxy.uuid
        if proxy.flow:
            # sing-box knows one Vision flow; '-udp443' only changes whether
            # QUIC to port 443 is proxied.
            out["flow"] = "xtls-rprx-vision"
    elif kind == "trojan":
        out["password"] = proxy.password
    elif kind == "shadowsocks":
        if proxy.method not in SINGBOX_SS_METHODS:
            raise Unrepresentable(
                f"sing-box has no shadowsocks cipher '{proxy.method}'"
            )
        if proxy.plugin not in SINGBOX_SS_PLUGINS:
            raise Unrepresentable(
                f"sing-box has no shadowsocks plugin '{proxy.plugin}'"
            )
        out.update(method=proxy.method, password=proxy.password)
        if proxy.plugin:
            out.update(plugin=proxy.plugin, plugin_opts=proxy.plugin_opts)
    elif kind == "hysteria2":
        out["password"] = proxy.password
        if proxy.ports:
            out["server_ports"] = list(proxy.ports)
        if proxy.obfs:
            out["obfs"] = {"type": proxy.obfs, "password": proxy.obfs_password}
        if proxy.up_mbps:
            out["up_mbps"] = proxy.up_mbps
        if proxy.down_mbps:
            out["down_mbps"] = proxy.down_mbps
    elif kind == "hysteria":
        out.update(
            auth_str=proxy.password,
            up_mbps=proxy.up_mbps or HYSTERIA_DEFAULT_UP_MBPS,
            down_mbps=proxy.down_mbps or HYSTERIA_DEFAULT_DOWN_MBPS,
        )
        if proxy.obfs_password:
            out["obfs"] = proxy.obfs_password
    elif kind == "tuic":
        out.update(uuid=proxy.uuid, password=proxy.password)
        if proxy.congestion_control:
            out["congestion_control"] = proxy.congestion_control
        if proxy.udp_relay_mode:
            out["udp_relay_mode"] = proxy.udp_relay_mode
    elif kind in {"socks", "http", "naive"}:
        if kind == "socks":
            out["version"] = dict(proxy.options).get("version", "5")
        if proxy.username:
            out.update(username=proxy.username, password=proxy.password)
    elif kind == "anytls":
        out["password"] = proxy.password
    elif kind == "ssh":
        out["user"] = proxy.username
        if proxy.password:
            out["password"] = proxy.password
    elif kind == "wireguard":
        return _wireguard_endpoint(proxy, tag)
    else:
        raise Unrepresentable(f"sing-box cannot run {kind}")

    tls = _tls(proxy.tls, has_utls=has_utls)
    if kind in {"hysteria2", "hysteria", "tuic", "anytls", "naive"}:
        # These always run over TLS even when a link omits it.
        tls = tls or {"enabled": True}
    if tls is not None:
        out["tls"] = tls
    transport = _transport(proxy.transport)
    if transport is not None:
        if kind not in {"vmess", "vless", "trojan"}:
            raise Unrepresentable(
                f"{kind} cannot carry a {transport['type']} transport"
            )
        out["transport"] = transport
    return out

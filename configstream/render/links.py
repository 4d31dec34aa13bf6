"""`Proxy` models back into share links, keeping every parameter.

The inverse of `configstream.parse.links`: a link parsed and exported again
carries the same fields (REALITY keys, early data, gRPC mode, port lists).
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

from configstream.models import Proxy, Tls, Transport

_SAFE = "-._~"


def _q(text: str) -> str:
    return quote(text, safe=_SAFE)


def _host(proxy: Proxy) -> str:
    return f"[{proxy.server}]" if ":" in proxy.server else proxy.server


def _path_with_early_data(transport: Transport) -> str:
    if not transport.max_early_data:
        return transport.path
    joiner = "&" if "?" in transport.path else "?"
    return f"{transport.path}{joiner}ed={transport.max_early_data}"


def _transport_params(transport: Transport | None) -> list[tuple[str, str]]:
    if transport is None:
        return [("type", "tcp")]
    options = dict(transport.options)
    if options.pop("tcp-http", None):
        params = [("type", "tcp"), ("headerType", "http")]
    else:
        params = [("type", transport.type)]
    if transport.host:
        params.append(("host", transport.host))
    if transport.type == "grpc":
        params.append(("serviceName", transport.service_name))
    elif transport.path or transport.max_early_data:
        params.append(("path", _path_with_early_data(transport)))
    params.extend(options.items())
    return params


def _tls_params(
    tls: Tls | None, insecure_key: str = "allowInsecure"
) -> list[tuple[str, str]]:
    if tls is None:
        return [("security", "none")]
    params = [("security", "reality" if tls.is_reality else "tls")]
    if tls.server_name:
        params.append(("sni", tls.server_name))
    if tls.fingerprint:
        params.append(("fp", tls.fingerprint))
    if tls.alpn:
        params.append(("alpn", ",".join(tls.alpn)))
    if tls.is_reality:
        params.append(("pbk", tls.reality_public_key))
        params.append(("sid", tls.reality_short_id))
        if tls.reality_spider_x:
            params.append(("spx", tls.reality_spider_x))
    if tls.insecure:
        params.append((insecure_key, "1"))
    return params


def _query(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{_q(k)}={_q(v)}" for k, v in params)


def _b64(text: str, urlsafe: bool = False) -> str:
    raw = text.encode("utf-8")
    encoded = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
    return encoded.decode("ascii")


def _vmess(proxy: Proxy, name: str) -> str:
    transport, tls = proxy.transport, proxy.tls
    data: dict[str, str] = {
        "v": "2",
        "ps": name,
        "add": proxy.server,
        "port": str(proxy.port),
        "id": proxy.uuid,
        "aid": str(proxy.alter_id),
        "scy": proxy.method or "auto",
        "net": "tcp",
        "type": "none",
        "host": "",
        "path": "",
        "tls": "",
    }
    if transport is not None:
        options = dict(transport.options)
        if options.get("tcp-http"):
            data.update(type="http")
        else:
            data["net"] = transport.type
        data["host"] = transport.host
        if transport.type == "grpc":
            data.update(path=transport.service_name, type=options.get("mode", "gun"))
        else:
            data["path"] = _path_with_early_data(transport)
    if tls is not None:
        data.update(tls="reality" if tls.is_reality else "tls", sni=tls.server_name)
        if tls.alpn:
            data["alpn"] = ",".join(tls.alpn)
        if tls.fingerprint:
            data["fp"] = tls.fingerprint
        if tls.insecure:
            data["allowInsecure"] = "1"
        if tls.is_reality:
            data.update(pbk=tls.reality_public_key, sid=tls.reality_short_id)
            if tls.reality_spider_x:
                data["spx"] = tls.reality_spider_x
    return "vmess://" + _b64(
        json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )


def _ss_userinfo(proxy: Proxy) -> str:
    # SIP002: base64url for classic ciphers; 2022 keys are percent-encoded
    # plain text, which is what 2022-aware clients expect.
    if proxy.method.startswith("2022-"):
        return f"{_q(proxy.method)}:{_q(proxy.password)}"
    return _b64(f"{proxy.method}:{proxy.password}", urlsafe=True).rstrip("=")


def _port_list(proxy: Proxy) -> tuple[str, str]:
    """The authority's port part and an `mport` value for hopping ranges.

    A list that starts with the main port goes into the authority
    (`443,20000-30000`); otherwise the ranges go into `mport` so the main
    port survives a round trip.
    """
    items = []
    for item in proxy.ports:
        low, _, high = item.partition(":")
        items.append(low if low == high else f"{low}-{high}")
    if not items:
        return str(proxy.port), ""
    if items[0] == str(proxy.port):
        return ",".join(items), ""
    return str(proxy.port), ",".join(items)


def _userinfo(proxy: Proxy) -> str:
    if not proxy.username and not proxy.password:
        return ""
    secret = f":{_q(proxy.password)}" if proxy.password else ""
    return f"{_q(proxy.username)}{secret}@"


def to_link(proxy: Proxy, name: str | None = None) -> str:
    """Write a proxy as a share link named `name` (default: its own name).

    Returns an empty string for protocols that have no share-link form.
    """
    name = proxy.name if name is None else name
    fragment = "#" + _q(name) if name else ""
    host = f"{_host(proxy)}:{proxy.port}"
    kind = proxy.protocol
    if kind == "vmess":
        return _vmess(proxy, name)
    if kind == "vless":
        params = [("encryption", "none")]
        if proxy.flow:
            params.append(("flow", proxy.flow))
        params += _tls_params(proxy.tls) + _transport_params(proxy.transport)
        return f"vless://{_q(proxy.uuid)}@{host}?{_query(params)}{fragment}"
    if kind == "trojan":
        params = _tls_params(proxy.tls) + _transport_params(proxy.transport)
        return f"trojan://{_q(proxy.password)}@{host}?{_query(params)}{fragment}"
    if kind == "shadowsocks":
        plugin = ""
        if proxy.plugin:
            value = proxy.plugin + (
                ";" + proxy.plugin_opts if proxy.plugin_opts else ""
            )
            plugin = "/?plugin=" + _q(value)
        return f"ss://{_ss_userinfo(proxy)}@{host}{plugin}{fragment}"
    if kind == "hysteria2":
        params = [
            (k, v) for k, v in _tls_params(proxy.tls, "insecure") if k != "security"
        ]
        if proxy.obfs:
            params += [("obfs", proxy.obfs), ("obfs-password", proxy.obfs_password)]
        if proxy.up_mbps:
            params.append(("upmbps", str(proxy.up_mbps)))
        if proxy.down_mbps:
            params.append(("downmbps", str(proxy.down_mbps)))
        port_text, mport = _port_list(proxy)
        if mport:
            params.append(("mport", mport))
        ports = f"{_host(proxy)}:{port_text}"
        return f"hysteria2://{_q(proxy.password)}@{ports}/?{_query(params)}{fragment}"
    if kind == "tuic":
        params = [
            (k, v)
            for k, v in _tls_params(proxy.tls, "allow_insecure")
            if k != "security"
        ]
        if proxy.congestion_control:
            params.append(("congestion_control", proxy.congestion_control))
        if proxy.udp_relay_mode:
            params.append(("udp_relay_mode", proxy.udp_relay_mode))
        userinfo = _q(proxy.uuid) + (":" + _q(proxy.password) if proxy.password else "")
        return f"tuic://{userinfo}@{host}?{_query(params)}{fragment}"
    if kind == "hysteria":
        params = [("auth", proxy.password)]
        if proxy.up_mbps:
            params.append(("upmbps", str(proxy.up_mbps)))
        if proxy.down_mbps:
            params.append(("downmbps", str(proxy.down_mbps)))
        if proxy.tls is not None:
            if proxy.tls.server_name:
                params.append(("peer", proxy.tls.server_name))
            if proxy.tls.insecure:
                params.append(("insecure", "1"))
            if proxy.tls.alpn:
                params.append(("alpn", ",".join(proxy.tls.alpn)))
        if proxy.obfs_password:
            params.append(("obfsParam", proxy.obfs_password))
        return f"hysteria://{host}?{_query(params)}{fragment}"
    if kind == "socks":
        version = dict(proxy.options).get("version", "")
        if version:
            return f"socks{version}://{_userinfo(proxy)}{host}{fragment}"
        if ":" in proxy.username:
            # base64(user:pass) cannot say which ':' splits them; the
            # percent-encoded form can.
            return f"socks://{_userinfo(proxy)}{host}{fragment}"
        auth = (
            _b64(f"{proxy.username}:{proxy.password}") + "@" if proxy.username else ""
        )
        return f"socks://{auth}{host}{fragment}"
    if kind in {"http", "naive", "ssh"}:
        scheme = {
            "http": "https" if proxy.tls else "http",
            "naive": "naive+https",
            "ssh": "ssh",
        }[kind]
        params = []
        if proxy.tls is not None:
            params = [
                (k, v) for k, v in _tls_params(proxy.tls, "insecure") if k != "security"
            ]
        query = f"?{_query(params)}" if params else ""
        return f"{scheme}://{_userinfo(proxy)}{host}{query}{fragment}"
    if kind == "anytls":
        params = [
            (k, v) for k, v in _tls_params(proxy.tls, "insecure") if k != "security"
        ]
        return f"anytls://{_q(proxy.password)}@{host}?{_query(params)}{fragment}"
    if kind == "wireguard":
        options = dict(proxy.options)
        params = [
            (key, options[option])
            for key, option in (
                ("publickey", "public-key"),
                ("address", "address"),
                ("reserved", "reserved"),
                ("mtu", "mtu"),
                ("presharedkey", "pre-shared-key"),
            )
            if options.get(option)
        ]
        return f"wireguard://{_q(proxy.password)}@{host}?{_query(params)}{fragment}"
    if kind == "ssr":
        options = dict(proxy.options)
        main = ":".join(
            [
                proxy.server,
                str(proxy.port),
                options.get("protocol", "origin"),
                proxy.method,
                proxy.obfs or "plain",
                _b64(proxy.password, urlsafe=True).rstrip("="),
            ]
        )
        extras = {
            "obfsparam": options.get("obfs-param", ""),
            "protoparam": options.get("protocol-param", ""),
            "remarks": name,
        }
        query = "&".join(
            f"{k}={_b64(v, urlsafe=True).rstrip('=')}" for k, v in extras.items() if v
        )
        return "ssr://" + _b64(f"{main}/?{query}", urlsafe=True).rstrip("=")
    return ""

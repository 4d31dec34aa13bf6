"""`Proxy` models into Clash/mihomo proxies and a complete mihomo config."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import yaml

from configstream.models import Proxy
from configstream.outbound import Unrepresentable, reserved_bytes
from configstream.parse.validate import split_plugin_options

_CLASH_NETWORKS = {"ws", "grpc", "http", "httpupgrade"}
# Plain YAML scalars that every loader reads back as the same string. Anything
# else (digits, hex ids such as 0983e134, yes/no, empty) is written quoted so
# that a YAML 1.1 or 1.2 loader cannot turn it into a number or a boolean.
# Single quotes, because PyYAML's double-quoted style escapes every emoji.
_PLAIN_SAFE = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_RESERVED = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", "nan", "inf"}


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    plain = _PLAIN_SAFE.match(value) and value.lower() not in _RESERVED
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style=None if plain else "'"
    )


_Dumper.add_representer(str, _represent_str)


# Characters YAML does not allow raw, or reads as a line break, inside a
# double-quoted scalar; JSON leaves them raw, so they are escaped after it.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def _flow(value: Any) -> str:
    """One value as JSON, which YAML reads as a flow node with the same data."""
    text = json.dumps(value, ensure_ascii=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dump_yaml(data: Any) -> str:
    """YAML text of a config, with every string quoted.

    A top-level mapping is written one key at a time and each list item as a
    JSON flow mapping (JSON is YAML): every string is double-quoted, so no
    YAML 1.1 or 1.2 loader can read a short id `01234567` or a name `yes`
    as a number or a boolean, and a file of thirty thousand proxies takes
    a tenth of a second instead of PyYAML's emitter's forty.
    """
    if not isinstance(data, dict):
        return yaml.dump(
            data, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=10_000
        )
    lines = []
    for key, value in data.items():
        name = key if _PLAIN_SAFE.match(str(key)) else _flow(str(key))
        if isinstance(value, list) and value:
            lines.append(f"{name}:")
            lines.extend(f"  - {_flow(item)}" for item in value)
        else:
            lines.append(f"{name}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def _tls_fields(
    proxy: Proxy, entry: dict[str, Any], sni_key: str = "servername"
) -> None:
    tls = proxy.tls
    if tls is None:
        return
    if proxy.protocol in {"vmess", "vless", "socks", "http"}:
        entry["tls"] = True
    if tls.server_name:
        entry[sni_key] = tls.server_name
    if tls.insecure:
        entry["skip-cert-verify"] = True
    if tls.alpn:
        entry["alpn"] = list(tls.alpn)
    if tls.fingerprint:
        entry["client-fingerprint"] = tls.fingerprint
    if tls.is_reality:
        entry["reality-opts"] = {
            "public-key": tls.reality_public_key,
            "short-id": tls.reality_short_id,
        }
        entry.setdefault("client-fingerprint", "chrome")


def _transport_fields(proxy: Proxy, entry: dict[str, Any]) -> None:
    transport = proxy.transport
    if transport is None:
        entry["network"] = "tcp"
        return
    if dict(transport.options).get("tcp-http"):
        entry["network"] = "http"
        opts: dict[str, Any] = {"method": "GET", "path": [transport.path or "/"]}
        if transport.host:
            opts["headers"] = {"Host": transport.host.split(",")}
        entry["http-opts"] = opts
        return
    if transport.type not in _CLASH_NETWORKS:
        raise Unrepresentable(f"mihomo has no '{transport.type}' transport")
    if transport.type == "ws":
        ws: dict[str, Any] = {"path": transport.path or "/"}
        if transport.host:
            ws["headers"] = {"Host": transport.host}
        if transport.max_early_data:
            ws["max-early-data"] = transport.max_early_data
            ws["early-data-header-name"] = transport.early_data_header
        entry.update({"network": "ws", "ws-opts": ws})
    elif transport.type == "grpc":
        entry.update(
            {
                "network": "grpc",
                "grpc-opts": {"grpc-service-name": transport.service_name},
            }
        )
    elif transport.type == "http":
        h2: dict[str, Any] = {"path": transport.path or "/"}
        if transport.host:
            h2["host"] = transport.host.split(",")
        entry.update({"network": "h2", "h2-opts": h2})
    else:
        upgrade: dict[str, Any] = {
            "path": transport.path or "/",
            "v2ray-http-upgrade": True,
        }
        if transport.host:
            upgrade["headers"] = {"Host": transport.host}
        entry.update({"network": "ws", "ws-opts": upgrade})


def _plugin(proxy: Proxy, entry: dict[str, Any]) -> None:
    if not proxy.plugin:
        return
    opts = {key: value or "" for key, value in split_plugin_options(proxy.plugin_opts)}
    if proxy.plugin in {"obfs-local", "simple-obfs"}:
        plugin_opts = {"mode": opts.get("obfs", "http")}
        if opts.get("obfs-host"):
            plugin_opts["host"] = opts["obfs-host"]
        entry.update(plugin="obfs", **{"plugin-opts": plugin_opts})
    elif proxy.plugin == "v2ray-plugin":
        v2: dict[str, Any] = {"mode": opts.get("mode", "websocket")}
        if "tls" in opts:
            v2["tls"] = True
        for key in ("host", "path"):
            if opts.get(key):
                v2[key] = opts[key]
        entry.update(plugin="v2ray-plugin", **{"plugin-opts": v2})
    else:
        raise Unrepresentable(f"mihomo has no shadowsocks plugin '{proxy.plugin}'")


def to_clash(proxy: Proxy, name: str) -> dict[str, Any]:
    """Build one mihomo `proxies:` entry.

    Raises:
        Unrepresentable: mihomo cannot express this config.
    """
    entry: dict[str, Any] = {"name": name, "server": proxy.server, "port": proxy.port}
    kind = proxy.protocol
    if kind == "vmess":
        entry.update(
            type="vmess",
            uuid=proxy.uuid,
            alterId=proxy.alter_id,
            cipher=proxy.method or "auto",
            udp=True,
        )
        _tls_fields(proxy, entry)
        _transport_fields(proxy, entry)
    elif kind == "vless":
        entry.update(type="vless", uuid=proxy.uuid, udp=True)
        if proxy.flow:
            entry["flow"] = "xtls-rprx-vision"
        _tls_fields(proxy, entry)
        _transport_fields(proxy, entry)
    elif kind == "trojan":
        if proxy.tls is None:
            raise Unrepresentable("mihomo runs trojan over TLS only")
        entry.update(type="trojan", password=proxy.password, udp=True)
        _tls_fields(proxy, entry, sni_key="sni")
        _transport_fields(proxy, entry)
        if entry.get("network") == "tcp":
            del entry["network"]
    elif kind == "shadowsocks":
        entry.update(type="ss", cipher=proxy.method, password=proxy.password, udp=True)
        _plugin(proxy, entry)
    elif kind == "hysteria2":
        entry.update(type="hysteria2", password=proxy.password)
        if proxy.ports:
            entry["ports"] = ",".join(
                a if a == b else f"{a}-{b}"
                for a, _, b in (p.partition(":") for p in proxy.ports)
            )
        if proxy.obfs:
            entry.update(obfs=proxy.obfs, **{"obfs-password": proxy.obfs_password})
        if proxy.up_mbps:
            entry["up"] = f"{proxy.up_mbps} Mbps"
        if proxy.down_mbps:
            entry["down"] = f"{proxy.down_mbps} Mbps"
        _tls_fields(proxy, entry, sni_key="sni")
    elif kind == "tuic":
        entry.update(type="tuic", uuid=proxy.uuid, password=proxy.password)
        if proxy.congestion_control:
            entry["congestion-controller"] = proxy.congestion_control
        if proxy.udp_relay_mode:
            entry["udp-relay-mode"] = proxy.udp_relay_mode
        _tls_fields(proxy, entry, sni_key="sni")
    elif kind == "hysteria":
        entry.update(
            type="hysteria",
            **{"auth-str": proxy.password},
            up=f"{proxy.up_mbps or 10} Mbps",
            down=f"{proxy.down_mbps or 50} Mbps",
        )
        if proxy.obfs_password:
            entry["obfs"] = proxy.obfs_password
        _tls_fields(proxy, entry, sni_key="sni")
    elif kind in {"socks", "http"}:
        if dict(proxy.options).get("version", "5") != "5":
            raise Unrepresentable("mihomo has no SOCKS4 client")
        entry["type"] = "socks5" if kind == "socks" else "http"
        if proxy.username:
            entry.update(username=proxy.username, password=proxy.password)
        _tls_fields(proxy, entry)
    elif kind == "anytls":
        entry.update(type="anytls", password=proxy.password, udp=True)
        _tls_fields(proxy, entry, sni_key="sni")
    elif kind == "ssh":
        entry.update(type="ssh", username=proxy.username)
        if proxy.password:
            entry["password"] = proxy.password
    elif kind == "wireguard":
        options = dict(proxy.options)
        entry.update(
            type="wireguard",
            **{"private-key": proxy.password, "public-key": options["public-key"]},
            udp=True,
        )
        for address in options["address"].split(","):
            entry["ipv6" if ":" in address else "ip"] = address.split("/")[0]
        if options.get("pre-shared-key"):
            entry["pre-shared-key"] = options["pre-shared-key"]
        if options.get("reserved"):
            entry["reserved"] = reserved_bytes(proxy)
        if options.get("mtu", "").isdigit():
            entry["mtu"] = int(options["mtu"])
    elif kind == "ssr":
        options = dict(proxy.options)
        entry.update(
            type="ssr",
            cipher=proxy.method,
            password=proxy.password,
            obfs=proxy.obfs or "plain",
            protocol=options.get("protocol", "origin"),
        )
        if options.get("obfs-param"):
            entry["obfs-param"] = options["obfs-param"]
        if options.get("protocol-param"):
            entry["protocol-param"] = options["protocol-param"]
    else:
        raise Unrepresentable(f"mihomo cannot express {kind}")
    return entry


def clash_config(
    proxies: Sequence[dict[str, Any]],
    groups_by_country: dict[str, list[str]],
    test_url: str,
) -> dict[str, Any]:
    """A complete mihomo config: proxies, a selector, url-test and country groups."""
    names = [p["name"] for p in proxies]
    country_groups = [
        {"name": f"{code}", "type": "select", "proxies": members}
        for code, members in sorted(groups_by_country.items())
    ]
    selectable = names or ["DIRECT"]
    groups = [
        {
            "name": "PROXY",
            "type": "select",
            "proxies": ["AUTO", *[g["name"] for g in country_groups], *selectable],
        },
        {
            "name": "AUTO",
            "type": "url-test",
            "url": test_url,
            "interval": 600,
            "tolerance": 50,
            "proxies": selectable,
        },
        *country_groups,
    ]
    return {
        "mixed-port": 7890,
        "allow-lan": False,
        "mode": "rule",
        "log-level": "warning",
        "proxies": list(proxies),
        "proxy-groups": groups,
        "rules": ["MATCH,PROXY"],
    }

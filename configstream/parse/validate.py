"""The last step of every reader: check and normalise a parsed `Proxy`.

Links, Clash entries and sing-box outbounds all end here, so a config means
the same whichever shape it came in, and values that no client accepts are
rejected with a reason instead of poisoning a published file.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import re
import uuid

from configstream.errors import LinkError
from configstream.models import Proxy, Tls

# Ciphers Shadowsocks clients (sing-box, mihomo, Xray) implement.
SS_METHODS = frozenset(
    """none plain aes-128-gcm aes-192-gcm aes-256-gcm chacha20-ietf-poly1305
    xchacha20-ietf-poly1305 2022-blake3-aes-128-gcm 2022-blake3-aes-256-gcm
    2022-blake3-chacha20-poly1305 aes-128-ctr aes-192-ctr aes-256-ctr aes-128-cfb
    aes-192-cfb aes-256-cfb rc4-md5 chacha20-ietf xchacha20 chacha20""".split()
)
SS2022_KEY_BYTES = {
    "2022-blake3-aes-128-gcm": 16,
    "2022-blake3-aes-256-gcm": 32,
    "2022-blake3-chacha20-poly1305": 32,
}
# Option keys of the SIP003 plugins clients implement; others are dropped.
PLUGIN_KEYS = {
    "obfs-local": ("obfs", "obfs-host"),
    "v2ray-plugin": ("mode", "tls", "host", "path", "mux"),
}
VMESS_SECURITY = frozenset(
    {"auto", "none", "zero", "aes-128-gcm", "chacha20-poly1305", "aes-128-cfb"}
)
FINGERPRINTS = frozenset(
    {
        "chrome",
        "firefox",
        "safari",
        "ios",
        "android",
        "edge",
        "360",
        "qq",
        "random",
        "randomized",
        "chrome_psk",
        "chrome_psk_shuffle",
        "chrome_padding_psk_shuffle",
        "chrome_pq",
        "chrome_pq_psk",
        "firefox120",
        "chrome120",
        "safari16",
    }
)
VLESS_FLOWS = frozenset({"", "xtls-rprx-vision", "xtls-rprx-vision-udp443"})
# Xray maps a non-UUID id of 1 to 30 bytes to a UUID (SHA-1 in the nil
# namespace, as uuid5 does); longer text is not an id.
MAX_ID_TEXT_BYTES = 30
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# A dotted quad in canonical form: no leading zeros, every octet below 256.
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# Two or more labels whose last one is not all digits (a broken address).
_DNS_NAME = re.compile(rf"(?:{_LABEL}\.)+(?!\d+\Z){_LABEL}\Z")
_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
)
_UUID_PROTOCOLS = frozenset({"vmess", "vless", "tuic"})
_USER_PASSWORD_PROTOCOLS = frozenset({"socks", "http", "naive"})
_PASSWORD_PROTOCOLS = frozenset({"trojan", "hysteria2", "anytls"})
_QUIC_PROTOCOLS = frozenset({"hysteria2", "hysteria", "tuic"})


# Longer values are junk (or an attack on the files written from them): a
# link built from them would pass the reader's own length limit.
MAX_FIELD_CHARS = 2048
# Names are rebuilt for publishing; the original is kept for logs, cut here.
MAX_NAME_CHARS = 512


def check_unicode(text: str) -> str:
    """`text` unchanged, unless it holds a lone surrogate (a JSON `\\udcff`
    escape), which no file can be written with.

    Raises:
        LinkError: the text is not valid Unicode.
    """
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise LinkError("bad-field", "text holds an unpaired surrogate") from None
    return text


def _check_lengths(proxy: Proxy) -> None:
    values = [
        proxy.password,
        proxy.username,
        proxy.uuid,
        proxy.plugin_opts,
        proxy.obfs_password,
        *(value for _, value in proxy.options),
    ]
    if proxy.transport is not None:
        values += [
            proxy.transport.path,
            proxy.transport.host,
            proxy.transport.service_name,
        ]
    if proxy.tls is not None:
        values += [proxy.tls.server_name, proxy.tls.reality_public_key]
    longest = max(map(len, values))
    if longest > MAX_FIELD_CHARS:
        raise LinkError("too-long", f"a field of {longest} characters")


def normalize_uuid(text: str) -> str:
    """A canonical lower-case UUID; short text maps as Xray maps it.

    Raises:
        LinkError: the text is neither a UUID nor a short id string.
    """
    text = text.strip()
    if _CANONICAL_UUID.match(text):
        return text
    try:
        return str(uuid.UUID(text))
    except ValueError:
        pass
    if 0 < len(text.encode("utf-8")) <= MAX_ID_TEXT_BYTES:
        return str(uuid.uuid5(uuid.UUID(int=0), text))
    raise LinkError("bad-uuid", "user id is not a UUID")


def check_host(host: str) -> str:
    """A lower-case IP address or DNS name; trailing dots are dropped.

    Raises:
        LinkError: the server is not an address or a multi-label name.
    """
    host = host.strip().lower().rstrip(".")
    if not host:
        raise LinkError("missing-server", "no server address")
    # The common cases first, each settled by one regular expression.
    if _CANONICAL_IPV4.match(host):
        return host
    if len(host) <= 253 and _DNS_NAME.match(host):
        return host
    if _IPV4.match(host) or ":" in host:
        try:
            address, _, zone = host.partition("%")
            return str(ipaddress.ip_address(address)) + (f"%{zone}" if zone else "")
        except ValueError:
            raise LinkError("bad-server", "server is not a valid IP address") from None
    labels = host.split(".")
    if len(labels) > 1 and labels[-1].isdigit():
        raise LinkError("bad-server", "server looks like a broken IP address")
    raise LinkError("bad-server", "server is not a valid IP address or DNS name")


def _check_2022_key(method: str, password: str) -> None:
    """Shadowsocks 2022 keys are base64 of exactly the cipher's key size.

    Multi-user servers take `IDENTITY_KEY:USER_KEY`; every part is checked.
    """
    size = SS2022_KEY_BYTES[method]
    for part in password.split(":"):
        try:
            key = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            raise LinkError("bad-key", f"{method} key is not base64") from None
        if len(key) != size:
            raise LinkError("bad-key", f"{method} key is {len(key)} bytes, not {size}")


def _check_wireguard(proxy: Proxy) -> None:
    options = dict(proxy.options)
    for label, key in (
        ("private", proxy.password),
        ("public", options.get("public-key", "")),
    ):
        try:
            size = len(base64.b64decode(key, validate=True))
        except (binascii.Error, ValueError):
            size = -1
        if size != 32:
            raise LinkError(
                "bad-key", f"wireguard {label} key is not 32 bytes of base64"
            )
    if not options.get("address"):
        raise LinkError("missing-field", "wireguard config has no local address")


def split_plugin_options(text: str) -> list[tuple[str, str | None]]:
    """SIP003 plugin options as (key, value) pairs, escapes undone.

    Options are separated by ';' and a key from its value by '='; a '\\'
    makes the next character literal, so `path=/a\\;b` is one option. A key
    without '=' (`tls`) has the value None.
    """
    pairs: list[tuple[str, str | None]] = []
    key: list[str] = []
    value: list[str] | None = None
    characters = iter(text)
    for char in characters:
        if char == "\\":
            char = next(characters, "")
        elif char == ";":
            if key or value is not None:
                pairs.append(("".join(key).strip(), _joined(value)))
            key, value = [], None
            continue
        elif char == "=" and value is None:
            value = []
            continue
        (key if value is None else value).append(char)
    if key or value is not None:
        pairs.append(("".join(key).strip(), _joined(value)))
    return pairs


def _joined(value: list[str] | None) -> str | None:
    return None if value is None else "".join(value).strip()


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(";", "\\;").replace("=", "\\=")


def join_plugin_options(pairs: list[tuple[str, str | None]]) -> str:
    """The SIP003 text of (key, value) pairs, with ';', '=' and '\\' escaped."""
    return ";".join(
        _escape(key) if value is None else f"{_escape(key)}={_escape(value)}"
        for key, value in pairs
    )


def _plugin_options(plugin: str, options: str) -> str:
    """Keep the plugin options each known plugin accepts, checked.

    Raises:
        LinkError: an obfs mode or host no client accepts.
    """
    if plugin not in PLUGIN_KEYS:
        return options
    kept: list[tuple[str, str | None]] = []
    for key, value in split_plugin_options(options):
        if key not in PLUGIN_KEYS[plugin]:
            continue
        if key == "obfs" and value not in {"http", "tls"}:
            shown = (value or "")[:20]
            raise LinkError("bad-plugin", f"simple-obfs mode {shown!r} is unknown")
        if key in {"obfs-host", "host"} and value:
            try:
                check_host(value)
            except LinkError:
                raise LinkError("bad-plugin", "plugin host is not a DNS name") from None
        if key == "mux" and not (value or "").isdigit():
            continue
        kept.append((key, value))
    if plugin == "obfs-local" and not any(key == "obfs" for key, _ in kept):
        kept.append(("obfs", "http"))  # simple-obfs's own default mode
    # One order for the same options, so equal configs compare equal.
    order = PLUGIN_KEYS[plugin]
    kept.sort(key=lambda pair: order.index(pair[0]))
    return join_plugin_options(kept)


def validate(proxy: Proxy) -> Proxy:
    """Check a parsed proxy and return its normal form.

    Raises:
        LinkError: a field has a value no client accepts.
    """
    # Every reader has already passed the server through check_host.
    # Most configs are already normal, so only differing values are
    # collected: copying every proxy would double the parse time.
    changes: dict[str, object] = {}
    protocol = proxy.protocol
    _check_lengths(proxy)
    if len(proxy.name) > MAX_NAME_CHARS:
        changes["name"] = proxy.name[:MAX_NAME_CHARS]
    # Credentials lose stray outer whitespace, which YAML readers drop too.
    password, username = proxy.password.strip(), proxy.username.strip()
    if protocol in _USER_PASSWORD_PROTOCOLS and not username:
        # Without a user name these protocols send no password at all.
        password = ""
    if password != proxy.password:
        changes["password"] = password
    if username != proxy.username:
        changes["username"] = username
    if protocol in _UUID_PROTOCOLS:
        if not proxy.uuid:
            raise LinkError("missing-credential", f"{protocol} config has no user id")
        uuid_text = normalize_uuid(proxy.uuid)
        if uuid_text != proxy.uuid:
            changes["uuid"] = uuid_text
    elif protocol == "shadowsocks":
        changes.update(_shadowsocks_changes(proxy))
    elif protocol == "hysteria2" and proxy.ports == (f"{proxy.port}:{proxy.port}",):
        changes["ports"] = ()  # hopping over the main port alone is no hopping
    elif protocol == "wireguard":
        _check_wireguard(proxy)
    elif protocol == "ssh" and not proxy.username:
        raise LinkError("missing-credential", "ssh config has no user")
    if protocol == "vmess":
        method = proxy.method.lower()
        # Converters write a missing value as 'null' or leave it empty.
        method = method if method in VMESS_SECURITY else "auto"
        if method != proxy.method:
            changes["method"] = method
    elif protocol in _PASSWORD_PROTOCOLS and not password:
        raise LinkError("missing-credential", f"{protocol} config has no password")
    elif protocol == "vless" and proxy.flow not in VLESS_FLOWS:
        raise LinkError(
            "bad-flow", f"vless flow {proxy.flow[:30]!r} is obsolete or unknown"
        )
    if proxy.tls is not None:
        tls = _normal_tls(proxy)
        if tls is not proxy.tls:
            changes["tls"] = tls
    return dataclasses.replace(proxy, **changes) if changes else proxy  # type: ignore[arg-type]


def _shadowsocks_changes(proxy: Proxy) -> dict[str, object]:
    method = "none" if proxy.method == "plain" else proxy.method
    if method not in SS_METHODS:
        raise LinkError("bad-cipher", f"shadowsocks cipher {method[:30]!r} is unknown")
    if method.startswith("2022-"):
        _check_2022_key(method, proxy.password)
    # 'obfs' and 'simple-obfs' are other names of the obfs-local client.
    plugin = "obfs-local" if proxy.plugin in {"obfs", "simple-obfs"} else proxy.plugin
    changes: dict[str, object] = {
        "method": method,
        "plugin": plugin,
        "plugin_opts": (
            _plugin_options(plugin, proxy.plugin_opts) if plugin else proxy.plugin_opts
        ),
    }
    return {
        key: value for key, value in changes.items() if getattr(proxy, key) != value
    }


def _normal_tls(proxy: Proxy) -> Tls:
    """The proxy's TLS block with SNI and fingerprint as clients read them."""
    tls = proxy.tls
    assert tls is not None
    fingerprint = tls.fingerprint.lower()
    server_name = tls.server_name
    if not server_name and proxy.protocol == "vmess" and proxy.transport:
        # v2rayN sends the first Host as SNI when a vmess config names none;
        # every shape is read the same way.
        server_name = proxy.transport.host.split(",")[0].strip()
    if fingerprint not in FINGERPRINTS or proxy.protocol in _QUIC_PROTOCOLS:
        fingerprint = ""  # unknown, or a QUIC handshake, which has none
    if tls.is_reality and not fingerprint:
        # REALITY cannot run without a uTLS fingerprint; clients fill in
        # chrome, so every written form says so.
        fingerprint = "chrome"
    if server_name == tls.server_name and fingerprint == tls.fingerprint:
        return tls
    return dataclasses.replace(tls, server_name=server_name, fingerprint=fingerprint)

"""Share links (`scheme://...`) into `Proxy` models.

Share links are loosely specified and every client writes its own dialect, so
the parsers here split the link by hand instead of trusting `urllib.parse`:
raw Shadowsocks 2022 keys contain `/`, Hysteria2 authorities carry port lists
such as `443,20000-30000`, and names contain stray `%` and `#`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass

from configstream.errors import LinkError
from configstream.models import Proxy, Tls, Transport, renamed
from configstream.parse.validate import check_host, check_unicode, validate

# Links longer than this are junk glued together; refusing them early keeps a
# hostile source from making the parser do quadratic work on one line. It
# leaves room for the links written from fields at the readers' length limit
# (parse.validate.MAX_FIELD_CHARS), whose emoji percent-encode to 12 bytes.
MAX_LINK_LENGTH = 65_536


@dataclass(slots=True)
class _Parts:
    """A share link cut into its pieces, each already percent-decoded."""

    scheme: str
    userinfo: str
    host: str
    port_text: str
    params: dict[str, str]
    name: str


# A run of escapes is decoded as UTF-8 at once, so an emoji written as four
# escapes comes out whole.
_ESCAPE_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _decode_run(match: re.Match[str]) -> str:
    return bytes.fromhex(match.group().replace("%", "")).decode("utf-8", "replace")


def unquote_lenient(text: str) -> str:
    """Percent-decode text, leaving invalid escapes such as `50%off` alone.

    The result is `urllib.parse.unquote(text, errors="replace")`'s (a test
    compares them), in about 40% of its time on a name with an emoji flag:
    every renamed copy of a link pays for its name being decoded.
    """
    return _ESCAPE_RUN.sub(_decode_run, text) if "%" in text else text


def b64decode_lenient(text: str) -> bytes:
    """Decode standard or URL-safe base64 with or without padding.

    Whitespace anywhere (wrapped bodies, CRLF) is ignored.

    Raises:
        ValueError: the text is not base64 in either alphabet.
    """
    compact = "".join(text.split())
    compact = compact.rstrip("=")
    if not compact:
        raise ValueError("empty base64 text")
    if len(compact) % 4 == 1:
        raise ValueError("base64 text has an impossible length")
    padded = compact + "=" * (-len(compact) % 4)
    alphabet = b"-_" if ("-" in compact or "_" in compact) else None
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc


def _split_query(query: str) -> dict[str, str]:
    if not query:
        return {}
    # Publishers that pasted links through HTML leave `&amp;` in queries.
    if "&amp;" in query:
        query = query.replace("&amp;", "&")
    escaped = "%" in query
    params: dict[str, str] = {}
    for item in query.split("&"):
        key, _, value = item.partition("=")
        # '+' stays '+': share links are not form-encoded, and keys and
        # base64 values keep their plus signs.
        if escaped:
            key, value = unquote_lenient(key), unquote_lenient(value)
        key = key.strip()
        if key and key not in params:
            params[key] = value.strip()
    return params


def _split_host_port(hostport: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, rest.removeprefix(":")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        return hostport, ""
    # A port list such as '443,20000-30000' keeps its commas for Hysteria2.
    return host, port


def split_link(link: str) -> _Parts:
    """Cut `scheme://userinfo@host:port/path?query#name` into parts.

    Everything after the first `#` is the name. The userinfo ends at the last
    `@` before the query, so raw passwords containing `/` or `@` survive.
    """
    scheme, sep, rest = link.partition("://")
    if not sep:
        raise LinkError("not-a-link", "no '://' in the text")
    rest, _, fragment = rest.partition("#")
    rest = rest.strip()
    before, _, query = rest.partition("?")
    userinfo, at, hostpart = before.rpartition("@")
    if not at:
        userinfo, hostpart = "", before
    hostport = hostpart.split("/", 1)[0].strip()
    host, port_text = _split_host_port(hostport)
    return _Parts(
        scheme=scheme.lower(),
        userinfo=userinfo,
        host=host,
        port_text=port_text,
        params=_split_query(query),
        name=unquote_lenient(fragment).strip(),
    )


def _check_host(host: str) -> str:
    return check_host(host)


def _check_port(text: str | int | None) -> int:
    try:
        port = int(str(text).strip())
    except (TypeError, ValueError):
        raise LinkError(
            "bad-port", f"port {str(text)[:20]!r} is not a number"
        ) from None
    if not 0 < port < 65536:
        raise LinkError("bad-port", f"port {port} is out of range")
    return port


def _flag(value: str | int | bool | None) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _alpn(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _early_data(path: str) -> tuple[str, int]:
    """Split Xray's `?ed=N` early-data marker out of a WebSocket path."""
    base, sep, query = path.partition("?")
    if not sep:
        return path, 0
    kept: list[str] = []
    early = 0
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key == "ed" and value.isdigit():
            early = int(value)
        elif item:
            kept.append(item)
    return (base + "?" + "&".join(kept) if kept else base), early


def build_transport(
    kind: str,
    *,
    path: str = "",
    host: str = "",
    service_name: str = "",
    header_type: str = "",
    options: tuple[tuple[str, str], ...] = (),
) -> Transport | None:
    """Make a `Transport` from link-style fields; plain TCP gives None.

    `tcp` with `headerType=http` is V2Ray's HTTP obfuscation, which sing-box
    models as the `http` transport.
    """
    kind = (kind or "tcp").strip().lower()
    path = path.strip()
    host = ",".join(item.strip() for item in host.split(",") if item.strip())
    # trojan-go calls plain TCP 'original'.
    if kind in {"tcp", "raw", "none", "original", ""}:
        if header_type.lower() != "http":
            return None
        # V2Ray's HTTP header disguise requests '/' when no path is given.
        return Transport(
            type="http", path=path or "/", host=host, options=(("tcp-http", "1"),)
        )
    if kind == "h2":
        kind = "http"
    if kind == "splithttp":
        kind = "xhttp"
    if kind == "ws":
        path, early = _early_data(path or "/")
        path = path.strip() or "/"
        return Transport(
            type="ws",
            path=path,
            host=host,
            max_early_data=early,
            early_data_header="Sec-WebSocket-Protocol" if early else "",
        )
    if kind == "grpc":
        # 'gun' is the default gRPC mode; only a different one is worth keeping.
        options = tuple(item for item in options if item != ("mode", "gun"))
        return Transport(
            type="grpc", service_name=service_name or path, options=options
        )
    if kind in {"http", "httpupgrade"}:
        # Both request '/' when no path is given; writing it keeps every
        # shape of the same config equal.
        path = path.strip() or "/"
    return Transport(type=kind, path=path, host=host, options=options)


def _default_sni(host: str) -> str:
    """Clients send the server's name as SNI when a link names none."""
    return "" if ":" in host or re.fullmatch(r"[\d.]+", host) else host


def _tls_from_params(params: dict[str, str], default_sni: str = "") -> Tls:
    insecure = False
    for key in ("allowInsecure", "insecure", "allow_insecure"):
        if key in params and _flag(params[key]):
            insecure = True
    return Tls(
        server_name=params.get("sni") or params.get("peer") or default_sni,
        insecure=insecure,
        alpn=_alpn(params.get("alpn")),
        fingerprint=params.get("fp", ""),
        reality_public_key=params.get("pbk", ""),
        reality_short_id=params.get("sid", ""),
        reality_spider_x=params.get("spx", ""),
    )


def _transport_from_params(params: dict[str, str]) -> Transport | None:
    kind = params.get("type") or params.get("network") or "tcp"
    options = tuple(
        (key, params[key]) for key in ("mode", "authority") if key in params
    )
    return build_transport(
        kind,
        path=params.get("path", ""),
        host=params.get("host", ""),
        service_name=params.get("serviceName") or params.get("service_name", ""),
        header_type=params.get("headerType", ""),
        options=options,
    )


def parse_vless(link: str) -> Proxy:
    """Parse a VLESS link (the Xray share-link standard).

    `vless://UUID@HOST:PORT?security=reality&pbk=KEY&sid=ID&type=ws#NAME`:
    the userinfo is the uuid, `security` chooses none/tls/reality, `type`
    the transport.
    """
    parts = split_link(link)
    uuid = unquote_lenient(parts.userinfo).strip()
    if not uuid:
        raise LinkError("missing-credential", "vless link has no uuid")
    params = parts.params
    security = params.get("security", "none").lower()
    host = _check_host(parts.host)
    tls = (
        _tls_from_params(params, _default_sni(host))
        if security in {"tls", "reality", "xtls"}
        else None
    )
    if security == "reality" and tls is not None and not tls.reality_public_key:
        raise LinkError("missing-reality-key", "security=reality without pbk")
    return Proxy(
        protocol="vless",
        server=host,
        port=_check_port(parts.port_text),
        name=parts.name,
        uuid=uuid,
        flow=params.get("flow", ""),
        transport=_transport_from_params(params),
        tls=tls,
    )


def parse_trojan(link: str) -> Proxy:
    """Parse a Trojan link; TLS is on unless `security=none`.

    `trojan://PASSWORD@HOST:PORT?sni=SNI&type=ws&path=/p#NAME`; the trojan-go
    dialects `trojan-go://` and `ws=1&wspath=/p` are accepted too.
    """
    parts = split_link(link)
    password = unquote_lenient(parts.userinfo)
    if not password:
        raise LinkError("missing-credential", "trojan link has no password")
    params = dict(parts.params)
    if _flag(params.get("ws")) and "type" not in params:
        params["type"] = "ws"
        params.setdefault("path", params.get("wspath", "/"))
    host = _check_host(parts.host)
    security = params.get("security", "tls").lower()
    tls = None if security == "none" else _tls_from_params(params, _default_sni(host))
    return Proxy(
        protocol="trojan",
        server=host,
        port=_check_port(parts.port_text or 443),
        name=parts.name,
        password=password,
        transport=_transport_from_params(params),
        tls=tls,
    )


def _vmess_from_json(data: dict[str, object], name_hint: str) -> Proxy:
    def text(key: str) -> str:
        value = data.get(key)
        return "" if value is None else check_unicode(str(value).strip())

    uuid = text("id")
    if not uuid:
        raise LinkError("missing-credential", "vmess JSON has no id")
    try:
        alter_id = int(text("aid") or 0)
    except ValueError:
        raise LinkError("bad-field", "vmess aid is not a number") from None
    net = text("net") or "tcp"
    header_type = text("type")
    options: tuple[tuple[str, str], ...] = ()
    if net == "grpc" and header_type in {"gun", "multi"}:
        options = (("mode", header_type),)
    transport = build_transport(
        net,
        path=text("path"),
        host=text("host"),
        service_name=text("path") if net == "grpc" else "",
        header_type=header_type,
        options=options,
    )
    tls = None
    if text("tls").lower() in {"tls", "reality", "xtls"}:
        tls = Tls(
            # v2rayN uses the first Host as SNI when the link names none
            # (see parse.validate), else the server's name.
            server_name=text("sni")
            or (
                ""
                if transport and transport.host
                else _default_sni(text("add").lower())
            ),
            insecure=_flag(data.get("allowInsecure") or data.get("insecure")),
            alpn=_alpn(text("alpn")),
            fingerprint=text("fp"),
            reality_public_key=text("pbk"),
            reality_short_id=text("sid"),
            reality_spider_x=text("spx"),
        )
    return Proxy(
        protocol="vmess",
        server=_check_host(text("add")),
        port=_check_port(text("port")),
        name=text("ps") or name_hint,
        uuid=uuid,
        method=text("scy") or "auto",
        alter_id=alter_id,
        transport=transport,
        tls=tls,
    )


def _shadowrocket_params(params: dict[str, str]) -> dict[str, str]:
    """Map Shadowrocket's vmess query names onto the share-link standard."""
    mapped = dict(params)
    if params.get("obfs") in {"websocket", "ws"}:
        mapped.setdefault("type", "ws")
        mapped.setdefault("host", params.get("obfsParam", ""))
    elif params.get("obfs") in {"grpc", "h2", "http"}:
        mapped.setdefault("type", params["obfs"])
    if _flag(params.get("tls")):
        mapped.setdefault("security", "tls")
    if "peer" in params:
        mapped.setdefault("sni", params["peer"])
    return mapped


def parse_vmess(link: str) -> Proxy:
    """Parse a VMess link: base64 of v2rayN's JSON, or the URI dialect.

    `vmess://BASE64({"add": HOST, "port": 443, "id": UUID, "net": "ws", ...})`.
    Numbers may arrive as strings and absent keys take v2rayN's defaults. Some
    publishers base64-encode a URI (`UUID@HOST:PORT?security=tls...`) instead;
    that dialect is read like a VLESS link.
    """
    body, _, fragment = link[len("vmess://") :].partition("#")
    name_hint = unquote_lenient(fragment).strip()
    body = body.strip()
    try:
        decoded = b64decode_lenient(body.split("?", 1)[0]).decode("utf-8", "replace")
    except ValueError:
        decoded = ""
    decoded = decoded.strip()
    if decoded.startswith("{"):
        try:
            data = json.loads(decoded)
        except (json.JSONDecodeError, RecursionError):
            raise LinkError("bad-json", "vmess body is not valid JSON") from None
        if not isinstance(data, dict):
            raise LinkError("bad-json", "vmess body is not a JSON object")
        return _vmess_from_json(data, name_hint)
    if "@" in decoded:
        # Shadowrocket keeps its query outside the base64 part.
        query = body.partition("?")[2]
        uri = decoded + ("?" + query if query and "?" not in decoded else "")
    else:
        uri = body
    if "@" not in uri:
        raise LinkError("bad-encoding", "vmess body is neither base64 JSON nor a URI")
    parts = split_link("vmess://" + uri + ("#" + fragment if fragment else ""))
    userinfo = unquote_lenient(parts.userinfo)
    method, _, uuid = userinfo.rpartition(":")
    params = _shadowrocket_params(parts.params)
    security = params.get("security", "none").lower()
    return Proxy(
        protocol="vmess",
        server=_check_host(parts.host),
        port=_check_port(parts.port_text),
        name=parts.name or params.get("remarks", ""),
        uuid=uuid,
        method=params.get("encryption") or method or "auto",
        alter_id=int(params["alterId"]) if params.get("alterId", "").isdigit() else 0,
        transport=_transport_from_params(params),
        tls=(
            _tls_from_params(params, _default_sni(parts.host.strip().lower()))
            if security in {"tls", "reality"}
            else None
        ),
    )


def _ss_credentials(userinfo: str) -> tuple[str, str]:
    # SIP002 writes base64url(method:password) for AEAD ciphers and
    # percent-encoded 'method:password' for 2022 ciphers; base64 never
    # contains ':', so a colon tells the two apart.
    if ":" in userinfo:
        method, _, password = unquote_lenient(userinfo).partition(":")
        return method, password
    try:
        decoded = b64decode_lenient(unquote_lenient(userinfo)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise LinkError(
            "bad-encoding", "ss userinfo is neither method:password nor base64"
        ) from None
    method, sep, password = decoded.partition(":")
    if not sep:
        raise LinkError("bad-encoding", "ss userinfo decodes to text without ':'")
    return method, password


def _mislabelled_ss(body: str, head: str) -> Proxy | None:
    """Read a VMess or VLESS config that a publisher labelled `ss://`.

    Some lists relabel every link with one scheme. Two cases are certain: a
    base64 VMess JSON body (`ss://eyJ...`), and a UUID user with VLESS's
    `encryption=` parameter. Anything else stays a Shadowsocks link.
    """
    if head.startswith("eyJ"):
        return parse_vmess("vmess://" + body)
    userinfo, at, _ = head.rpartition("@")
    if at and "encryption=" in body.split("#", 1)[0]:
        try:
            uuid_module.UUID(unquote_lenient(userinfo))
        except ValueError:
            return None
        return parse_vless("vless://" + body)
    return None


def parse_shadowsocks(link: str) -> Proxy:
    """Parse a Shadowsocks link in SIP002 or the legacy all-base64 form.

    SIP002: `ss://BASE64URL(METHOD:PASSWORD)@HOST:PORT/?plugin=...#NAME`, or
    with a raw `METHOD:PASSWORD` userinfo. Legacy:
    `ss://BASE64(METHOD:PASSWORD@HOST:PORT)#NAME`.
    """
    body = link[len("ss://") :]
    head = body.split("#", 1)[0].split("?", 1)[0].strip()
    relabelled = _mislabelled_ss(body, head)
    if relabelled is not None:
        return relabelled
    if "@" not in head:
        try:
            decoded = b64decode_lenient(head.rstrip("/")).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise LinkError("bad-encoding", "legacy ss body is not base64") from None
        rest = body[len(head) :] if body.startswith(head) else ""
        link = "ss://" + decoded + rest
    parts = split_link(link)
    method, password = _ss_credentials(parts.userinfo)
    method = method.strip().lower()
    if not method or not method.isprintable() or " " in method:
        raise LinkError("bad-field", "ss cipher name is empty or not text")
    plugin, _, plugin_opts = parts.params.get("plugin", "").partition(";")
    return Proxy(
        protocol="shadowsocks",
        server=_check_host(parts.host),
        port=_check_port(parts.port_text),
        name=parts.name,
        method=method,
        password=password,
        plugin=plugin,
        plugin_opts=plugin_opts,
    )


def _port_ranges(text: str) -> tuple[str, ...]:
    ranges: list[str] = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        low, _, high = item.replace(":", "-").partition("-")
        start, end = _check_port(low), _check_port(high or low)
        if end < start:
            raise LinkError("bad-port", f"port range {item!r} runs backwards")
        ranges.append(f"{start}:{end}")
    return tuple(ranges)


def parse_hysteria2(link: str) -> Proxy:
    """Parse a Hysteria2 link (`hysteria2://` or `hy2://`).

    `hysteria2://AUTH@HOST:443,20000-30000/?obfs=salamander&sni=SNI#NAME`: the
    authority may carry a port list for port hopping, kept as sing-box
    `start:end` ranges; the first single port is the main port.
    """
    parts = split_link(link)
    params = parts.params
    port_text = parts.port_text or "443"
    ports: tuple[str, ...] = ()
    if "," in port_text or "-" in port_text:
        ports = _port_ranges(port_text)
        if not ports:
            raise LinkError("bad-port", "hysteria2 port list holds no port")
        port = int(ports[0].split(":")[0])
    else:
        port = _check_port(port_text)
    if params.get("mport"):
        ports = ports + _port_ranges(params["mport"])
    return Proxy(
        protocol="hysteria2",
        server=_check_host(parts.host),
        port=port,
        name=parts.name,
        password=unquote_lenient(parts.userinfo) or params.get("auth", ""),
        ports=ports,
        obfs=params.get("obfs", ""),
        obfs_password=params.get("obfs-password", ""),
        up_mbps=_mbps(params.get("upmbps") or params.get("up")),
        down_mbps=_mbps(params.get("downmbps") or params.get("down")),
        tls=_tls_from_params(params, _default_sni(parts.host.strip().lower())),
    )


def _mbps(value: str | None) -> int:
    digits = re.match(r"\d+", value or "")
    return int(digits.group()) if digits else 0


def parse_hysteria(link: str) -> Proxy:
    """Parse a Hysteria (v1) link.

    `hysteria://HOST:PORT?auth=AUTH&peer=SNI&upmbps=10&downmbps=50&obfsParam=X`.
    """
    parts = split_link(link)
    params = parts.params
    return Proxy(
        protocol="hysteria",
        server=_check_host(parts.host),
        port=_check_port(parts.port_text),
        name=parts.name,
        password=params.get("auth", "") or unquote_lenient(parts.userinfo),
        obfs_password=params.get("obfsParam", "") or params.get("obfs", ""),
        up_mbps=_mbps(params.get("upmbps")),
        down_mbps=_mbps(params.get("downmbps")),
        tls=_tls_from_params(params, _default_sni(parts.host.strip().lower())),
    )


def parse_tuic(link: str) -> Proxy:
    """Parse a TUIC v5 link.

    `tuic://UUID:PASSWORD@HOST:PORT?congestion_control=bbr&alpn=h3&sni=SNI#NAME`.
    A link without `:PASSWORD` keeps an empty password; it is not guessed.
    """
    parts = split_link(link)
    params = parts.params
    uuid, _, password = unquote_lenient(parts.userinfo).partition(":")
    if not uuid:
        raise LinkError("missing-credential", "tuic link has no uuid")
    return Proxy(
        protocol="tuic",
        server=_check_host(parts.host),
        port=_check_port(parts.port_text),
        name=parts.name,
        uuid=uuid.strip(),
        password=password or params.get("password", ""),
        congestion_control=params.get("congestion_control", ""),
        udp_relay_mode=params.get("udp_relay_mode", ""),
        tls=_tls_from_params(params, _default_sni(parts.host.strip().lower())),
    )


def parse_socks(link: str) -> Proxy:
    """Parse a SOCKS5 link: `socks://BASE64(USER:PASS)@HOST:PORT#NAME` or raw.

    Older v2rayN wrote the whole authority as base64:
    `socks://BASE64(USER:PASS@HOST:PORT)#NAME`.
    """
    scheme, _, rest = link.partition("://")
    head, sep, fragment = rest.partition("#")
    if head.strip() and "@" not in head and ":" not in head.strip():
        try:
            decoded = b64decode_lenient(head).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise LinkError("bad-encoding", "socks body is not base64") from None
        link = f"{scheme}://{decoded}{sep}{fragment}"
    parts = split_link(link)
    username = password = ""
    if parts.userinfo:
        if ":" in parts.userinfo:
            # Split before decoding: an escaped ':' belongs to the user name.
            user_raw, _, password_raw = parts.userinfo.partition(":")
            username = unquote_lenient(user_raw)
            password = unquote_lenient(password_raw)
        else:
            try:
                userinfo = b64decode_lenient(unquote_lenient(parts.userinfo))
                username, _, password = userinfo.decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise LinkError(
                    "bad-encoding", "socks userinfo is not base64"
                ) from None
    return Proxy(
        protocol="socks",
        server=_check_host(parts.host),
        port=_check_port(parts.port_text),
        name=parts.name,
        username=username,
        password=password,
    )


def parse_ssr(link: str) -> Proxy:
    """Parse a ShadowsocksR link; sing-box cannot run SSR, so it stays untestable.

    `ssr://BASE64(HOST:PORT:PROTOCOL:METHOD:OBFS:BASE64(PASS)/?remarks=BASE64)`.
    """
    body = link[len("ssr://") :].split("#", 1)[0].strip()
    try:
        decoded = b64decode_lenient(body).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        # Some lists publish the inner text without the outer base64.
        decoded = body
    main, _, query = decoded.partition("/?")
    fields = main.rsplit(":", 5)
    if len(fields) != 6:
        raise LinkError("bad-field", "ssr body does not have six ':' fields")
    host, port, protocol, method, obfs, password_b64 = fields
    params = _split_query(query)

    def b64field(key: str) -> str:
        try:
            return b64decode_lenient(params.get(key, "")).decode("utf-8", "replace")
        except ValueError:
            return ""

    try:
        password = b64decode_lenient(password_b64).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise LinkError("bad-encoding", "ssr password is not base64") from None
    return Proxy(
        protocol="ssr",
        server=_check_host(host),
        port=_check_port(port),
        name=b64field("remarks"),
        method=method,
        password=password,
        obfs=obfs,
        options=(
            ("protocol", protocol),
            ("protocol-param", b64field("protoparam")),
            ("obfs-param", b64field("obfsparam")),
        ),
    )


def _list_param(params: dict[str, str], *keys: str) -> str:
    for key in keys:
        if params.get(key):
            return ",".join(x.strip() for x in params[key].split(",") if x.strip())
    return ""


def parse_wireguard(link: str) -> Proxy:
    """Parse a WireGuard link in either common dialect.

    v2rayN: `wireguard://PRIVATE_KEY@HOST:PORT?publickey=KEY&address=10.0.0.2/32&
    reserved=1,2,3&mtu=1280#NAME`; others write `wg://HOST:PORT?private_key=KEY&
    peer_public_key=KEY&local_address=...`. Keys are base64 and keep their '+'.
    """
    parts = split_link(link)
    params = parts.params
    private_key = unquote_lenient(parts.userinfo) or _list_param(
        params, "privatekey", "private_key", "secretkey", "privateKey"
    )
    public_key = _list_param(
        params, "publickey", "public_key", "peer_public_key", "publicKey"
    )
    if not private_key or not public_key:
        raise LinkError(
            "missing-credential", "wireguard link lacks a private or public key"
        )
    options = [
        ("public-key", public_key),
        ("address", _list_param(params, "address", "local_address", "ip")),
        ("reserved", _list_param(params, "reserved")),
        ("mtu", params.get("mtu", "")),
        (
            "pre-shared-key",
            _list_param(params, "presharedkey", "pre_shared_key", "preSharedKey"),
        ),
    ]
    return Proxy(
        protocol="wireguard",
        server=_check_host(parts.host),
        port=_check_port(parts.port_text),
        name=parts.name,
        password=private_key,
        options=tuple((k, v) for k, v in options if v),
    )


def _plain_proxy(protocol: str, link: str, *, tls: bool, version: str = "") -> Proxy:
    parts = split_link(link)
    rest = link.partition("://")[2].split("#", 1)[0]
    after_host = rest.rpartition("@")[2].partition("/")[2].partition("?")[0]
    if after_host.strip("/"):
        # 'https://t.me/channel' in a list is a web page, not a proxy.
        raise LinkError(
            "not-a-proxy", f"{protocol} link has a path, so it is a web address"
        )
    if not parts.port_text:
        raise LinkError("bad-port", f"{protocol} link has no port")
    # Split before decoding: an escaped ':' belongs to the user name.
    user_raw, _, password_raw = parts.userinfo.partition(":")
    username, password = unquote_lenient(user_raw), unquote_lenient(password_raw)
    server = _check_host(parts.host)
    return Proxy(
        protocol=protocol,
        server=server,
        port=_check_port(parts.port_text),
        name=parts.name,
        username=username,
        password=password,
        tls=_tls_from_params(parts.params, _default_sni(server)) if tls else None,
        options=(("version", version),) if version else (),
    )


def parse_anytls(link: str) -> Proxy:
    """Parse an AnyTLS link: `anytls://PASSWORD@HOST:PORT?sni=SNI&insecure=1#NAME`."""
    parts = split_link(link)
    password = unquote_lenient(parts.userinfo)
    if not password:
        raise LinkError("missing-credential", "anytls link has no password")
    server = _check_host(parts.host)
    return Proxy(
        protocol="anytls",
        server=server,
        port=_check_port(parts.port_text or 443),
        name=parts.name,
        password=password,
        tls=_tls_from_params(parts.params, _default_sni(server)),
    )


_PARSERS: dict[str, Callable[[str], Proxy]] = {
    "vless": parse_vless,
    "vmess": parse_vmess,
    "trojan": parse_trojan,
    "trojan-go": lambda link: parse_trojan("trojan" + link[len("trojan-go") :]),
    "ss": parse_shadowsocks,
    "hysteria2": parse_hysteria2,
    "hy2": parse_hysteria2,
    "hysteria": parse_hysteria,
    "tuic": parse_tuic,
    "socks": parse_socks,
    "socks5": parse_socks,
    "ssr": parse_ssr,
    "wireguard": parse_wireguard,
    "wg": parse_wireguard,
    "anytls": parse_anytls,
    "socks4": lambda link: _plain_proxy("socks", link, tls=False, version="4"),
    "socks4a": lambda link: _plain_proxy("socks", link, tls=False, version="4a"),
    "http": lambda link: _plain_proxy("http", link, tls=False),
    "https": lambda link: _plain_proxy("http", link, tls=True),
    "naive+https": lambda link: _plain_proxy("naive", link, tls=True),
    "ssh": lambda link: _plain_proxy("ssh", link, tls=False),
}

SCHEMES = tuple(_PARSERS)
# Schemes that start a link glued to other text. Web addresses are common in
# names and comments, so http:// and https:// only count at a line's start.
SPLIT_SCHEMES = tuple(s for s in SCHEMES if s not in {"http", "https"})


# Schemes whose name is read from somewhere other than the `#` fragment
# (vmess and ssr carry it inside the base64 body), so a link of theirs is
# only reused whole.
_NAME_INSIDE = frozenset({"vmess", "ssr"})
# Results kept for reuse; cleared whole when full (a run's distinct links
# fit many times over, and clearing is cheaper than tracking use).
MEMO_LIMIT = 200_000
_memo: dict[str, Proxy | LinkError] = {}


def clear_memo() -> None:
    """Forget every remembered parse result (benchmarks start cold)."""
    _memo.clear()


def parse_link(link: str) -> Proxy:
    """Parse one share link of any supported scheme.

    Publishers copy each other, so the same config arrives many times, often
    renamed: a result is remembered by the link without its name, and a
    repeat only gets its own name put in.

    Raises:
        LinkError: the link is malformed or its scheme is unsupported; the
            error's `reason` is the key counted in the stats.
    """
    link = link.strip()
    if len(link) > MAX_LINK_LENGTH:
        raise LinkError("too-long", f"link of {len(link)} characters")
    scheme = link.partition("://")[0].lower()
    key, _, fragment = link.partition("#")
    named_inside = scheme in _NAME_INSIDE or (
        # A vmess body labelled ss:// (see _mislabelled_ss).
        scheme == "ss" and link[5:8] == "eyJ"
    )
    if named_inside:
        key = link
    known = _memo.get(key)
    if known is None:
        try:
            known = _parse_fresh(link, scheme)
        except LinkError as exc:
            # Only its reason and detail are kept: the error it was raised
            # from (its __context__) holds a traceback, whose frames would
            # keep the whole body being parsed, and its lines, alive.
            known = LinkError(exc.reason, exc.detail)
        if len(_memo) >= MEMO_LIMIT:
            _memo.clear()
        _memo[key] = known
        if not isinstance(known, LinkError):
            return known
    if isinstance(known, LinkError):
        # A fresh error each time: a kept one would hold its traceback's
        # frames, and re-raising it would grow that traceback.
        raise LinkError(known.reason, known.detail)
    return known if named_inside else renamed(known, unquote_lenient(fragment).strip())


def _parse_fresh(link: str, scheme: str) -> Proxy:
    parser = _PARSERS.get(scheme)
    if parser is None:
        shown = scheme if scheme.isascii() and len(scheme) < 20 else scheme[:20]
        raise LinkError("unsupported-scheme", f"scheme {shown!r} is not supported")
    # vmess, ss and ssr bodies are case-sensitive base64; only the scheme is
    # normalised.
    link = scheme + link[len(scheme) :]
    return validate(parser(link))

"""What each output format keeps of a proxy, said plainly.

Some link parameters have no field in a client format: REALITY's spider-x,
gRPC's mode and authority, the `-udp443` variant of the Vision flow, a
v2ray-plugin mux count in mihomo, and V2Ray's HTTP header disguise in
sing-box (written as sing-box's HTTP transport). Such a proxy is still
written, without them; `as_expressed` gives the proxy as the target will
carry it and the names of what was dropped, so conversions can report it and
tests can check that nothing else changes.
"""

from __future__ import annotations

import dataclasses

from configstream.models import Proxy
from configstream.parse.validate import join_plugin_options, split_plugin_options


def as_expressed(proxy: Proxy, target: str) -> tuple[Proxy, list[str]]:
    """The proxy as `target` (`links`, `clash` or `singbox`) keeps it.

    Returns:
        The reduced proxy and the names of the dropped parameters.
    """
    if target not in {"clash", "singbox"}:
        return proxy, []
    dropped: list[str] = []
    changes: dict[str, object] = {}
    tls, transport = proxy.tls, proxy.transport
    if tls is not None and tls.reality_spider_x:
        dropped.append("REALITY spider-x")
        changes["tls"] = dataclasses.replace(tls, reality_spider_x="")
    if transport is not None:
        options = dict(transport.options)
        lost = [key for key in ("mode", "authority") if key in options]
        if target == "singbox" and options.get("tcp-http"):
            lost.append("tcp-http")
        if lost:
            dropped.extend(f"transport {key}" for key in lost)
            kept = tuple((k, v) for k, v in transport.options if k not in lost)
            changes["transport"] = dataclasses.replace(transport, options=kept)
    if proxy.flow == "xtls-rprx-vision-udp443":
        dropped.append("Vision udp443 variant")
        changes["flow"] = "xtls-rprx-vision"
    if (
        target == "clash"
        and proxy.plugin == "v2ray-plugin"
        and "mux=" in proxy.plugin_opts
    ):
        dropped.append("v2ray-plugin mux")
        kept_opts = [
            pair for pair in split_plugin_options(proxy.plugin_opts) if pair[0] != "mux"
        ]
        changes["plugin_opts"] = join_plugin_options(kept_opts)
    reduced = dataclasses.replace(proxy, **changes) if changes else proxy  # type: ignore[arg-type]
    return reduced, dropped

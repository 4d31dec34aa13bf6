"""The subscription files clients import: all, per protocol, per country,
secure-only, fastest, and chunks of a bounded size.

Every list exists as plain text (with profile headers that v2rayNG, Hiddify
and NekoBox read; other clients skip `#` lines) and as base64 of the bare
links, which every client imports.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Sequence

from configstream.geo import is_country_code
from configstream.models import Entry, Proxy

FASTEST_COUNT = 200
# Clients such as v2rayNG slow down past a few hundred entries per list.
CHUNK_SIZE = 500
UPDATE_INTERVAL_HOURS = 4
# Stream ciphers and 'none' fail the secure-only list; these are AEAD.
AEAD_METHODS = frozenset(
    {
        "aes-128-gcm",
        "aes-192-gcm",
        "aes-256-gcm",
        "chacha20-ietf-poly1305",
        "xchacha20-ietf-poly1305",
        "2022-blake3-aes-128-gcm",
        "2022-blake3-aes-256-gcm",
        "2022-blake3-chacha20-poly1305",
    }
)


def is_secure(proxy: Proxy) -> bool:
    """TLS or REALITY without the insecure flag, or an AEAD Shadowsocks cipher."""
    if proxy.protocol == "shadowsocks":
        return proxy.method in AEAD_METHODS
    if proxy.protocol == "wireguard":
        return True
    return proxy.tls is not None and not proxy.tls.insecure


def _header(title: str) -> str:
    encoded = base64.b64encode(title.encode("utf-8")).decode("ascii")
    return f"#profile-title: base64:{encoded}\n#profile-update-interval: {UPDATE_INTERVAL_HOURS}\n"


def _pair(path: str, title: str, links: Sequence[str]) -> dict[str, str]:
    kept = [link for link in links if link]
    body = "\n".join(kept) + ("\n" if kept else "")
    encoded = base64.b64encode(body.encode("utf-8")).decode("ascii") + "\n"
    return {f"{path}.txt": _header(title) + body, f"{path}_base64.txt": encoded}


def subscription_files(
    entries: Sequence[Entry], links: Sequence[str], title: str
) -> dict[str, str]:
    """Every subscription list, keyed by its path under the output folder.

    `entries` come fastest first and `links` hold their share links in the
    same order. Layout: `sub`, `secure`, `fastest`, `protocols/NAME`,
    `countries/CC` and `chunks/NNN`, each as `.txt` and `_base64.txt`.
    """
    files = {
        "sub.txt": "\n".join(x for x in links if x) + ("\n" if any(links) else ""),
    }
    files["sub_base64.txt"] = (
        base64.b64encode(files["sub.txt"].encode("utf-8")).decode("ascii") + "\n"
    )
    files.update(
        _pair(
            "secure",
            f"{title} secure",
            [
                link
                for e, link in zip(entries, links, strict=True)
                if is_secure(e.proxy)
            ],
        )
    )
    files.update(
        _pair(
            "fastest", f"{title} fastest {FASTEST_COUNT}", list(links[:FASTEST_COUNT])
        )
    )
    by_protocol: dict[str, list[str]] = defaultdict(list)
    by_country: dict[str, list[str]] = defaultdict(list)
    for entry, link in zip(entries, links, strict=True):
        by_protocol[entry.proxy.protocol].append(link)
        country = entry.country or "XX"
        by_country[country.upper() if is_country_code(country) else "XX"].append(link)
    for protocol, members in sorted(by_protocol.items()):
        files.update(_pair(f"protocols/{protocol}", f"{title} {protocol}", members))
    for country, members in sorted(by_country.items()):
        files.update(_pair(f"countries/{country}", f"{title} {country}", members))
    present = [link for link in links if link]
    for number, start in enumerate(range(0, len(present), CHUNK_SIZE), start=1):
        chunk = present[start : start + CHUNK_SIZE]
        files.update(_pair(f"chunks/{number:03d}", f"{title} part {number}", chunk))
    return files

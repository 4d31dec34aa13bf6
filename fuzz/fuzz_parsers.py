"""Random structured inputs against every reader; any exception but ours is a bug.

Usage: python fuzz/fuzz_parsers.py [--inputs N] [--seed S]

Three generators, run in turn: share links assembled from the fragments real
links are made of (schemes, separators, escapes, ports, keys), whole bodies
(plain, base64, Clash YAML and JSON), and Clash / sing-box entries whose
fields hold values of every JSON type. The readers may accept an input or
reject it with a ConfigStreamError; anything else is counted as a crash and
printed with the input that caused it. Exit code 1 when there was a crash.
Nothing is contacted: the inputs are only parsed.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import random
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import yaml

from configstream.errors import ConfigStreamError
from configstream.parse import parse_body, parse_link
from configstream.parse.entries import parse_clash_entry, parse_singbox_outbound
from configstream.parse.links import SCHEMES

FRAGMENTS = [
    "://",
    "@",
    ":",
    "?",
    "#",
    "&",
    "=",
    "%",
    "%2",
    "%zz",
    "[",
    "]",
    "/",
    "+",
    "-",
    ".",
    "1",
    "443",
    "65536",
    "0",
    "::1",
    "a" * 70,
    "\x00",
    "\ufffd",
    "\n",
    "\r\n",
    "{",
    "}",
    '"',
    "'",
    "proxies:",
    "outbounds",
    "- ",
    "  ",
    "eyJ",
    "&amp;",
    "ed=2048",
    "path=",
    "type=ws",
    "type=grpc",
    "security=reality",
    "pbk=",
    "sid=",
    "mport=",
    "1-2,3",
    "host=",
    "sni=",
    "plugin=",
    "obfs-local;obfs=http",
    "v2ray-plugin;mux=",
    "2022-blake3-aes-128-gcm",
    "AAAA",
    "encryption=none",
    "00000000-0000-4000-8000-000000000001",
    "127.0.0.1",
    "example.com",
    "\U0001f1ef",
    " ",
    "\t",
    "<html>",
    "publickey=",
    "address=",
    "reserved=1,2",
]
KEYS = [
    "type",
    "server",
    "port",
    "name",
    "uuid",
    "password",
    "cipher",
    "network",
    "ws-opts",
    "headers",
    "Host",
    "path",
    "tls",
    "servername",
    "sni",
    "reality-opts",
    "public-key",
    "short-id",
    "grpc-opts",
    "h2-opts",
    "host",
    "plugin",
    "plugin-opts",
    "mode",
    "ports",
    "obfs",
    "obfs-password",
    "alterId",
    "flow",
    "server_port",
    "transport",
    "service_name",
    "max_early_data",
    "peers",
    "address",
    "private_key",
    "public_key",
    "reserved",
    "mtu",
    "method",
    "auth",
    "auth-str",
    "up",
    "down",
    "ip",
    "ipv6",
    "private-key",
    "version",
    "username",
    "user",
    "utls",
    "reality",
    "enabled",
    "insecure",
    "alpn",
    "skip-cert-verify",
    "server_ports",
    "tag",
]
TYPES = [
    "vmess",
    "vless",
    "trojan",
    "ss",
    "shadowsocks",
    "hysteria2",
    "hysteria",
    "tuic",
    "socks5",
    "socks",
    "http",
    "ssr",
    "anytls",
    "ssh",
    "wireguard",
    "naive",
    "selector",
    "grpc",
    None,
    "",
    5,
    ["ws"],
]
SCALARS = [
    None,
    True,
    False,
    0,
    -1,
    443,
    70000,
    1.5,
    "",
    "x",
    "443",
    "1-2",
    "127.0.0.1",
    "example.com",
    "a" * 300,
    "00000000-0000-4000-8000-000000000001",
    "AAAA",
    "eCtXsJZ27+4PbhDkHnB923tkUn2Gj59wZw5wFA75MnU=",
]


def _link(rng: random.Random) -> str:
    start = rng.choice(SCHEMES) + "://" if rng.random() < 0.8 else ""
    return start + "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 30)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return {
            rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))
        }
    if depth < 3 and roll < 0.25:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice([*SCALARS, rng.choice(TYPES)])


def _entry(rng: random.Random) -> dict[str, Any]:
    entry = {rng.choice(KEYS): _value(rng) for _ in range(rng.randint(0, 10))}
    if rng.random() < 0.8:
        entry["type"] = rng.choice(TYPES)
    return entry


def _body(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        text = "\n".join(_link(rng) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.3:
            text = base64.b64encode(text.encode("utf-8", "replace")).decode()
        return text
    doc = rng.choice(["proxies", "outbounds", "endpoints", "servers"])
    data = {doc: [_entry(rng) for _ in range(rng.randint(0, 3))]}
    return json.dumps(data) if kind < 0.7 else yaml.safe_dump(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    targets: list[tuple[str, Callable[[], Any], Callable[[Any], Any]]] = [
        ("parse_link", lambda: _link(rng), parse_link),
        ("parse_body", lambda: _body(rng), parse_body),
        ("parse_clash_entry", lambda: _entry(rng), parse_clash_entry),
        ("parse_singbox_outbound", lambda: _entry(rng), parse_singbox_outbound),
    ]
    crashes: collections.Counter[tuple[str, str, str]] = collections.Counter()
    examples: dict[tuple[str, str, str], Any] = {}
    started = time.perf_counter()
    for number in range(args.inputs):
        name, make, read = targets[number % len(targets)]
        item = make()
        try:
            read(item)
        except ConfigStreamError:
            pass
        except Exception as exc:  # noqa: BLE001 - counting every foreign exception is the point
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = (name, type(exc).__name__, f"{frame.filename}:{frame.lineno}")
            crashes[key] += 1
            examples.setdefault(key, item)
    seconds = time.perf_counter() - started
    for key, count in crashes.most_common():
        print(count, *key, repr(examples[key])[:300])
    print(f"{args.inputs:,} inputs in {seconds:.0f} s, {sum(crashes.values())} crashes")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())

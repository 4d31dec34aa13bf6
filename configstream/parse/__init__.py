"""Parsing stage: subscription bodies and share links into `Proxy` models."""

from configstream.parse.entries import parse_clash_entry, parse_singbox_outbound
from configstream.parse.links import SCHEMES, parse_link
from configstream.parse.subscription import FORMATS, load_yaml, parse_body

__all__ = [
    "FORMATS",
    "SCHEMES",
    "load_yaml",
    "parse_body",
    "parse_clash_entry",
    "parse_link",
    "parse_singbox_outbound",
]

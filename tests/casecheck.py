"""Checks a link case (shared `cases/links.json` shape) against the parser.

A case: `input` (links or a whole body) and `expected` with `result`
(`ok`, `partial`, `ok/partial` or `reject`), `outbounds` (sing-box fields that
must match, a subset), optionally `clash` (a subset of the first proxy's Clash
entry) and `reason` (the rejection reason of a `reject` case).
"""

from __future__ import annotations

from typing import Any

from configstream.errors import SourceError
from configstream.outbound import to_outbound
from configstream.parse import parse_body, parse_link
from configstream.render.clash import to_clash
from configstream.render.links import to_link


def assert_subset(expected: Any, actual: Any, path: str = "") -> None:
    """Every key and value in `expected` is also in `actual`."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing in {actual!r}"
            assert_subset(value, actual[key], f"{path}.{key}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], dict):
        assert isinstance(actual, list) and len(actual) == len(expected), (
            f"{path}: {actual!r}"
        )
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            assert_subset(want, got, f"{path}[{index}]")
    else:
        assert expected == actual, f"{path}: expected {expected!r}, got {actual!r}"
        assert type(expected) is type(actual), f"{path}: {type(actual).__name__} value"


def check_case(case: dict[str, Any]) -> None:
    expected = case["expected"]
    if expected["result"] == "reject":
        try:
            report = parse_body(case["input"])
        except SourceError as exc:
            assert str(exc), "a rejection must say why"
            return
        assert not report.proxies, (
            f"rejected input produced {len(report.proxies)} proxies"
        )
        assert report.rejections, "rejected input must report a reason"
        if "reason" in expected:
            assert report.rejections[0].reason == expected["reason"]
        return
    report = parse_body(case["input"])
    by_tag = {p.name: p for p in report.proxies}
    if "count" in expected:
        assert len(report.proxies) == expected["count"]
    for want in expected.get("outbounds", []):
        proxy = by_tag.get(want["tag"])
        assert proxy is not None, f"no proxy named {want['tag']!r} in {list(by_tag)}"
        outbound = to_outbound(proxy, proxy.name)
        assert_subset(want, outbound, want["tag"])
        # Exporting the proxy as a link and reading it back changes nothing.
        again = parse_link(to_link(proxy))
        assert again == proxy and again.name == proxy.name
    if "clash" in expected and report.proxies:
        first = report.proxies[0]
        assert_subset(
            expected["clash"],
            to_clash(first, expected["clash"].get("name", first.name)),
        )

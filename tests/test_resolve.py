"""The allowed-network check: host names resolved concurrently, once each."""

from __future__ import annotations

import asyncio

import pytest

from configstream import pipeline
from configstream.config import parse_networks
from configstream.models import Proxy, Status


def test_each_name_resolved_once_and_outside_names_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No public DNS may be asked: the lookup itself is replaced, the code
    # that shares and judges its answers is what runs.
    answers = {
        "inside.example.test": ["127.0.0.5"],
        "outside.example.test": ["203.0.113.7"],
        "mixed.example.test": ["127.0.0.6", "198.51.100.9"],
        "missing.example.test": None,
    }
    asked: list[str] = []

    async def fake_resolve(host: str) -> list[str] | None:
        asked.append(host)
        await asyncio.sleep(0.01)
        return answers[host]

    monkeypatch.setattr(pipeline, "_resolve", fake_resolve)
    networks = parse_networks(["127.0.0.0/8"])
    proxies = [
        Proxy("trojan", host, port, password="p")
        for host in answers
        for port in (443, 8443, 2053)
    ] + [Proxy("trojan", "127.0.0.9", 443, password="p")]

    async def check_all() -> list[object]:
        names: dict[str, asyncio.Task[list[str] | None]] = {}
        return list(
            await asyncio.gather(
                *(pipeline._check_allowed(p, networks, names) for p in proxies)
            )
        )

    verdicts = dict(zip(proxies, asyncio.run(check_all()), strict=True))
    assert sorted(asked) == sorted(answers)  # one lookup per name
    by_host = {p.server: verdicts[p] for p in proxies}
    assert by_host["inside.example.test"] is None
    assert by_host["127.0.0.9"] is None
    assert by_host["outside.example.test"].status is Status.SKIPPED
    assert by_host["mixed.example.test"].status is Status.SKIPPED
    assert by_host["missing.example.test"].status is Status.DEAD

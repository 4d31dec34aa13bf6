"""`configstream convert` on every corpus file to every target, and its CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from configstream.convert import TARGETS, convert
from configstream.demo import file_handler, serve_http
from configstream.outbound import Unrepresentable, to_outbound
from configstream.parse import parse_body
from configstream.render.clash import to_clash
from configstream.render.fidelity import as_expressed
from tests.conftest import CORPUS, corpus_files

FILES = corpus_files()
LINK_WITH_SECRET = "trojan://s3cret-Pass@203.0.113.9:443?sni=example.com#ok\n"


def _expressible(proxies: list[Any], target: str) -> set[Any]:
    def fits(proxy: Any) -> bool:
        try:
            if target == "clash":
                to_clash(proxy, "x")
            elif target == "singbox":
                to_outbound(proxy, "x")
        except Unrepresentable:
            return False
        return True

    return {p for p in proxies if fits(p)}


@pytest.mark.parametrize("target", ["links", "base64", "clash", "singbox"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_file_converts_without_loss(path: Path, target: str) -> None:
    """Reading the converted document back gives the same proxies it could express."""
    body = path.read_bytes()
    source = parse_body(body).proxies
    conversion = convert([(path.name, body)], target)
    # Counted as written: what the target cannot express is left out.
    assert conversion.converted == len(_expressible(source, target))
    if not source:
        return
    again = parse_body(conversion.text).proxies
    # Each proxy comes back as the target keeps it: equal, apart from the
    # parameters render.fidelity names for that target (and counts).
    expected = {as_expressed(p, target)[0] for p in _expressible(source, target)}
    assert set(again) == expected
    left_out = len(set(source)) - len(_expressible(source, target))
    assert sum(conversion.left_out.values()) == left_out


def test_json_target_lists_every_proxy() -> None:
    body = (CORPUS / "Barabama__FreeNodes" / "nodes" / "clashmeta.yaml").read_bytes()
    conversion = convert([("c", body)], "json")
    records = json.loads(conversion.text)
    assert len(records) == conversion.converted == len(set(parse_body(body).proxies))
    assert len({r["name"] for r in records}) == len(records)
    assert all(r["link"] and r["id"] for r in records)


def test_names_lose_control_characters_and_stay_unique() -> None:
    body = (
        "trojan://a@203.0.113.1:443?sni=example.com#bad%07name%0A\n"
        "trojan://b@203.0.113.2:443?sni=example.com#bad%07name\n"
        "trojan://c@203.0.113.3:443?sni=example.com\n"
    )
    records = json.loads(convert([("x", body.encode())], "json").text)
    assert [r["name"] for r in records] == [
        "badname",
        "badname 2",
        "trojan 203.0.113.3:443",
    ]


def _cli(*args: str, stdin: str = "", cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "configstream.cli", "convert", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_cli_reports_bad_lines_without_secrets(tmp_path: Path) -> None:
    """Failed lines go to stderr with their number and reason, never a credential."""
    body = (
        LINK_WITH_SECRET
        + "vless://s3cret-uuid-that-is-far-too-long-to-map-01234@x.example.com:0#b\n"
    )
    done = _cli("-", "--to", "clash", stdin=body, cwd=tmp_path)
    assert done.returncode == 0
    assert "stdin: line 2: " in done.stderr
    assert "s3cret" not in done.stderr
    assert "converted 1 proxies to clash" in done.stderr
    assert "s3cret-Pass" in done.stdout


def test_cli_writes_output_file_from_url(tmp_path: Path) -> None:
    """A local HTTP URL as input, the result written to -o."""
    handler = file_handler({"/sub": (200, LINK_WITH_SECRET.encode())})
    with serve_http(handler) as port:
        done = _cli(
            f"http://127.0.0.1:{port}/sub",
            "--to",
            "base64",
            "-o",
            "out/sub.txt",
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    assert parse_body((tmp_path / "out" / "sub.txt").read_bytes()).shape == "base64"


def test_cli_fails_when_nothing_converts(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text("<!DOCTYPE html><html><body>oops</body></html>")
    done = _cli("page.html", "--to", "links", cwd=tmp_path)
    assert done.returncode == 1
    assert "page.html: unreadable: body is an HTML page" in done.stderr
    missing = _cli("nope.txt", "--to", "links", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.txt: cannot read" in missing.stderr


def test_targets_are_the_documented_ones() -> None:
    assert TARGETS == ("links", "base64", "clash", "singbox", "json")


def test_nothing_the_target_can_express_is_exit_code_1(tmp_path: Path) -> None:
    """Only SSR, which sing-box cannot run, to singbox: nothing converted."""

    def b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    inner = (
        f"203.0.113.5:8388:origin:aes-256-cfb:plain:{b64('pass')}/?remarks={b64('r')}"
    )
    done = _cli("-", "--to", "singbox", stdin=f"ssr://{b64(inner)}\n", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "converted 0 proxies to singbox" in done.stderr
    assert "left out 1:" in done.stderr

"""sources.yml validation and the CLI's exit codes for fatal problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from configstream.config import load_sources, parse_networks
from configstream.errors import SettingsError
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.yml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "sources:\n  - {name: a, url: https://example.com/a}\n"
        "  - {name: b, url: local.txt, format: base64, enabled: false}\n",
    )
    first, second = load_sources(path)
    assert (first.format, first.enabled, first.is_remote) == ("auto", True, True)
    assert second.url == str(tmp_path / "local.txt") and not second.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "sources:\n  - {name: a, url: https://x.test/a, format: yaml}\n",
            "sources[0] (a): 'format' must be one of",
        ),
        (
            "sources:\n  - {name: a, url: https://x.test/a}\n  - {name: a, url: https://x.test/b}\n",
            "sources[1]: duplicate name 'a'",
        ),
        ("sources:\n  - {url: https://x.test/a}\n", "sources[0]: 'name' must be"),
        (
            "sources:\n  - {name: a}\n",
            "sources[0] (a): 'url' must be a non-empty string",
        ),
        (
            "sources:\n  - {name: a, url: ftp://x.test/a}\n",
            "scheme must be http or https",
        ),
        (
            "sources:\n  - {name: a, url: https://x.test/a, enabled: maybe}\n",
            "'enabled' must be true or false",
        ),
        (
            "sources:\n  - {name: a, url: https://x.test/a, colour: red}\n",
            "unknown field(s) colour",
        ),
        ("sources:\n  - just-a-string\n", "sources[0]: must be a mapping"),
        ("items: []\n", "must have a top-level 'sources:' list"),
        ("sources: [\n", "not valid YAML: line 2, column 1"),
        ("sources:\n  - {name: a, url: 'x\n", "not valid YAML: line"),
    ],
)
def test_bad_file_names_entry_and_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_sources(path)
    shown = str(caught.value)
    assert message in shown
    # One line, which starts with the file it is about.
    assert shown.startswith(f"{path}: ") and "\n" not in shown, shown


def test_shipped_sources_file_is_valid() -> None:
    """The production list loads and is spread over many publishers."""
    sources = load_sources(REPO / "sources.yml")
    assert 300 <= len(sources) <= 400
    assert all(s.is_remote for s in sources)
    channels = [s for s in sources if s.is_telegram]
    assert 50 <= len(channels) < len(sources) / 2
    owners = {
        s.url.split("/")[3].lower() for s in sources if "githubusercontent" in s.url
    }
    assert len(owners) > 50


def test_networks_parse_and_reject() -> None:
    assert [str(n) for n in parse_networks(["127.0.0.0/8,::1/128", " "])] == [
        "127.0.0.0/8",
        "::1/128",
    ]
    with pytest.raises(SettingsError, match="not-a-net"):
        parse_networks(["not-a-net"])


def test_unreadable_sources_file_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    done = run_cli("run", "--sources", "missing.yml", "--no-test", cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot read sources file" in done.stderr
    assert "Traceback" not in done.stderr


def test_unusable_core_exits_non_zero(tmp_path: Path) -> None:
    """A --singbox path that is not sing-box is a fatal, clearly named error."""
    fake = tmp_path / "sing-box"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    (tmp_path / "list.txt").write_text("trojan://pw@127.0.0.1:9?sni=x.test#t\n")
    _write(tmp_path, "sources:\n  - {name: local, url: list.txt}\n")
    done = run_cli("run", "--singbox", str(fake), cwd=tmp_path)
    assert done.returncode == 2
    assert "does not identify itself as sing-box" in done.stderr


def test_failed_sources_do_not_fail_the_run(tmp_path: Path) -> None:
    """A missing file and a bad body are counted; the run still exits 0."""
    (tmp_path / "good.txt").write_text("trojan://pw@127.0.0.1:9?sni=x.test#t\n")
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 8)
    _write(
        tmp_path,
        "sources:\n  - {name: good, url: good.txt}\n"
        "  - {name: gone, url: gone.txt}\n  - {name: junk, url: junk.bin}\n",
    )
    done = run_cli("run", "--no-test", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    import json

    stats = json.loads((tmp_path / "output" / "stats.json").read_text())
    assert stats["fetch"]["failed"] == 1 and stats["parse"]["unreadable_sources"] == 1
    assert stats["dedupe"]["unique"] == 1


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:abc/", "http://127.0.0.1:99999/", "http://[::1/", "https:///x"],
)
def test_unrequestable_url_is_refused_naming_the_entry(
    tmp_path: Path, url: str
) -> None:
    path = tmp_path / "sources.yml"
    path.write_text(f"sources:\n  - name: broken\n    url: '{url}'\n")
    with pytest.raises(SettingsError) as info:
        load_sources(path)
    assert "broken" in str(info.value) and "url" in str(info.value)

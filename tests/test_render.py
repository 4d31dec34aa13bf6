"""The output set of real runs: schema-valid, loadable by sing-box, consistent."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from jsonschema import Draft7Validator, ValidationError
from referencing import Registry, Resource

from configstream.errors import OutputError
from configstream.models import Entry
from configstream.parse import parse_body
from configstream.render import write_outputs
from configstream.singbox import Core, check_config_file
from tests.conftest import CORPUS, SHARED, corpus_files, run_untested

MIHOMO_SCHEMA = SHARED / "schemas" / "mihomo-config.schema.json"
# One file of each shape (plain, base64, Clash, sing-box) and together every
# scheme the corpus holds, SSR and socks included: about 2,100 unique proxies,
# which the schema checks in seconds where the whole corpus takes minutes.
CORPUS_SAMPLE = (
    "Barabama__FreeNodes/nodes/clashmeta.txt",
    "Barabama__FreeNodes/nodes/nodev2ray.yaml",
    "4n0nymou3__multi-proxy-config-fetcher/configs/singbox_configs_all@6ea3a758.json",
    "soroushmirzaei__telegram-configs-collector/networks/grpc",
    "soroushmirzaei__telegram-configs-collector/protocols/hysteria",
    "soroushmirzaei__telegram-configs-collector/protocols/vmess",
    "soroushmirzaei__telegram-configs-collector/protocols/tuic",
    "ebrasha__free-v2ray-public-list/separated-protocols/ssr_configs.txt",
)
# Shadowsocks plugins are rare in any one file, so the run also reads every
# plain `ss://` line of the corpus that carries `plugin=` (about 60).
PLUGIN_MARK = b"plugin="
# mihomo `type` values whose sub-schema in the mihomo schema has another name.
SCHEMA_NAMES = {"ss": "shadowsocks", "ssr": "shadowsocksr"}
SHOWN_ERRORS = 5
# How `sing-box check` names the outbound it refused.
OUTBOUND_INDEX = re.compile(r"outbound\[(\d+)\]")
GROUP_TYPES = {"selector", "urltest", "direct"}
RUNS = ["demo_output", "corpus_output"]


@pytest.fixture(scope="module")
def demo_output(demo_run: Path) -> Path:
    """The output folder of a tested run over the demo world."""
    return demo_run / "out"


@pytest.fixture(scope="module")
def corpus_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a `--no-test` run over the corpus sample."""
    folder = tmp_path_factory.mktemp("corpus")
    sources = [
        {"name": f"sample-{i}", "url": str(CORPUS / name)}
        for i, name in enumerate(CORPUS_SAMPLE)
    ]
    (folder / "plugins.txt").write_bytes(b"\n".join(_plugin_links()) + b"\n")
    sources.append({"name": "ss-plugins", "url": str(folder / "plugins.txt")})
    done = run_untested(folder, sources)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "out"


def _plugin_links() -> list[bytes]:
    """Every plain-text `ss://` link with a plugin in the corpus."""
    return [
        line
        for path in corpus_files()
        for line in path.read_bytes().splitlines()
        if line.startswith(b"ss://") and PLUGIN_MARK in line
    ]


@pytest.fixture(params=RUNS)
def output(request: pytest.FixtureRequest) -> Path:
    """Each run's output folder in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def mihomo_schema() -> dict[str, Any]:
    return json.loads(MIHOMO_SCHEMA.read_text())


@functools.cache
def _load_clash(output: Path) -> dict[str, Any]:
    """clash.yaml of a run, loaded once; callers must not change it."""
    return yaml.safe_load((output / "clash.yaml").read_text(encoding="utf-8"))


def _load_json(output: Path, name: str) -> Any:
    return json.loads((output / name).read_text(encoding="utf-8"))


def _causes(error: ValidationError) -> list[ValidationError]:
    """The errors worth showing; for an entry matching no type, its own type's."""
    if not error.context:
        return [error]
    # Proxies and groups are an anyOf over one branch per `type`; every branch
    # but the entry's own fails on `type` first, so keep the branch that did not.
    branches: dict[Any, list[ValidationError]] = defaultdict(list)
    for sub in error.context:
        branches[sub.relative_schema_path[0]].append(sub)
    meant = [
        subs
        for subs in branches.values()
        if not any(list(sub.relative_path) == ["type"] for sub in subs)
    ]
    if len(meant) != 1:
        return [error]
    return [cause for sub in meant[0] for cause in _causes(sub)]


def _describe(errors: Sequence[tuple[str, ValidationError]]) -> str:
    """The first few schema errors with where they are and what failed."""
    causes = [(where, cause) for where, error in errors for cause in _causes(error)]
    lines = [f"{len(errors)} schema errors; the first causes:"]
    for where, cause in causes[:SHOWN_ERRORS]:
        path = "/".join(
            str(part) for part in [where, *cause.absolute_path] if part != ""
        )
        lines.append(f"  {path or '<root>'}: {cause.message[:300]}")
    return "\n".join(lines)


def _document_errors(
    schema: dict[str, Any], document: Any
) -> list[tuple[str, ValidationError]]:
    return [("", error) for error in Draft7Validator(schema).iter_errors(document)]


def test_demo_clash_matches_mihomo_schema(
    demo_output: Path, mihomo_schema: dict[str, Any]
) -> None:
    """The demo run's clash.yaml is a valid mihomo config as a whole."""
    document = _load_clash(demo_output)
    assert document["proxies"]
    errors = _document_errors(mihomo_schema, document)
    assert len(errors) == 0, _describe(errors)


def test_corpus_clash_proxies_match_their_type_schemas(
    corpus_output: Path, mihomo_schema: dict[str, Any]
) -> None:
    """Every proxy of the corpus run is valid under the sub-schema of its type."""
    # Checking each entry against its own type reports the field at fault;
    # the document-wide check only says that an entry matches no type.
    registry = Registry().with_resource(
        mihomo_schema["$id"], Resource.from_contents(mihomo_schema)
    )
    validators: dict[str, Draft7Validator] = {}
    errors: list[tuple[str, ValidationError]] = []
    proxies = _load_clash(corpus_output)["proxies"]
    for index, proxy in enumerate(proxies):
        kind = SCHEMA_NAMES.get(proxy["type"], proxy["type"])
        if kind not in validators:
            pointer = f"{mihomo_schema['$id']}#/definitions/proxies/definitions/{kind}"
            validators[kind] = Draft7Validator({"$ref": pointer}, registry=registry)
        where = f"proxies/{index} ({proxy['type']} {proxy['name']})"
        errors.extend((where, error) for error in validators[kind].iter_errors(proxy))
    assert len(proxies) > 1500
    assert len(errors) == 0, _describe(errors)


def test_corpus_clash_matches_mihomo_schema(
    corpus_output: Path, mihomo_schema: dict[str, Any]
) -> None:
    """The corpus run's clash.yaml, groups and all, is a valid mihomo config."""
    document = _load_clash(corpus_output)
    assert len(document["proxies"]) > 1500
    errors = _document_errors(mihomo_schema, document)
    assert len(errors) == 0, _describe(errors)


def test_demo_singbox_passes_core_check(demo_output: Path, core: Core) -> None:
    """`sing-box check` accepts the demo run's singbox.json as written."""
    is_valid, message = check_config_file(core, demo_output / "singbox.json")
    assert is_valid, message


def test_corpus_singbox_passes_core_check(
    corpus_output: Path, core: Core, tmp_path: Path
) -> None:
    """`sing-box check` accepts the corpus run's singbox.json minus uTLS outbounds."""
    config = _load_json(corpus_output, "singbox.json")
    # The bundled core is built without uTLS, so `check` refuses the whole file
    # at the first outbound with a TLS fingerprint or REALITY (which needs
    # uTLS). Clients built with uTLS load them; drop them here, and their tags
    # from the groups, so the check covers everything else.
    needs_utls = {
        outbound["tag"]
        for outbound in config["outbounds"]
        if {"utls", "reality"} & set(outbound.get("tls", {}))
    }
    config["outbounds"] = [
        ob for ob in config["outbounds"] if ob["tag"] not in needs_utls
    ]
    for outbound in config["outbounds"]:
        if "outbounds" in outbound:
            outbound["outbounds"] = [
                t for t in outbound["outbounds"] if t not in needs_utls
            ]
    assert len(config["outbounds"]) > len(needs_utls) > 0
    checked = tmp_path / "singbox.json"
    checked.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")

    is_valid, message = check_config_file(core, checked)
    named = OUTBOUND_INDEX.search(message)
    culprit = config["outbounds"][int(named.group(1))] if named else None
    assert is_valid, f"{message}\nfirst outbound refused: {culprit}"


def test_names_are_unique_and_shared_across_files(output: Path) -> None:
    """proxies.json, clash.yaml and singbox.json name the same proxies, once each.

    A proxy one client cannot express is left out of that client's file and
    counted in stats.json, so each file holds all names minus those counted.
    """
    records = [p["name"] for p in _load_json(output, "proxies.json")]
    clash = [p["name"] for p in _load_clash(output)["proxies"]]
    singbox = [
        ob["tag"]
        for ob in _load_json(output, "singbox.json")["outbounds"]
        if ob["type"] not in GROUP_TYPES
    ]
    left_out = _load_json(output, "stats.json")["output"]["left_out"]
    for label, names in (
        ("proxies.json", records),
        ("clash", clash),
        ("singbox", singbox),
    ):
        assert len(names) == len(set(names)), f"{label} repeats a name"
        missing = sum(
            n for reason, n in left_out.items() if reason.startswith(f"{label}:")
        )
        assert set(names) <= set(records)
        assert len(records) - len(names) == missing, label


def test_base64_subscription_decodes_to_plain(output: Path) -> None:
    plain = (output / "sub.txt").read_bytes()
    encoded = (output / "sub_base64.txt").read_bytes().strip()
    assert plain
    assert base64.b64decode(encoded, validate=True) == plain


def test_manifest_lists_every_file_with_its_size(output: Path) -> None:
    """manifest.json names every published file with its size and sha256."""
    manifest = _load_json(output, "manifest.json")
    listed = {f["name"]: (f["size"], f["sha256"]) for f in manifest["files"]}
    assert len(listed) == len(manifest["files"])
    on_disk = {
        str(p.relative_to(output)): (
            p.stat().st_size,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in output.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert listed == on_disk


def test_every_list_parses_and_holds_its_kind(output: Path) -> None:
    """Per-protocol, per-country, secure, fastest and chunk lists read back."""
    everything = set(parse_body((output / "sub.txt").read_bytes()).proxies)
    lists = sorted(output.glob("*/*.txt")) + [
        output / "secure.txt",
        output / "fastest.txt",
    ]
    assert lists
    for path in lists:
        text = path.read_bytes()
        report = parse_body(text)
        assert set(report.proxies) <= everything, path
        if path.parent.name == "protocols":
            kind = path.stem.removesuffix("_base64")
            assert {p.protocol for p in report.proxies} == {kind}, path
        if not path.stem.endswith("_base64"):
            # Profile headers lead the plain lists, and clients that do not
            # know them read them as comments.
            assert text.startswith(b"#profile-title: base64:"), path
            assert report.found == len(report.proxies), path
    chunks = sorted(output.glob("chunks/[0-9][0-9][0-9].txt"))
    in_chunks = [p for c in chunks for p in parse_body(c.read_bytes()).proxies]
    assert set(in_chunks) == everything and len(in_chunks) == len(everything)


# The write_outputs tests need only a few entries; these links point at
# loopback and carry made-up credentials.
_LINKS = b"""\
trojan://not-a-secret@127.0.0.1:8443?security=tls&sni=example.test#one
vless://8f3c2a8e-3b1e-4c1a-9d1e-0a6b5c4d3e2f@127.0.0.1:8444?security=none&type=ws&path=%2Fws#two
"""


def _entries() -> list[Entry]:
    report = parse_body(_LINKS)
    assert len(report.proxies) == 2, report.rejections
    return [Entry(proxy=proxy, sources=["test"]) for proxy in report.proxies]


def _stats() -> dict[str, Any]:
    return {
        "test": {"tested": 0, "alive": 0, "dead": 0, "untestable": 0, "untested": 2},
        "dedupe": {"unique": 2},
        "fetch": {"ok": 1, "failed": 0},
    }


@pytest.fixture
def previous_set(tmp_path: Path) -> dict[str, bytes]:
    """A complete output set written into tmp_path/out; returns its files."""
    write_outputs(tmp_path / "out", _entries(), _stats(), test_url="http://127.0.0.1/")
    return _files(tmp_path / "out")


def _files(folder: Path) -> dict[str, bytes]:
    """Each entry's bytes; a folder (a left-over staging one) shows as a marker."""
    return {
        p.name: p.read_bytes() if p.is_file() else b"<folder>" for p in folder.iterdir()
    }


def test_failed_render_keeps_previous_output(
    previous_set: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template that raises leaves the old files as they were, with no staging left."""
    assert "index.html" in previous_set

    def broken_render(self: jinja2.Template, *args: Any, **kwargs: Any) -> str:
        raise RuntimeError("template failed on purpose")

    monkeypatch.setattr(jinja2.Template, "render", broken_render)
    with pytest.raises(RuntimeError, match="on purpose"):
        write_outputs(
            tmp_path / "out", _entries(), _stats(), test_url="http://127.0.0.1/new"
        )
    assert _files(tmp_path / "out") == previous_set


def test_failed_write_keeps_previous_output(
    previous_set: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error midway through staging leaves the old files and no staging folder."""
    # Rendering fails before anything is staged; this one fails after some
    # files are already in the staging folder, so the clean-up is exercised.
    write_bytes = Path.write_bytes
    calls = []

    def failing_write(self: Path, *args: Any, **kwargs: Any) -> int:
        calls.append(self.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return write_bytes(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(OutputError, match="No space left"):
        write_outputs(
            tmp_path / "out", _entries(), _stats(), test_url="http://127.0.0.1/new"
        )
    assert len(calls) == 3
    assert _files(tmp_path / "out") == previous_set


def test_page_forbids_inline_scripts(output: Path) -> None:
    """A Content-Security-Policy allows only the page's own script file."""
    page = (output / "index.html").read_text()
    assert "Content-Security-Policy" in page and "script-src 'self'" in page
    scripts = re.findall(r"<script\b([^>]*)>", page)
    assert scripts and all('src="app.js"' in attrs for attrs in scripts)
    assert "addEventListener" in (output / "app.js").read_text()
    # Images (charts, QR codes) come from the page's own folder only.
    assert "img-src 'self' data:;" in page

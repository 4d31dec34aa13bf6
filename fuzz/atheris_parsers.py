"""Coverage-guided fuzzing of every reader with atheris; any foreign exception is a crash.

Usage:
    python fuzz/atheris_parsers.py [--workdir DIR] [--stop] [libFuzzer flags]
    python fuzz/atheris_parsers.py --replay FILE...

The first byte of an input picks the reader, the rest is its argument:
`parse_link` on the text, `parse_body` on the bytes in each of its formats,
and `parse_clash_entry` / `parse_singbox_outbound` on every item of the rest
read as JSON (or as YAML, the way Clash files are read). A reader may accept
an input or refuse it with a `ConfigStreamError`; anything else is a crash.

Seeds are cut from the shared corpus (single links, single Clash entries and
sing-box outbounds, a few lines of each list, base64 of them) and the cases of
`links.json`, and a libFuzzer dictionary is made of the fragments
`fuzz_parsers.py` assembles links from. Both are written once under
`--workdir`, which also keeps the growing corpus between runs.

By default a crash is recorded and fuzzing goes on: the first input of each
kind (reader, exception type, innermost configstream line) is saved under
`WORKDIR/crashes/` and `summary.json` there counts them, so one run lists
every kind instead of stopping at the first. `--stop` lets the exception
through instead, and libFuzzer stops and writes its usual `crash-*` file.
`--replay` runs saved inputs without atheris and prints each traceback.
Nothing is contacted: inputs are only parsed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import atheris
import yaml

with atheris.instrument_imports(include=["configstream"]):
    from configstream.errors import ConfigStreamError
    from configstream.parse import (
        FORMATS,
        load_yaml,
        parse_body,
        parse_clash_entry,
        parse_link,
        parse_singbox_outbound,
    )
    from configstream.parse.links import clear_memo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_parsers  # noqa: E402 - after the instrumented imports, on purpose

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CONFIGSTREAM_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "corpus" / "real"
CASES = SHARED / "cases" / "links.json"
DEFAULT_WORKDIR = Path("/tmp/configstream-atheris")
# Seeds of each kind (scheme, Clash type, outbound type) taken from the corpus:
# enough to reach every branch the corpus has, few enough to load in seconds.
SEEDS_PER_KIND = 12
LINES_PER_BODY = 5
# libFuzzer's default is the largest seed; bodies beyond this add time, not paths.
MAX_LEN = 8192
SEED_BYTES = MAX_LEN - 1

TARGETS: list[tuple[str, Callable[[bytes], None]]] = []


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _structured(data: bytes) -> Any:
    """The input read as JSON, else as Clash YAML; None when it is neither."""
    text = _text(data)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        docs = load_yaml(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    return docs[0] if len(docs) == 1 else docs


def _items(value: Any) -> Iterator[Any]:
    """Each candidate entry in a decoded value: itself, or its listed items."""
    if isinstance(value, dict):
        for key in ("proxies", "outbounds", "endpoints"):
            if isinstance(value.get(key), list):
                yield from value[key]
                return
        yield value
    elif isinstance(value, list):
        yield from value
    else:
        yield value


def _read_link(data: bytes) -> None:
    parse_link(_text(data))


def _body_reader(fmt: str) -> Callable[[bytes], None]:
    def read(data: bytes) -> None:
        parse_body(data, fmt)

    return read


def _entry_reader(parse: Callable[[Any], Any]) -> Callable[[bytes], None]:
    def read(data: bytes) -> None:
        value = _structured(data)
        if value is None:
            return
        for item in _items(value):
            try:
                parse(item)
            except ConfigStreamError:
                pass

    return read


TARGETS.append(("parse_link", _read_link))
TARGETS.extend((f"parse_body[{fmt}]", _body_reader(fmt)) for fmt in FORMATS)
TARGETS.append(("parse_clash_entry", _entry_reader(parse_clash_entry)))
TARGETS.append(("parse_singbox_outbound", _entry_reader(parse_singbox_outbound)))
SELECTOR = {name: index for index, (name, _) in enumerate(TARGETS)}


class Crashes:
    """The first input of each kind of crash, saved as it is found."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def record(self, target: str, data: bytes, exc: BaseException) -> None:
        kind = _kind(target, exc)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind in self.examples:
            if self.counts[kind] % 1000 == 0:
                self._write_summary()
            return
        digest = hashlib.sha1(data).hexdigest()[:12]
        label = target.replace("[", "-").replace("]", "")
        name = f"{label}-{type(exc).__name__}-{digest}.bin"
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(data)
        self.examples[kind] = name
        self._write_summary()
        print(
            f"\n== new crash kind: {kind}\n   input: {self.folder / name}", flush=True
        )
        traceback.print_exception(exc, limit=-6, file=sys.stdout)

    def _write_summary(self) -> None:
        summary = [
            {"kind": kind, "count": self.counts[kind], "input": name}
            for kind, name in self.examples.items()
        ]
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=2))


def _kind(target: str, exc: BaseException) -> str:
    """Reader, exception type and the innermost configstream line it passed."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/configstream/" in f.filename] or frames[-1:]
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{target} {type(exc).__name__} at {where}"


def run_one(data: bytes) -> tuple[str, BaseException | None]:
    """Feed one input to the reader its first byte picks; return what escaped."""
    if not data:
        return "none", None
    name, read = TARGETS[data[0] % len(TARGETS)]
    # parse_link remembers up to 200,000 results by link; across fuzz inputs
    # of up to 8 KB that is gigabytes, and an input's outcome must not depend
    # on the inputs before it.
    clear_memo()
    try:
        read(data[1:])
    except ConfigStreamError:
        pass
    except Exception as exc:  # noqa: BLE001 - every foreign exception is the finding
        return name, exc
    return name, None


def _seed(target: str, payload: bytes | str) -> bytes:
    raw = payload.encode("utf-8") if isinstance(payload, str) else payload
    return bytes([SELECTOR[target]]) + raw[:SEED_BYTES]


def _corpus_files() -> list[Path]:
    return sorted(
        p
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in {"README.md", "SOURCES.txt"}
    )


def _document(data: bytes) -> Any:
    text = _text(data)
    if text.lstrip()[:1] in {"{", "["}:
        try:
            return json.loads(text)
        except ValueError:
            return None
    if "proxies" not in text:
        return None
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None


def _first_per_kind(items: list[Any], kind: Callable[[Any], str]) -> list[Any]:
    taken: dict[str, int] = {}
    chosen = []
    for item in items:
        key = kind(item)
        if taken.get(key, 0) < SEEDS_PER_KIND:
            taken[key] = taken.get(key, 0) + 1
            chosen.append(item)
    return chosen


def _entry_type(item: Any) -> str:
    return str(item.get("type")) if isinstance(item, dict) else "?"


def _seeds_of_document(document: dict[str, Any]) -> Iterator[bytes]:
    proxies = document.get("proxies")
    if isinstance(proxies, list):
        for entry in _first_per_kind(proxies, _entry_type):
            yield _seed("parse_clash_entry", json.dumps(entry, ensure_ascii=False))
        head = {"proxies": proxies[:3]}
        yield _seed("parse_body[clash]", yaml.safe_dump(head, allow_unicode=True))
        yield _seed("parse_body[auto]", json.dumps(head, ensure_ascii=False))
    outbounds = document.get("outbounds")
    if isinstance(outbounds, list):
        for outbound in _first_per_kind(outbounds, _entry_type):
            text = json.dumps(outbound, ensure_ascii=False)
            yield _seed("parse_singbox_outbound", text)
        head = {"outbounds": outbounds[:4]}
        yield _seed("parse_body[singbox]", json.dumps(head, ensure_ascii=False))


def _seeds_of_lines(data: bytes) -> Iterator[bytes]:
    lines = [line.strip() for line in _text(data).splitlines() if line.strip()]
    links = [line for line in lines if "://" in line and len(line) < SEED_BYTES]
    for link in _first_per_kind(links, lambda line: line.partition("://")[0]):
        yield _seed("parse_link", link)
    body = "\n".join(lines[:LINES_PER_BODY]) + "\n"
    yield _seed("parse_body[plain]", body)
    encoded = base64.b64encode(body.encode("utf-8"))
    yield _seed("parse_body[base64]", encoded)
    yield _seed("parse_body[auto]", encoded)


def seeds() -> Iterator[bytes]:
    """Small inputs for every reader, cut from the shared corpus and cases."""
    for path in _corpus_files():
        data = path.read_bytes()
        document = _document(data)
        if isinstance(document, dict):
            yield from _seeds_of_document(document)
        else:
            yield from _seeds_of_lines(data)
    for case in json.loads(CASES.read_text(encoding="utf-8")):
        text = case["input"]
        yield _seed("parse_body[auto]", text)
        for line in text.splitlines():
            if "://" in line:
                yield _seed("parse_link", line.strip())


def _dictionary_entry(token: str) -> str:
    """One libFuzzer dictionary line: the token's UTF-8 bytes, quoted."""
    escaped = "".join(
        chr(byte)
        if 0x20 <= byte < 0x7F and chr(byte) not in '"\\'
        else f"\\x{byte:02x}"
        for byte in token.encode("utf-8")
    )
    return f'"{escaped}"'


def dictionary() -> list[str]:
    """libFuzzer dictionary lines: link fragments, Clash and sing-box keys."""
    tokens = {
        *fuzz_parsers.FRAGMENTS,
        *fuzz_parsers.KEYS,
        *(t for t in fuzz_parsers.TYPES if isinstance(t, str)),
        *(f"{scheme}://" for scheme in fuzz_parsers.SCHEMES),
        "\\ud800",
        "\\u0000",
        "%00",
        "%C0%80",
        '"outbounds": [',
        "proxies:\n  - ",
        "!!binary ",
        "&a ",
        "*a",
        "<<: ",
    }
    return sorted(_dictionary_entry(t) for t in tokens if t and len(t) <= 64)


def prepare(workdir: Path) -> tuple[Path, Path, Path]:
    """Seed folder, corpus folder and dictionary under `workdir`, made once."""
    seed_folder, corpus_folder = workdir / "seeds", workdir / "corpus"
    words = workdir / "links.dict"
    if not seed_folder.is_dir():
        seed_folder.mkdir(parents=True)
        for data in seeds():
            name = hashlib.sha1(data).hexdigest()
            (seed_folder / name).write_bytes(data)
    corpus_folder.mkdir(parents=True, exist_ok=True)
    words.write_text("\n".join(dictionary()) + "\n")
    return seed_folder, corpus_folder, words


def replay(paths: list[str]) -> int:
    """Run saved inputs and print what escaped from each; 1 when any did."""
    failed = 0
    for path in paths:
        name, exc = run_one(Path(path).read_bytes())
        if exc is None:
            print(f"{path}: {name} ok")
            continue
        failed += 1
        print(f"{path}: {name} raised")
        traceback.print_exception(exc)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--stop", action="store_true", help="stop at the first crash")
    parser.add_argument("--replay", nargs="+", metavar="FILE")
    args, fuzzer_args = parser.parse_known_args()
    if args.replay:
        return replay(args.replay)
    seed_folder, corpus_folder, words = prepare(args.workdir)
    crashes = Crashes(args.workdir / "crashes")

    def test_one_input(data: bytes) -> None:
        name, exc = run_one(data)
        if exc is None:
            return
        if args.stop:
            raise exc
        crashes.record(name, data, exc)

    flags = [f"-dict={words}", f"-max_len={MAX_LEN}"]
    flags.append(f"-artifact_prefix={args.workdir}/")
    folders = [str(corpus_folder), str(seed_folder)]
    atheris.Setup([sys.argv[0], *flags, *fuzzer_args, *folders], test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

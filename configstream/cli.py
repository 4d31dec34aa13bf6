"""Command line: `configstream run` and `configstream demo`.

Parses arguments, sets up logging once, draws progress with rich on a
terminal (plain log lines otherwise) and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from configstream import __version__
from configstream.cache import DATABASE_NAME, Cache, exclusive
from configstream.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TEST_URL,
    DEFAULT_TRACE_URL,
    RunSettings,
    Source,
    allowed_networks,
    load_sources,
    parse_nameservers,
)
from configstream.convert import TARGETS, convert, report_problems
from configstream.errors import ConfigStreamError, SettingsError
from configstream.fetch import fetch_all
from configstream.health import summarize
from configstream.models import Entry
from configstream.parse import FORMATS, parse_body
from configstream.pipeline import merge_partials, run_pipeline, test_entries
from configstream.render import write_atomically
from configstream.shard import parse_shard

log = logging.getLogger("configstream")
console = Console(stderr=True)


class _RichReporter:
    """Draws one progress bar per stage."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def stage(self, name: str, total: int | None) -> None:
        self.finish()
        self.task = self.progress.add_task(name, total=total)

    def finish(self) -> None:
        """Mark the current stage complete and stop its clock."""
        if self.task is None:
            return
        task = self.progress.tasks[-1]
        done = int(task.total if task.total is not None else task.completed) or 1
        self.progress.update(self.task, total=done, completed=done)
        self.progress.stop_task(self.task)

    def advance(self, count: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, count)


class _LogReporter:
    """Plain log lines for CI logs and pipes."""

    def __init__(self) -> None:
        self.name = ""
        self.total: int | None = None
        self.done = 0

    def stage(self, name: str, total: int | None) -> None:
        self.name, self.total, self.done = name, total, 0
        log.info(
            "%s: started%s", name, f" ({total} items)" if total is not None else ""
        )

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.total and self.done % max(1, self.total // 10) == 0:
            log.info("%s: %d/%d", self.name, self.done, self.total)


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=verbose)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("configstream").setLevel(level)


def _add_cache_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache", type=Path, default=Path("cache"), help="cache folder"
    )


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that test and publish (run, merge, demo)."""
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("output"), help="output folder"
    )
    _add_test_options(parser)
    parser.add_argument(
        "--no-test", action="store_true", help="publish parsed proxies untested"
    )
    parser.add_argument(
        "--base-url",
        help="the URL output/ is published at (for the page's QR codes), "
        "e.g. https://USER.github.io/REPO/",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        dest="all_sources",
        help="fetch every enabled source, also those resting after repeated failures",
    )
    parser.add_argument(
        "--min-alive-share",
        type=float,
        default=0.2,
        help="keep the previous output when fewer proxies are alive than this share "
        "of the last good run (default 0.2)",
    )


def _add_url_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test-url",
        default=DEFAULT_TEST_URL,
        help="fetched through each proxy; latency is its full answer "
        f"(default {DEFAULT_TEST_URL})",
    )
    parser.add_argument(
        "--trace-url",
        default=DEFAULT_TRACE_URL,
        help="a Cloudflare-style trace page giving the exit IP; empty for none "
        f"(default {DEFAULT_TRACE_URL})",
    )


def _add_test_options(parser: argparse.ArgumentParser) -> None:
    """Options of every command that tests proxies."""
    _add_cache_folder(parser)
    parser.add_argument(
        "--timeout", type=float, default=8.0, help="seconds per proxy test"
    )
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="tests in flight"
    )
    parser.add_argument("--geoip", type=Path, help="MaxMind-format country database")
    parser.add_argument(
        "--singbox",
        type=Path,
        default=os.environ.get("CONFIGSTREAM_SINGBOX") or None,
        help="sing-box binary (default: CONFIGSTREAM_SINGBOX, else the bundled one)",
    )
    parser.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="only contact servers in these networks (repeatable; also "
        "CONFIGSTREAM_ALLOW_NETWORKS)",
    )
    parser.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="DNS server for proxy server names (repeatable; default: the system's)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="test everything, reusing no cached result"
    )
    _add_verbose(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `configstream` command."""
    parser = argparse.ArgumentParser(
        prog="configstream",
        description="Fetch, parse, test and publish free proxy subscriptions.",
    )
    parser.add_argument(
        "--version", action="version", version=f"configstream {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline on a sources file")
    run.add_argument("--sources", type=Path, default=Path("sources.yml"))
    _add_url_options(run)
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="test only slice I of N and write a partial result for 'merge'",
    )
    _add_run_options(run)

    merge = commands.add_parser(
        "merge", help="join the partial results of sharded runs and publish them"
    )
    merge.add_argument("partials", nargs="+", type=Path, metavar="PARTIAL")
    merge.add_argument(
        "--test-url", default=DEFAULT_TEST_URL, help="the URL the partials tested"
    )
    _add_run_options(merge)

    convert = commands.add_parser(
        "convert", help="convert subscriptions between formats, offline (no testing)"
    )
    convert.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a file, an http(s) URL, or - for stdin",
    )
    convert.add_argument("--to", required=True, choices=TARGETS, help="output format")
    convert.add_argument(
        "-o", "--output", type=Path, help="output file (default: stdout)"
    )
    convert.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
        help="input shape (default: detect from content)",
    )
    _add_verbose(convert)

    check = commands.add_parser(
        "check", help="test links or subscriptions and print the results"
    )
    check.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="a file, an http(s) URL, or -"
    )
    _add_url_options(check)
    check.add_argument("--json", action="store_true", help="print JSON, not a table")
    check.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the JSON to FILE (with --json)",
    )
    _add_test_options(check)
    check.set_defaults(
        no_test=False, base_url=None, all_sources=False, min_alive_share=0.2
    )

    cache = commands.add_parser("cache", help="inspect or tidy the cache folder")
    cache.add_argument("action", choices=("stats", "prune", "clear"))
    _add_cache_folder(cache)
    cache.add_argument(
        "--older-than",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="prune: drop results older than this (default 24)",
    )
    _add_verbose(cache)

    publish = commands.add_parser(
        "publish", help="push the output folder to a branch as one fresh commit"
    )
    publish.add_argument(
        "-o", "--output", type=Path, default=Path("output"), help="output folder"
    )
    publish.add_argument("--branch", default="gh-pages")
    publish.add_argument("--remote", default="origin", help="remote name, URL or path")
    publish.add_argument(
        "--repo", type=Path, default=Path("."), help="repository the remote belongs to"
    )
    publish.add_argument("--message", default="Publish ConfigStream output")
    publish.add_argument(
        "--dry-run",
        action="store_true",
        help="commit locally, show changes, push nothing",
    )
    _add_verbose(publish)

    sources = commands.add_parser(
        "sources", help="show each source's health over the recorded runs"
    )
    _add_cache_folder(sources)
    sources.add_argument("--json", action="store_true", help="print JSON, not a table")
    _add_verbose(sources)

    demo = commands.add_parser(
        "demo", help="run the pipeline on a local offline world (127.0.0.1 only)"
    )
    _add_run_options(demo)
    demo.set_defaults(timeout=3.0)
    return parser


def _settings(args: argparse.Namespace, **overrides: Any) -> RunSettings:
    if args.timeout <= 0:
        raise SettingsError("must be a positive number of seconds", "--timeout")
    if args.concurrency < 1:
        raise SettingsError("must be at least 1", "--concurrency")
    values: dict[str, Any] = dict(
        output=args.output,
        cache=args.cache,
        timeout=args.timeout,
        concurrency=args.concurrency,
        geoip=args.geoip,
        allow_networks=allowed_networks(args.allow_network),
        nameservers=parse_nameservers(args.dns),
        no_test=args.no_test,
        min_alive_share=args.min_alive_share,
        fresh=args.fresh,
        all_sources=args.all_sources,
        base_url=args.base_url,
        singbox=args.singbox,
    )
    values.update(overrides)
    return RunSettings(**values)


def print_summary(stats: dict[str, Any], output: Path) -> None:
    """A short table of the run's counts, on stdout."""
    table = Table(title="ConfigStream run", show_header=False)
    rows = [
        (
            "sources ok / failed / resting",
            f"{stats['fetch']['ok']} / {stats['fetch']['failed']} / "
            f"{stats['fetch'].get('resting', 0)}",
        ),
        ("links found", stats["parse"]["found"]),
        (
            "parsed / rejected",
            f"{stats['parse']['parsed']} / {stats['parse']['rejected']}",
        ),
        (
            "sources unchanged (304 / same body)",
            f"{stats['parse'].get('not_modified', 0)} / "
            f"{stats['parse'].get('same_body', 0)}",
        ),
        ("unique", stats["dedupe"]["unique"]),
        ("alive", stats["test"]["alive"]),
        ("results reused from the cache", stats["test"].get("reused", 0)),
        ("dead", stats["test"]["dead"]),
        ("untestable", stats["test"]["untestable"]),
        ("skipped", stats["test"]["skipped"]),
        ("untested", stats["test"]["untested"]),
        ("seconds", stats["seconds"]["total"]),
    ]
    for label, value in rows:
        table.add_row(label, str(value))
    out = Console()
    out.print(table)
    if stats.get("shard"):
        shard = stats["shard"]
        out.print(
            f"Shard {shard['index']} of {shard['count']}: {shard['entries']} proxies; "
            f"partial result written to {output.resolve()}"
        )
        return
    out.print(f"Output written to {output.resolve()}")


async def _run(settings: RunSettings) -> dict[str, Any]:
    if console.is_terminal:
        columns = (
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            reporter = _RichReporter(progress)
            outcome = await run_pipeline(settings, reporter)
            reporter.finish()
    else:
        outcome = await run_pipeline(settings, _LogReporter())
    return outcome.stats


def _command(args: argparse.Namespace) -> int:
    if args.command == "merge":
        settings = _settings(args, sources=(), test_url=args.test_url)
        stats = asyncio.run(merge_partials(args.partials, settings)).stats
        print_summary(stats, settings.output)
        return 3 if stats.get("degraded") else 0
    if args.command == "run":
        try:
            shard = parse_shard(args.shard) if args.shard else None
        except ValueError as exc:
            raise SettingsError(str(exc), "--shard") from None
        settings = _settings(
            args,
            sources=load_sources(args.sources),
            test_url=args.test_url,
            trace_url=args.trace_url or None,
            shard=shard,
        )
        stats = asyncio.run(_run(settings))
        print_summary(stats, settings.output)
        if stats.get("degraded"):
            console.print(
                f"[red]degraded:[/red] {escape(stats['degraded'])}; previous output kept",
                highlight=False,
            )
            return 3
        return 0
    if args.command == "convert":
        return _convert(args)
    if args.command == "check":
        return _check(args)
    if args.command == "cache":
        return _cache(args)
    if args.command == "sources":
        return _sources(args)
    if args.command == "publish":
        return _publish(args)
    from configstream.demo import run_demo

    return run_demo(args, _settings, _run, print_summary)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _read_inputs(inputs: Sequence[str]) -> list[tuple[str, bytes]]:
    bodies: list[tuple[str, bytes]] = []
    remote = [
        Source(name=f"input-{i}", url=u)
        for i, u in enumerate(inputs)
        if u.startswith(("http://", "https://"))
    ]
    fetched = {r.source.url: r for r in asyncio.run(fetch_all(remote, timeout=20.0))}
    for item in inputs:
        if item == "-":
            bodies.append(("stdin", sys.stdin.buffer.read()))
        elif item in fetched:
            result = fetched[item]
            if result.body is None:
                raise SettingsError(f"cannot fetch: {result.error}", item)
            bodies.append((item, result.body))
        else:
            try:
                bodies.append((item, Path(item).read_bytes()))
            except OSError as exc:
                raise SettingsError(f"cannot read: {exc.strerror}", item) from exc
    return bodies


def _cache(args: argparse.Namespace) -> int:
    with exclusive(args.cache):
        if args.action == "clear":
            removed = 0
            for path in args.cache.glob(f"{DATABASE_NAME}*"):
                path.unlink()
                removed += 1
            print(f"removed {removed} cache files from {args.cache}")
            return 0
        with Cache.open(args.cache) as cache:
            if args.action == "prune":
                print(f"pruned {cache.prune(args.older_than * 3600)} results")
            print(json.dumps(cache.summary(), indent=2))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from configstream.publish import publish

    result = publish(
        args.output,
        repository=args.repo,
        remote=args.remote,
        branch=args.branch,
        message=args.message,
        dry_run=args.dry_run,
    )
    if not result.changed and not result.pushed:
        print(
            f"{args.branch} already holds this output ({result.commit[:12]}); nothing pushed"
        )
        return 0
    verb = "pushed" if result.pushed else "would push (dry run)"
    what = "first publish" if result.first else f"{len(result.changed)} files changed"
    print(f"{verb} {result.commit[:12]} to {args.branch}: {what}")
    for name in result.changed[:50]:
        print(f"  {name}")
    if len(result.changed) > 50:
        print(f"  ... and {len(result.changed) - 50} more")
    return 0


def _sources(args: argparse.Namespace) -> int:
    with exclusive(args.cache), Cache.open(args.cache) as cache:
        healths = summarize(cache.source_history())
    if args.json:
        rows = [
            {
                "name": h.name,
                "runs": h.runs,
                "ok_runs": h.ok_runs,
                "failed_streak": h.failed_streak,
                "useless_streak": h.useless_streak,
                "flag": h.flag,
                "last": h.last,
            }
            for h in healths
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not healths:
        print(f"no runs recorded in {args.cache}")
        return 0
    table = Table(title=f"Sources over the recorded runs ({args.cache})")
    columns = "source,ok runs,last,HTTP,found,parsed,rejected,only here,alive,s,flag"
    for column in columns.split(","):
        left = column in {"source", "last", "flag"}
        table.add_column(
            column,
            justify="left" if left else "right",
            no_wrap=True,
            overflow="ellipsis",
            max_width=40 if left else None,
        )
    for h in healths:
        last = h.last
        ratio = last.get("alive_ratio")
        table.add_row(
            h.name,
            f"{h.ok_runs}/{h.runs}",
            str(last.get("status", ""))
            + (f" ({last['parse']})" if last.get("parse") else ""),
            str(last.get("http_status") or ""),
            str(last.get("found", "")),
            str(last.get("parsed", "")),
            str(sum((last.get("rejected") or {}).values())),
            str(last.get("only_here", "")),
            f"{last.get('alive', 0)} ({ratio:.0%})" if ratio is not None else "",
            f"{last.get('seconds', 0):.2f}" if last.get("seconds") is not None else "",
            h.flag or (last.get("error") or ""),
            style="yellow" if h.flag else None,
        )
    # A pipe gets the full table, not one squeezed into 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def _check(args: argparse.Namespace) -> int:
    entries: dict[Any, Entry] = {}
    for label, body in _read_inputs(args.inputs):
        report = parse_body(body)
        for rejection in report.rejections:
            console.print(
                f"{label}: {rejection.where}: {rejection.reason}", highlight=False
            )
        for proxy in report.proxies:
            entries.setdefault(proxy, Entry(proxy=proxy, sources=[label]))
    settings = _settings(
        args,
        sources=(),
        output=Path("."),
        test_url=args.test_url,
        trace_url=args.trace_url or None,
    )
    stats: dict[str, Any] = {}
    asyncio.run(test_entries(list(entries.values()), settings, _LogReporter(), stats))
    rows = [
        {
            "name": e.proxy.name,
            "protocol": e.proxy.protocol,
            "endpoint": e.proxy.endpoint,
            "status": str(e.result.status),
            "latency_ms": e.result.latency_ms,
            "exit_ip": e.result.exit_ip,
            "reason": e.result.reason,
        }
        for e in entries.values()
    ]
    if args.json:
        text = json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
        if args.output:
            write_atomically(args.output, text)
        else:
            sys.stdout.write(text)
    else:
        table = Table("name", "protocol", "server", "status", "ms", "exit IP", "reason")
        for row in rows:
            latency = row["latency_ms"]
            table.add_row(
                escape(row["name"][:40]),
                row["protocol"],
                row["endpoint"],
                row["status"],
                f"{latency:.0f}" if latency is not None else "",
                row["exit_ip"] or "",
                escape(row["reason"]),
            )
        Console().print(table)
    return 0 if rows else 1


def _convert(args: argparse.Namespace) -> int:
    conversion = convert(_read_inputs(args.inputs), args.to, args.format)
    report_problems(conversion)
    if args.output:
        write_atomically(args.output, conversion.text)
    else:
        sys.stdout.write(conversion.text)
    console.print(
        f"converted {conversion.converted} proxies to {args.to} "
        f"({conversion.duplicates} duplicates dropped, {len(conversion.rejections)} "
        f"rejected, {sum(conversion.left_out.values())} left out)",
        highlight=False,
        soft_wrap=True,
    )
    return 0 if conversion.converted else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    # SIGTERM (a CI runner cancelling a job) takes the same path as Ctrl-C:
    # the exception unwinds through every `finally`, so each sing-box
    # process is stopped instead of left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return _command(args)
    except ConfigStreamError as exc:
        # One line, however narrow the log: CI logs are searched line by line.
        console.print(
            f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        if args.verbose:
            console.print_exception()
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130


if __name__ == "__main__":
    sys.exit(main())

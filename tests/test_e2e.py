"""The demo world through `configstream run` and `configstream demo`, for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from configstream.demo import World
from configstream.models import Status
from configstream.parse import parse_body
from tests.conftest import CORPUS, corpus_files, run_cli, run_untested, world_run_args


@pytest.fixture(scope="module")
def run_output(demo_run: Path) -> Path:
    return demo_run


def test_exactly_the_live_servers_are_alive(world: World, run_output: Path) -> None:
    """Alive = the world's live servers, each with its own exit IP and country."""
    proxies = json.loads((run_output / "out" / "proxies.json").read_text())
    found = sorted(
        (p["protocol"], p["port"], p["exit_ip"], p["country"]) for p in proxies
    )
    expected = sorted((s.protocol, s.port, s.exit_ip, s.country) for s in world.live)
    assert found == expected
    assert all(p["status"] == "alive" and p["latency_ms"] > 0 for p in proxies)


def test_stats_count_every_outcome(world: World, run_output: Path) -> None:
    """Dead, untestable, skipped and failed sources are counted, not hidden."""
    stats = json.loads((run_output / "out" / "stats.json").read_text())
    assert stats["test"]["alive"] == len(world.live)
    assert stats["test"]["dead"] == world.dead
    assert stats["test"]["untestable"] == world.untestable
    assert stats["test"]["skipped"] == world.skipped
    assert stats["fetch"] == {
        "sources": 6,
        "disabled": 0,
        "resting": 0,
        "ok": 5,
        "failed": 1,
    }
    assert stats["parse"]["unreadable_sources"] == 1
    assert (
        "REALITY needs uTLS, which this sing-box build lacks"
        in stats["test"]["untestable_by_reason"]
    )
    assert (
        stats["parse"]["found"] == stats["parse"]["parsed"] + stats["parse"]["rejected"]
    )


def test_subscriptions_hold_the_alive_proxies(world: World, run_output: Path) -> None:
    """The plain and base64 subscriptions and clash.yaml carry every alive proxy."""
    out = run_output / "out"
    plain = parse_body((out / "sub.txt").read_bytes())
    encoded = parse_body((out / "sub_base64.txt").read_bytes())
    clash = parse_body((out / "clash.yaml").read_bytes())
    singbox = parse_body((out / "singbox.json").read_bytes())
    assert (
        encoded.shape == "base64"
        and clash.shape == "clash"
        and singbox.shape == "singbox"
    )
    for report in (plain, encoded, clash, singbox):
        assert set(report.proxies) == set(plain.proxies)
        assert len(report.proxies) == len(world.live)


def test_debug_log_leaks_no_secret(world: World, run_output: Path) -> None:
    """Even with --verbose the log names no password, uuid or key of the world."""
    log = (run_output / "log.txt").read_text()
    assert "alive" in log
    for secret in world.secrets:
        assert secret not in log


def test_cache_records_the_run(run_output: Path) -> None:
    """The SQLite cache holds the results and one run."""
    from configstream.cache import Cache

    with Cache.open(run_output / "cache") as cache:
        runs = cache.runs()
    assert len(runs) == 1 and runs[0]["test"]["alive"] > 0


def test_demo_command_reports_all_live_servers(tmp_path: Path) -> None:
    """`configstream demo` finds every live server and writes every output."""
    done = run_cli("demo", "--output", "out", "--cache", "cache", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 live servers, 8 reported alive" in done.stdout
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {
        "proxies.json",
        "stats.json",
        "sub.txt",
        "sub_base64.txt",
        "clash.yaml",
        "singbox.json",
        "index.html",
        "manifest.json",
    } <= names


def test_no_test_run_accounts_for_every_corpus_line(tmp_path: Path) -> None:
    """--no-test over the whole corpus: every candidate is parsed or rejected."""
    sources = [
        {"name": f"corpus-{i}", "url": str(path)}
        for i, path in enumerate(corpus_files())
    ]
    done = run_untested(tmp_path, sources)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    counts = json.loads(
        (Path(__file__).parent / "data" / "corpus_counts.json").read_text()
    )
    assert stats["parse"]["found"] == sum(v["found"] for v in counts.values())
    assert (
        stats["parse"]["found"] == stats["parse"]["parsed"] + stats["parse"]["rejected"]
    )
    # Line-based files: every line is ignored (blank, comment) or holds a
    # candidate, which is parsed or rejected with a reason.
    for row in stats["sources"]:
        if row["shape"] in {"plain", "base64", "base64-lines"}:
            assert row["lines"] - row["ignored_lines"] <= row["found"], row["name"]
            assert row["found"] == row["parsed"] + sum(row["rejected"].values())
    assert stats["test"]["untested"] == stats["dedupe"]["unique"] > 20_000
    assert stats["fetch"]["failed"] == 0
    proxies = json.loads((tmp_path / "out" / "proxies.json").read_text())
    assert len(proxies) == stats["dedupe"]["unique"]
    assert all(p["status"] == Status.UNTESTED for p in proxies[:100])
    assert CORPUS.exists()


def _children(pid: int) -> set[int]:
    """Child pids of every thread of `pid`; threads may end while we read."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(
                int(child) for child in (task / "children").read_text().split()
            )
        except OSError:
            continue
    return found


def _is_core(pid: int) -> bool:
    try:
        return "sing-box" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGKILL"])
def test_stopped_mid_run_leaves_no_core_behind(tmp_path: Path, signum: str) -> None:
    """SIGTERM stops the run cleanly; even after SIGKILL no sing-box lives on."""
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "configstream.cli",
            "demo",
            "--timeout",
            "8",
            "--output",
            "out",
            "--cache",
            "cache",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cores: set[int] = set()
    deadline = time.monotonic() + 30
    # The world's server core starts first, then the tester's core.
    while len(cores) < 2 and time.monotonic() < deadline and proc.poll() is None:
        cores = {c for c in _children(proc.pid) if _is_core(c)}
        time.sleep(0.05)
    assert len(cores) == 2, "the demo did not start its two cores"
    time.sleep(1.0)
    proc.send_signal(getattr(signal, signum))
    _, stderr = proc.communicate(timeout=30)
    if signum == "SIGTERM":
        assert proc.returncode == 130, stderr[-2000:]
        assert "interrupted" in stderr
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in cores):
        assert time.monotonic() < deadline, "a sing-box outlived the run"
        time.sleep(0.05)


def test_run_with_nothing_alive_keeps_previous_output(tmp_path: Path) -> None:
    """Zero alive: the last good lists stay, health says why, the exit code is 3."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub.txt").write_text("previous good list\n")
    (out / "manifest.json").write_text('{"files": [{"name": "sub.txt"}]}')
    # Nothing listens on the port reserved and released here.
    from configstream.singbox import reserve_ports

    [closed] = reserve_ports(1)
    (tmp_path / "dead.txt").write_text(
        f"ss://YWVzLTEyOC1nY206ZmFrZQ@127.0.0.1:{closed}#dead\n"
    )
    (tmp_path / "sources.yml").write_text("sources:\n  - {name: dead, url: dead.txt}\n")
    done = run_cli(
        "run",
        "--output",
        "out",
        "--cache",
        "cache",
        "--timeout",
        "2",
        "--test-url",
        f"http://127.0.0.1:{closed}/generate_204",
        cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "degraded" in done.stderr
    assert (out / "sub.txt").read_text() == "previous good list\n"
    health = json.loads((out / "health.json").read_text())
    assert health["degraded"] is True and health["reason"] == "no proxy passed the test"
    assert not (out / "proxies.json").exists()


@pytest.mark.parametrize(
    ("alive", "last_good", "no_test", "degraded"),
    [
        (0, None, False, True),
        (19, 100, False, True),
        (20, 100, False, False),
        (5, None, False, False),
        (0, 100, True, False),
    ],
)
def test_degraded_when_far_below_last_good_run(
    alive: int, last_good: int | None, no_test: bool, degraded: bool
) -> None:
    """Below 20% of the last good run (or zero) is degraded; --no-test never is."""
    from configstream.config import RunSettings
    from configstream.pipeline import _degraded

    settings = RunSettings(
        sources=(), output=Path("o"), cache=Path("c"), no_test=no_test
    )
    assert bool(_degraded({"test": {"alive": alive}}, settings, last_good)) is degraded


def test_check_command_reports_each_link(world: World, tmp_path: Path) -> None:
    """`configstream check` on the demo's plain subscription, as JSON."""
    sources = yaml.safe_load(world.sources_file.read_text())["sources"]
    plain = next(s["url"] for s in sources if s["name"] == "demo-plain")
    done = run_cli(
        "check",
        plain,
        "--json",
        "--timeout",
        "3",
        "--test-url",
        world.test_url,
        "--trace-url",
        world.trace_url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    statuses = sorted(row["status"] for row in rows)
    # vmess, vless and trojan live; a wrong uuid and a wrong password; REALITY,
    # xhttp and SSR untestable; one server outside the allowed networks.
    assert statuses == ["alive"] * 3 + ["dead"] * 2 + ["skipped"] + ["untestable"] * 3
    live_ips = {s.exit_ip for s in world.live}
    assert all(r["exit_ip"] in live_ips for r in rows if r["status"] == "alive")
    assert "line " in done.stderr  # the junk line is reported with its number


def test_second_run_reuses_fresh_results(world: World, tmp_path: Path) -> None:
    """A warm run reuses every fresh alive/dead result; --fresh tests again."""
    args = world_run_args(world)
    outcomes = []
    for extra in ([], [], ["--fresh"]):
        done = run_cli(*args, *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        stats = json.loads((tmp_path / "out" / "stats.json").read_text())
        proxies = json.loads((tmp_path / "out" / "proxies.json").read_text())
        outcomes.append((stats["test"], {(p["port"], p["exit_ip"]) for p in proxies}))
    (cold, cold_alive), (warm, warm_alive), (fresh, fresh_alive) = outcomes
    assert cold["reused"] == 0 and fresh["reused"] == 0
    assert warm["reused"] == cold["alive"] + cold["dead"]
    assert cold_alive == warm_alive == fresh_alive
    assert len(cold_alive) == len(world.live)


def test_second_demo_reuses_the_first_runs_work(tmp_path: Path) -> None:
    """The same world comes back, so sources answer 304 and results are reused."""
    first = run_cli("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    cold = json.loads((tmp_path / "output" / "stats.json").read_text())
    second = run_cli("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    warm = json.loads((tmp_path / "output" / "stats.json").read_text())
    assert cold["parse"]["parsed_sources"] == 4 and cold["test"]["reused"] == 0
    assert warm["parse"]["not_modified"] == 4 and warm["parse"]["parsed_sources"] == 0
    # Every alive and dead result is fresh; only untestable and skipped
    # configs (never cached) are looked at again.
    assert warm["test"]["reused"] == cold["test"]["alive"] + cold["test"]["dead"]
    assert warm["test"]["alive"] == cold["test"]["alive"] == 8
    assert "results reused from the cache" in second.stdout
    assert warm["seconds"]["total"] < cold["seconds"]["total"]

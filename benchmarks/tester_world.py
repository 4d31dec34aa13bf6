"""The tester against a loopback world of thousands of proxies, with ground truth.

Usage: python benchmarks/tester_world.py [--proxies 3000] [--timeout 5]
                                         [--concurrency 200] [--with-batch]

The world (reusing the demo's parts, all on 127.0.0.1): one sing-box process
serving VLESS and Trojan-over-TLS users, 40% of the proxies valid users of it
(alive), 30% pointing at a closed port (refused) and 30% at a listener that
accepts and never answers (black hole). ConfigStream's tester runs on all of
them; with --with-batch, singbox2proxy's batch engine
(`SingBoxBatch(...).check(...)`, its defaults, 100 workers) runs on the same
links for comparison. Reports wall seconds, peak memory of the process tree
(sampled from /proc), precision and recall against the ground truth, and the
lower bound S + max(T, W/C). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from configstream.demo import (
    LOOPBACK,
    CoreThread,
    TraceHandler,
    black_hole_listener,
    serve_http,
    tls_keypair,
)
from configstream.models import Proxy, Status, Tls
from configstream.probe import ProbeSettings, ProxyTester
from configstream.render.links import to_link
from configstream.singbox import locate_core, reserve_ports


def _tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    stack.extend(
                        int(c) for c in (task / "children").read_text().split()
                    )
    return total / 1024


@contextlib.contextmanager
def _peak_memory() -> Iterator[Callable[[], float]]:
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(os.getpid()))
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()


def _world(
    count: int, folder: Path, black_hole: int
) -> tuple[dict[str, Any], list[Proxy], set[Proxy]]:
    core = locate_core()
    key, cert = tls_keypair(core, folder)
    vless_port, trojan_port, closed = reserve_ports(3)
    alive_count = int(count * 0.4)
    refused_count = int(count * 0.3)
    vless_users = [str(uuid.uuid4()) for _ in range(alive_count // 2)]
    trojan_users = [
        f"pw-{uuid.uuid4().hex[:16]}" for _ in range(alive_count - len(vless_users))
    ]
    tls_client = Tls(server_name="demo.configstream.test", insecure=True)
    alive = [Proxy("vless", LOOPBACK, vless_port, uuid=u) for u in vless_users]
    alive += [
        Proxy("trojan", LOOPBACK, trojan_port, password=p, tls=tls_client)
        for p in trojan_users
    ]
    refused = [
        Proxy("vless", LOOPBACK, closed, uuid=str(uuid.uuid4()))
        for _ in range(refused_count)
    ]
    holes = [
        Proxy("vless", LOOPBACK, black_hole, uuid=str(uuid.uuid4()))
        for _ in range(count - alive_count - refused_count)
    ]
    config = {
        "log": {"level": "error"},
        "inbounds": [
            {
                "type": "vless",
                "tag": "v",
                "listen": LOOPBACK,
                "listen_port": vless_port,
                "users": [{"uuid": u} for u in vless_users],
            },
            {
                "type": "trojan",
                "tag": "t",
                "listen": LOOPBACK,
                "listen_port": trojan_port,
                "users": [{"password": p} for p in trojan_users],
                "tls": {
                    "enabled": True,
                    "certificate_path": str(cert),
                    "key_path": str(key),
                },
            },
        ],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }
    return config, alive + refused + holes, set(alive)


def _score(found: set[Any], truth: set[Any]) -> tuple[float, float]:
    hits = len(found & truth)
    return (hits / len(found) if found else 1.0), (hits / len(truth) if truth else 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--with-batch", action="store_true")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, black_hole_listener() as hole:
        config, proxies, truth = _world(args.proxies, Path(tmp), hole)
        core = locate_core()
        with (
            CoreThread(core, config, [i["listen_port"] for i in config["inbounds"]]),
            serve_http(TraceHandler) as http_port,
        ):
            test_url = f"http://{LOOPBACK}:{http_port}/generate_204"
            settings = ProbeSettings(
                test_url=test_url,
                trace_url=None,
                timeout=args.timeout,
                concurrency=args.concurrency,
            )
            with _peak_memory() as peak:
                started = time.perf_counter()
                results = asyncio.run(ProxyTester(core, settings).test(proxies))
                seconds = time.perf_counter() - started
            found = {p for p, r in results.items() if r.status is Status.ALIVE}
            precision, recall = _score(found, truth)
            missed = Counter(results[p].reason for p in truth - found)
            if missed:
                print("alive proxies reported otherwise:", dict(missed.most_common(5)))
            blocked = args.proxies - len(truth) - int(args.proxies * 0.3)
            # Lower bound: start-up, then every black hole holds a slot for the
            # full timeout (twice the rounds for the alive ones are negligible).
            startup = 1.0
            bound = startup + max(
                args.timeout, blocked * args.timeout / args.concurrency
            )
            print(
                f"world: {args.proxies} proxies, {len(truth)} alive, "
                f"timeout {args.timeout:.0f} s, concurrency {args.concurrency}"
            )
            print(
                f"configstream: {seconds:.1f} s, peak {peak():.0f} MB, "
                f"precision {precision:.1%}, recall {recall:.1%}, "
                f"lower bound {bound:.1f} s, ratio {seconds / bound:.2f}"
            )
            if args.with_batch:
                _run_batch(proxies, truth, test_url, args.timeout)


def _run_batch(
    proxies: list[Proxy], truth: set[Proxy], test_url: str, timeout: float
) -> None:
    import signal

    saved = {
        s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    from singbox2proxy import SingBoxBatch, SingBoxCore

    for sig, handler in saved.items():
        signal.signal(sig, handler)
    links = [to_link(p, f"p{i}") for i, p in enumerate(proxies)]
    by_link = dict(zip(links, proxies, strict=True))
    try:
        with _peak_memory() as peak:
            started = time.perf_counter()
            with SingBoxBatch(
                links, core=SingBoxCore(str(locate_core().path))
            ) as batch:
                results = batch.check(test_url=test_url, timeout=timeout, workers=100)
            seconds = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - report whatever stops the other engine
        print(f"singbox2proxy batch: failed: {type(exc).__name__}: {exc}"[:300])
        return
    found = {by_link[r.url] for r in results if r.working and r.url in by_link}
    precision, recall = _score(found, truth)
    print(
        f"singbox2proxy batch: {seconds:.1f} s, peak {peak():.0f} MB, "
        f"precision {precision:.1%}, recall {recall:.1%}"
    )


if __name__ == "__main__":
    main()

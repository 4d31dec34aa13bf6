"""Publish the output folder to a git branch as one fresh commit.

The Pages branch holds only the latest set: each publish makes a root commit
of the output folder in a temporary repository and force-pushes it, so the
repository does not grow with every run. When the new tree equals the
branch's current tree nothing is pushed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from configstream.errors import ConfigStreamError

log = logging.getLogger(__name__)

AUTHOR = ("ConfigStream", "configstream@users.noreply.github.com")


class PublishError(ConfigStreamError):
    """The output could not be published."""


@dataclass(slots=True)
class PublishResult:
    """What a publish did: whether it pushed, and which files changed."""

    pushed: bool
    commit: str
    changed: list[str] = field(default_factory=list)
    first: bool = False


def _git(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    name, email = AUTHOR
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", name),
        "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", email),
        "GIT_COMMITTER_NAME": os.environ.get("GIT_COMMITTER_NAME", name),
        "GIT_COMMITTER_EMAIL": os.environ.get("GIT_COMMITTER_EMAIL", email),
        "GIT_TERMINAL_PROMPT": "0",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )
    if check and done.returncode != 0:
        # git's own message; remote URLs with tokens are not echoed by git.
        raise PublishError(f"git {args[0]} failed: {done.stderr.strip()[:500]}")
    return done


def remote_url(repository: Path, remote: str) -> str:
    """The URL (or path) of `remote` in `repository`, or `remote` itself when
    it is already a URL or a path."""
    if "/" in remote or ":" in remote:
        return remote
    done = _git("remote", "get-url", remote, cwd=repository, check=False)
    if done.returncode != 0:
        raise PublishError(f"no git remote named {remote!r} in {repository}")
    return done.stdout.strip()


def publish(
    output: Path,
    *,
    repository: Path = Path("."),
    remote: str = "origin",
    branch: str = "gh-pages",
    message: str = "Publish ConfigStream output",
    dry_run: bool = False,
) -> PublishResult:
    """Commit `output` as the only commit of `branch` and push it.

    Raises:
        PublishError: the output is missing or incomplete, or git failed.
    """
    if not (output / "manifest.json").is_file():
        raise PublishError(f"{output} holds no complete output set (no manifest.json)")
    url = remote_url(repository, remote)
    with tempfile.TemporaryDirectory(prefix="configstream-publish-") as temp:
        work = Path(temp) / "site"
        shutil.copytree(output, work, ignore=shutil.ignore_patterns(".staging-*"))
        # Pages would otherwise run Jekyll, which hides files starting with _.
        (work / ".nojekyll").touch()
        _git("init", "--quiet", "--initial-branch", branch, cwd=work)
        _git("add", "--all", cwd=work)
        _git("commit", "--quiet", "--message", message, cwd=work)
        commit = _git("rev-parse", "HEAD", cwd=work).stdout.strip()
        fetched = _git(
            "fetch",
            "--quiet",
            "--depth",
            "1",
            url,
            f"refs/heads/{branch}",
            cwd=work,
            check=False,
        )
        first = fetched.returncode != 0
        if first:
            changed = sorted(_git("ls-files", cwd=work).stdout.split())
        else:
            same = (
                _git("rev-parse", "FETCH_HEAD^{tree}", cwd=work).stdout
                == _git("rev-parse", "HEAD^{tree}", cwd=work).stdout
            )
            if same:
                old = _git("rev-parse", "FETCH_HEAD", cwd=work).stdout.strip()
                log.info("branch %s already holds this output; nothing pushed", branch)
                return PublishResult(pushed=False, commit=old)
            changed = _git(
                "diff", "--name-only", "FETCH_HEAD", "HEAD", cwd=work
            ).stdout.split()
        if dry_run:
            return PublishResult(
                pushed=False, commit=commit, changed=changed, first=first
            )
        _git("push", "--quiet", "--force", url, f"HEAD:refs/heads/{branch}", cwd=work)
    return PublishResult(pushed=True, commit=commit, changed=changed, first=first)

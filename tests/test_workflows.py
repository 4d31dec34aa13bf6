"""The GitHub Actions workflows: linted, and checked for what they promise."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = Path(__file__).parents[1] / ".github" / "workflows"
PIPELINE = WORKFLOWS / "pipeline.yml"
PINNED = re.compile(r"^actions/[\w.-]+(/[\w.-]+)*@[0-9a-f]{40}$")


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def _load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def test_actionlint_finds_nothing() -> None:
    done = subprocess.run(
        [_tool("actionlint"), *map(str, sorted(WORKFLOWS.glob("*.yml")))],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_finds_nothing() -> None:
    """Workflows and the local setup action; the two ignores are explained inline."""
    done = subprocess.run(
        [_tool("zizmor"), "--offline", str(WORKFLOWS.parent)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout + done.stderr


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_hygiene(path: Path) -> None:
    """Read-only by default, time limits everywhere, actions pinned to a commit."""
    workflow = _load(path)
    assert workflow["permissions"] == {"contents": "read"}
    assert "pull_request_target" not in workflow["on"]
    assert "concurrency" in workflow
    for name, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 120, name
        for step in job.get("steps", []):
            if "uses" in step and not step["uses"].startswith("./"):
                assert PINNED.match(step["uses"]), step["uses"]


def test_pipeline_schedule_inputs_and_jobs() -> None:
    workflow = _load(PIPELINE)
    assert workflow["on"]["schedule"] == [{"cron": "17 */4 * * *"}]
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert {"fresh", "timeout", "shards", "publish"} <= set(inputs)
    jobs = workflow["jobs"]
    writers = {
        name: job["permissions"] for name, job in jobs.items() if "permissions" in job
    }
    # Only publishing writes contents; only the keep-alive touches workflows.
    assert writers == {
        "publish": {"contents": "write"},
        "keepalive": {"actions": "write"},
    }
    # One job, or a matrix of shards and a merge; publish follows either.
    assert jobs["shard"]["strategy"]["matrix"]["shard"].startswith("${{ fromJSON(")
    assert jobs["merge"]["needs"] == "shard"
    assert jobs["publish"]["needs"] == ["run", "merge"]


def _steps(job: str) -> dict[str, Any]:
    steps = _load(PIPELINE)["jobs"][job]["steps"]
    return {step.get("name", step.get("uses")): step for step in steps}


@pytest.mark.parametrize("job", ["run", "merge"])
def test_jobs_that_write_lists_carry_the_cache_and_report(job: str) -> None:
    steps = _steps(job)
    restore, save = steps["Restore cache"], steps["Save cache"]
    assert restore["with"]["path"] == save["with"]["path"] == "cache/"
    assert restore["with"]["key"] == save["with"]["key"]
    assert restore["with"]["restore-keys"] == "configstream-cache-"
    assert "github.run_id" in save["with"]["key"]  # keys are never overwritten
    assert save["if"] == "always()" and steps["Write run summary"]["if"] == "always()"


def test_shards_only_read_the_cache() -> None:
    steps = _steps("shard")
    assert "Restore cache" in steps and "Save cache" not in steps
    assert '--shard "$SHARD/$SHARDS"' in steps["Test this shard"]["run"]


def test_setup_action_verifies_the_core_and_falls_back() -> None:
    action = yaml.safe_load(
        (WORKFLOWS.parent / "actions" / "setup" / "action.yml").read_text()
    )
    steps = {
        step.get("name", step.get("uses")): step for step in action["runs"]["steps"]
    }
    core = steps["Install the official sing-box"]["run"]
    assert "sha256sum --check" in core and "bundled core" in core
    assert "embedded database" in steps["Download a current GeoIP database"]["run"]
    for step in _steps("run").values():
        # Inputs reach scripts through env, never pasted into them.
        assert "${{" not in step.get("run", "")

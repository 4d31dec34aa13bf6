"""Share-link and subscription cases (shared real-world ones and our own) checked by `check_case`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.casecheck import check_case

SHARED_CASES = Path(__file__).resolve().parents[2] / "shared" / "cases" / "links.json"
OWN_CASES = sorted((Path(__file__).parent / "data" / "links").glob("*.json"))


def _load() -> list[Any]:
    cases = []
    for path in [SHARED_CASES, *OWN_CASES]:
        for case in json.loads(path.read_text(encoding="utf-8")):
            marks = (
                [pytest.mark.xfail(strict=True, reason=case["xfail"])]
                if "xfail" in case
                else []
            )
            cases.append(pytest.param(case, id=case["id"], marks=marks))
    ids = [param.id for param in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique across all files"
    return cases


@pytest.mark.parametrize("case", _load())
def test_link_case(case: dict[str, Any]) -> None:
    """The parser, sing-box converter and link/Clash exporters meet the case's expectations."""
    check_case(case)

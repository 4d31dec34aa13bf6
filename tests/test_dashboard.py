"""The published index.html in a real Chromium, served from 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect

from tests.browser import chromium, served

SCREENSHOT_COPY = Path("/tmp/dashboard.png")
COUNTRY = "JP"


@pytest.fixture(scope="module")
def output(demo_run: Path) -> Path:
    """The output folder of a tested run over the demo world."""
    return demo_run / "out"


@pytest.fixture(scope="module")
def site(output: Path) -> Iterator[str]:
    """The output folder served on 127.0.0.1; yields its base URL."""
    with served(output) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@dataclass
class Visit:
    """An open page and what went wrong on it so far."""

    page: Page
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


@pytest.fixture
def visit(browser: Browser, site: str) -> Iterator[Visit]:
    """index.html loaded in a fresh context that may reach the test site only."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=site.rstrip("/")
    )
    page = context.new_page()
    seen = Visit(page)

    def guard(route: Route) -> None:
        if route.request.url.startswith(site):
            route.continue_()
        else:
            seen.blocked.append(route.request.url)
            route.abort()

    def on_console(message: ConsoleMessage) -> None:
        # Chromium asks for /favicon.ico by itself; the output set has none,
        # and that 404 says nothing about the page.
        if message.type == "error" and not message.location.get("url", "").endswith(
            "/favicon.ico"
        ):
            where = message.location
            seen.errors.append(
                f"{message.text} ({where.get('url')}:{where.get('lineNumber')})"
            )

    context.route("**/*", guard)
    page.on("console", on_console)
    page.on("pageerror", lambda error: seen.errors.append(f"uncaught: {error}"))
    page.goto(site + "index.html", wait_until="load")
    try:
        yield seen
    finally:
        context.close()


def _proxies(output: Path) -> list[dict[str, Any]]:
    return json.loads((output / "proxies.json").read_text(encoding="utf-8"))


def _visible_rows(page: Page) -> list[list[str]]:
    """The cells' text of each proxy row currently shown."""
    return page.eval_on_selector_all(
        "#proxies tbody tr[data-search]",
        "rows => rows.filter(r => !r.hidden && r.offsetParent !== null)"
        ".map(r => Array.from(r.cells, c => c.innerText.trim()))",
    )


def test_alive_count_matches_stats(visit: Visit, output: Path) -> None:
    stats = json.loads((output / "stats.json").read_text())
    shown = visit.page.locator("#alive-count").inner_text().strip()
    assert stats["test"]["alive"] > 0
    assert shown == str(stats["test"]["alive"])


def test_table_has_one_row_per_proxy(visit: Visit, output: Path) -> None:
    """Every proxy of proxies.json is a row of its own, in the same order."""
    rows = _visible_rows(visit.page)
    assert [row[0] for row in rows] == [p["name"] for p in _proxies(output)]


def test_country_filter_shows_only_that_country(visit: Visit, output: Path) -> None:
    """Typing a country code hides every other country's rows; clearing shows all."""
    proxies = _proxies(output)
    expected = [p["name"] for p in proxies if p["country"] == COUNTRY]
    assert expected and len(expected) < len(proxies)

    visit.page.locator("#filter").press_sequentially(COUNTRY)
    rows = _visible_rows(visit.page)
    assert [row[0] for row in rows] == expected
    assert {row[1] for row in rows} == {COUNTRY}

    visit.page.locator("#filter").fill("")
    assert len(_visible_rows(visit.page)) == len(proxies)


def test_copy_button_copies_the_link(visit: Visit, output: Path) -> None:
    first = _proxies(output)[0]
    button = visit.page.locator("#proxies tbody tr").first.get_by_role("button")
    button.click()
    # The label changes once the clipboard has taken the link (a promise).
    expect(button).to_have_text("Copied")
    assert visit.page.evaluate("navigator.clipboard.readText()") == first["link"]


def test_page_has_no_console_errors(visit: Visit) -> None:
    """Loading, filtering and copying log no error and fetch nothing off-site."""
    page = visit.page
    page.locator("#filter").press_sequentially(COUNTRY)
    page.locator("#filter").fill("")
    page.locator("#proxies tbody tr").first.get_by_role("button").click()
    page.wait_for_load_state("networkidle")
    assert visit.errors == []
    assert visit.blocked == []


def test_full_page_screenshot(visit: Visit, tmp_path: Path) -> None:
    """A full-page screenshot is written (and copied to /tmp for a human look)."""
    shot = tmp_path / "dashboard.png"
    visit.page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)


def test_protocol_select_and_latency_limit_filter_rows(
    visit: Visit, output: Path
) -> None:
    proxies = _proxies(output)
    protocol = proxies[-1]["protocol"]
    visit.page.select_option("#protocol", protocol)
    rows = _visible_rows(visit.page)
    assert [row[0] for row in rows] == [
        p["name"] for p in proxies if p["protocol"] == protocol
    ]
    visit.page.select_option("#protocol", "")
    limit = sorted(p["latency_ms"] for p in proxies)[len(proxies) // 2]
    visit.page.locator("#latency").fill(str(round(limit)))
    shown = {row[0] for row in _visible_rows(visit.page)}
    assert shown == {
        p["name"] for p in proxies if round(p["latency_ms"]) <= round(limit)
    }
    assert "of" in visit.page.locator("#shown").inner_text()


def test_sorting_by_a_column_reorders_rows(visit: Visit, output: Path) -> None:
    proxies = _proxies(output)
    header = visit.page.locator('th[data-key="country"] button')
    header.click()
    ascending = [row[1] for row in _visible_rows(visit.page)]
    assert ascending == sorted(p["country"] for p in proxies)
    header.click()
    assert [row[1] for row in _visible_rows(visit.page)] == ascending[::-1]
    assert (
        visit.page.locator('th[data-key="country"]').get_attribute("aria-sort")
        == "descending"
    )


def test_subscriptions_have_copy_buttons_and_qr_codes(
    visit: Visit, output: Path
) -> None:
    """Each main subscription: a copy button for its URL and a QR code of it."""
    buttons = visit.page.locator("button[data-file]")
    assert buttons.count() >= 4
    first = buttons.first
    first.click()
    copied = visit.page.evaluate("navigator.clipboard.readText()")
    assert copied.endswith("/" + first.get_attribute("data-file"))
    images = visit.page.locator(".sub details img")
    assert images.count() == buttons.count()
    for index in range(images.count()):
        path = output / images.nth(index).get_attribute("src")
        assert path.read_bytes().lstrip().startswith(b"<svg")
    visit.page.locator(".sub details summary").first.click()
    # The image loads once its box opens; on a busy machine that takes a
    # moment, so wait for it (a broken image never gets a width).
    visit.page.wait_for_function(
        "() => { const img = document.querySelector('.sub details img');"
        " return img.complete && img.naturalWidth > 0; }",
        timeout=10_000,
    )


def test_charts_load_in_both_colour_schemes(visit: Visit, output: Path) -> None:
    charts = visit.page.locator(".charts img")
    assert charts.count() >= 4
    for index in range(charts.count()):
        src = charts.nth(index).get_attribute("src")
        assert (output / src).is_file()
        assert (output / src.replace("-light.svg", "-dark.svg")).is_file()
        assert charts.nth(index).evaluate("img => img.complete && img.naturalWidth > 0")


def test_sources_table_lists_every_source(visit: Visit, output: Path) -> None:
    stats = json.loads((output / "stats.json").read_text())
    names = visit.page.eval_on_selector_all(
        "#sources tbody tr", "rows => rows.map(r => r.cells[0].innerText.trim())"
    )
    assert sorted(names) == sorted(row["name"] for row in stats["sources"])


def test_phone_width_has_no_sideways_scroll(browser: Browser, site: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.goto(site + "index.html", wait_until="load")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
    finally:
        context.close()

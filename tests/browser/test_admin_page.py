"""The storage economics page at /admin/ in chromium: its charts and tables hold what GET {root}/stats (and
the lifecycle endpoints, when they answer) give, and with access control on it asks for a bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_support import PageLog, Studies, screenshot
from conftest import ct_series_files
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_DATA, Server, new_uids, stow, wait_for_masters
from tests.test_cli import run

LOADED = "body[data-loaded=true]"


def modality_name(modality: str) -> str:
    return modality or "(none)"


def cells(page: Any, selector: str) -> list[dict[str, str | None]]:
    """Each row of a table as {column: data-value}."""
    return page.eval_on_selector_all(
        f"{selector} tr",
        "rows => rows.map(r => Object.fromEntries([...r.querySelectorAll('td')]"
        ".map(td => [td.dataset.column, td.dataset.value ?? null])))",
    )


def expected_console(log: Any) -> list[str]:
    """Chromium logs each request answered 4xx as a console error: allowed only for the lifecycle
    endpoints, which a server without the lifecycle piece answers 404 (the page then says there are none)."""
    lifecycle = [r for r in log.bad_responses() if "/lifecycle" in r[0] and r[1] == 404]
    assert log.bad_responses() == lifecycle, log.summary()
    return ["Failed to load resource: the server responded with a status of 404 (Not Found)"] * len(lifecycle)


def test_admin_page_shows_the_stats(
    open_page: Any, browser_server: Server, studies: Studies, shots: Path
) -> None:
    page, log = open_page(1280, 900)
    page.goto(f"{browser_server.base}/admin/")
    page.wait_for_selector(LOADED, timeout=30_000)
    stats = httpx.get(f"{browser_server.root}/stats", timeout=30).json()
    modalities = [modality_name(row["modality"]) for row in stats["by_modality"]]
    # The browser tests' studies: CT (two), a report (SR), a JPEG original (OT), one without Modality.
    assert {"CT", "SR", "OT", "(none)"} <= set(modalities), modalities

    # Grouped bars: as received, stored now and uncompressed for each modality, with the API's numbers.
    bars = page.eval_on_selector_all(
        "#modality-chart rect.bar",
        "bars => bars.map(b => [b.dataset.category, b.dataset.series, Number(b.dataset.value)])",
    )
    assert len(bars) == 3 * len(modalities)
    assert sorted({b[0] for b in bars}) == sorted(modalities)
    expected_bars = {
        (modality_name(row["modality"]), key, row[key])
        for row in stats["by_modality"]
        for key in ("received_bytes", "stored_bytes", "uncompressed_bytes")
    }
    assert {tuple(b) for b in bars} == expected_bars
    assert page.locator("#modality-chart svg[role=img] title").first.text_content() == (
        "Bytes as received, stored now and uncompressed, per modality"
    )

    # The text tables hold the same numbers (data-value is what the API gave).
    rows = cells(page, "#modality-table tbody")
    assert [r["Modality"] for r in rows] == [row["modality"] for row in stats["by_modality"]]
    for shown, row in zip(rows, stats["by_modality"], strict=True):
        assert int(shown["As received"]) == row["received_bytes"]
        assert int(shown["Stored now"]) == row["stored_bytes"]
        assert int(shown["Uncompressed"]) == row["uncompressed_bytes"]
        assert int(shown["Studies"]) == row["studies"] and int(shown["Instances"]) == row["instances"]
    [total] = cells(page, "#modality-table tfoot")
    assert int(total["Stored now"]) == stats["totals"]["stored_bytes"]

    # Growth over time: two lines with a point per month; the table's last cumulative figures are the totals.
    assert page.locator("#growth-chart polyline").count() == 2
    assert page.locator("#growth-chart circle").count() == 2 * len(stats["by_month"])
    months = cells(page, "#growth-table tbody")
    assert [m["Month"] for m in months] == [row["month"] for row in stats["by_month"]]
    assert int(months[-1]["Cumulative as received"]) == stats["totals"]["received_bytes"]
    assert int(months[-1]["Cumulative stored"]) == stats["totals"]["stored_bytes"]

    # Tiers, money, projection, caches.
    tiers = {r["Tier"]: int(r["Stored"]) for r in cells(page, "#tier-table tbody")}
    assert tiers == {"hot": stats["totals"]["hot_bytes"], "cold": stats["totals"]["cold_bytes"]}
    money = [float(r["Per month"]) for r in cells(page, "#money-table tbody")]
    m = stats["money"]
    assert money == [
        m["per_month_as_received"],
        m["per_month_as_stored"],
        m["per_month_uncompressed"],
        m["saving_per_month"],
    ]
    years = cells(page, "#projection-table tbody")
    assert [float(y["Cumulative saving"]) for y in years] == [
        y["cumulative_saving"] for y in stats["projection"]
    ]
    assert page.locator("#projection-chart rect.bar").count() == 2 * len(stats["projection"])
    assert int(cells(page, "#cache-table tfoot")[0]["Disk"]) == stats["caches"]["bytes"]

    # Lifecycle rules and QA: their tables when those endpoints answer with entries, else the empty state.
    lifecycle = httpx.get(f"{browser_server.root}/lifecycle", timeout=30)
    rules = lifecycle.json().get("rules", []) if lifecycle.status_code == 200 else []
    if rules:
        assert len(cells(page, "#rules-table tbody")) == len(rules)
        assert page.locator("#rules-chart rect.bar").count() == 2 * len(rules)
    else:
        assert "No lifecycle rules" in page.locator("#rules-table .empty").text_content()
    qa = httpx.get(f"{browser_server.root}/lifecycle/qa", params={"limit": 20}, timeout=30)
    derived = qa.json().get("studies", []) if qa.status_code == 200 else []
    if derived:
        assert len(cells(page, "#qa-table tbody")) == len(derived)
    else:
        assert "No lossy derivations yet" in page.locator("#qa-table .empty").text_content()

    # Numbers for people: units, ratios, currency.
    cards = page.locator("#cards").text_content()
    assert " kB" in cards or " MB" in cards
    assert "$" in cards and ": 1" in cards
    assert page.locator("#token-form").is_hidden() and page.locator("#message").is_hidden()
    assert log.console == expected_console(log), log.summary()
    assert not log.failed, log.summary()
    screenshot(page, shots, "admin.png")


# ---- with access control on ------------------------------------------------------------------------------


def make_key(data: Path, name: str, scopes: str) -> str:
    done = run("apikey", "create", name, "--scopes", scopes, "--data", str(data), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    data = tmp_path_factory.mktemp("admin-keys") / "data"
    keys = {"reader": make_key(data, "reader", "read"), "admin": make_key(data, "admin", "admin")}
    srv = Server(data)
    yield srv, keys
    srv.stop()


def test_admin_page_asks_for_a_token(chromium: Any, keyed: tuple[Server, dict[str, str]]) -> None:
    srv, keys = keyed
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    sent: list[str | None] = []
    page.on(
        "request", lambda r: sent.append(r.headers.get("authorization")) if r.url.endswith("/stats") else None
    )
    try:
        page.goto(f"{srv.base}/admin/")
        message = page.locator("#message")
        message.wait_for(state="visible")
        assert "needs a bearer token with the admin scope" in message.text_content()
        assert page.locator("#main").is_hidden()

        page.fill("#token", keys["reader"])
        page.click("#token-form button[type=submit]")
        page.wait_for_function(
            "document.querySelector('#message').textContent.includes('lacks the admin scope')"
        )

        page.fill("#token", keys["admin"])
        page.click("#token-form button[type=submit]")
        page.wait_for_selector(LOADED, timeout=30_000)
        assert message.is_hidden() and page.locator("#main").is_visible()
        assert sent[-1] == f"Bearer {keys['admin']}"
        # Kept for the tab: a reload needs no new paste.
        page.reload()
        page.wait_for_selector(LOADED, timeout=30_000)
        assert page.evaluate("sessionStorage.getItem('dicomweb-admin-token')") == keys["admin"]
        # Forgotten on request: the server asks again.
        page.click("#forget")
        page.wait_for_function(
            "document.querySelector('#message').textContent.includes('needs a bearer token')"
        )
        assert not errors, errors
    finally:
        context.close()


# ---- with a lifecycle policy and lossy derivations -------------------------------------------------------

SERVER_POLICY = """
[[rule]]
name = "CT, 10:1, error 120"
modality = ["CT"]
action = "lossy"
max_ratio = 10
max_error = 120

[[rule]]
name = "MR, 60 dB"
modality = ["MR"]
action = "lossy"
min_psnr_db = 60
max_error = 200
"""


@pytest.fixture(scope="module")
def with_policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose policy would derive its CT slices, after the MR rule alone was applied by the CLI: the
    page has both what a rule would save and the QA of what one did."""
    root = tmp_path_factory.mktemp("admin-lifecycle")
    policy, mr_only = root / "policy.toml", root / "mr.toml"
    policy.write_text(SERVER_POLICY)
    mr_only.write_text(SERVER_POLICY.split("[[rule]]")[0] + "[[rule]]" + SERVER_POLICY.split("[[rule]]")[2])
    srv = Server(root / "data", {"DICOMWEB_LIFECYCLE": str(policy)})
    with httpx.Client(base_url=srv.root, timeout=120) as client:
        assert stow(client, ct_series_files(generate_uid(), generate_uid())).status_code == 200
        mr = new_uids((PYDICOM_DATA / "MR2_UNCR.dcm").read_bytes(), study=generate_uid())
        assert stow(client, [mr]).status_code == 200
        wait_for_masters(client)
    command = ["lifecycle", "--apply", "--quiet", "--data", str(srv.data_dir), "--policy", str(mr_only)]
    done = run(*command)
    assert done.returncode == 0, done.stderr
    yield srv
    srv.stop()


def test_admin_page_shows_lifecycle_savings_and_qa(chromium: Any, with_policy: Server, shots: Path) -> None:
    srv = with_policy
    rules = httpx.get(f"{srv.root}/lifecycle", timeout=60).json()["rules"]
    qa = httpx.get(f"{srv.root}/lifecycle/qa", params={"limit": 20}, timeout=60).json()["studies"]
    ct, mr = rules
    assert ct["instances"] > 0 and ct["bytes_after"] < ct["bytes_now"]  # what the CT rule would save
    assert mr["instances"] == 0 and len(qa) == 1  # the MR rule was applied: nothing left, one QA entry

    context = chromium.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    log = PageLog(srv.root)
    page.on("console", lambda m: log.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log.console.append(str(e)))
    try:
        page.goto(f"{srv.base}/admin/")
        page.wait_for_selector(LOADED, timeout=30_000)
        shown = cells(page, "#rules-table tbody")
        assert len(shown) == len(rules) and page.locator("#rules-chart rect.bar").count() == 2 * len(rules)
        assert all(str(rule["name"]) in page.locator("#rules-table").text_content() for rule in rules)
        [row] = cells(page, "#qa-table tbody")
        assert row and qa[0]["study"] in page.locator("#qa-table").text_content()
        assert not log.console, log.console
        section = page.locator("#rules-chart").locator("xpath=ancestor::section[1]")
        section.scroll_into_view_if_needed()
        screenshot(page, shots, "admin-lifecycle.png")
    finally:
        context.close()

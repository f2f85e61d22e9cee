"""The dashboard as a person sees it, in Debian's headless Chromium driven by Playwright,
against nodes running on the real RabbitMQ: the login, the links and their state, queue depths,
the quarantine with its reasons and the recent flow per network; never case content. A
screenshot of the dashboard is saved under the test's tmp folder."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright

from mlanet.broker import SigningKey
from mlanet.nodes.cli.contact import submit
from mlanet.nodes.local.federation import Federation
from mlanet.nodes.operator.server import COOKIE
from tests.integration.kit import (
    config,
    credentials,
    eventually,
    facilitation,
    inject,
    outbox_state,
    running,
)
from tests.integration.test_operator import operator_url, request, tune

CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests may run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh (apt-get install chromium)")
    return path


async def _text(page: Page, selector: str) -> str:
    return await page.locator(selector).inner_text()


@pytest.mark.timeout(240)
async def test_an_operator_logs_in_and_sees_links_queues_quarantine_and_flow(
    fed: Federation, tmp_path: Path
) -> None:
    tune(fed, "seajust", "poll_seconds = 0.5\n")
    secret = (fed.root / "operator.secret").read_text(encoding="ascii").strip()
    canary = f"CANARY-{uuid.uuid4().hex}"
    async with running(fed, "seajust", "casc") as nodes:
        journey = request("kh-cp-1", "UZ", summary=canary)
        await submit(config(fed, "seajust"), credentials(fed, journey.sender), journey)
        impostor = SigningKey.from_seed("casc", "ed25519:1", os.urandom(32))  # not CASC's key
        forged = facilitation(fed, "casc", "uz-cp-1", "KH", summary=canary, signer=impostor)
        await inject(fed, "seajust", "casc", forged.to_bytes())
        await inject(fed, "seajust", "casc", b"{not json at all")

        async def delivered() -> bool:
            return outbox_state(fed, "seajust", journey.message_id) == "delivered"

        await eventually(delivered, within=60)
        url = operator_url(nodes.nodes["seajust"])
        async with async_playwright() as playwright:
            context: BrowserContext = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # Chromium's --user-data-dir
                executable_path=chromium(),
                headless=True,
                args=CHROMIUM_FLAGS,
            )
            try:
                page = await context.new_page()
                await page.goto(url)
                assert page.url == url + "login"  # the dashboard needs a login
                await page.fill("#password", "not the password")
                await page.click("button[type=submit]")
                assert "Wrong password." in await _text(page, "[role=alert]")

                await page.fill("#password", secret)
                await page.click("button[type=submit]")
                await page.wait_for_url(url)
                assert await _text(page, "h1") == "mlanet · seajust node"
                cookie = next(c for c in await context.cookies() if c["name"] == COOKIE)
                assert cookie["httpOnly"] is True
                assert cookie["sameSite"] == "Strict"

                async def shows_everything() -> bool:
                    await page.reload()
                    quarantine = await _text(page, "#quarantine")
                    flow = await _text(page, "#flow")
                    return "2 messages waiting" in quarantine and "received" in flow

                await eventually(shows_everything, within=30, every=1.0)
                links = await _text(page, "#links")
                assert any(line.split("\t")[:2] == ["casc", "up"] for line in links.splitlines()), (
                    links
                )
                assert "seajust — casc" in links
                queues = await _text(page, "#queues")
                assert "mlanet.inbox" in queues
                assert "mlanet.out.casc" in queues
                quarantine = await _text(page, "#quarantine")
                assert "2 messages waiting" in quarantine
                assert "invalid_json" in quarantine
                assert "bad_signature" in quarantine
                flow = await _text(page, "#flow")
                assert "casc" in flow
                assert "forwarded" in flow
                assert "receipt" in flow
                assert journey.message_id[:8] in flow
                alerts = await _text(page, "#alerts")
                assert "quarantine_depth 2 refused messages wait in the quarantine" in alerts
                others = [
                    line
                    for line in alerts.splitlines()[1:]
                    if "quarantine_depth" not in line
                    and "unodc" not in line
                    and not (
                        os.environ.get("MLANET_TEST_STORE") == "postgresql"
                        and "database_shared" in line
                    )
                ]  # the coordinator's node is not running in this test; with PostgreSQL the
                # local federation's networks share one database on purpose (development)
                assert others == [], alerts
                html = await page.content()
                assert canary not in html  # metadata only, never case content
                screenshot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(screenshot), full_page=True)
                assert screenshot.stat().st_size > 10_000

                await page.click("header button[type=submit]")  # log out
                await page.wait_for_url(url + "login")
                await page.goto(url)
                assert page.url == url + "login"
            finally:
                await context.close()

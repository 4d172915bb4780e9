"""The gallery page (animenb/server/static/) in a real headless Chromium, driven by Playwright.

A real server with the tiny profile finishes one phase-1 run (64x64, 2 steps); the page must
show its sheet (a decoded <img>), its prompt as text (the prompt carries markup), the tiny
label, the quality badge and a working notebook link. Then a slow test notebook runs and the
running card's progress bar must move, fed by the job WebSocket. Screenshots land in tmp_path.

Chromium is Debian's (`apt-get install -y chromium`); the test skips without it, except under
CI=true where a missing browser is a failure. ANIMENB_CHROMIUM overrides the path.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import pytest_asyncio

from serverkit import submit, wait_status

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE_PROMPT = 'anime girl <img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & "quotes"'


def chromium_path() -> str:
    path = os.environ.get("ANIMENB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path and Path(path).is_file():
        return path
    reason = "chromium is not installed (Debian: apt-get install -y chromium); the gallery browser test needs it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("gallery"), models="tiny") as server:
        yield server




# -- the page over plain HTTP (no browser needed) -----------------------------------------------
async def test_page_and_assets_are_served(srv):
    for path in ("/", "/gallery", "/gallery/"):
        code, body, headers = await srv.request("GET", path)
        assert code == 200 and headers["Content-Type"].startswith("text/html"), path
        assert b'<script src="/static/app.js"' in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
    code, body, headers = await srv.request("GET", "/static/app.js")
    assert code == 200 and "javascript" in headers["Content-Type"] and b"innerHTML" not in body.replace(
        b"Never innerHTML", b"")
    code, _, headers = await srv.request("GET", "/static/style.css")
    assert code == 200 and headers["Content-Type"].startswith("text/css")
    code, _, _ = await srv.request("GET", "/static/../pages.py")
    assert code in (403, 404)
    code, _, _ = await srv.request("GET", "/static/nope.js")
    assert code == 404
    code, body, _ = await srv.request("GET", "/api/anime/nope")  # the API's JSON 404 is untouched
    assert code == 404 and body["error"]["code"] == "not_found"


# -- the page in Chromium -------------------------------------------------------------------------
async def test_gallery_in_chromium(srv, tmp_path):
    executable = chromium_path()
    from playwright.async_api import async_playwright

    finished = await submit(srv, prompt=HOSTILE_PROMPT, phase=1, seed=5)
    status = await wait_status(srv, finished["job_id"])
    assert status["status"] == "succeeded", status["error"]

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
            await page.goto(srv.base + "/", wait_until="domcontentloaded")

            # 1. the finished run: a decoded image, the prompt as text, badges, links
            card = page.locator(f'.card.finished[data-job="{finished["job_id"]}"]')
            await card.wait_for(timeout=20_000)
            await page.wait_for_function(
                "id => { const img = document.querySelector(`.card.finished[data-job='${id}'] .media img`);"
                " return img && img.complete && img.naturalWidth > 0; }", arg=finished["job_id"], timeout=20_000)
            assert await card.locator(".prompt").text_content() == HOSTILE_PROMPT
            assert await card.locator("script").count() == 0 and await card.locator(".prompt img").count() == 0
            await card.locator(".badge.tiny").wait_for(timeout=10_000)
            assert await card.locator(".badge.tiny").text_content() == "tiny (random weights)"
            assert await card.locator(".badge.phase").text_content() == "1 · CHARACTER_SHEET"
            assert await card.locator(".badge.gate").count() == 1
            assert (await card.locator(".badge.score").text_content()).startswith("quality 0.")
            assert "seed 5" in await card.locator(".meta").first.text_content()
            notebook = await card.get_by_text("executed notebook").get_attribute("href")
            assert notebook == f"/api/anime/outputs/{finished['job_id']}/notebook.ipynb"
            resp = await page.request.get(srv.base + notebook)
            assert resp.ok and "cells" in await resp.json()
            await page.screenshot(path=str(tmp_path / "gallery-finished.png"), full_page=True)

            # 1b. a reviewer's verdict from the card's buttons (the token is kept for the tab)
            token = srv.service.tokens.create("reviewer", "user")[1]
            await page.evaluate("t => sessionStorage.setItem('animenb-token', t)", token)
            await card.locator(".review-bad").click()
            await card.locator('.review[data-verdict="bad"]').wait_for(timeout=10_000)
            from animenb.server.reviews import review_store
            assert [(r["reviewer"], r["verdict"]) for r in review_store(srv.service).list(finished["job_id"])] == [
                ("reviewer", "bad")]

            # 2. filter by phase
            await page.click('#filters button[data-phase="2"]')
            assert await card.is_hidden()
            await page.click('#filters button[data-phase=""]')
            assert await card.is_visible()

            # 3. a running job: the card's progress bar moves (WebSocket events)
            running = await submit(srv, prompt="test:progress 0.1", steps=40, seed=9)
            bar = page.locator(f'.card.running[data-job="{running["job_id"]}"] progress')
            await bar.wait_for(timeout=15_000)
            await page.wait_for_function(
                "id => { const b = document.querySelector(`.card.running[data-job='${id}'] progress`);"
                " return b && b.value > 0 && b.value < 100; }", arg=running["job_id"], timeout=15_000)
            first = float(await bar.evaluate("b => b.value"))
            await page.wait_for_function(
                "([id, v]) => { const b = document.querySelector(`.card.running[data-job='${id}'] progress`);"
                " return b && b.value > v; }", arg=[running["job_id"], first], timeout=15_000)
            second = float(await bar.evaluate("b => b.value"))
            assert second > first
            text = await page.locator(f'.card.running[data-job="{running["job_id"]}"] .progress-text').text_content()
            assert "step" in text and "/40" in text
            shot = tmp_path / "gallery-running.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000

            # 4. when it finishes, the running card turns into a gallery card
            await page.locator(f'.card.finished[data-job="{running["job_id"]}"]').wait_for(timeout=30_000)
            await page.locator(f'.card.running[data-job="{running["job_id"]}"]').wait_for(state="detached",
                                                                                          timeout=10_000)
            assert await page.evaluate("window.__pwned") is None
            assert errors == []
        finally:
            await browser.close()

"""Regenerate the README screenshots (notebooks/screenshots/gallery.png, explorer.png), offline, tiny profile.

    .venv/bin/python notebooks/screenshots/make_screenshots.py   # needs Debian's chromium (apt-get install -y chromium)
                                                                 # and, for explorer.png, `make lab-setup`

gallery.png: a real server (animenb.server) runs phase 1 -> 2 -> 3 through the phase notebooks;
then a longer phase-1 job starts and headless Chromium captures the page while it runs.

explorer.png: a real JupyterLab (.venv-lab) runs notebooks/00_explore.ipynb in Chromium; the
capture is taken after clicking the panel's Generate button, once the progress bar is at 100%
and the image is shown (the same session tests/test_jupyterlab.py checks).

The tiny profile has random weights: every image is noise, and the captures say so.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parent
ROOT = SCREENSHOTS.parents[1]
CHROMIUM = os.environ.get("ANIMENB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "anime girl with blue hair, school uniform"
SIZE = 128
MAX_BYTES = 200_000


def shrink(png: bytes, target: Path) -> None:
    """Palette PNG (noise images compress badly as RGB); fewer colours until it fits MAX_BYTES."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    for colors in (256, 128, 64, 32):
        buf = io.BytesIO()
        image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
        if buf.tell() <= MAX_BYTES:
            break
    target.write_bytes(buf.getvalue())
    print(f"wrote {target} ({buf.tell() // 1024} KiB, {image.size[0]}x{image.size[1]})")


# -- gallery -------------------------------------------------------------------------------------
async def gallery(tmp: Path) -> None:
    from playwright.async_api import async_playwright
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    from animenb.server.app import AnimeService, ServerConfig, make_app

    service = AnimeService(ServerConfig(home=tmp / "home", outputs=tmp / "outputs", models="tiny"))
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(service))
    server.add_sockets([sock])
    await service.start()
    await service.runner.wait_ready(120)
    base, client = f"http://127.0.0.1:{port}", AsyncHTTPClient()

    async def submit(**body) -> str:
        body = {"prompt": PROMPT, "width": SIZE, "height": SIZE, "steps": 8, "seed": 42, **body}
        resp = await client.fetch(base + "/api/anime/generate", method="POST", body=json.dumps(body),
                                  headers={"Content-Type": "application/json"})
        return json.loads(resp.body)["job_id"]

    async def done(job_id: str) -> dict:
        while True:
            resp = await client.fetch(f"{base}/api/anime/generation/{job_id}/status")
            status = json.loads(resp.body)
            if status["status"] not in ("queued", "running"):
                assert status["status"] == "succeeded", status
                return status
            await asyncio.sleep(0.2)

    try:
        sheet = await submit(phase=1)
        await done(sheet)
        loop = await submit(phase=2, reference_image=sheet, frames=8)
        await done(loop)
        await done(await submit(phase=3, image=loop, frames=8))
        await done(await submit(phase=1, prompt="boy with a red scarf, three-quarter view", seed=7))
        running = await submit(phase=1, prompt="girl with a katana, night city", steps=60, seed=3)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = await browser.new_page(viewport={"width": 1180, "height": 880})
            await page.goto(base + "/")
            await page.wait_for_function(
                "id => { const c = document.querySelector(`.card.running[data-job='${id}']`);"
                " return c && c.querySelector('progress').value > 30 && !c.querySelector('.preview').hidden; }",
                arg=running, timeout=120_000)
            await page.wait_for_function("[...document.querySelectorAll('.card.finished img')]"
                                         ".every(i => i.complete && i.naturalWidth > 0)")
            shrink(await page.screenshot(full_page=False), SCREENSHOTS / "gallery.png")
            await browser.close()
        await done(running)
    finally:
        server.stop()
        await service.stop()


# -- explorer ------------------------------------------------------------------------------------
async def explorer(tmp: Path) -> None:
    """notebooks/00_explore.ipynb in a real JupyterLab (tests/labkit.py, the session tests/test_jupyterlab.py
    drives): run its cells, click Generate, wait for the progress bar at 100% and the image, capture."""
    from playwright.async_api import async_playwright

    sys.path.insert(0, str(ROOT / "tests"))
    from labkit import CHROMIUM_ARGS, JupyterLab, click_generate, open_notebook, run_all_cells

    env = {"ANIMENB_MODELS": "tiny", "ANIMENB_OUTPUTS": str(tmp / "explore"), "ANIMENB_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    with JupyterLab(tmp / "lab", [ROOT / "notebooks" / "00_explore.ipynb"], env) as lab:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = await browser.new_page(viewport={"width": 1100, "height": 1250})
            await open_notebook(page, lab, "00_explore.ipynb", timeout_s=120)
            await run_all_cells(page, timeout_s=180)
            await click_generate(page, timeout_s=300)
            # The panel at the top of the view.
            await page.locator(".widget-hprogress").first.evaluate(
                "e => e.closest('.jp-Cell').scrollIntoView({block: 'start'})")
            shrink(await page.screenshot(full_page=False), SCREENSHOTS / "explorer.png")
            await browser.close()


def main() -> int:
    if not Path(CHROMIUM).is_file():
        print(f"no chromium at {CHROMIUM} (apt-get install -y chromium)", file=sys.stderr)
        return 2
    which = sys.argv[1:] or ["gallery", "explorer"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ANIMENB_HOME", str(Path(tmp) / "home"))
        t0 = time.perf_counter()
        if "gallery" in which:
            asyncio.run(gallery(Path(tmp)))
        if "explorer" in which:
            asyncio.run(explorer(Path(tmp)))
        print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

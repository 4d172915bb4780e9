"""Regenerate the README screenshots (notebooks/screenshots/gallery.png, explorer.png), offline, tiny profile.

    .venv/bin/python notebooks/screenshots/make_screenshots.py   # needs Debian's chromium (apt-get install -y chromium)

gallery.png: a real server (animenb.server) runs phase 1 -> 2 -> 3 through the phase notebooks;
then a longer phase-1 job starts and headless Chromium captures the page while it runs.

explorer.png: an `ExplorerPanel` (notebooks/00_explore.ipynb's panel) generates once and
compares step counts in this process; its widget tree is then written out as static HTML
(`panel_html` below: same controls, values, images and tables) and captured. It is not a
JupyterLab capture: JupyterLab is an optional extra and is not installed here.

The tiny profile has random weights: every image is noise, and the captures say so.
"""
from __future__ import annotations

import asyncio
import base64
import html
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parent
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
def _data_url(image) -> str:
    return f"data:image/{image.format or 'png'};base64,{base64.b64encode(image.value).decode()}"


def panel_html(widget) -> str:
    """The widget tree as static HTML: boxes as flex rows/columns, controls with their current values."""
    import ipywidgets as W

    esc = html.escape
    layout = widget.layout if hasattr(widget, "layout") else None
    if layout is not None and layout.display == "none":
        return ""
    label = f'<label>{esc(widget.description)}</label>' if getattr(widget, "description", "") and not isinstance(
        widget, (W.Button, W.Checkbox)) else ""
    if isinstance(widget, W.GridBox):
        cols = esc(layout.grid_template_columns or "")
        return f'<div class="grid" style="grid-template-columns:{cols}">' + "".join(
            panel_html(c) for c in widget.children) + "</div>"
    if isinstance(widget, W.HBox):
        return '<div class="row">' + "".join(panel_html(c) for c in widget.children) + "</div>"
    if isinstance(widget, W.VBox):
        width = f' style="width:{esc(layout.width)}"' if layout is not None and layout.width else ""
        return f'<div class="col"{width}>' + "".join(panel_html(c) for c in widget.children) + "</div>"
    if isinstance(widget, W.HTML):
        return f'<div class="html">{widget.value}</div>'  # the panel's own markup (it escapes user text)
    if isinstance(widget, W.Image):
        if not widget.value:
            return ""
        style = "".join(f"{css}:{esc(getattr(layout, attr))};" for css, attr in (("width", "width"), ("max-width", "max_width"))
                        if layout is not None and getattr(layout, attr))
        return f'<img src="{_data_url(widget)}" style="{style or "max-width:256px"}">'
    if isinstance(widget, W.Textarea):
        return f'<div class="ctl wide">{label}<textarea>{esc(widget.value)}</textarea></div>'
    if isinstance(widget, (W.Text, W.BoundedIntText)):
        return f'<div class="ctl">{label}<input value="{esc(str(widget.value))}"></div>'
    if isinstance(widget, W.Dropdown):
        return f'<div class="ctl">{label}<select><option>{esc(str(widget.label))}</option></select></div>'
    if isinstance(widget, (W.IntSlider, W.FloatSlider)):
        return (f'<div class="ctl">{label}<input type="range" min="{widget.min}" max="{widget.max}" '
                f'step="{widget.step}" value="{widget.value}"><span>{widget.value}</span></div>')
    if isinstance(widget, W.Checkbox):
        return f'<div class="ctl"><input type="checkbox"{" checked" if widget.value else ""}> {esc(widget.description)}</div>'
    if isinstance(widget, W.Button):
        return (f'<button class="{esc(widget.button_style or "")}"{" disabled" if widget.disabled else ""}>'
                f'{esc(widget.description)}</button>')
    if isinstance(widget, W.FloatProgress):
        return f'<div class="ctl">{label}<progress max="{widget.max}" value="{widget.value}"></progress></div>'
    return f'<pre>{esc(repr(widget))}</pre>'


CSS = """body{font:13px system-ui,sans-serif;margin:12px;background:#fff;color:#1f2328;width:900px}
.cell{border-left:3px solid #4a7ebb;padding:6px 10px;background:#f7f7f7;font:12px monospace;white-space:pre;margin-bottom:8px}
.note{color:#8250df;font-size:12px;margin-bottom:8px}
.col{display:flex;flex-direction:column;gap:4px}.row{display:flex;gap:8px;align-items:center;flex-wrap:nowrap;overflow:hidden}
.grid{display:grid;gap:6px}.ctl{display:flex;align-items:center;gap:6px}.ctl label{width:110px;text-align:right;color:#444}
.ctl.wide{width:98%}textarea{width:100%;height:40px;font:inherit}input,select{font:inherit}
button{font:inherit;padding:3px 12px;border:1px solid #ccc;background:#eee;border-radius:2px}
button.primary{background:#2196f3;color:#fff;border-color:#2196f3}button.warning{background:#ff9800;color:#fff;border-color:#ff9800}
button[disabled]{opacity:.5}progress{width:300px}img{image-rendering:pixelated}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px}"""


async def explorer(tmp: Path) -> None:
    from playwright.async_api import async_playwright

    from animenb.widgets import ExplorerPanel

    panel = ExplorerPanel(prompt=PROMPT, models="tiny", steps=8, seed=42, width=SIZE, height=SIZE,
                          output_dir=tmp / "explore", compare_steps=[2, 4, 8, 15], background=False)
    panel.generate()
    panel.compare()
    assert panel.status == "done", panel.error
    page_html = (f"<!doctype html><meta charset=utf-8><style>{CSS}</style>"
                 f'<div class="note">notebooks/00_explore.ipynb · the ExplorerPanel after Generate and Compare steps '
                 f"(tiny profile: random weights, images are noise) · widget state rendered as static HTML by "
                 f"notebooks/screenshots/make_screenshots.py</div>"
                 f'<div class="cell">panel = explore(prompt=prompt, phase=phase, steps=steps, seed=seed, models="tiny", '
                 f"compare_steps=[2, 4, 8, 15])\npanel</div>" + panel_html(panel.widget))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = await browser.new_page(viewport={"width": 930, "height": 900})
        await page.set_content(page_html)
        shrink(await page.screenshot(full_page=True), SCREENSHOTS / "explorer.png")
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

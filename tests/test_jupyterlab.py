"""JupyterLab itself, in Debian's chromium: the explorer notebook's Generate button and the orchestration notebook.

A real JupyterLab (the `lab` extra, from .venv-lab: `make lab-setup`) serves copies of
notebooks/00_explore.ipynb and 06_orchestrate.ipynb on loopback with a token; the kernel is this
checkout's (tiny profile, outputs in tmp_path). In the page: run 00's cells from the Run menu,
click **Generate** in the explorer widget, and see the progress bar reach 100% and the image
appear; then run 06 and check that its saved notebook holds no error and shows the attempts
table. Skips locally without chromium or .venv-lab; fails under CI=true.
"""
from __future__ import annotations

import os

import pytest

from labkit import (CHROMIUM_ARGS, REPO, VISIBLE_IMAGES, JupyterLab, chromium_path, click_generate, errors_in,
                    generate_button, open_notebook, run_all_cells, save)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def lab(tmp_path):
    if chromium_path() is None:
        _unavailable("chromium is not installed (Debian: apt-get install -y chromium)")
    if not (REPO / ".venv-lab" / "bin" / "jupyter-lab").is_file():
        _unavailable("no JupyterLab venv (.venv-lab): run `make lab-setup`")
    env = {"ANIMENB_MODELS": "tiny", "ANIMENB_OUTPUTS": str(tmp_path / "outputs"), "ANIMENB_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    notebooks = [REPO / "notebooks" / "00_explore.ipynb", REPO / "notebooks" / "06_orchestrate.ipynb"]
    with JupyterLab(tmp_path / "lab", notebooks, env) as server:
        yield server


async def test_explorer_and_orchestration_in_jupyterlab(lab, tmp_path):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            # 1. The explorer: run its cells, then click Generate in the widget.
            await open_notebook(page, lab, "00_explore.ipynb", timeout_s=120)
            await run_all_cells(page, timeout_s=180, seen=lab.dialogs)
            await generate_button(page).wait_for(timeout=60_000)
            assert await page.evaluate(VISIBLE_IMAGES) == []  # nothing generated yet
            sizes = await click_generate(page, timeout_s=300)
            assert any(width >= 64 for width, _ in sizes), sizes
            await page.screenshot(path=str(tmp_path / "explorer.png"))
            explored = await save(page, lab, "00_explore.ipynb")
            assert errors_in(explored) == []
            runs = list((tmp_path / "outputs").glob("*/manifest.json"))
            assert len(runs) == 1, runs  # the click made exactly one run, in this kernel

            # 2. The orchestration notebook, all cells, in a page of its own.
            await page.close()
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            await open_notebook(page, lab, "06_orchestrate.ipynb", timeout_s=120)
            await run_all_cells(page, timeout_s=480, seen=lab.dialogs)
            orchestrated = await save(page, lab, "06_orchestrate.ipynb")
            assert errors_in(orchestrated) == []
            html = [output["data"].get("text/html", "") for cell in orchestrated["cells"]
                    for output in cell.get("outputs", []) if "data" in output]
            assert any("decision" in "".join(part) for part in html)  # the attempts table
            await page.screenshot(path=str(tmp_path / "orchestrate.png"))
        except BaseException:
            await page.screenshot(path=str(tmp_path / "failure.png"))  # what the page showed, for the report
            print("JupyterLab dialogs accepted on the way:", lab.dialogs)
            raise
        finally:
            await browser.close()

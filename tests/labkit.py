"""A real JupyterLab (from .venv-lab, `make lab-setup`) on loopback with a token, driven by Playwright.

Used by tests/test_jupyterlab.py and notebooks/screenshots/make_screenshots.py (the README's
explorer capture comes from this session). JupyterLab runs from its own venv and finds this
checkout's kernel (`.venv/share/jupyter/kernels/python3`) and the ipywidgets extension through
JUPYTER_PATH; its config, data, runtime, settings and workspaces live in a temporary folder, and
it serves copies of the notebooks, so nothing in the checkout is written.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from serverkit import free_port

REPO = Path(__file__).resolve().parents[1]
LAB_PYTHON = REPO / ".venv-lab" / "bin" / "python"
KERNELS = REPO / ".venv" / "share" / "jupyter"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# JupyterLab user settings: every cell stays in the DOM, no news or update checks (offline).
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def chromium_path() -> str | None:
    path = os.environ.get("ANIMENB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and Path(path).is_file() else None


class JupyterLab:
    """`with JupyterLab(workdir, notebooks=[...], env={...}) as lab:` a started server; stopped by PID."""

    def __init__(self, workdir: Path, notebooks: list[Path], env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.root = self.workdir / "notebooks"
        self.notebooks = notebooks
        self.extra_env = env or {}
        self.token = secrets.token_hex(16)
        self.dialogs: list[str] = []  # texts of dialogs accept_dialogs() found in the way
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str) -> str:
        """`notebook` alone in a fresh layout (`reset`: no tabs restored from an earlier page)."""
        return f"{self.base}/lab/tree/{notebook}?reset&token={self.token}"

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("JUPYTER", "VIRTUAL_ENV"))}
        state = self.workdir / "jupyter"
        env.update(JUPYTER_PATH=str(KERNELS), JUPYTER_CONFIG_DIR=str(state / "config"),
                   JUPYTER_DATA_DIR=str(state / "data"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
                   JUPYTERLAB_SETTINGS_DIR=str(state / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"), PYTHONUNBUFFERED="1", **self.extra_env)
        return env

    def start(self, timeout: float = 120.0) -> "JupyterLab":
        if not LAB_PYTHON.is_file():
            raise FileNotFoundError(f"no JupyterLab venv at {LAB_PYTHON.parent.parent} (run `make lab-setup`)")
        self.root.mkdir(parents=True, exist_ok=True)
        for notebook in self.notebooks:
            shutil.copy(notebook, self.root / notebook.name)
        for name, values in SETTINGS.items():
            path = self.workdir / "jupyter" / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        self.port = free_port()
        log = open(self.workdir / "jupyterlab.log", "ab")
        self.proc = subprocess.Popen(
            [str(LAB_PYTHON), "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.root}", "--ServerApp.terminals_enabled=False",
             "--allow-root",  # CI containers run as root
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly"],  # no PyPI queries from the extension manager
            cwd=self.root, env=self._env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.workdir / "jupyterlab.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server and its kernels (one process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def saved(self, notebook: str) -> dict:
        return json.loads((self.root / notebook).read_text())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


# -- driving a notebook in the page --------------------------------------------------------------
ALL_CELLS_RAN = """() => {
    const prompts = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')];
    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""


ANY_CELL_STARTED = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')].some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""


async def accept_dialogs(page, seen: list[str] | None = None) -> None:
    """Accept any modal JupyterLab dialog in the way (e.g. a kernel choice on a loaded machine),
    noting its text in `seen`: a dialog would otherwise intercept every click."""
    for _ in range(3):
        dialog = page.locator(".jp-Dialog")
        if not await dialog.count():
            return
        if seen is not None:
            seen.append(" ".join((await dialog.first.inner_text()).split())[:300])
        accept = dialog.first.locator(".jp-Dialog-button.jp-mod-accept")
        if await accept.count():
            await accept.first.click()
        else:
            await page.keyboard.press("Escape")
        await page.wait_for_timeout(500)


async def open_notebook(page, lab: JupyterLab, notebook: str, timeout_s: float) -> None:
    """Open `notebook` and wait until its kernel is connected and idle (the status bar says so)."""
    await page.goto(lab.url(notebook))
    await page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(timeout=timeout_s * 1000)
    await page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).first.wait_for(
        timeout=timeout_s * 1000)
    await accept_dialogs(page, lab.dialogs)


async def run_all_cells(page, timeout_s: float, seen: list[str] | None = None) -> None:
    """Run > Run All Cells from the menu bar, then wait until every code cell shows an execution count.

    On a slow first load the menu command can land before the notebook is ready for it: if no cell
    has started after 20 s the menu is used again (three tries in all)."""
    for attempt in range(3):
        await accept_dialogs(page, seen)
        await page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        await page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            await page.wait_for_function(ANY_CELL_STARTED, timeout=20_000, polling=250)
            break
        except Exception:  # playwright's TimeoutError
            if attempt == 2:
                raise
    await page.wait_for_function(ALL_CELLS_RAN, timeout=timeout_s * 1000, polling=500)


PROGRESS_DONE = """() => {
    const bars = [...document.querySelectorAll('.widget-hprogress, .widget-vprogress')];  // ipywidgets 8
    return bars.some(bar => bar.querySelector('.progress-bar')?.style.width === '100%'
                            && bar.querySelector('label')?.textContent.trim() === 'done');
}"""
VISIBLE_IMAGES = """() => [...document.querySelectorAll('img.widget-image')]
    .filter(img => img.offsetParent !== null && img.complete && img.naturalWidth > 0)
    .map(img => [img.naturalWidth, img.naturalHeight])"""


def generate_button(page):
    """The explorer widget's Generate button (an ipywidgets Button: icon + label)."""
    return page.locator("button.jupyter-button", has_text=re.compile(r"^\s*Generate\s*$"))


async def click_generate(page, timeout_s: float) -> list[list[int]]:
    """Click the explorer widget's Generate; wait for its progress bar at 100% ("done") and an image.

    Returns the (width, height) of every visible widget image."""
    generate = generate_button(page)
    await generate.wait_for(timeout=60_000)
    await generate.click()
    await page.wait_for_function(PROGRESS_DONE, timeout=timeout_s * 1000, polling=250)
    await page.wait_for_function(f"() => ({VISIBLE_IMAGES})().length > 0", timeout=60_000)
    return await page.evaluate(VISIBLE_IMAGES)


async def save(page, lab: JupyterLab, notebook: str, timeout_s: float = 30) -> dict:
    """File > Save Notebook in the page, then read the file JupyterLab wrote."""
    before = (lab.root / notebook).stat().st_mtime_ns
    await page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
    await page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).click()
    deadline = time.monotonic() + timeout_s
    while True:
        # The new mtime can show before the write is complete: the file may still be empty or cut short.
        if (lab.root / notebook).stat().st_mtime_ns != before:
            try:
                return lab.saved(notebook)
            except json.JSONDecodeError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{notebook} was not saved within {timeout_s}s")
        await page.wait_for_timeout(200)


def errors_in(notebook: dict) -> list[str]:
    return [f"{output.get('ename')}: {output.get('evalue')}" for cell in notebook["cells"]
            for output in cell.get("outputs", []) if output.get("output_type") == "error"]

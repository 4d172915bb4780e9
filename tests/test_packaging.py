"""What an installed animenb needs: every package listed for the wheel, its data found through
importlib.resources, and a /health that says so when the notebooks or the profile are missing."""
from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import animenb
from animenb import config
from animenb.phases.catalog import PHASES

ROOT = Path(__file__).resolve().parents[1]
API = "/api/anime"


def test_every_package_is_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "animenb").rglob("__init__.py")}
    on_disk.add("animenb.server.static")  # package data only
    mapped = {name: ROOT / folder for name, folder in setuptools["package-dir"].items()}
    assert set(setuptools["packages"]) == on_disk | set(mapped) | {"animenb._parameters.models"}
    assert mapped == {"animenb._notebooks": config.notebooks_dir(), "animenb._parameters": config.parameters_dir()}


def test_version_is_the_metadata_one():
    assert animenb.__version__ == importlib.metadata.version("animenb")
    assert (ROOT / "animenb" / "py.typed").is_file() and (ROOT / "LICENSE").read_text().startswith("\n" + " " * 33)


def test_a_checkout_runs_its_own_notebooks():
    # An edited notebook in the checkout is the one that runs, even where an installed copy exists.
    assert config.notebooks_dir() == ROOT / "notebooks" and config.parameters_dir() == ROOT / "parameters"
    assert all((config.notebooks_dir() / phase.notebook).is_file() for phase in PHASES)


async def test_health_is_degraded_without_notebooks_or_profile(tmp_path, start_live_server):
    empty = tmp_path / "no-notebooks"
    empty.mkdir()
    async with start_live_server(tmp_path, notebooks_dir=empty, models="no-such-profile") as srv:
        code, health, _ = await srv.request("GET", f"{API}/health")
    assert code == 200 and health["status"] == "degraded"
    assert set(health["degraded_components"]) == {"notebooks", "models"} == set(health["degraded_reasons"])
    assert "01_character_sheet.ipynb" in health["degraded_reasons"]["notebooks"]
    assert "no-such-profile" in health["degraded_reasons"]["models"]

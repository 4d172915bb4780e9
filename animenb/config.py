"""Where animenb keeps things, and which model profile it uses, read from the environment.

ANIMENB_HOME    cache of built tiny models, the job store and (by default) outputs; default ~/.cache/animenb
ANIMENB_MODELS  model profile name or YAML path; default "tiny"
ANIMENB_OUTPUTS where runs write outputs/<job_id>/; default ./outputs
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

DEFAULT_PROFILE = "tiny"


def home_dir() -> Path:
    return Path(os.environ.get("ANIMENB_HOME") or Path.home() / ".cache" / "animenb").expanduser().resolve()


def default_profile() -> str:
    return os.environ.get("ANIMENB_MODELS") or DEFAULT_PROFILE


def outputs_dir() -> Path:
    return Path(os.environ.get("ANIMENB_OUTPUTS") or Path.cwd() / "outputs").expanduser().resolve()


def repo_root() -> Path:
    """The folder above the package: the checkout when animenb runs from one, else site-packages."""
    return Path(__file__).resolve().parent.parent


def _shipped_dir(name: str) -> Path:
    """The top-level `name` folder of the checkout animenb runs from (editable install or PYTHONPATH);
    from a wheel, the same files shipped as the resource package `animenb._<name>` (pyproject maps one
    to the other). The checkout's own folder wins so that an edited notebook is the one that runs."""
    checkout = repo_root()
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    # Through the regular package: `animenb._<name>` itself has no __init__.py, so its files() would be a
    # namespace's MultiplexedPath. A wheel installs as plain files, so the resource is the folder itself.
    return Path(str(importlib.resources.files("animenb") / f"_{name}"))


def notebooks_dir() -> Path:
    """The phase notebooks (01_character_sheet.ipynb ...); `animenb serve --notebooks` overrides them."""
    return _shipped_dir("notebooks")


def parameters_dir() -> Path:
    """parameters/: per-phase YAML, quality.yaml and the model profiles under models/."""
    return _shipped_dir("parameters")

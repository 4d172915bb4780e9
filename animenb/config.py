"""Where animenb keeps things, and which model profile it uses, read from the environment.

ANIMENB_HOME    cache of built tiny models, the job store and (by default) outputs; default ~/.cache/animenb
ANIMENB_MODELS  model profile name or YAML path; default "tiny"
ANIMENB_OUTPUTS where runs write outputs/<job_id>/; default ./outputs
"""
from __future__ import annotations

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
    """The checkout holding notebooks/ and parameters/ (animenb is installed editable)."""
    return Path(__file__).resolve().parent.parent


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def parameters_dir() -> Path:
    return repo_root() / "parameters"

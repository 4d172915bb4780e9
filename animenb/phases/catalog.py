"""The three production phases: the single source of truth for the API, the runner and the notebooks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    id: int
    name: str
    description: str
    model_family: str  # the kind of model the phase generates with (IPAdapter, AnimateDiff, SVD)
    output: str
    notebook: str
    parameters_file: str

    def as_dict(self) -> dict:
        """The phase as GET /phases shows it; the model family keeps its published name, "engine"."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "engine": self.model_family,
            "output": self.output,
        }


PHASES: tuple[Phase, ...] = (
    Phase(
        1,
        "CHARACTER_SHEET",
        "Static character reference",
        "IPAdapter",
        "8-pose sheet",
        "01_character_sheet.ipynb",
        "character_sheet.yaml",
    ),
    Phase(
        2,
        "ANIMATION_LOOP",
        "Short loops",
        "AnimateDiff",
        "2-second loops",
        "02_animation_loop.ipynb",
        "animation_loop.yaml",
    ),
    Phase(3, "FULL_VIDEO", "Complete videos", "SVD", "5-second videos", "03_full_video.ipynb", "full_video.yaml"),
)
WORKFLOW = "Phase 1 to Phase 2 to Phase 3"
QUALITY_GATES = "80% quality required per phase"
DEFAULT_GATE = 0.80


def get_phase(key: int | str) -> Phase:
    """Look a phase up by id (1, "1") or name ("CHARACTER_SHEET", "character_sheet")."""
    for phase in PHASES:
        if str(key).strip().upper() in (str(phase.id), phase.name):
            return phase
    known = ", ".join(f"{p.id}/{p.name}" for p in PHASES)
    raise ValueError(f"`phase` must be one of {known}, got {key!r}.")

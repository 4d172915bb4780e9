"""Phase catalog and the phase functions the notebooks call."""

from typing import Callable

from .animation_loop import animation_loop
from .catalog import DEFAULT_GATE, PHASES, QUALITY_GATES, WORKFLOW, Phase, get_phase
from .character_sheet import POSES, character_sheet, pose_prompts
from .common import PhaseResult
from .full_video import full_video

PHASE_FUNCTIONS: dict[str, Callable[..., PhaseResult]] = {
    "CHARACTER_SHEET": character_sheet,
    "ANIMATION_LOOP": animation_loop,
    "FULL_VIDEO": full_video,
}

__all__ = [
    "DEFAULT_GATE",
    "PHASES",
    "PHASE_FUNCTIONS",
    "POSES",
    "QUALITY_GATES",
    "WORKFLOW",
    "Phase",
    "PhaseResult",
    "animation_loop",
    "character_sheet",
    "full_video",
    "get_phase",
    "pose_prompts",
]

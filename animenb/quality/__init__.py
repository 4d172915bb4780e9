"""Quality scores in [0, 1] per phase, computed without downloaded weights, and the 80% gates.

    from animenb.quality import score_output_dir, record_quality
    report = score_output_dir("outputs/<job>")        # phase read from manifest.json
    record_quality("outputs/<job>", report)           # quality.json + manifest["quality"]

Metric formulas: animenb/quality/metrics.py; weights, floors, thresholds and mappings:
parameters/quality.yaml; how they combine: animenb/quality/scoring.py.
"""

from .config import PHASE_METRICS, default_config_path, load_quality_config, validate_config
from .record import QUALITY_NAME, record_quality
from .scoring import (
    QualityReport,
    combine,
    score_animation_loop,
    score_character_sheet,
    score_full_video,
    score_output_dir,
)
from .synthetic import make_demo_run

__all__ = [
    "PHASE_METRICS",
    "QUALITY_NAME",
    "QualityReport",
    "combine",
    "default_config_path",
    "load_quality_config",
    "make_demo_run",
    "record_quality",
    "score_animation_loop",
    "score_character_sheet",
    "score_full_video",
    "score_output_dir",
    "validate_config",
]

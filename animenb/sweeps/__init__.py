"""Parameter sweeps: an X/Y/Z grid of runs of one phase, compared in one table and one labelled grid image.

`plan` validates and expands the axes (A1111's range syntax included), `local` runs a sweep's cells one after
another (in this process, or as phase notebooks on one warm kernel: `notebooks`, what `animenb sweep` does),
`report` writes and reads its results, `grid` draws the grid image. On a server, a sweep is one parent job
with a child job per cell (`animenb.runner.sweep_jobs`, POST /api/anime/sweeps).
"""

from .plan import MAX_AXES, MAX_CELLS, SweepError, SweepPlan, build_plan
from .report import load_results

__all__ = ["MAX_AXES", "MAX_CELLS", "SweepError", "SweepPlan", "build_plan", "load_results"]

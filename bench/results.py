"""Where bench scripts put their figures: `record(name, figures)`.

`make bench` (bench/run_all.py) sets ANIMENB_BENCH_RESULTS to a JSON-lines file and gathers
every record into bench/results/<date>-<host>.json and a Markdown summary. Run alone, a
bench only prints.
"""
from __future__ import annotations

import json
import os
import time


def record(name: str, figures: dict) -> None:
    """Append `{"bench": name, "figures": {...}}` to $ANIMENB_BENCH_RESULTS, when set."""
    path = os.environ.get("ANIMENB_BENCH_RESULTS")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"bench": name, "at": time.time(), "figures": figures}) + "\n")

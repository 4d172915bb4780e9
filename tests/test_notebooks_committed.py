"""Notebooks are committed without outputs, except the strictly checked ones (Makefile STRICT_NOTEBOOKS),
which must carry their reference outputs (an empty reference would make strict nbval pass vacuously)."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _strict() -> set[str]:
    match = re.search(r"^STRICT_NOTEBOOKS := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile lost STRICT_NOTEBOOKS"
    return set(match.group(1).split())


def test_only_strict_notebooks_carry_outputs():
    strict = _strict()
    assert strict and all((ROOT / path).is_file() for path in strict)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        rel = path.relative_to(ROOT).as_posix()
        code = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
        with_outputs = [cell for cell in code if cell.get("outputs")]
        if rel in strict:
            assert len(with_outputs) >= len(code) - 1, f"{rel}: reference outputs missing (make reference-notebooks)"
        else:
            assert not with_outputs, f"{rel} is committed with outputs; clear them or add it to STRICT_NOTEBOOKS"

"""Server paths out of what a job's readers see: stored error messages and executed notebooks.

A failed public job's error and its executed notebook are readable by anyone; absolute
paths there tell a caller where the server keeps its files, its checkout and its Python.
`PathScrubber` rewrites each known root to a short relative name (the outputs folder to
`outputs/`, the checkout to nothing, so `animenb/phases/...`); the absolute text stays in
the server log, written by the runner before it scrubs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import animenb
from animenb import atomic

CHECKOUT = Path(animenb.__file__).resolve().parent.parent


class PathScrubber:
    def __init__(self, *, outputs_dir: Path, home: Path | None = None, notebooks_dir: Path | None = None):
        roots = {str(Path(outputs_dir).resolve()): "outputs", str(CHECKOUT): ""}
        if home is not None:
            roots[str(Path(home).resolve())] = "$ANIMENB_HOME"
        if notebooks_dir is not None:
            roots[str(Path(notebooks_dir).resolve())] = "notebooks"
        for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
            roots[str(Path(prefix).resolve())] = "<python>"
            roots[prefix] = "<python>"
        roots.setdefault(str(Path.home()), "~")
        # Longest first: the outputs folder may sit inside the checkout, the venv inside the home.
        self._roots = sorted(((r, name) for r, name in roots.items() if len(r) > 1), key=lambda rn: -len(rn[0]))

    def scrub(self, text: str) -> str:
        """`text` with every known absolute root replaced by its relative name."""
        for root, name in self._roots:
            if root in text:
                text = text.replace(root + "/", f"{name}/" if name else "").replace(root, name or ".")
        return text

    def scrub_file(self, path: Path) -> None:
        """Rewrite a text file (an executed notebook) in place, atomically; a missing file is left missing."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        clean = self.scrub(text)
        if clean != text:
            atomic.write_text(path, clean)

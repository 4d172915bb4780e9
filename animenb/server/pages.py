"""The gallery web page: `/` and `/gallery` serve static/index.html, `/static/<file>` its CSS and JS.

Plain HTML/CSS/JS, no build step. The page reads the JSON API (/api/anime/gallery, /jobs,
/health) and follows running jobs over /ws/job/<id>; it builds the DOM with textContent
only (prompts are user text), and the Content-Security-Policy below forbids inline script,
so an injected tag could not run even if one got through.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import tornado.web

from .mixins import HandlerMixin

# Package data (pyproject's package-data); a wheel installs it as plain files.
STATIC_DIR = Path(str(importlib.resources.files("animenb.server") / "static"))
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class _Hardened(HandlerMixin):
    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")


class GalleryPageHandler(_Hardened, tornado.web.RequestHandler):
    """GET / and /gallery: the page itself (never cached, so a new version shows at once)."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish((STATIC_DIR / "index.html").read_bytes())


class PageAssetHandler(_Hardened, tornado.web.StaticFileHandler):
    """GET /static/<file>: app.js, style.css (with ETags; tornado refuses paths outside STATIC_DIR)."""


page_handlers = [
    (r"/(?:gallery/?)?", GalleryPageHandler),
    (r"/static/(.+)", PageAssetHandler, {"path": str(STATIC_DIR)}),
]

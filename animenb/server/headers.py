"""Headers every response carries, whichever handler (or error path) wrote it.

An output transform rather than `set_default_headers` in one base class: the static file
handler, the pages, the WebSocket handshake's refusals and tornado's own error pages all
pass through the application's transforms.
"""

from __future__ import annotations

import tornado.web

SECURITY_HEADERS = {
    # A job's files are served with the type their name says; a browser must not sniff a PNG
    # (or a notebook) into HTML and run it.
    "X-Content-Type-Options": "nosniff",
}


class SecurityHeaders(tornado.web.OutputTransform):
    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        for name, value in SECURITY_HEADERS.items():
            headers.setdefault(name, value)
        return status_code, headers, chunk

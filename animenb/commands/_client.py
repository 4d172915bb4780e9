"""What the client subcommands (`jobs`, `watch`) share: the server URL, the bearer token, JSON GETs.

Failures become one readable line: `ConnectionError` when the server cannot be reached,
`ValueError` with the API's own `{"error": {"message"}}` text for a 4xx answer.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8328"
API = "/api/anime"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("ANIMENB_URL", DEFAULT_URL),
        help=f"the animenb server (default $ANIMENB_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("ANIMENB_TOKEN"),
        help="bearer token, sent as `Authorization: Bearer ...` (default $ANIMENB_TOKEN; "
        "only needed where the server requires one)",
    )


def base_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"`--url` must be an http(s) URL like {DEFAULT_URL}, got {url!r}.")
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"


def ws_url(url: str, path: str) -> str:
    base = base_url(url)
    return ("wss" + base[5:] if base.startswith("https") else "ws" + base[4:]) + path


def headers(token: str | None) -> dict[str, str]:
    return {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}


def api_error(code: int, body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        message = error["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip()[:200] or "no details"
    if code in (401, 403):
        message += " (pass --token or set $ANIMENB_TOKEN)"
    return f"HTTP {code}: {message}"


def get_json(
    url: str,
    path: str,
    token: str | None = None,
    query: dict[str, Any] | None = None,
    timeout: float = 30.0,
    body: dict | None = None,
) -> Any:
    """GET `path` (with `query`); with `body`, POST it as JSON instead."""
    full = base_url(url) + path
    if query:
        full += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    data = None if body is None else json.dumps(body).encode()
    extra = {} if body is None else {"Content-Type": "application/json"}
    request = urllib.request.Request(full, data=data, headers={**headers(token), **extra})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(api_error(exc.code, exc.read())) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"cannot reach the animenb server at {base_url(url)} ({reason}); is `animenb serve` running? (--url)"
        ) from None

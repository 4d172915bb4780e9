"""Cross-site request forgery: another web site must not queue or cancel jobs through a visitor's browser.

Two rules for state-changing requests (POST, PUT, PATCH, DELETE), checked in the base
handler's `prepare` before anything else reads the request:

- a body must be declared `Content-Type: application/json` (or `*+json`): a page on
  another site can send a cross-origin POST without a CORS preflight only as a form or
  text/plain (`fetch(..., {mode: "no-cors"})`), so a JSON-only API never sees those (415);
- an `Origin` header that is not this server's own (`scheme://host[:port]` of the request)
  nor one given with `animenb serve --allow-origin` is refused with 403 `cross_origin`.
  Requests without `Origin` (curl, the CLI, scripts) are not browsers' cross-site requests.

The job WebSocket uses the same origin rule (`origin_allowed`) in its `check_origin`.

DNS rebinding: a page on evil.example can point its own name at 127.0.0.1 and then talk to this server
as a same-origin site (its `Origin` and `Host` agree). So every API request, WebSocket and output file
also needs a `Host` this server answers to (`check_host`, 421 `host_not_allowed` otherwise): its listen
address, `localhost` or a loopback address, or the host of an `--allow-origin`; on a wildcard listen
address (0.0.0.0, ::) any IP address too. A name that reaches the server some other way (a LAN name, a
proxy's public name) is given with `--allow-origin http://NAME:PORT`.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .validation import APIError

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def normalise_origin(origin: str) -> str:
    """`scheme://host[:port]`, lower case, without a default port; "" for anything unparsable."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def origin_allowed(origin: str, request, allowed: tuple[str, ...] | list[str] = ()) -> bool:
    own = normalise_origin(f"{request.protocol}://{request.host}")
    given = normalise_origin(origin)
    return bool(given) and (given == own or given in {normalise_origin(a) for a in allowed})


def host_allowed(host_header: str, listen_host: str, allowed_origins: tuple[str, ...] | list[str] = ()) -> bool:
    """Whether `host_header` (`Host`, with its port) names this server (module docstring)."""
    host = (urlsplit(f"//{host_header.strip()}").hostname or "") if host_header else ""
    if not host:
        return False
    if host == "localhost" or host == listen_host.strip("[]").lower():
        return True
    if host in {urlsplit(normalise_origin(origin)).hostname for origin in allowed_origins}:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a DNS name nobody allowed
    return ip.is_loopback or listen_host in ("", "0.0.0.0", "::")


def check_host(request, listen_host: str, allowed_origins: tuple[str, ...] | list[str] = ()) -> None:
    """Raise APIError 421 unless the request's `Host` names this server (module docstring)."""
    if not host_allowed(request.host, listen_host, allowed_origins):
        raise APIError(
            421,
            "host_not_allowed",
            f"This server does not answer to host {request.host[:100]!r}; "
            f"start it with --allow-origin http://HOST:PORT to allow it.",
            "Host",
        )


def is_json_media(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def check_csrf(request, allowed_origins: tuple[str, ...] | list[str] = ()) -> None:
    """Raise APIError 403/415 for a state-changing request another site could have made."""
    if request.method not in STATE_CHANGING:
        return
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, request, allowed_origins):
        raise APIError(
            403,
            "cross_origin",
            f"Requests from origin {origin[:100]!r} are not allowed; start the "
            f"server with --allow-origin ORIGIN to allow a web app there.",
            "Origin",
        )
    if request.method in WITH_BODY and not is_json_media(request.headers.get("Content-Type")):
        got = request.headers.get("Content-Type")
        raise APIError(
            415,
            "unsupported_media_type",
            "The request body must be JSON (Content-Type: "
            f"application/json), got {got[:100] if got else 'no Content-Type'}.",
            "Content-Type",
        )

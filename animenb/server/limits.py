"""What one client may take from a shared server: body size and time, idle sockets, WebSockets.

- `HttpLimits` are the HTTP server's own limits (tornado's `HTTPServer` arguments): a body
  over `max_body_bytes` is refused from its Content-Length, before any of it is read; a
  body that takes longer than `body_timeout` to arrive and a connection that sends no
  complete request headers for `idle_timeout` are closed.
- `LimitedBodyMixin` makes a JSON handler stream its body (`@stream_request_body` on the
  class using it), so `prepare()` answers an oversized request with a 413 JSON error
  before the body is read (the HTTP server alone would answer a bare 400).
- `WebSocketCounter` caps the job WebSockets one client address holds open at once.
- `JobLimits`: the most a job may cost by the caller's role, and how long it may run
  (enforced by `AnimeService.admit` and the runner).

    server = make_http_server(app, HttpLimits())      # what `serve` and the tests listen with
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass

from tornado.httpserver import HTTPServer

from animenb.phases.cost import FORMULA, UNIT

from .mixins import HandlerMixin
from .validation import MAX_BODY_BYTES, APIError


@dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int = MAX_BODY_BYTES  # every endpoint's body, JSON or not
    body_timeout: float = 10.0  # seconds to send a whole body once the headers are in
    idle_timeout: float = 30.0  # seconds to send a request's headers (and idle keep-alive)
    max_websockets_per_client: int = 64  # open job WebSockets per client address

    def __post_init__(self):
        for name in ("max_body_bytes", "body_timeout", "idle_timeout", "max_websockets_per_client"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"`{name}` must be a positive number, got {value!r}.")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


ROLES = ("anonymous", "user", "admin")


@dataclass(frozen=True)
class JobLimits:
    """What one job may ask: its cost (`animenb.phases.cost`, megapixel-steps) by the caller's role, and
    how long it may run. A default 512 px job of any phase costs 32-111, phase 3 at SVD-XT's native
    1024x576 246 (anonymous callers may queue either); 2048 px x 150 steps x 64 frames costs about
    40,000. None: no limit."""

    anonymous: float | None = 300.0
    user: float | None = 1500.0
    admin: float | None = 15000.0
    timeout_seconds: float | None = 3600.0  # a running job past it fails with {"type": "Timeout"}

    def __post_init__(self):
        for name in ROLES + ("timeout_seconds",):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"`{name}` must be a positive number or None, got {value!r}.")

    def max_cost(self, role: str) -> float | None:
        if role not in ROLES:
            raise ValueError(f"`role` must be one of {', '.join(ROLES)}, got {role!r}.")
        return getattr(self, role)

    def as_dict(self) -> dict:
        return {
            "job_cost": {
                "unit": UNIT,
                "formula": FORMULA,
                "max_by_role": {role: self.max_cost(role) for role in ROLES},
            },
            "job_timeout_seconds": self.timeout_seconds,
        }


def make_http_server(app, limits: HttpLimits, **kwargs) -> HTTPServer:
    """The HTTPServer for `app` with `limits` applied (`kwargs`: other HTTPServer arguments)."""
    return HTTPServer(
        app,
        max_body_size=limits.max_body_bytes,
        body_timeout=limits.body_timeout,
        idle_connection_timeout=limits.idle_timeout,
        **kwargs,
    )


def too_large() -> APIError:
    return APIError(413, "body_too_large", f"The request body must be at most {MAX_BODY_BYTES} bytes.")


class LimitedBodyMixin(HandlerMixin):
    """For handlers decorated with `@tornado.web.stream_request_body`: a body whose Content-Length
    is over `MAX_BODY_BYTES` is refused in `prepare` (never read); `self.request.body` is filled
    chunk by chunk. A chunked body has no length up front: the HTTP server's `max_body_size`
    (`HttpLimits.max_body_bytes`) closes its connection once it runs past the limit."""

    def check_body_size(self) -> None:
        """Call first in `prepare()`: 413 for a Content-Length over the limit."""
        self.request.body = b""
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.strip().isdigit() or int(length) > MAX_BODY_BYTES):
            raise too_large()

    def data_received(self, chunk: bytes) -> None:
        self.request.body += chunk


def client_key(address: str) -> str:
    """Who a client address is, for per-client caps and turns: an IPv4 address as it is, an IPv6 address
    by its /64 (one host or home network is usually given a whole /64), any loopback address as one.
    Behind a reverse proxy every client has the proxy's address: start tornado with `xheaders=True` only
    where the proxy sets X-Real-IP / X-Forwarded-For, else they all share one key."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class WebSocketCounter:
    """Open job WebSockets per client (`client_key` of the address); `acquire` refuses past the cap."""

    def __init__(self, cap: int):
        self.cap = cap
        self.open: collections.Counter[str] = collections.Counter()

    def full(self, address: str) -> bool:
        return self.open[client_key(address)] >= self.cap

    def acquire(self, address: str) -> bool:
        if self.full(address):
            return False
        self.open[client_key(address)] += 1
        return True

    def release(self, address: str) -> None:
        key = client_key(address)
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]

"""Bearer-token auth: who is calling (`Identity`), who may see a job, and role checks.

Tokens come from `animenb token create --role admin|user --name NAME` (see
`animenb.store.tokens_sqlite`); a client sends ``Authorization: Bearer <token>``. The
job WebSocket also accepts ``?token=<token>`` (browsers cannot set headers on a
WebSocket); plain HTTP does not, so tokens stay out of access logs and Referer headers.

Rules (the contract: "Optional for most endpoints"):

- No token: anonymous. Health, phases, gallery (public jobs), jobs (public jobs),
  generate (public jobs owned by "anonymous"), status and the job WebSocket of public
  jobs stay open.
- A token that is unknown, malformed or revoked: 401 ``invalid_token`` on every endpoint
  (checked in `BaseHandler.prepare`), never a silent downgrade to anonymous.
- Jobs created with a token are owned by the token's name and private unless the request
  says ``"visibility": "public"``.
- A private job is visible to its owner and to admins only. To anyone else it does not
  exist: 404 ``job_not_found`` on status, cancel, outputs and thumbnails, close code 4404
  on the WebSocket (a 403 would confirm the id exists).
- Cancel: an anonymous job by whoever holds the ``cancel_token`` its 202 returned (sent as
  ``X-Cancel-Token: <token>`` or ``?cancel_token=<token>``) or an admin; a job owned by a
  name only by that name or an admin (403 ``forbidden`` when visible).
- Admin endpoints: 401 ``auth_required`` without a token, 403 ``forbidden`` for a
  non-admin token.

Reusable API for other handlers (e.g. ``POST /api/anime/orchestrate``, admin only)::

    from animenb.server.auth import AdminRequiredMixin, require_role

    class OrchestrateHandler(AdminRequiredMixin, BaseHandler):   # 1) a mixin, first in the bases
        async def post(self): ...                                # self.identity is the admin

    class OtherHandler(BaseHandler):
        def prepare(self):                                       # 2) or call it in prepare()
            super().prepare()
            require_role(self, "admin")                          # or "user": any valid token

        @role_required("admin")                                  # 3) or decorate one method
        def delete(self): ...

`require_role(handler, role)` raises `APIError` 401 (no token; the response carries
``WWW-Authenticate: Bearer``) or 403 (token without the role), rendered by the handlers'
JSON `write_error`. ``role="user"`` accepts any valid token (admins included).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from animenb.store.tokens_base import ANONYMOUS

from .mixins import HandlerMixin
from .validation import APIError

WWW_AUTHENTICATE = 'Bearer realm="animenb"'


@dataclass(frozen=True)
class Identity:
    """An authenticated caller (anonymous callers have no Identity: `current_user` is None)."""

    name: str
    role: str
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def bearer_token(request, *, allow_query: bool = False) -> str | None:
    """The token a request presents, or None; 401 for an Authorization header that is not `Bearer <token>`."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise APIError(
                401,
                "invalid_token",
                "The Authorization header must be `Bearer <token>`.",
                "Authorization",
                headers={"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        return value.strip()
    if allow_query:
        values = request.query_arguments.get("token")
        if values:
            return values[-1].decode("utf-8", "replace")
    return None


def identify(settings: dict, request, *, allow_query: bool = False) -> Identity | None:
    """The caller's Identity; None when anonymous; APIError 401 for a bad token."""
    token = bearer_token(request, allow_query=allow_query)
    if token is None:
        return None
    record = settings["animenb"].tokens.authenticate(token)
    if record is None:
        raise APIError(
            401,
            "invalid_token",
            "The bearer token is unknown or has been revoked.",
            "Authorization",
            headers={"WWW-Authenticate": f'{WWW_AUTHENTICATE}, error="invalid_token"'},
        )
    return Identity(name=record.name, role=record.role, token_id=record.id)


def can_read(identity: Identity | None, job) -> bool:
    if job.visibility != "private":
        return True
    return identity is not None and (identity.is_admin or identity.name == job.owner)


CANCEL_TOKEN_KEY = "cancel_token_sha256"  # in an anonymous job's `extra`: only the hash is stored


def new_cancel_token() -> tuple[str, dict]:
    """(the token for the 202, the job `extra` that records its hash)."""
    token = secrets.token_urlsafe(24)
    return token, {CANCEL_TOKEN_KEY: _digest(token)}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def can_cancel(identity: Identity | None, job, cancel_token: str | None = None) -> bool:
    if identity is not None and identity.is_admin:
        return True
    if job.owner == ANONYMOUS:
        stored = job.extra.get(CANCEL_TOKEN_KEY) if isinstance(job.extra, dict) else None
        if not (isinstance(stored, str) and stored and cancel_token):
            return False
        return hmac.compare_digest(_digest(cancel_token), stored)
    return identity is not None and identity.name == job.owner


class AuthMixin(HandlerMixin):
    """`get_current_user` (tornado's hook, cached per request) for any RequestHandler with the service in settings."""

    allow_query_token = False

    def get_current_user(self) -> Identity | None:
        return identify(self.settings, self.request, allow_query=self.allow_query_token)

    @property
    def identity(self) -> Identity | None:
        return self.current_user

    @property
    def user(self) -> str:
        """The owner name of the caller's jobs: the token's name, or "anonymous"."""
        identity = self.current_user
        return identity.name if identity is not None else ANONYMOUS

    def readable_job(self, job_id: str):
        """The job if the caller may read it, else None (`AnimeService.readable_job`)."""
        return self.settings["animenb"].readable_job(job_id, self.current_user)


def require_role(handler, role: str = "admin") -> Identity:
    """The caller's Identity if it has `role` ("admin", or "user" = any valid token); else APIError 401/403."""
    identity = handler.current_user
    if identity is None:
        raise APIError(
            401,
            "auth_required",
            "This endpoint needs `Authorization: Bearer <token>`.",
            "Authorization",
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )
    if role == "admin" and not identity.is_admin:
        raise APIError(
            403,
            "forbidden",
            f"This endpoint is for admins; token `{identity.name}` has role `{identity.role}`.",
            "Authorization",
        )
    return identity


def role_required(role: str = "admin") -> Callable:
    """Method decorator: `require_role(self, role)` before the method runs (sync or async)."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, *args: Any, **kwargs: Any):
            require_role(self, role)
            return method(self, *args, **kwargs)

        return wrapper

    return decorate


class AdminRequiredMixin(HandlerMixin):
    """Put first in a handler's bases: every method answers 401/403 unless the caller is an admin."""

    required_role = "admin"

    def prepare(self):
        result = super().prepare()
        require_role(self, self.required_role)
        return result

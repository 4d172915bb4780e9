"""What handlers pass to the service: who asks (`Caller`) and a job asking to be queued (`JobRequest`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from animenb.store.tokens_base import ANONYMOUS

from .auth import Identity
from .limits import client_key


@dataclass(frozen=True)
class Caller:
    """Who makes a request, as its handler found out: the identity (None: anonymous), the base of the
    WebSocket URLs in replies (`ws://host` or `wss://host`, from the request) and the client's address."""

    identity: Identity | None = None
    ws_base: str = ""
    address: str = ""  # the client's address (request.remote_ip)

    @property
    def name(self) -> str:
        """The owner name of the caller's jobs: the token's name, or "anonymous"."""
        return self.identity.name if self.identity is not None else ANONYMOUS

    @property
    def turn(self) -> str:
        """Whose turn a job of this caller takes in the queue (`JobRunner`: round-robin between callers):
        the token's name, or an anonymous caller's client (`client_key` of its address)."""
        return self.name if self.identity is not None else f"{ANONYMOUS}@{client_key(self.address)}"

    @property
    def is_admin(self) -> bool:
        return self.identity is not None and self.identity.is_admin

    @property
    def role(self) -> str:
        """ "anonymous", "user" or "admin": what limits the caller's jobs (`JobLimits`)."""
        return self.identity.role if self.identity is not None else "anonymous"


@dataclass(frozen=True)
class JobRequest:
    """A validated job asking to be queued (what `AnimeService.admit` decides on)."""

    kind: str  # a runner job kind: "phase", "orchestration" or "sweep"
    phase: int | None
    parameters: dict[str, Any] = field(repr=False)
    owner: str = ANONYMOUS
    visibility: str = "public"
    extra: dict[str, Any] | None = None  # the job's `extra` (e.g. an anonymous job's cancel-token hash)
    exempt_from_user_limit: bool = False  # admins' jobs do not count against the per-user limit
    role: str = "anonymous"  # the caller's role: its cap on the job's cost (JobLimits)
    children: int = 0  # jobs it queues at once besides itself (a sweep's cells): they count too

"""The API token store interface (bearer tokens with a role). Implementation: `tokens_sqlite`.

A token is `anb_<id>_<secret>`: the id (public, 8 hex digits) names the row, the secret
(32 random bytes, url-safe base64) is shown once by `create()` and stored only as its
sha256. A secret of 256 random bits needs no slow hash: nothing can be guessed from it.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

ROLES = ("admin", "user")
ANONYMOUS = "anonymous"
TOKEN_PREFIX = "anb_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class TokenError(ValueError):
    """A token that cannot be created or revoked (bad name, bad role, unknown token)."""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: str
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
            "active": self.active,
        }


def hash_secret(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    if type(name) is not str or not NAME_RE.match(name) or name == ANONYMOUS:
        raise TokenError(f"`name` must be 1-64 letters, digits or `_.@-` (not {ANONYMOUS!r}), got {name!r}.")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise TokenError(f"`role` must be one of {', '.join(ROLES)}, got {role!r}.")
    return role


class TokenStoreBase(ABC):
    @abstractmethod
    def create(self, name: str, role: str = "user") -> tuple[TokenRecord, str]:
        """A new token for `name`: (record, the token itself, shown once). TokenError if the name has a live token."""

    @abstractmethod
    def authenticate(self, token: str) -> TokenRecord | None:
        """The live token's record, or None (unknown, malformed or revoked)."""

    @abstractmethod
    def revoke(self, name_or_id: str) -> TokenRecord:
        """Revoke the live token with that name or id; TokenError when there is none."""

    @abstractmethod
    def list(self, *, include_revoked: bool = False) -> list[TokenRecord]:
        """Tokens, oldest first."""

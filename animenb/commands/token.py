"""`animenb token create|revoke|list`: bearer tokens of the API (stored as sha256 hashes in the job store)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

HELP = "create, revoke and list API bearer tokens (roles: admin, user)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None, help="where the server keeps jobs.sqlite (default $ANIMENB_HOME)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    home = argparse.ArgumentParser(add_help=False)  # --home also after the action
    home.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    create = actions.add_parser("create", parents=[home], help="create a token; it is printed once and never stored")
    create.add_argument("--name", required=True, help="owner name of the token's jobs (letters, digits, _.@-)")
    create.add_argument("--role", default="user", choices=["admin", "user"], help="role (default user)")
    revoke = actions.add_parser("revoke", parents=[home], help="revoke the live token with this name or id")
    revoke.add_argument("token", metavar="NAME|ID")
    listing = actions.add_parser("list", parents=[home], help="list tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")


def _store(home: str | None):
    from animenb import config
    from animenb.server.app import STORE_NAME
    from animenb.store.tokens_sqlite import SqliteTokenStore

    root = Path(home).expanduser().resolve() if home else config.home_dir()
    return SqliteTokenStore(root / STORE_NAME)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    from animenb.store.tokens_base import TokenError

    store = _store(args.home)
    try:
        if args.action == "create":
            record, token = store.create(args.name, args.role)
            print(token)
            print(
                f"created {record.role} token {record.id} for {record.name!r}; it is shown only this once "
                f"(use: Authorization: Bearer <token>)",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            record = store.revoke(args.token)
            print(f"revoked token {record.id} ({record.name}, {record.role})")
        else:
            records = store.list(include_revoked=args.all)
            print(f"{'ID':<9} {'NAME':<24} {'ROLE':<6} {'CREATED':<21} {'LAST USED':<21} REVOKED")
            for r in records:
                print(
                    f"{r.id:<9} {r.name:<24} {r.role:<6} {_when(r.created_at):<21} {_when(r.last_used_at):<21} "
                    f"{_when(r.revoked_at)}"
                )
    except TokenError as exc:
        raise ValueError(str(exc)) from None
    finally:
        store.close()
    return 0

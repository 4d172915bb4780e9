"""The token store (hashes only) and `animenb token create|list|revoke`."""
from __future__ import annotations

import hashlib
import sqlite3

import pytest


def test_tokens_are_stored_as_hashes_only(tmp_path):
    from animenb.store.tokens_base import TokenError
    from animenb.store.tokens_sqlite import SqliteTokenStore

    store = SqliteTokenStore(tmp_path / "jobs.sqlite")
    record, token = store.create("carol", "user")
    assert token.startswith(f"anb_{record.id}_") and len(token) > 40
    assert store.authenticate(token).id == record.id
    assert store.authenticate(token).name == "carol" and store.authenticate(token + "x") is None
    rows = sqlite3.connect(tmp_path / "jobs.sqlite").execute("SELECT * FROM tokens").fetchall()
    dump = repr(rows)
    assert token not in dump and token.rsplit("_", 1)[1] not in dump
    assert hashlib.sha256(token.encode()).hexdigest() in dump
    for bad in [("anonymous", "user"), ("../x", "user"), ("", "user"), ("dave", "root"), ("carol", "user")]:
        with pytest.raises(TokenError):
            store.create(*bad)
    store.revoke("carol")
    assert store.authenticate(token) is None
    assert store.create("carol", "admin")[0].role == "admin"  # a revoked name can be reused
    with pytest.raises(TokenError):
        store.revoke("nobody")


def test_token_cli_create_list_revoke(tmp_path, capsys):
    from animenb.cli import main
    from animenb.store.tokens_sqlite import SqliteTokenStore

    home = str(tmp_path / "home")
    assert main(["token", "create", "--role", "admin", "--name", "ops", "--home", home]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "--home", home, "list"]) == 0
    listing = capsys.readouterr().out
    assert "ops" in listing and "admin" in listing and token not in listing
    store = SqliteTokenStore(tmp_path / "home" / "jobs.sqlite")
    assert store.authenticate(token).role == "admin"
    record_id = store.list()[0].id
    assert main(["token", "revoke", record_id, "--home", home]) == 0
    assert store.authenticate(token) is None
    assert main(["token", "revoke", "ops", "--home", home]) == 2  # nothing live left: one readable line
    assert "No live token" in capsys.readouterr().err

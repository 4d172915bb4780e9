"""Shared fixtures: a real server on a free loopback port (the helpers live in serverkit.py)."""
from __future__ import annotations

import pytest

from serverkit import live_server


@pytest.fixture(scope="session")
def start_live_server():
    """`async with start_live_server(tmp_path, **ServerConfig fields) as srv:` a started server."""
    return live_server


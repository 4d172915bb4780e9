"""Shared fixtures: a real server on a free loopback port (the helpers live in serverkit.py)."""
from __future__ import annotations

import pytest

from serverkit import live_server


@pytest.fixture(scope="session")
def start_live_server():
    """`async with start_live_server(tmp_path, **ServerConfig fields) as srv:` a started server."""
    return live_server


# `make test` runs the suite on two processes (pytest-xdist, `--dist loadgroup`). A test file is one unit
# (its module fixtures — a server, a ComfyUI, a kernel — start once), and files that start a Ray cluster
# share one unit: two clusters on one small machine compete for the same ports and memory.
SHARED_GROUPS = {"test_ray_executor.py": "ray", "test_ray_cluster.py": "ray"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            name = item.path.name
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(name, name)))

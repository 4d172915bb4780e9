"""Shared fixtures: a real server on a free loopback port (the helpers live in serverkit.py)."""
from __future__ import annotations

import pytest

from serverkit import live_server


@pytest.fixture(scope="session")
def start_live_server():
    """`async with start_live_server(tmp_path, **ServerConfig fields) as srv:` a started server."""
    return live_server


# Test files that take minutes run first: `make test` shares the files out to two processes (pytest-xdist,
# `--dist loadfile`), and a long file that starts last keeps one process busy while the other idles.
LONG_FILES = ("test_wheel_install.py", "test_quality_gates.py", "test_faults.py", "test_ray_cluster.py",
              "test_ray_executor.py", "test_sweep_local.py", "test_jupyterlab.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: file order kept otherwise

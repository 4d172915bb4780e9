"""Schemathesis against a live `animenb serve` (loopback, tiny models): no 5xx, every response fits the document.

Bounded: 10 examples per operation, a fixed seed, 20 s per request, the whole run at most 8 minutes.
The server takes at most 4 queued jobs (then 429, which the document lists), so the valid bodies
schemathesis generates do not pile up work. The job socket is left out: it is a WebSocket upgrade,
which OpenAPI cannot describe (tests/test_openapi.py checks its messages).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from serverkit import free_port

pytestmark = pytest.mark.timeout(600)
BIN = Path(sys.executable).parent


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "ANIMENB_THREADS": "1"}
    log = open(tmp_path / "serve.log", "ab")
    proc = subprocess.Popen([str(BIN / "animenb"), "serve", "--port", str(port), "--models", "tiny",
                             "--home", str(tmp_path / "home"), "--outputs", str(tmp_path / "outputs"),
                             "--max-queue", "4", "--no-quality"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "animenb serve did not answer within 120 s"
            try:
                with urllib.request.urlopen(base + "/api/anime/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_schemathesis_finds_no_server_error_and_no_schema_break(server, tmp_path):
    done = subprocess.run(
        [str(BIN / "schemathesis"), "run", f"{server}/api/anime/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
                     "content_type_conformance",
         "--max-examples", "10", "--seed", "1", "--request-timeout", "20", "--max-failures", "10",
         "--exclude-path-regex", "^/ws/", "--no-color"],
        capture_output=True, text=True, timeout=480, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert " passed" in done.stdout and "generated" in done.stdout, report

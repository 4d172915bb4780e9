"""Ray nodes on this machine started the way an operator starts them: `ray start --head`, then
`ray start --address HEAD:PORT` per worker, each with its own temp dir, object store (200 MB),
one logical GPU (nothing uses CUDA), one CPU and its own ports. For tests/test_ray_cluster.py and
bench/ray_dispatch.py.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
OBJECT_STORE_BYTES = 200 * 1024 * 1024
# Two nodes on one machine must not share these (each defaults to a fixed port or a port file).
PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


@contextlib.contextmanager
def one_ray_cluster_at_a_time():
    """Held while a test module's Ray cluster lives: `make test` runs test files on two processes, and two
    clusters on one small machine compete for its ports, memory and CPUs (the other module waits)."""
    with open("/tmp/animenb-tests-ray.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def token_env(root: Path) -> dict[str, str]:
    """Ray's token authentication as an operator sets it up: one token file, handed to every node and to
    the server (here through RAY_AUTH_TOKEN_PATH, so no one's ~/.ray/auth_token is used or written)."""
    path = root / "auth_token"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """One `ray start --block` process group; `kill()` is the node dying, `stop()` a clean stop."""

    def __init__(self, temp_dir: Path, *, head_port: int | None = None, address: str | None = None, gpus: int = 1,
                 env: dict[str, str] | None = None):
        if (head_port is None) == (address is None):
            raise ValueError("give `head_port` (a head) or `address` (a worker)")
        self.temp_dir = temp_dir
        args = [str(RAY), "start", "--block", "--disable-usage-stats", "--num-cpus", "1", "--num-gpus", str(gpus),
                "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp_dir),
                "--node-ip-address", "127.0.0.1"]
        for flag in PORT_FLAGS:
            args += [flag, str(free_port())]
        if head_port is not None:
            args += ["--head", "--port", str(head_port), "--include-dashboard", "false"]
        else:
            args += ["--address", address]
        self.log = temp_dir.with_suffix(".log")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """The node dies: its raylet, object store and workers (our actor among them) at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

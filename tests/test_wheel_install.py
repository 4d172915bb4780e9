"""What a new user does first, on the package as pip installs it: build the wheel, install it with the
README's CPU recipe into a fresh venv outside the checkout, then from another directory run
`animenb demo`, one job through `animenb serve`, and the README's tour, extracted from the README
itself so that the text and this test cannot drift apart.

Slow (a fresh venv of ~100 packages: a few minutes with a warm pip cache), so it runs once per
module. The recipe pins torch to the CPU wheel through requirements/lock.txt; the test also checks
that pip resolved no CUDA package.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tornado.testing import bind_unused_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the install counts in the first test's time

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_blocks(section: str) -> list[str]:
    """The ```bash blocks of one `## section` of the README, in order."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no '## {section}' section"
    return re.findall(r"^```bash\n(.*?)^```", match.group(1), re.S | re.M)


def cpu_recipe() -> list[str]:
    """The CPU install line of the README's Install section, as pip arguments (without `pip install`).
    Where pip is given a local wheel folder (PIP_FIND_LINKS, as on CI machines without PyTorch's index),
    the lock's torch comes from there and the recipe's PyTorch index is left out."""
    for block in readme_blocks("Install"):
        for line in block.splitlines():
            if line.startswith("pip install") and "lock.txt" in line:
                args = shlex.split(line.split("#", 1)[0])[2:]
                if os.environ.get("PIP_FIND_LINKS") and "--extra-index-url" in args:
                    at = args.index("--extra-index-url")
                    del args[at:at + 2]
                return args
    raise AssertionError("README's Install section has no `pip install ... -c requirements/lock.txt` line")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, environment, a working directory outside the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    dist, venv, work = base / "dist", base / "venv", base / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ANIMENB_MODELS")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, env=env, cwd=base)
    wheel, = dist.glob("animenb-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The README's recipe, run from the checkout (the lock path is relative), with the built wheel for `.`.
    args = [str(wheel) if a == "." else a for a in cpu_recipe()]
    report = base / "pip-report.json"
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--report", str(report), *args],
                   check=True, env=env, cwd=ROOT)
    names = [item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]]
    assert not [n for n in names if n.startswith(("nvidia-", "triton")) and n != "nvidia-ml-py"], names
    bin_dir = venv / "bin"
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", ANIMENB_HOME=str(base / "home"),
               TRANSFORMERS_VERBOSITY="error", ANIMENB_THREADS="1")
    # Its kernels must be the venv's own python (a user's `python3` kernelspec could be any Python).
    subprocess.run([str(bin_dir / "python"), "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return bin_dir, env, work


def run(cmd: str, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], env=env, cwd=cwd, timeout=timeout,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd}\n-> exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_carries_its_data_and_runs_the_demo(installed):
    bin_dir, env, work = installed
    out = run("python -c 'import animenb, animenb.config as c; print(animenb.__file__, c.notebooks_dir())'", env, work)
    package_file, notebooks = out.stdout.split()
    assert "site-packages" in package_file and "site-packages" in notebooks  # not the checkout
    assert (Path(notebooks) / "01_character_sheet.ipynb").is_file()
    demo = run("animenb demo --steps 2", env, work)
    assert (work / "outputs").is_dir() and "sheet" in demo.stdout


class Served:
    """`animenb serve` of the installed package, started from `cwd` on a free port."""

    def __init__(self, env: dict, cwd: Path, command: str = "animenb serve --port {port}"):
        sock, self.port = bind_unused_port()
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(["bash", "-c", "exec " + command.format(port=self.port)], env=env, cwd=cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def health(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                with urllib.request.urlopen(f"{self.url}/api/anime/health", timeout=5) as resp:
                    body = json.load(resp)
                if body["components"]["kernels"]["ready"]:
                    return body
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("animenb serve did not get a ready kernel")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:  # it died already: the test's own failure says why
            pass
        self.proc.wait(60)


def test_serve_runs_a_job_from_another_directory(installed):
    bin_dir, env, work = installed
    server = Served(env, work)
    try:
        health = server.health()
        assert health["status"] == "healthy", health["degraded_reasons"]
        assert health["limits"]["profile_default_size"] == 64  # the shipped tiny profile was found
        request = urllib.request.Request(f"{server.url}/api/anime/generate", method="POST",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"prompt": "anime girl", "steps": 2}).encode())
        with urllib.request.urlopen(request, timeout=30) as resp:
            job_id = json.load(resp)["job_id"]
        watched = run(f"animenb watch {job_id} --url {server.url} --no-progress", env, work)
        assert "succeeded" in watched.stdout
        assert (work / "outputs" / job_id / "manifest.json").is_file()
    finally:
        server.stop()


def test_the_readme_tour_runs_as_written(installed):
    """The tour's first block starts the server (terminal 1); the others run in order (terminal 2)."""
    bin_dir, env, work = installed
    serve, *steps = readme_blocks("Tour")
    assert serve.strip().startswith("animenb serve")
    server = Served(env, work, serve.strip().split("#", 1)[0].strip() + " --port {port}")
    try:
        server.health()
        tour_env = {**env, "ANIMENB_URL": server.url}  # the client commands' default server
        for block in steps:
            run(block.replace("127.0.0.1:8328", f"127.0.0.1:{server.port}"), tour_env, work)
    finally:
        server.stop()

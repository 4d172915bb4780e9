"""A real ComfyUI server for tests: installed on first use, started once per session, stopped by PID.

Import the fixtures into a test module (conftest.py belongs to the whole suite):

    from tests.comfyui.fixtures import comfyui_server, comfyui_factory  # noqa: F401

The install (tests/comfyui/install.sh) and the reduced SD 1.5 checkpoint
(tests/comfyui/make_checkpoint.py) are cached under ${ANIMENB_HOME:-~/.cache/animenb}/comfyui,
so only the first run on a machine pays for them (~2 min). Locally a failed install
skips the ComfyUI tests with the reason; under CI=true it fails them. Set
ANIMENB_SKIP_COMFYUI=1 to skip them on purpose (ignored under CI=true).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHECKPOINT = "animenb-tiny-sd15.safetensors"
CONTROLNET = "animenb-tiny-openpose-sd15.safetensors"  # models/controlnet: the sheet's pose control
# ComfyUI's torch threads: 1 keeps a 2-core machine that also runs the test process (and other
# suites) from oversubscribing; with 2 threads a busy machine made sampling ~5x slower.
THREADS = os.environ.get("ANIMENB_COMFYUI_THREADS", "1")


def install_root() -> Path:
    return Path(os.environ.get("ANIMENB_HOME") or Path.home() / ".cache" / "animenb") / "comfyui"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skip locally, fail under CI=true: CI must run the ComfyUI tests."""
    if _in_ci():
        pytest.fail(f"ComfyUI tests cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(f"ComfyUI not available: {reason}")


def ensure_install() -> Path:
    """Run install.sh (a no-op once its stamp exists) and make the test checkpoint; returns the root."""
    root = install_root()
    started = time.perf_counter()
    done = subprocess.run(["bash", str(HERE / "install.sh")], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"install.sh exited {done.returncode}:\n{done.stderr[-3000:]}")
    made = subprocess.run([str(root / "venv" / "bin" / "python"), str(HERE / "make_checkpoint.py"),
                           "--comfyui-dir", str(root / "src"), "--out", CHECKPOINT, "--controlnet", CONTROLNET],
                          capture_output=True, text=True, timeout=600, env=_server_env(root))
    if made.returncode != 0:
        raise RuntimeError(f"make_checkpoint.py exited {made.returncode}:\n{made.stderr[-3000:]}")
    if time.perf_counter() - started > 5:
        print(f"\nComfyUI install + checkpoint ready in {time.perf_counter() - started:.0f}s at {root}",
              file=sys.stderr)
    return root


def _server_env(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root / "stubs")  # the torchvision stand-in, and nothing of ours
    env.pop("VIRTUAL_ENV", None)
    env.update(OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS, PYTHONUNBUFFERED="1",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyUIProcess:
    """One ComfyUI server process on a free loopback port with temporary input/output/user dirs."""
    root: Path
    workdir: Path
    custom_nodes: list[Path] = field(default_factory=list)
    model_paths: dict[str, Path] = field(default_factory=dict)  # extra model folders, e.g. {"clip_vision": ...}
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "comfyui.log"

    def start(self, timeout: float = 180.0) -> "ComfyUIProcess":
        self.port = self.port or free_port()
        dirs = {name: self.workdir / name for name in ("output", "input", "temp", "user")}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        command = [str(self.root / "venv" / "bin" / "python"), "main.py", "--cpu", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--disable-auto-launch", "--disable-api-nodes",
                   "--output-directory", str(dirs["output"]), "--input-directory", str(dirs["input"]),
                   "--temp-directory", str(dirs["temp"]), "--user-directory", str(dirs["user"]),
                   "--database-url", "sqlite:///:memory:"]
        if self.custom_nodes or self.model_paths:
            extra = {"base_path": str(self.workdir), **{kind: str(path) for kind, path in self.model_paths.items()}}
            if self.custom_nodes:
                extra["custom_nodes"] = "\n".join(str(p) for p in self.custom_nodes)
            config = self.workdir / "extra_model_paths.yaml"
            config.write_text(json.dumps({"animenb_tests": extra}))  # JSON is YAML
            command += ["--extra-model-paths-config", str(config)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, cwd=self.root / "src", env=_server_env(self.root), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        atexit.register(self.stop)  # also when a test run is interrupted before fixture teardown
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer /system_stats within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def write_stub_pack_models(models: Path) -> dict[str, Path]:
    """Model files for the IP-Adapter stand-in pack: a placeholder adapter and a CLIP vision file
    (plus a broken checkpoint, to make an execution error on demand).

    The CLIP vision file holds just the keys ComfyUI's loader reads to pick the ViT-L config,
    so CLIPVisionLoader builds the model (with uninitialised weights) from a few kilobytes.
    """
    import numpy as np
    from safetensors.numpy import save_file

    paths = {"clip_vision": models / "clip_vision", "ipadapter": models / "ipadapter",
             "checkpoints": models / "checkpoints"}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    save_file({"image_proj.norm.weight": np.ones(768, np.float16)},
              str(paths["ipadapter"] / "animenb-stub-ip-adapter_sd15.safetensors"))
    save_file({"vision_model.encoder.layers.0.layer_norm1.weight": np.ones(1024, np.float16),
               "vision_model.encoder.layers.22.layer_norm1.weight": np.ones(1024, np.float16),
               "vision_model.embeddings.position_embedding.weight": np.zeros((257, 1024), np.float16)},
              str(paths["clip_vision"] / "animenb-stub-clip-vit-l.safetensors"))
    # Listed by CheckpointLoaderSimple (after the real one), fails when loaded: an execution error.
    (paths["checkpoints"] / "zz-animenb-broken.safetensors").write_bytes(b"not a safetensors file")
    return paths


def _start_or_fail(root: Path, workdir: Path, custom_nodes: list[Path],
                   model_paths: dict[str, Path] | None = None) -> ComfyUIProcess:
    server = ComfyUIProcess(root=root, workdir=workdir, custom_nodes=custom_nodes, model_paths=model_paths or {})
    try:
        return server.start()
    except (RuntimeError, OSError) as exc:
        unavailable(f"the server did not start: {exc}")


@pytest.fixture(scope="session")
def comfyui_install() -> Path:
    if os.environ.get("ANIMENB_SKIP_COMFYUI") and not _in_ci():
        pytest.skip("ANIMENB_SKIP_COMFYUI is set")
    if shutil.which("bash") is None:
        unavailable("bash is missing")
    try:
        return ensure_install()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"install failed (tests/comfyui/install.sh): {exc}")


@pytest.fixture(scope="session")
def comfyui_server(comfyui_install):
    """The session's plain ComfyUI: built-in nodes only, the reduced SD 1.5 checkpoint."""
    workdir = Path(tempfile.mkdtemp(prefix="animenb-comfyui-"))
    server = _start_or_fail(comfyui_install, workdir, [])
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def comfyui_packs_server(comfyui_install):
    """A second ComfyUI with the IP-Adapter stand-in pack (tests/comfyui/custom_nodes) and its models."""
    workdir = Path(tempfile.mkdtemp(prefix="animenb-comfyui-packs-"))
    model_paths = write_stub_pack_models(workdir / "models")
    server = _start_or_fail(comfyui_install, workdir, [HERE / "custom_nodes"], model_paths)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def comfyui_factory(comfyui_install, tmp_path):
    """Start extra, private ComfyUI servers (e.g. one to kill); all are stopped after the test."""
    servers = []

    def start(custom_nodes: list[Path] | None = None) -> ComfyUIProcess:
        workdir = tmp_path / f"comfyui-{len(servers)}"
        server = _start_or_fail(comfyui_install, workdir, custom_nodes or [])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()

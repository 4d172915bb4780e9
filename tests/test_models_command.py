"""`animenb models list|check|download` offline: a hub-layout cache with HF_HUB_OFFLINE=1, and downloads from a
local stand-in for the hub's file API (tests/hubkit.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubkit import FakeHub, write_hub_cache

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE = """name: hubbed
default_size: 512
roles:
  sd: org/anime-sd
  ip_adapter: {source: org/ip, subfolder: models, weight_name: ip-adapter_sd15.safetensors}
"""
# Distinct contents: huggingface_hub fetches one blob per ETag.
SD_FILES = {"model_index.json": b'{"m": 1}', "unet/config.json": b'{"u": 1}',
            "unet/diffusion_pytorch_model.safetensors": b"U" * 300,
            "unet/diffusion_pytorch_model.fp16.safetensors": b"H" * 150, "unet/diffusion_pytorch_model.bin": b"B" * 900,
            "tokenizer/vocab.json": b'{"v": 1}', "tokenizer/merges.txt": b"#version: 0.2"}
IP_FILES = {"models/ip-adapter_sd15.safetensors": b"I" * 40, "models/ip-adapter-plus_sd15.safetensors": b"P" * 80,
            "models/image_encoder/config.json": b'{"e": 1}', "models/image_encoder/model.safetensors": b"E" * 60,
            "sdxl_models/ip-adapter_sdxl.safetensors": b"X" * 500}


def animenb(*args: str, env: dict, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "animenb.cli", "models", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get(
                              "PYTHONPATH", "")]), **env}, input=stdin, timeout=120)


@pytest.fixture
def profile(tmp_path) -> Path:
    path = tmp_path / "hubbed.yaml"
    path.write_text(PROFILE)
    return path


def test_check_reads_the_hub_cache_offline(tmp_path, profile):
    cache = tmp_path / "hf" / "hub"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    missing = animenb("check", str(profile), env=env)
    assert missing.returncode == 1 and missing.stdout.count("MISSING") == 2, missing.stdout + missing.stderr
    assert "animenb models download" in missing.stderr
    write_hub_cache(cache, "org/anime-sd", SD_FILES)
    half = animenb("check", str(profile), env=env)
    assert half.returncode == 1
    assert "sd               present" in half.stdout and "ip_adapter       MISSING" in half.stdout
    write_hub_cache(cache, "org/ip", IP_FILES)
    done = animenb("check", str(profile), env=env)
    assert done.returncode == 0 and "MISSING" not in done.stdout, done.stdout
    assert str(cache) in done.stdout


def test_download_shows_sizes_and_licences_then_fetches_only_the_roles_files(tmp_path, profile):
    with FakeHub({"org/anime-sd": (SD_FILES, "creativeml-openrail-m"), "org/ip": (IP_FILES, "apache-2.0")}) as hub:
        env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test",
               "HF_HUB_DISABLE_XET": "1"}
        refused = animenb("download", str(profile), env=env)
        assert refused.returncode == 2 and "--yes" in refused.stderr, refused.stdout + refused.stderr
        assert "licence: creativeml-openrail-m" in refused.stdout and "licence: apache-2.0" in refused.stdout
        assert hub.downloads == []
        done = animenb("download", str(profile), "--yes", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert sorted(hub.downloads) == sorted(
            [f"org/anime-sd/{p}" for p in ("model_index.json", "unet/config.json",
                                            "unet/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json",
                                            "tokenizer/merges.txt")] +
            [f"org/ip/{p}" for p in ("models/ip-adapter_sd15.safetensors", "models/image_encoder/config.json",
                                      "models/image_encoder/model.safetensors")])
        offline = animenb("check", str(profile), env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
        assert offline.returncode == 0, offline.stdout
        local = animenb("download", str(profile), "--yes", "--local-dir", str(tmp_path / "copy"), env=env)
        assert local.returncode == 0, local.stderr
        assert (tmp_path / "copy" / "org" / "ip" / "models" / "ip-adapter_sd15.safetensors").read_bytes() == b"I" * 40


def test_ray_actors_get_the_hub_settings(tmp_path, monkeypatch):
    from animenb.runner.ray_executor import RayExecutor

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("ANIMENB_LORAS", str(tmp_path / "loras"))
    env = RayExecutor(env={"ANIMENB_MODELS": "tiny"}, outputs_dir=tmp_path).env
    assert env["HF_HOME"] == str(tmp_path / "hf") and env["HF_TOKEN"] == "hf_secret"
    assert env["ANIMENB_LORAS"] == str(tmp_path / "loras") and env["ANIMENB_MODELS"] == "tiny"


def test_list_shows_profiles_and_files(tmp_path):
    from animenb import tiny

    tiny.build_embedding(tmp_path / "emb" / "EasyNegative.safetensors")
    listed = animenb("list", env={"ANIMENB_EMBEDDINGS": str(tmp_path / "emb")})
    assert listed.returncode == 0 and "anime-sd15" in listed.stdout and "EasyNegative" in listed.stdout

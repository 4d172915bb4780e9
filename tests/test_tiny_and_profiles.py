"""Tiny models build offline and load through the real loaders; profiles resolve or fail clearly."""
import pytest

from animenb.profiles import ModelNotAvailableError, TINY_LABEL, available_profiles, load_profile
from animenb.tiny import IP_ADAPTER_WEIGHT, ROLES, ensure_tiny_models, tiny_dir


def test_tiny_folders_are_complete_and_reused(tmp_path):
    folders = ensure_tiny_models(tmp_path)
    assert set(folders) == set(ROLES)
    assert (folders["sd"] / "model_index.json").is_file()
    assert (folders["svd"] / "model_index.json").is_file()
    assert (folders["motion_adapter"] / "config.json").is_file()
    assert (folders["ip_adapter"] / "models" / IP_ADAPTER_WEIGHT).is_file()
    assert (folders["ip_adapter"] / "models" / "image_encoder" / "config.json").is_file()
    stamp = (folders["sd"] / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_models(tmp_path) == folders
    assert (folders["sd"] / "model_index.json").stat().st_mtime_ns == stamp  # not rebuilt


def test_missing_tiny_role_is_rebuilt(tmp_path):
    import shutil

    folders = ensure_tiny_models(tmp_path)
    shutil.rmtree(folders["motion_adapter"])
    assert (ensure_tiny_models(tmp_path)["motion_adapter"] / "config.json").is_file()
    assert tiny_dir(tmp_path) == folders["sd"].parent


def test_tiny_profile_is_labelled():
    profile = load_profile("tiny")
    assert profile.is_tiny and profile.label == TINY_LABEL == "tiny (random weights)"
    assert profile.default_size == 64
    assert {"tiny", "anime-sd15"} <= set(available_profiles())


def test_real_profile_names_public_ids():
    profile = load_profile("anime-sd15")
    assert not profile.is_tiny
    assert profile.role("ip_adapter").source == "h94/IP-Adapter"
    assert profile.role("svd").source == "stabilityai/stable-video-diffusion-img2vid-xt"


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="`models` must be one of .*tiny"):
        load_profile("no-such-profile")


def test_missing_local_weights_name_role_and_fix(tmp_path):
    path = tmp_path / "local.yaml"
    path.write_text(f"name: local\nroles:\n  sd: {tmp_path}/nowhere\n")
    profile = load_profile(path)
    with pytest.raises(ModelNotAvailableError, match=r"`sd` of profile `local`.*does not exist.*Fix"):
        profile.resolve("sd")


def test_offline_hub_id_names_role_id_and_fix(tmp_path, monkeypatch):
    from animenb.models import pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = tmp_path / "hub.yaml"
    path.write_text("name: hub\nroles:\n  sd: someone/not-cached-anywhere\n")
    with pytest.raises(ModelNotAvailableError) as err:
        pipeline("sd", load_profile(path))
    message = str(err.value)
    assert "`sd`" in message and "someone/not-cached-anywhere" in message and "--models tiny" in message

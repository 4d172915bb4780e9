"""GET /api/anime/models on a live server: names, sizes and hashes of the model files, never their paths."""
from __future__ import annotations

import hashlib

import pytest

from animenb import tiny


@pytest.mark.asyncio
async def test_models_lists_files_without_paths(tmp_path, monkeypatch, start_live_server):
    loras, embeddings = tmp_path / "loras", tmp_path / "embeddings"
    tiny.build_lora(loras / "chars" / "alice.safetensors")
    tiny.build_embedding(embeddings / "EasyNegative.safetensors")
    (loras / "notes.txt").write_text("not a LoRA")
    monkeypatch.setenv("ANIMENB_LORAS", str(loras))
    monkeypatch.setenv("ANIMENB_EMBEDDINGS", str(embeddings))
    monkeypatch.setenv("ANIMENB_CHECKPOINTS", str(tmp_path / "none"))
    monkeypatch.setenv("ANIMENB_VAES", str(tmp_path / "none"))
    async with start_live_server(tmp_path, models="tiny") as srv:
        code, body, _ = await srv.request("GET", "/api/anime/models")
    assert code == 200
    assert body["checkpoints"] == body["vae"] == []
    assert [e["name"] for e in body["loras"]] == ["chars/alice"]
    data = (loras / "chars" / "alice.safetensors").read_bytes()
    assert body["loras"][0]["bytes"] == len(data) and body["loras"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    embedding = body["embeddings"][0]
    assert (embedding["name"], embedding["file"]) == ("EasyNegative", "EasyNegative.safetensors")
    assert str(tmp_path) not in str(body["loras"]) + str(body["embeddings"])

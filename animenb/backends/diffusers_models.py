"""Per-job model choices on a warm diffusers pipeline: LoRAs, textual-inversion embeddings, clip skip.

A warm kernel keeps its pipelines between jobs, so whatever one job adds must not reach the next:
LoRAs stay loaded as peft adapters (switching back costs no reload) but only the ones a job names are
active, and a job without LoRAs runs with every adapter disabled, which is the base model exactly
(tested: the same bytes as a fresh kernel). Embeddings add tokens that only a prompt naming them uses.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import model_files

MAX_LOADED_LORAS = 8  # adapters kept loaded per model; the least recently used is deleted past this
LORA_COMPONENTS = ("unet", "text_encoder")


def adapter_name(entry: model_files.ModelFile) -> str:
    # peft adapter names end up in module attribute paths: keep them to word characters.
    return re.sub(r"\W", "_", entry.name) + "_" + model_files.short_hash(entry)


def use_loras(pipe, loras) -> list[dict]:
    """Activate exactly `loras` ((name, path or ModelFile, weight), ...) on `pipe`; returns what A1111 records
    for each ({"name", "hash", "weight"}). ValueError for a LoRA that is not in the folder or does not fit."""
    entries = [
        (name if isinstance(name, model_files.ModelFile) else model_files.find("loras", name), weight)
        for name, weight in loras
    ]
    # Kept per model, not per pipeline: SD and SD + ControlNet share the UNet, and all of them (AnimateDiff too)
    # share the text encoder, so what one pipeline loaded is there, maybe active, for the others.
    loaded = {component: getattr(getattr(pipe, component), "_animenb_loras", []) for component in LORA_COMPONENTS}
    for entry, _ in entries:
        name = adapter_name(entry)
        missing = [component for component in LORA_COMPONENTS if name not in loaded[component]]
        if missing:
            _load_lora(pipe, missing, entry, name)
        for names in loaded.values():
            if name in names:
                names.remove(name)
            names.append(name)  # most recently used last
    for component, names in loaded.items():
        while len(names) > MAX_LOADED_LORAS:
            _delete_adapter(pipe, component, names.pop(0))
        getattr(pipe, component)._animenb_loras = names
    if entries:
        pipe.enable_lora()
        pipe.set_adapters([adapter_name(e) for e, _ in entries], [w for _, w in entries])
    elif any(loaded.values()):
        pipe.disable_lora()
    return [{"name": e.name, "hash": model_files.short_hash(e), "weight": w} for e, w in entries]


MOTION_LORA_WEIGHT_NAME = "diffusion_pytorch_model.safetensors"  # as in guoyww/animatediff-motion-lora-*


def find_motion_lora(name: str) -> model_files.ModelFile:
    """An AnimateDiff motion LoRA: a name in the LoRA folder, a path, or a hub id (`owner/repo`, its
    diffusers-format file fetched, or taken from the hub cache when HF_HUB_OFFLINE is set)."""
    try:
        return model_files.find("loras", name)
    except ValueError as not_local:
        if name.count("/") != 1 or name.startswith(("/", ".", "~")):
            raise
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            path = Path(hf_hub_download(name, MOTION_LORA_WEIGHT_NAME))
        except (HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as exc:
            raise ValueError(
                f"`motion_lora` {name!r}: {not_local} Nor is it a hub repo with "
                f"{MOTION_LORA_WEIGHT_NAME} ({str(exc).splitlines()[0][:160]})."
            ) from exc
        return model_files.ModelFile("loras", name.split("/")[1], path)


def unload_loras(pipe) -> None:
    """Remove every LoRA layer from `pipe`'s UNet and text encoder (and forget them)."""
    pipe.unload_lora_weights()
    for component in LORA_COMPONENTS:
        getattr(pipe, component)._animenb_loras = []


def _load_lora(pipe, components: list[str], entry: model_files.ModelFile, name: str) -> None:
    """Load the LoRA's layers into the given models of `pipe` only (what `load_lora_weights` does for both):
    the other one may hold them already, loaded through another pipeline. A LoRA without layers for a model
    loads nothing there."""
    try:
        state_dict, alphas, metadata = pipe.lora_state_dict(
            str(entry.path.parent), weight_name=entry.path.name, return_lora_metadata=True
        )
        if not all("lora" in key for key in state_dict):
            raise ValueError("not a LoRA file: some parameter names lack 'lora'")
        if "unet" in components:
            pipe.load_lora_into_unet(
                state_dict, alphas, unet=pipe.unet, adapter_name=name, metadata=metadata, _pipeline=pipe
            )
        if "text_encoder" in components:
            pipe.load_lora_into_text_encoder(
                state_dict,
                alphas,
                text_encoder=pipe.text_encoder,
                lora_scale=pipe.lora_scale,
                adapter_name=name,
                metadata=metadata,
                _pipeline=pipe,
            )
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"LoRA `{entry.name}` does not fit this model ({str(exc).splitlines()[0][:200]}).") from exc


def _delete_adapter(pipe, component: str, name: str) -> None:
    model = getattr(pipe, component)
    if name not in getattr(model, "peft_config", {}):
        return  # the LoRA had no layers for this model
    if component == "unet":
        model.delete_adapters(name)
    else:
        from diffusers.utils.peft_utils import delete_adapter_layers

        delete_adapter_layers(model, name)


def use_embeddings(pipe, *prompts: str) -> list[dict]:
    """Load the embeddings the prompts name (once per pipeline); returns {"name", "hash"} for each."""
    # Kept on the tokenizer, which SD and AnimateDiff pipelines share (as they share the text encoder).
    loaded: set = getattr(pipe.tokenizer, "_animenb_embeddings", set())
    found = model_files.mentioned_embeddings(*prompts)
    for entry in found:
        if entry.name in loaded:
            continue
        try:
            pipe.load_textual_inversion(str(entry.path), token=entry.name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(
                f"embedding `{entry.name}` does not fit this model ({str(exc).splitlines()[0][:200]})."
            ) from exc
        loaded.add(entry.name)
    pipe.tokenizer._animenb_embeddings = loaded
    return [{"name": e.name, "hash": model_files.short_hash(e)} for e in found]


def strip_comfyui_embedding_syntax(prompt: str) -> str:
    """ComfyUI writes `embedding:Name`; diffusers' tokens are the bare name."""
    return re.sub(r"\bembedding:", "", prompt or "")


def prompt_embeds(pipe, prompt: str, negative_prompt: str | None, clip_skip: int | None) -> dict:
    """The pipeline call's prompt arguments. With A1111's `clip_skip` >= 2 the text is encoded here from
    CLIP's layer `-clip_skip` (through the final layer norm, as A1111 does): diffusers' own `clip_skip`
    reaches for `text_encoder.text_model`, which transformers 5's CLIPTextModel no longer has."""
    if clip_skip in (None, 1):
        return {"prompt": prompt, "negative_prompt": negative_prompt}
    import torch

    encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm

    def encode(text: str):
        text = pipe.maybe_convert_prompt(text, tokenizer)  # multi-vector embeddings' extra tokens
        ids = tokenizer(
            text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(encoder.device)
        with torch.no_grad():
            hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
            return final_norm(hidden).to(encoder.dtype)

    return {"prompt_embeds": encode(prompt), "negative_prompt_embeds": encode(negative_prompt or "")}

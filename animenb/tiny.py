"""Random-weight tiny models, built locally in seconds, for offline tests and demos.

Each role gets a folder saved with `save_pretrained`, so it loads back through exactly
the code real weights use (`from_pretrained`, `load_ip_adapter`). Shapes follow SD 1.5
at a small scale (see FACTS.md): 8x8 latents for a 64 px image from a 4-block VAE, a
byte-level CLIP tokenizer that needs no download, an AnimateDiff MotionAdapter matching
the UNet, an SVD pipeline whose image encoder takes 224 px inputs, and an IP-Adapter
folder in h94/IP-Adapter's layout, and an
OpenPose-role ControlNet made from the UNet. Outputs of these models are noise by construction.

Sized to be fast at every size the API accepts (64-2048 px), not only at the tests' 64 px:
the UNets have 4 levels with attention only at the lowest one (latent / 8), and the VAEs are
as narrow as their GroupNorms allow, without the SD VAE's mid-block attention. Attention at
the full latent resolution made a 512 px pose cost ~2 s per step on one CPU (4096 tokens,
quadratic), the same pose now costs ~35 ms per step; see bench/results/README.md.

Folders live under `<ANIMENB_HOME>/tiny/<TINY_VERSION>/<role>` and are rebuilt when missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .config import home_dir

TINY_VERSION = "v3"  # in the cache path: a new shape never reuses an old folder
ROLES = ("sd", "motion_adapter", "svd", "ip_adapter", "controlnet")
IP_ADAPTER_WEIGHT = "ip-adapter_tiny.safetensors"
_SEED = 0
_CROSS_DIM = 32
# UNet levels: attention (self, cross, motion's spatial twin) only at the last, lowest one.
_UNET_CHANNELS = (4, 8, 16, 32)
_UNET_GROUPS = 4
# SVD's UNet and temporal VAE hard-code 32 GroupNorm groups, so 32 channels is their floor.
_SVD_CHANNELS = (32, 32, 32, 32)
# SVD UNet layers per level: down blocks are bare down-samplers except at the lowest level (the up
# blocks keep one resnet each). A 512 px step runs 50 frames (25 x 2 for guidance) at 64x64 latents,
# and the full-resolution resnets were most of it: 1.7 -> 0.95 s per step on 2 CPUs.
_SVD_LAYERS = (0, 0, 0, 1)
# The ControlNet's hint encoder (pose image -> latent size), whose first two convolutions run at full resolution.
_HINT_CHANNELS = (1, 2, 4, 8)
_COMPLETE = ".complete"


def tiny_dir(home: Path | None = None) -> Path:
    return (home or home_dir()) / "tiny" / TINY_VERSION


def ensure_tiny_models(home: Path | None = None) -> dict[str, Path]:
    """Return {role: folder}, building any role whose folder is missing or incomplete."""
    root = tiny_dir(home)
    return {role: _ensure(root / role, _BUILDERS[role]) for role in ROLES}


def _ensure(folder: Path, build) -> Path:
    if (folder / _COMPLETE).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builders (kernels, tests) never see half a folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(staging)
        (staging / _COMPLETE).write_text(TINY_VERSION)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / _COMPLETE).exists():  # lost a race to an incomplete folder: surface it
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _byte_tokenizer():
    """A CLIP tokenizer over the 256 byte symbols (plus their `</w>` forms) with no merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({f"{s}</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_encoder(vocab_size: int):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(_SEED)
    config = CLIPTextConfig(
        hidden_size=_CROSS_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=_CROSS_DIM,
    )
    return CLIPTextModel(config)


def _vision_encoder():
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(_SEED + 1)
    # 224 px / patch 32: PIL inputs go through the standard 224 px CLIP preprocessing.
    config = CLIPVisionConfig(
        hidden_size=_CROSS_DIM,
        projection_dim=_CROSS_DIM,
        num_hidden_layers=5,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=224,
        patch_size=32,
    )
    return CLIPVisionModelWithProjection(config)


def _image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})


def _unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(_SEED + 2)
    levels = len(_UNET_CHANNELS)
    return UNet2DConditionModel(
        block_out_channels=_UNET_CHANNELS,
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=_UNET_GROUPS,
        cross_attention_dim=_CROSS_DIM,
        attention_head_dim=4,
    )


def _vae():
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(_SEED + 3)
    # 4 blocks = 8x down-sampling like real SD; 2 blocks made SD 20x slower (FACTS.md). 8 channels at
    # full resolution and no mid-block attention (quadratic in the latent's pixels): a 512 px decode
    # costs ~0.14 s on one CPU instead of ~1.3 s.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        mid_block_add_attention=False,
        sample_size=512,
    )  # = SD's: VAE tiles of 512 px


def build_sd(folder: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer = _byte_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def _motion_adapter():
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(_SEED + 4)
    # Its blocks and layers per block must match the UNet's (FACTS.md).
    return MotionAdapter(
        block_out_channels=_UNET_CHANNELS,
        motion_layers_per_block=1,
        motion_num_attention_heads=1,
        motion_norm_num_groups=_UNET_GROUPS,
        motion_max_seq_length=32,
    )


def build_motion_adapter(folder: Path) -> None:
    _motion_adapter().save_pretrained(folder)


def build_svd(folder: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )

    torch.manual_seed(_SEED + 5)
    levels = len(_SVD_CHANNELS)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=_SVD_CHANNELS,
        layers_per_block=_SVD_LAYERS,
        sample_size=8,
        in_channels=8,
        out_channels=4,
        cross_attention_dim=_CROSS_DIM,
        num_attention_heads=4,
        down_block_types=("DownBlockSpatioTemporal",) * (levels - 1) + ("CrossAttnDownBlockSpatioTemporal",),
        up_block_types=("CrossAttnUpBlockSpatioTemporal",) + ("UpBlockSpatioTemporal",) * (levels - 1),
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    )
    torch.manual_seed(_SEED + 6)
    # Already its floor: 32 channels (GroupNorm), 4 levels (8x latents) and 1 layer per block (its
    # mid-block needs a resnet; up blocks get one more), so 512 px frames cost ~1.3 s each on 2 CPUs.
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=_SVD_CHANNELS,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=_vision_encoder(), unet=unet, scheduler=scheduler, feature_extractor=_image_processor()
    )
    pipe.save_pretrained(folder)


def build_ip_adapter(folder: Path) -> None:
    """h94/IP-Adapter layout: models/<weight>.safetensors + models/image_encoder/."""
    import torch
    from safetensors.torch import save_file

    models = folder / "models"
    _vision_encoder().save_pretrained(models / "image_encoder")
    unet = _unet()
    generator = torch.Generator().manual_seed(_SEED + 7)
    tokens = 4
    state = {
        "image_proj.proj.weight": torch.randn(tokens * _CROSS_DIM, _CROSS_DIM, generator=generator) * 0.02,
        "image_proj.proj.bias": torch.zeros(tokens * _CROSS_DIM),
        "image_proj.norm.weight": torch.ones(_CROSS_DIM),
        "image_proj.norm.bias": torch.zeros(_CROSS_DIM),
    }
    # One to_k_ip/to_v_ip pair per cross-attention layer, numbered 1, 3, 5... in attn_processors
    # order, which is how diffusers' loader indexes them.
    key = 1
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        for proj in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key}.{proj}.weight"] = torch.randn(hidden, _CROSS_DIM, generator=generator) * 0.1
        key += 2
    save_file({k: v.contiguous() for k, v in state.items()}, str(models / IP_ADAPTER_WEIGHT))


def build_controlnet(folder: Path) -> None:
    """An OpenPose-role ControlNet for the tiny UNet, in diffusers' folder layout.

    `ControlNetModel.from_unet` copies the UNet's encoder and zero-initialises the convolutions that
    feed it back (as training starts); zero would make control a no-op, so those get small seeded
    random weights: a different skeleton then gives a different image, which the tests check.
    The hint encoder is far narrower than SD's (16, 32, 96, 256): it runs at full image resolution (once per
    image, see animenb.models), and at (8, 8, 16, 16) it cost 4x the tiny UNet's step at 512 px. The rest is
    the UNet's encoder and middle block, about 46% of the UNet's time, as on SD 1.5 (bench/pose_control.py).
    """
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(_unet(), conditioning_embedding_out_channels=_HINT_CHANNELS)
    generator = torch.Generator().manual_seed(_SEED + 8)
    with torch.no_grad():
        # He-scaled hint encoder: with PyTorch's default init the skeleton's signal fades to ~1e-6
        # through its 8 narrow convolutions, and every skeleton gives the same image.
        for conv in controlnet.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)
    controlnet.save_pretrained(folder)


_BUILDERS = {
    "sd": build_sd,
    "motion_adapter": build_motion_adapter,
    "svd": build_svd,
    "ip_adapter": build_ip_adapter,
    "controlnet": build_controlnet,
}


# ---- The files researchers bring: a single-file checkpoint, a kohya-layout LoRA, an embedding ---------
# Written from the tiny SD folder, so diffusers' `from_single_file(path, config=<tiny sd folder>)` and
# `load_lora_weights` / `load_textual_inversion` read them through the code real Civitai files take.


def _resnet_to_original(name: str) -> str:
    for diffusers_name, original in (
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("time_emb_proj", "emb_layers.1"),
        ("conv_shortcut", "skip_connection"),
    ):
        if name.startswith(diffusers_name + "."):
            return original + name[len(diffusers_name) :]
    raise ValueError(f"unexpected UNet resnet parameter {name!r}")


def _unet_key_to_original(key: str, layers: int, attention_up_blocks: set[int]) -> str:
    """A diffusers UNet2DConditionModel key as the original (LDM) UNet names it; the inverse of
    diffusers' `convert_ldm_unet_checkpoint` for any depth and `layers_per_block`."""
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    module, _, leaf = key.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{leaf}"
    parts = key.split(".")
    kind, block = parts[0], int(parts[1]) if parts[1].isdigit() else -1  # -1: not in a block
    if kind == "down_blocks":
        sub, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if sub == "downsamplers":  # down_blocks.i.downsamplers.0.conv.weight
            return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{parts[-1]}"
        slot = 1 + block * (layers + 1) + index
        return (
            f"input_blocks.{slot}.0.{_resnet_to_original(rest)}"
            if sub == "resnets"
            else f"input_blocks.{slot}.1.{rest}"
        )
    if kind == "up_blocks":
        sub, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if sub == "upsamplers":
            slot = block * (layers + 1) + layers
            return f"output_blocks.{slot}.{2 if block in attention_up_blocks else 1}.conv.{parts[-1]}"
        slot = block * (layers + 1) + index
        return (
            f"output_blocks.{slot}.0.{_resnet_to_original(rest)}"
            if sub == "resnets"
            else f"output_blocks.{slot}.1.{rest}"
        )
    if kind == "mid_block":
        sub, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if sub == "resnets":
            return f"middle_block.{2 * index}.{_resnet_to_original(rest)}"
        return f"middle_block.1.{rest}"
    raise ValueError(f"unexpected UNet parameter {key!r}")


def _vae_key_to_original(key: str, levels: int) -> str:
    """A diffusers AutoencoderKL key as the original VAE names it (the inverse of `convert_ldm_vae_checkpoint`)."""
    renames = {"conv_norm_out": "norm_out"}
    parts = key.split(".")
    coder = parts[0]
    if parts[1] in ("down_blocks", "up_blocks"):
        block, sub = int(parts[2]), parts[3]
        original_block = block if coder == "encoder" else levels - 1 - block
        stage = "down" if coder == "encoder" else "up"
        if sub in ("downsamplers", "upsamplers"):  # ...samplers.0.conv.weight
            return f"{coder}.{stage}.{original_block}.{stage}sample.conv.{parts[-1]}"
        rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
        return f"{coder}.{stage}.{original_block}.block.{parts[4]}.{rest}"
    if parts[1] == "mid_block" and parts[2] == "resnets":
        rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
        return f"{coder}.mid.block_{int(parts[3]) + 1}.{rest}"
    if parts[1] in renames:
        return ".".join([coder, renames[parts[1]], *parts[2:]])
    if coder in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
        return key
    raise ValueError(f"unexpected VAE parameter {key!r}")


def original_layout_state_dict(pipe) -> dict:
    """An SD 1.x pipeline's weights as one original-layout checkpoint (`model.diffusion_model.*`,
    `first_stage_model.*`, `cond_stage_model.transformer.*`): what A1111 and Civitai files hold."""
    unet = pipe.unet
    layers = unet.config.layers_per_block
    attention_up = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    state = {}
    for key, value in unet.state_dict().items():
        state["model.diffusion_model." + _unet_key_to_original(key, layers, attention_up)] = value
    levels = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        state["first_stage_model." + _vae_key_to_original(key, levels)] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # Original files name CLIP's weights `text_model.*` (transformers 5's CLIPTextModel drops the prefix).
        state["cond_stage_model.transformer." + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return {k: v.detach().contiguous() for k, v in state.items()}


def vae_original_state_dict(vae) -> dict:
    """A standalone VAE file's keys (A1111's `vae-ft-mse-840000-ema-pruned.safetensors` layout: no prefix)."""
    levels = len(vae.config.block_out_channels)
    return {_vae_key_to_original(k, levels): v.detach().contiguous() for k, v in vae.state_dict().items()}


def controlnet_original_state_dict(controlnet) -> dict:
    """A diffusers ControlNetModel's weights in the original layout (`control_model.*`: `input_hint_block`,
    `zero_convs`, `middle_block_out` beside the UNet encoder's keys), as lllyasviel's and Civitai's ControlNet
    files hold them; diffusers' `convert_controlnet_checkpoint` reads exactly these names."""
    config = controlnet.config
    layers = config.layers_per_block
    hint_blocks = len(config.conditioning_embedding_out_channels) * 2 - 2  # the convs between conv_in and conv_out
    state = {}
    for key, value in controlnet.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if key.startswith("controlnet_cond_embedding."):
            part = module.split(".")[1]
            index = (
                0
                if part == "conv_in"
                else 2 * (hint_blocks + 1)
                if part == "conv_out"
                else 2 * (int(module.split(".")[2]) + 1)
            )
            original = f"input_hint_block.{index}.{leaf}"
        elif key.startswith("controlnet_down_blocks."):
            original = f"zero_convs.{module.split('.')[1]}.0.{leaf}"
        elif key.startswith("controlnet_mid_block."):
            original = f"middle_block_out.0.{leaf}"
        else:  # the encoder copied from the UNet: named as the UNet's
            original = _unet_key_to_original(key, layers, set())
        state["control_model." + original] = value.detach().contiguous()
    return state


def build_single_file_controlnet(path: Path, *, seed: int | None = None) -> Path:
    """`tiny:controlnet` saved as one original-layout file; with `seed`, its weights re-seeded first (so it
    steers unlike `tiny:controlnet`)."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_pretrained(str(ensure_tiny_models()["controlnet"]))
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in controlnet.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    _save_state(controlnet_original_state_dict(controlnet), Path(path))
    return Path(path)


def build_single_file_checkpoint(path: Path, *, seed: int = _SEED + 10, vae_path: Path | None = None) -> Path:
    """The tiny SD pipeline with re-seeded UNet weights (so it draws unlike `tiny:sd`), saved as one
    original-layout `.safetensors` (or `.ckpt`, a pickled `{"state_dict": ...}`). With `vae_path`, a
    VAE override file (another seed) is written there too."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(ensure_tiny_models()["sd"]), safety_checker=None, requires_safety_checker=False
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in pipe.unet.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    _save_state(original_layout_state_dict(pipe), Path(path))
    if vae_path is not None:
        with torch.no_grad():
            for param in pipe.vae.decoder.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        _save_state(vae_original_state_dict(pipe.vae), Path(vae_path))
    return Path(path)


def _save_state(state: dict, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state}, path)
    else:
        save_file(state, str(path), metadata={"animenb": "tiny random weights; images are noise"})


def _kohya_lora(modules: dict, rank: int, generator, scale: float) -> dict:
    """kohya/A1111 LoRA tensors for {kohya name: (out_features, in_features)}: lora_down, lora_up, alpha."""
    import torch

    state = {}
    for name, (out_features, in_features) in modules.items():
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * scale
        state[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * scale
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    return state


def build_lora(path: Path, *, seed: int = _SEED + 20, rank: int = 4, text_encoder: bool = True, pipe=None) -> Path:
    """A LoRA for the tiny SD model (or `pipe`'s UNet and text encoder) in the kohya key layout Civitai
    LoRAs use (`lora_unet_*`, `lora_te_*` with `lora_down` / `lora_up` / `alpha`) on every attention
    projection."""
    import torch
    from safetensors.torch import save_file

    if pipe is not None:
        unet, encoder = pipe.unet, pipe.text_encoder
    else:
        tokenizer = _byte_tokenizer()
        unet, encoder = _unet(), _text_encoder(len(tokenizer))
    modules = {}
    for name, module in unet.named_modules():
        if (
            isinstance(module, torch.nn.Linear)
            and ".attn" in name
            and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0")
        ):
            modules["lora_unet_" + name.replace(".", "_")] = (module.out_features, module.in_features)
    if text_encoder:
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
                modules["lora_te_" + name.replace(".", "_")] = (module.out_features, module.in_features)
    state = _kohya_lora(modules, rank, torch.Generator().manual_seed(seed), scale=0.5)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank)})
    return Path(path)


def build_embedding(path: Path, *, seed: int = _SEED + 30, vectors: int = 2, dim: int = _CROSS_DIM) -> Path:
    """A textual-inversion embedding in A1111's safetensors layout (`emb_params`: vectors x dim)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(vectors, dim, generator=generator)}, str(path))
    return Path(path)


def build_lora_for_checkpoint(checkpoint: Path, path: Path, *, seed: int = _SEED + 21, rank: int = 4) -> Path:
    """A kohya-layout LoRA that fits an original-layout SD 1.x `checkpoint` (any width, e.g. the reduced
    one ComfyUI's tests use): one pair per attention projection, named after the checkpoint's own keys
    (`lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q`), as kohya's LDM-named LoRAs are."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    unet, clip = "model.diffusion_model.", "cond_stage_model.transformer."
    modules = {}
    with safe_open(str(checkpoint), framework="pt") as f:
        for key in f.keys():
            if not key.endswith(".weight"):
                continue
            stem = key.removesuffix(".weight")
            if key.startswith(unet) and stem.endswith(
                (
                    "attn1.to_q",
                    "attn1.to_k",
                    "attn1.to_v",
                    "attn1.to_out.0",
                    "attn2.to_q",
                    "attn2.to_k",
                    "attn2.to_v",
                    "attn2.to_out.0",
                )
            ):
                modules["lora_unet_" + stem[len(unet) :].replace(".", "_")] = tuple(f.get_slice(key).get_shape())
            elif key.startswith(clip) and stem.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
                modules["lora_te_" + stem[len(clip) :].replace(".", "_")] = tuple(f.get_slice(key).get_shape())
    if not modules:
        raise ValueError(f"{checkpoint} has no SD 1.x attention weights in the original layout.")
    state = _kohya_lora(modules, rank, torch.Generator().manual_seed(seed), scale=0.5)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank)})
    return Path(path)


def build_motion_lora(path: Path, *, seed: int = _SEED + 40, rank: int = 2) -> Path:
    """An AnimateDiff motion LoRA for the tiny motion adapter, in the layout of diffusers' converted motion LoRAs
    (guoyww/animatediff-motion-lora-*: `unet.<block>.motion_modules.<i>.transformer_blocks.0.attn1.processor.
    to_q_lora.down.weight`...): one pair on every projection of every temporal attention, nothing else."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in _motion_adapter().named_modules():
        projection = name.rpartition(".attn")[2].partition(".")[2]  # "to_q" in "...attn1.to_q"
        if (
            not isinstance(module, torch.nn.Linear)
            or ".attn" not in name
            or projection not in ("to_q", "to_k", "to_v", "to_out.0")
        ):
            continue
        base = name.removesuffix("." + projection)
        prefix = f"unet.{base}.processor.{projection.removesuffix('.0')}_lora"
        state[f"{prefix}.down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.5
        state[f"{prefix}.up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.5
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return Path(path)

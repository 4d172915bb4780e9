"""Write a reduced, random-weight SD 1.5-layout checkpoint that ComfyUI's model detection accepts.

Run with ComfyUI's own interpreter (it builds the modules from ComfyUI's classes, so the
keys are exactly the ones ComfyUI loads):

    <root>/venv/bin/python tests/comfyui/make_checkpoint.py --comfyui-dir <root>/src [--out NAME]

The UNet keeps what `comfy.model_detection` checks for SD 1.5 (320 model channels,
context 768, conv-in transformers, no adm, no temporal layers) but has 2 levels of 320
channels, one block each, instead of 4 levels (~32 M parameters); CLIP-L and the VAE are full size. Weights are random (seeded):
images are noise. Written as fp16 safetensors (~480 MB) in a few seconds; an existing
file is left alone.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_NAME = "animenb-tiny-sd15.safetensors"


def _init_weights(module, generator) -> None:
    import torch

    with torch.no_grad():
        for sub in module.modules():
            kind = type(sub).__mro__
            is_norm = any(c.__name__ in ("LayerNorm", "GroupNorm") for c in kind)
            for pname, param in sub.named_parameters(recurse=False):
                if is_norm:
                    param.fill_(1.0 if pname == "weight" else 0.0)
                elif param.ndim >= 2:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
                else:
                    param.zero_()


def build_state_dict(seed: int = 0) -> dict:
    import torch

    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    generator = torch.Generator().manual_seed(seed)

    # 1. UNet: SD 1.5's block structure, two levels.
    unet = UNetModel(
        image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1, 1],
        channel_mult=[1, 1], num_heads=8, num_head_channels=-1, use_spatial_transformer=True,
        transformer_depth=[1, 1], transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1],
        context_dim=768, use_linear_in_transformer=False, legacy=False, operations=ops, dtype=torch.float32)
    # 2. CLIP-L text encoder, as ComfyUI's SD 1.5 loader builds it.
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    # 3. The SD VAE.
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)

    state = {}
    for prefix, module in (("model.diffusion_model.", unet), ("cond_stage_model.", clip),
                           ("first_stage_model.", vae)):
        _init_weights(module, generator)
        for key, value in module.state_dict().items():
            state[prefix + key] = value.to(torch.float16).contiguous()
    # CLIP's position ids and logit scale are buffers/params ComfyUI tolerates either way.
    state.pop("cond_stage_model.logit_scale", None)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-dir", required=True, help="ComfyUI's source directory (holds main.py)")
    parser.add_argument("--out", default=DEFAULT_NAME, help="file name under models/checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    args = parser.parse_args(argv)

    target = os.path.join(args.comfyui_dir, "models", "checkpoints", args.out)
    if os.path.exists(target) and not args.force:
        print(target)
        return 0
    sys.path.insert(0, os.path.abspath(args.comfyui_dir))
    from safetensors.torch import save_file

    started = time.perf_counter()
    state = build_state_dict(args.seed)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + ".tmp"
    save_file(state, tmp, metadata={"animenb": "reduced SD1.5 layout, random weights; images are noise"})
    os.replace(tmp, target)
    print(f"wrote {target} ({len(state)} tensors, {os.path.getsize(target) / 1e6:.0f} MB) "
          f"in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

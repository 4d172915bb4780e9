"""Write a reduced, random-weight SD 1.5-layout checkpoint that ComfyUI's model detection accepts.

Run with ComfyUI's own interpreter (it builds the modules from ComfyUI's classes, so the
keys are exactly the ones ComfyUI loads):

    <root>/venv/bin/python tests/comfyui/make_checkpoint.py --comfyui-dir <root>/src [--out NAME]
        [--controlnet NAME]

The UNet keeps what `comfy.model_detection` checks for SD 1.5 (320 model channels,
context 768, conv-in transformers, no adm, no temporal layers) but has 2 levels of 320
channels, one block each, instead of 4 levels (~32 M parameters); CLIP-L and the VAE are full size. Weights are random (seeded):
images are noise. Written as fp16 safetensors (~480 MB) in a few seconds; an existing
file is left alone. `--controlnet` also writes a ControlNet of the same reduced shape (ComfyUI's
own `cldm.ControlNet`, original single-file layout) into models/controlnet, for pose control.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_NAME = "animenb-tiny-sd15.safetensors"
CONTROLNET_NAME = "animenb-tiny-openpose-sd15.safetensors"
# SD 1.5's block structure at two levels: what comfy.model_detection still accepts as SD 1.5.
UNET_SHAPE = dict(image_size=32, in_channels=4, model_channels=320, num_res_blocks=[1, 1], channel_mult=[1, 1],
                  num_heads=8, num_head_channels=-1, use_spatial_transformer=True, transformer_depth=[1, 1],
                  transformer_depth_middle=1, context_dim=768, use_linear_in_transformer=False, legacy=False)


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


def _comfy_cpu() -> None:
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def build_state_dict(seed: int = 0) -> dict:
    import torch

    _comfy_cpu()
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    generator = torch.Generator().manual_seed(seed)

    # 1. UNet: SD 1.5's block structure, two levels.
    unet = UNetModel(**UNET_SHAPE, out_channels=4, transformer_depth_output=[1, 1, 1, 1], operations=ops,
                     dtype=torch.float32)
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


def build_controlnet_state_dict(seed: int = 1) -> dict:
    """A ControlNet for the reduced UNet: its zero convolutions get random weights too, so a skeleton
    changes the image (trained ControlNets start from zeros)."""
    import torch

    _comfy_cpu()
    import comfy.ops
    from comfy.cldm.cldm import ControlNet

    control = ControlNet(**UNET_SHAPE, hint_channels=3, operations=comfy.ops.disable_weight_init,
                         dtype=torch.float32)
    _init_weights(control, torch.Generator().manual_seed(seed))
    return {key: value.to(torch.float16).contiguous() for key, value in control.state_dict().items()}


def _write(target: str, build, note: str) -> None:
    from safetensors.torch import save_file

    started = time.perf_counter()
    state = build()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.{os.getpid()}.tmp"  # two test processes may build it at once
    save_file(state, tmp, metadata={"animenb": note})
    os.replace(tmp, target)
    print(f"wrote {target} ({len(state)} tensors, {os.path.getsize(target) / 1e6:.0f} MB) "
          f"in {time.perf_counter() - started:.1f}s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-dir", required=True, help="ComfyUI's source directory (holds main.py)")
    parser.add_argument("--out", default=DEFAULT_NAME, help="file name under models/checkpoints")
    parser.add_argument("--controlnet", default=None,
                        help="also write a ControlNet of this name under models/controlnet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.abspath(args.comfyui_dir))
    target = os.path.join(args.comfyui_dir, "models", "checkpoints", args.out)
    if args.force or not os.path.exists(target):
        _write(target, lambda: build_state_dict(args.seed), "reduced SD1.5 layout, random weights; images are noise")
    if args.controlnet:
        controlnet = os.path.join(args.comfyui_dir, "models", "controlnet", args.controlnet)
        if args.force or not os.path.exists(controlnet):
            _write(controlnet, lambda: build_controlnet_state_dict(args.seed + 1),
                   "ControlNet for the reduced SD1.5 layout, random weights")
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

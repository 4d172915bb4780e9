"""The same single-file checkpoint through animenb (diffusers) and through a real ComfyUI's KSampler.

One original-layout SD 1.5-shaped checkpoint (the reduced one ComfyUI's tests build: 320 channels,
CLIP-L, the SD VAE; random weights) is loaded by ComfyUI's CheckpointLoaderSimple and by animenb's
`from_single_file` with a local config, then txt2img runs in interleaved pairs with the same size,
steps and sampler: diffusers through `DiffusersBackend.text_to_image` (what `character_sheet` calls),
ComfyUI through a bare /prompt + WebSocket client (bench/comfyui_overhead.Direct). Fresh seeds keep
ComfyUI's cache from answering. Then the cost of switching LoRAs between warm diffusers jobs: a job
with LoRA A right after one with LoRA B, against a job that keeps its LoRA. Prints seconds per image,
the ratio (target animenb <= 1.05x ComfyUI) and the switch cost as a share of a job (target <= 10%).

    python bench/same_checkpoint.py [--size 512] [--steps 15] [--pairs 3] [--sampler "Euler"]

Both sides get the same torch thread count (ANIMENB_THREADS / ANIMENB_COMFYUI_THREADS, default 1).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from animenb import tiny  # noqa: E402
from animenb.backends import comfyui_graphs as graphs  # noqa: E402
from animenb.backends.base import ImageRequest  # noqa: E402
from results import record  # noqa: E402


def reduced_sd15_config(folder: Path) -> Path:
    """A diffusers config folder (no weights) matching tests/comfyui/make_checkpoint.py's reduced checkpoint."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    with torch.device("meta"):
        UNet2DConditionModel(block_out_channels=(320, 320), layers_per_block=1, cross_attention_dim=768,
                             attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 2,
                             up_block_types=("CrossAttnUpBlock2D",) * 2, sample_size=64).save_config(folder / "unet")
        AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                      mid_block_add_attention=False, sample_size=512).save_config(folder / "vae")
    CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                   projection_dim=768, hidden_act="quick_gelu").save_pretrained(folder / "text_encoder")
    tiny._byte_tokenizer().save_pretrained(folder / "tokenizer")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_config(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
        "requires_safety_checker": False}))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=3, help="measured pairs (after 1 warm-up pair)")
    parser.add_argument("--sampler", default="Euler", help="an A1111 sampler name")
    args = parser.parse_args()
    os.environ.setdefault("ANIMENB_THREADS", "1")

    from comfyui.fixtures import CHECKPOINT, ComfyUIProcess, ensure_install
    from comfyui_overhead import Direct

    from animenb.backends import get_backend

    root = ensure_install()
    checkpoint = root / "src" / "models" / "checkpoints" / CHECKPOINT
    work = Path(tempfile.mkdtemp(prefix="animenb-bench-same-"))
    profile = work / "same.yaml"
    profile.write_text(f"name: same-checkpoint\ndefault_size: {args.size}\nroles:\n"
                       f"  sd: {{source: {checkpoint}, config: {reduced_sd15_config(work / 'config')}}}\n")
    server = ComfyUIProcess(root=root, workdir=work / "comfyui").start()
    loop = asyncio.new_event_loop()
    try:
        backend = get_backend("diffusers", models=str(profile))
        started = time.perf_counter()
        backend.text_to_image(ImageRequest("warm", width=64, height=64, steps=1))
        load_seconds = time.perf_counter() - started
        direct = Direct(server.url)
        loop.run_until_complete(direct.connect())
        times = {"comfyui": [], "animenb": []}
        seed = 100
        for index in range(args.pairs + 1):
            order = ("comfyui", "animenb") if index % 2 == 0 else ("animenb", "comfyui")
            for side in order:
                seed += 1
                request = ImageRequest("1girl, silver hair", negative_prompt="lowres", width=args.size,
                                       height=args.size, steps=args.steps, seed=seed, scheduler=args.sampler)
                started = time.perf_counter()
                if side == "comfyui":
                    graph = graphs.text_to_image(request, checkpoint=CHECKPOINT)
                    loop.run_until_complete(direct.run(graph.nodes, graph.output, timeout=1800))  # 512 px on a CPU
                else:
                    backend.text_to_image(request)
                if index >= 1:
                    times[side].append(time.perf_counter() - started)

        # LoRA switching between warm jobs (diffusers): two kohya-layout LoRAs for this checkpoint's modules.
        pipe = backend._pipeline("sd")
        os.environ["ANIMENB_LORAS"] = str(work / "loras")
        tiny.build_lora(work / "loras" / "a.safetensors", pipe=pipe, seed=1)
        tiny.build_lora(work / "loras" / "b.safetensors", pipe=pipe, seed=2)
        small = dict(prompt="1girl", width=args.size, height=args.size, steps=args.steps, scheduler=args.sampler)
        for name in ("a", "b"):  # first loads, not measured
            backend.text_to_image(ImageRequest(**small, loras=[{"name": name, "weight": 0.8}]))
        same, switched = [], []
        for index in range(args.pairs):
            for name, bucket in (("b", same), ("a", switched), ("a", same), ("b", switched)):
                started = time.perf_counter()
                backend.text_to_image(ImageRequest(**small, seed=index, loras=[{"name": name, "weight": 0.8}]))
                bucket.append(time.perf_counter() - started)
        comfy, ours = statistics.median(times["comfyui"]), statistics.median(times["animenb"])
        ratios = [a / c for a, c in zip(times["animenb"], times["comfyui"])]
        switch = (statistics.median(switched) - statistics.median(same)) / statistics.median(same)
        machine = platform.processor() or platform.machine()
        print(f"{CHECKPOINT} ({checkpoint.stat().st_size / 1e6:.0f} MB) on {machine},"
              f" {os.environ['ANIMENB_THREADS']} torch thread(s); {args.size}px, {args.steps} steps, {args.sampler}, "
              f"{args.pairs} interleaved pairs; diffusers first load {load_seconds:.1f} s")
        print(f"ComfyUI KSampler (/prompt + WS): median {comfy:.2f} s/image")
        print(f"animenb diffusers (from_single_file): median {ours:.2f} s/image")
        print(f"ratio of medians: {ours / comfy:.3f} (median pairwise {statistics.median(ratios):.3f}; target <= 1.05)")
        print(f"LoRA switch between warm jobs: {switch * 100:+.1f}% of a job "
              f"(same LoRA {statistics.median(same):.2f} s, switched {statistics.median(switched):.2f} s; target <= 10%)")
        record("same_checkpoint", {"size": args.size, "steps": args.steps, "sampler": args.sampler,
                                   "comfyui_s": comfy, "animenb_s": ours, "ratio": ours / comfy,
                                   "pairwise_ratio": statistics.median(ratios), "lora_switch_share": switch})
    finally:
        loop.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

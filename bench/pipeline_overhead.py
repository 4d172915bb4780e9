"""Phase function time / bare diffusers pipeline time with the same arguments (target <= 1.05).

Interleaved in one run (phase, bare, phase, bare...) so machine noise hits both sides;
prints medians and ratios. Tiny profile at 64 px unless --models/--size say otherwise.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from animenb.backends.diffusers_backend import _NEUTRAL_REFERENCE, DiffusersBackend, use_scheduler
    from animenb.models import pipeline
    from animenb.phases import animation_loop, character_sheet, full_video, pose_prompts
    from animenb.phases.animation_loop import LOOP_SUFFIX

    backend = DiffusersBackend(args.models)
    size, steps, prompt, seed = args.size, args.steps, "anime girl with blue hair", 1
    common = dict(width=size, height=size, num_inference_steps=steps, output_type="pil")
    gen = lambda: torch.Generator("cpu").manual_seed(seed)  # noqa: E731
    sd = pipeline("sd", backend.profile, backend.placement)
    ad = pipeline("animatediff", backend.profile, backend.placement)
    svd = pipeline("svd", backend.profile, backend.placement)
    work = tempfile.mkdtemp()
    reference = character_sheet(prompt, models=args.models, width=size, height=size, steps=steps, seed=seed,
                                output_dir=f"{work}/ref", display=None).images[0]

    def bare_sheet():
        use_scheduler(sd, "dpmpp_2m", 0)
        ref = None
        for p in pose_prompts(prompt):
            sd.set_ip_adapter_scale(0.6 if ref is not None else 0.0)
            image = sd(prompt=p, negative_prompt="blurry", guidance_scale=7.0, generator=gen(),
                       ip_adapter_image=ref if ref is not None else _NEUTRAL_REFERENCE, **common).images[0]
            ref = ref or image

    def bare_loop():
        use_scheduler(ad, "dpmpp_2m", 0)
        ad.set_ip_adapter_scale(0.6)
        ad(prompt=f"{prompt}, {LOOP_SUFFIX}", negative_prompt="blurry", num_frames=20, guidance_scale=7.5,
           generator=gen(), ip_adapter_image=reference, **common)

    def bare_video():
        svd(image=reference, width=size, height=size, num_frames=25, num_inference_steps=steps, fps=7,
            motion_bucket_id=127, noise_aug_strength=0.02, decode_chunk_size=8, generator=gen(), output_type="pil")

    phases = {
        "character_sheet": (lambda i: character_sheet(prompt, negative_prompt="blurry", models=args.models,
                                                      width=size, height=size, steps=steps, seed=seed,
                                                      output_dir=f"{work}/s{i}", display=None), bare_sheet),
        "animation_loop": (lambda i: animation_loop(prompt, negative_prompt="blurry", models=args.models,
                                                    width=size, height=size, steps=steps, seed=seed,
                                                    reference_image=reference, output_dir=f"{work}/l{i}",
                                                    display=None), bare_loop),
        "full_video": (lambda i: full_video(prompt, image=reference, models=args.models, width=size, height=size,
                                            steps=steps, seed=seed, output_dir=f"{work}/v{i}", display=None),
                       bare_video),
    }
    print(f"pipeline overhead: models={args.models} size={size} steps={steps} threads={args.threads} "
          f"device={backend.placement.device} repeats={args.repeats}")
    for name, (phase_fn, bare_fn) in phases.items():
        phase_fn(-1), bare_fn()  # warm-up
        phase_t, bare_t = [], []
        for i in range(args.repeats):
            t = time.perf_counter(); phase_fn(i); phase_t.append(time.perf_counter() - t)
            t = time.perf_counter(); bare_fn(); bare_t.append(time.perf_counter() - t)
        p, b = statistics.median(phase_t), statistics.median(bare_t)
        print(f"{name:16s} phase {p * 1000:8.1f} ms  bare {b * 1000:8.1f} ms  ratio {p / b:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()

"""The default backend: diffusers pipelines in this process (the notebook's own kernel).

Pipelines come from animenb.models' cache. Seeds drive a CPU `torch.Generator`, so the
same request gives the same pixels on every run (pin `torch.set_num_threads` to compare
bytes across machines). `on_step` runs in `callback_on_step_end`; whatever it raises
(cancellation, a kernel interrupt) stops the pipeline at that step.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..profiles import ModelProfile, load_profile
from .base import Backend, ImageRequest, ImageToVideoRequest, OutOfMemoryError, StepCallback, VideoRequest
from .diffusers_models import find_motion_lora, prompt_embeds, strip_comfyui_embedding_syntax, use_embeddings, use_loras
from .samplers import sampler

# IP-Adapter weights stay loaded; a request without a reference uses this image at scale 0,
# which is bit-identical to no adapter (checked in tests).
_NEUTRAL_REFERENCE = Image.new("RGB", (224, 224), (127, 127, 127))


def make_scheduler(name: str, config):
    """The diffusers scheduler for sampler `name` (an A1111 name or alias, see animenb.backends.samplers)."""
    import diffusers

    chosen = sampler(name)
    return getattr(diffusers, chosen.diffusers).from_config(config, **chosen.options)


def use_scheduler(pipe, name: str, seed: int) -> None:
    """Swap the pipeline's scheduler only when the name changes (from_config costs ~15 ms a call)."""
    name = sampler(name).name
    if getattr(pipe, "_animenb_scheduler", None) != name:
        # From the model's own config each time: options such as Karras sigmas would otherwise carry over
        # from the previous sampler's config into the next.
        if not hasattr(pipe, "_animenb_scheduler_config"):
            pipe._animenb_scheduler_config = pipe.scheduler.config
        pipe.scheduler = make_scheduler(name, pipe._animenb_scheduler_config)
        pipe._animenb_scheduler = name
    if hasattr(pipe.scheduler, "noise_sampler_seed"):
        # DPM++ SDE's Brownian-tree noise does not come from the call's generator; unseeded it would draw its
        # seed from torch's global RNG, and the same request would give other pixels.
        pipe.scheduler.noise_sampler_seed = seed


PREVIEW_EVERY = 5  # steps between latent previews (and always the last step)
PREVIEW_MAX_SIDE = 256  # px; previews are never scaled up past this


def latent_preview(latents, layout: str) -> str:
    """A small PNG data URL of the current latents: 3 of the 4 latent channels, min-max scaled.

    Not a decode (that costs a VAE pass); it shows composition and colour blocks forming, like
    a sampler preview. At most PREVIEW_MAX_SIDE px on its long side. `layout` is "bchw" (SD),
    "bcfhw" (AnimateDiff) or "bfchw" (SVD); for videos the middle frame is shown.
    """
    import base64
    import io

    import numpy as np

    x = latents[0].detach().float().cpu()
    if layout == "bcfhw":
        x = x[:, x.shape[1] // 2]
    elif layout == "bfchw":
        x = x[x.shape[0] // 2]
    x = x[:3].numpy()
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    rgb = ((x - lo) / np.maximum(hi - lo, 1e-6) * 255).astype(np.uint8).transpose(1, 2, 0)
    # Up to the image's size (one latent pixel = 8 px), at most PREVIEW_MAX_SIDE: a 2048 px image's
    # preview would otherwise be a multi-megabyte PNG on every subscriber's socket.
    scale = max(1, min(8, PREVIEW_MAX_SIDE // max(rgb.shape[:2])))
    image = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _step_callback(on_step: StepCallback | None, layout: str, total: int):
    if on_step is None:
        return None

    def callback(pipe, i, t, callback_kwargs):
        # Second-order samplers (DPM++ SDE) call back twice per step: report the request's steps.
        done = (i + 1) * total // max(len(pipe.scheduler.timesteps), 1)
        if done == i * total // max(len(pipe.scheduler.timesteps), 1):
            return callback_kwargs
        if done % PREVIEW_EVERY == 0 or done == total:
            on_step(preview=latent_preview(callback_kwargs["latents"], layout))
        else:
            on_step()
        return callback_kwargs

    return callback


class DiffusersBackend(Backend):
    name = "diffusers"

    def __init__(self, models: str | ModelProfile | None = None, device: str | None = None, dtype: str | None = None):
        from ..models import apply_thread_limit, resolve_placement

        apply_thread_limit()
        self.profile = models if isinstance(models, ModelProfile) else load_profile(models)
        self.placement = resolve_placement(self.profile, device, dtype)
        self.last_models: dict = {}

    def _profile_for(self, checkpoint: str | None) -> ModelProfile:
        from ..model_files import find

        if checkpoint is None:
            return self.profile
        return self.profile.with_checkpoint(find("checkpoints", checkpoint).path)

    def _pipeline(self, kind: str, checkpoint: str | None = None):
        from ..models import pipeline

        return pipeline(kind, self._profile_for(checkpoint), self.placement)

    def _single_file_model(self, checkpoint: str | None) -> dict:
        """A1111's `Model` and `Model hash` when the SD model is one file (a hub model or folder has no hash)."""
        from ..model_files import ModelFile, short_hash

        profile = self._profile_for(checkpoint)
        if not profile.role("sd").is_single_file:
            return {}
        path = Path(profile.resolve("sd"))
        return {"model": path.stem, "model_hash": short_hash(ModelFile("checkpoints", path.stem, path))}

    def _ip_adapter_inputs(self, pipe, request) -> dict:
        """The reference at its scale, or the neutral one at scale 0 (see _NEUTRAL_REFERENCE); nothing for a
        profile without an IP-Adapter role."""
        reference = request.ip_adapter_image
        if getattr(pipe.unet, "encoder_hid_proj", None) is None:
            if reference is not None:
                raise ValueError(
                    f"`ip_adapter_image` needs an `ip_adapter` role; profile `{self.profile.name}` has none."
                )
            return {}
        pipe.set_ip_adapter_scale(request.ip_adapter_scale if reference is not None else 0.0)
        return {"ip_adapter_image": reference if reference is not None else _NEUTRAL_REFERENCE}

    def _use_models(self, pipe, request, motion_loras: tuple = ()) -> dict:
        """The request's LoRAs (after the profile's, then `motion_loras`), embeddings and clip skip on `pipe`;
        the pipeline call's extra arguments. What was used is kept in `self.last_models` for PNG info."""
        loras = use_loras(pipe, self.profile.loras + tuple(request.loras) + motion_loras)
        embeddings = use_embeddings(pipe, request.prompt, request.negative_prompt)
        clip_skip = request.clip_skip if request.clip_skip is not None else self.profile.clip_skip
        self.last_models = {
            "loras": loras,
            "embeddings": embeddings,
            "clip_skip": clip_skip,
            "checkpoint": request.checkpoint,
            **self._single_file_model(request.checkpoint),
        }
        return prompt_embeds(
            pipe,
            strip_comfyui_embedding_syntax(request.prompt),
            strip_comfyui_embedding_syntax(request.negative_prompt) or None,
            clip_skip,
        )

    def _generator(self, seed: int):
        import torch

        return torch.Generator("cpu").manual_seed(seed)

    def _run(self, call):
        import torch

        try:
            return call()
        except torch.OutOfMemoryError as exc:
            from ..models import clear_cache

            clear_cache()
            raise OutOfMemoryError(
                f"out of GPU memory on {self.placement.device}; the model cache was freed "
                f"({str(exc).splitlines()[0][:160]})"
            ) from exc

    def _set_vae_modes(self, pipe, width: int, height: int) -> None:
        """The profile's VAE slicing and tiling for this size (the VAE is shared by SD and AnimateDiff)."""
        fast, vae = self.profile.fast_paths, pipe.vae
        if hasattr(vae, "use_slicing"):
            vae.use_slicing = fast.use_vae_slicing(width, height)
        if hasattr(vae, "use_tiling"):
            vae.use_tiling = fast.use_vae_tiling(width, height)

    def _image_call(self, pipe, request: ImageRequest, on_step: StepCallback | None) -> dict:
        """Set `pipe` up for `request` (sampler, VAE modes, LoRAs, embeddings, clip skip, IP-Adapter) and return
        the call arguments SD and SD + ControlNet share."""
        use_scheduler(pipe, request.scheduler, request.seed)
        self._set_vae_modes(pipe, request.width, request.height)
        extra = self._use_models(pipe, request)
        extra.update(self._ip_adapter_inputs(pipe, request))
        return dict(
            **extra,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            generator=self._generator(request.seed),
            callback_on_step_end=_step_callback(on_step, "bchw", request.steps),
            output_type="pil",
        )

    def text_to_image(self, request: ImageRequest, on_step: StepCallback | None = None) -> Image.Image:
        if request.controlled:
            return self._text_to_image_controlled(request, on_step)
        pipe = self._pipeline("sd", request.checkpoint)
        arguments = self._image_call(pipe, request, on_step)
        return self._run(lambda: pipe(**arguments).images[0])

    def _text_to_image_controlled(self, request: ImageRequest, on_step: StepCallback | None) -> Image.Image:
        """text_to_image through the profile's ControlNet (StableDiffusionControlNetPipeline, IP-Adapter kept)."""
        pipe = self._pipeline("sd_controlnet", request.checkpoint)
        arguments = self._image_call(pipe, request, on_step)
        assert request.control_image is not None  # `controlled`
        control = request.control_image.convert("RGB")
        if control.size != (request.width, request.height):
            control = control.resize((request.width, request.height), Image.LANCZOS)
        return self._run(
            lambda: pipe(**arguments, image=control, controlnet_conditioning_scale=float(request.control_scale)).images[
                0
            ]
        )

    def text_to_video(self, request: VideoRequest, on_step: StepCallback | None = None) -> list[Image.Image]:
        from ..models import set_motion_scale

        pipe = self._pipeline("animatediff", request.checkpoint)
        use_scheduler(pipe, request.scheduler, request.seed)
        set_motion_scale(pipe, request.motion_scale)
        self._set_vae_modes(pipe, request.width, request.height)
        chunk = self.profile.fast_paths.chunk_size("animatediff", self.placement.device)
        # A motion LoRA is a LoRA on the motion modules (UNet layers only): loaded, kept and switched off for the
        # next job like the others, and recorded as A1111's AnimateDiff extension records it, as a <lora:> tag.
        motion = ((find_motion_lora(request.motion_lora), request.motion_lora_weight),) if request.motion_lora else ()
        extra = self._use_models(pipe, request, motion)
        extra.update(self._ip_adapter_inputs(pipe, request))
        return self._run(
            lambda: list(
                pipe(
                    **extra,
                    num_frames=request.frames,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance_scale,
                    generator=self._generator(request.seed),
                    decode_chunk_size=chunk,
                    callback_on_step_end=_step_callback(on_step, "bcfhw", request.steps),
                    output_type="pil",
                ).frames[0]
            )
        )

    def image_to_video(self, request: ImageToVideoRequest, on_step: StepCallback | None = None) -> list[Image.Image]:
        pipe = self._pipeline("svd")
        chunk = request.decode_chunk_size or self.profile.fast_paths.chunk_size("svd", self.placement.device)
        image = request.image.convert("RGB").resize((request.width, request.height), Image.LANCZOS)
        return self._run(
            lambda: list(
                pipe(
                    image=image,
                    width=request.width,
                    height=request.height,
                    num_frames=request.frames,
                    num_inference_steps=request.steps,
                    fps=request.fps,
                    motion_bucket_id=request.motion_bucket_id,
                    noise_aug_strength=request.noise_aug_strength,
                    min_guidance_scale=request.min_guidance_scale,
                    max_guidance_scale=request.max_guidance_scale,
                    decode_chunk_size=chunk,
                    generator=self._generator(request.seed),
                    callback_on_step_end=_step_callback(on_step, "bfchw", request.steps),
                    output_type="pil",
                ).frames[0]
            )
        )

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": self.placement.device,
            "dtype": self.placement.dtype,
            "models": self.profile.as_dict(),
        }

    def close(self) -> None:
        from ..models import clear_cache

        clear_cache()

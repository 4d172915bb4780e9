"""Speed settings of a model profile (`fast_paths:` in parameters/models/<profile>.yaml).

Each setting has a default measured on the machines in bench/results/README.md; "auto"
picks per device and request size. Load-time settings (attention, channels_last,
compile_unet, cpu_offload) are applied once when a pipeline enters the model cache; per-call
settings (vae_slicing, vae_tiling, decode_chunk_size) are resolved for each request.

| setting | values | default (auto) |
|---|---|---|
| attention | sdpa, eager | sdpa: `F.scaled_dot_product_attention` (diffusers' AttnProcessor2_0); eager: reference |
| channels_last | auto, true, false | on for UNets and VAEs (CUDA tensor cores, oneDNN CPU convolutions prefer NHWC) |
| vae_slicing | auto, true, false | on from 512 px: one image per VAE decode (same pixels, lower peak memory) |
| vae_tiling | auto, true, false | on above 1024 px for VAEs that support it (AutoencoderKL): bounded decode memory |
| decode_chunk_size | auto, 1-64 | frames per VAE decode: SVD 8; AnimateDiff 16 on CUDA, 1 on CPU (3x faster on CPU) |
| compile_unet | true, false | false: `torch.compile` the UNet once per process (warm kernel), on CUDA only |
| cpu_offload | true, false | false: `enable_model_cpu_offload()`: only the running model on the GPU (less VRAM) |
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

AUTO = "auto"
ATTENTION = ("sdpa", "eager")
SLICING_FROM_PX = 512  # vae_slicing auto: on when width or height reaches this
TILING_ABOVE_PX = 1024  # vae_tiling auto: on when width or height exceeds this
_SVD_CHUNK = 8


@dataclass(frozen=True)
class FastPaths:
    attention: str = "sdpa"
    channels_last: str | bool = AUTO
    vae_slicing: str | bool = AUTO
    vae_tiling: str | bool = AUTO
    decode_chunk_size: str | int = AUTO
    compile_unet: bool = False
    cpu_offload: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ValueError(f"`attention` must be one of {', '.join(ATTENTION)}, got {self.attention!r}.")
        for name in ("channels_last", "vae_slicing", "vae_tiling"):
            value = getattr(self, name)
            if not (value == AUTO or isinstance(value, bool)):
                raise ValueError(f"`{name}` must be auto, true or false, got {value!r}.")
        chunk = self.decode_chunk_size
        if chunk != AUTO and (isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= 64):
            raise ValueError(f"`decode_chunk_size` must be auto or an integer in [1, 64], got {chunk!r}.")
        for name in ("compile_unet", "cpu_offload"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be true or false, got {getattr(self, name)!r}.")

    # -- per-call settings ------------------------------------------------------------------------
    def use_vae_slicing(self, width: int, height: int) -> bool:
        return max(width, height) >= SLICING_FROM_PX if self.vae_slicing == AUTO else bool(self.vae_slicing)

    def use_vae_tiling(self, width: int, height: int) -> bool:
        return max(width, height) > TILING_ABOVE_PX if self.vae_tiling == AUTO else bool(self.vae_tiling)

    def chunk_size(self, kind: str, device: str) -> int:
        """Frames per VAE decode for the video pipeline `kind` ("animatediff" or "svd")."""
        if self.decode_chunk_size != AUTO:
            return int(self.decode_chunk_size)
        if kind == "svd":
            # The temporal decoder mixes the frames of a chunk: 8 is SVD's reference setting, and on
            # CPU it costs about the same per frame as 1 (its convolutions are compute-bound).
            return _SVD_CHUNK
        # AnimateDiff decodes frame by frame with the SD VAE: chunks only trade memory for speed.
        # On CPU one frame at a time stays in cache (16 frames of a 512 px tiny decode: 6.5 s vs 2.2 s).
        return 16 if device.startswith("cuda") else 1

    # -- load-time settings -----------------------------------------------------------------------
    def use_channels_last(self, device: str) -> bool:
        # CPU too: the tiny profile at 512 px on 2 CPUs, SD UNet step 92 -> 23 ms, SVD UNet step
        # 0.95 -> 0.65 s, SVD temporal VAE 1.9 -> 1.3 s per frame.
        return device.startswith(("cuda", "cpu")) if self.channels_last == AUTO else bool(self.channels_last)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_fast_paths(data, source: Path | str | None = None) -> FastPaths:
    """A `fast_paths:` mapping from a profile YAML, with errors naming the file and the key."""
    where = f"Profile {source}: " if source else ""
    if data is None:
        return FastPaths()
    if not isinstance(data, dict):
        raise ValueError(f"{where}`fast_paths` must be a mapping of setting: value, got {data!r}.")
    known = {f.name for f in fields(FastPaths)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{where}unknown `fast_paths` setting(s) {', '.join(map(str, unknown))}; "
            f"settings are {', '.join(sorted(known))}."
        )
    try:
        return FastPaths(**data)
    except ValueError as exc:
        raise ValueError(f"{where}`fast_paths`: {exc}") from None


def apply_load_time(pipe, kind: str, fast: FastPaths, device: str) -> None:
    """Attention processor, memory format, compile and offload, once per loaded pipeline.

    Called after `pipe.to(device)` (and after the IP-Adapter is loaded, whose SDPA processors are
    left alone by `eager`). `cpu_offload` replaces the `.to(device)` placement.
    """
    unet, vae = getattr(pipe, "unet", None), getattr(pipe, "vae", None)
    if fast.attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        for module in (unet, vae):
            if module is None or not hasattr(module, "attn_processors"):
                continue
            processors = {
                name: AttnProcessor() if type(proc) is AttnProcessor2_0 else proc
                for name, proc in module.attn_processors.items()
            }
            module.set_attn_processor(processors)
    if fast.use_channels_last(device):
        for module in (unet, vae):
            if module is not None:
                _to_channels_last(module)
    if fast.compile_unet and unet is not None and device.startswith("cuda"):
        # In place (the module keeps its class, so AnimateDiff's from_pipe still recognises it), once
        # per process: the model cache keeps this pipeline for every later job of the warm kernel.
        unet.compile()
    if fast.cpu_offload:
        if not device.startswith("cuda"):
            raise ValueError(f"`cpu_offload` needs a CUDA device, got {device!r}; set it to false for this profile.")
        pipe.enable_model_cpu_offload(device=device)


def _to_channels_last(module) -> None:
    """NHWC for every 4-D weight; 5-D (Conv3d, in SVD's temporal layers) stay as they are."""
    import torch

    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.dim() == 4:
            weight.data = weight.data.contiguous(memory_format=torch.channels_last)

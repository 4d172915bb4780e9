"""ComfyUI API-format graphs for animenb's three generation primitives.

A graph is the JSON that ComfyUI's `POST /prompt` takes: `{node_id: {"class_type", "inputs"}}`,
where an input is a literal or a link `[node_id, output_index]`. Each builder returns a
`Graph`: the node dict plus the ids the backend reads back (the sampler whose `progress`
messages become `on_step()` calls, and the output node whose images are fetched).

Only built-in nodes are used for text-to-image and SVD; IP-Adapter and AnimateDiff use the
community node packs below, and `missing_nodes` says which of their nodes a server lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .base import ImageRequest, ImageToVideoRequest, VideoRequest
from .samplers import SCHEDULER_NAMES, sampler

# animenb scheduler name (A1111's or an alias) -> ComfyUI (sampler_name, scheduler), as KSampler takes them.
SAMPLERS: dict[str, tuple[str, str]] = {name: sampler(name).comfyui for name in SCHEDULER_NAMES}


@dataclass(frozen=True)
class NodePack:
    """A community node pack: what to install, and the node classes animenb's graphs use from it."""

    name: str
    nodes: tuple[str, ...]
    feature: str

    def missing(self, available) -> list[str]:
        return [node for node in self.nodes if node not in available]


IPADAPTER_PACK = NodePack(
    name="ComfyUI_IPAdapter_plus (cubiq)",
    nodes=("IPAdapterModelLoader", "IPAdapterAdvanced"),
    feature="IP-Adapter (`ip_adapter_image`)",
)
ANIMATEDIFF_PACK = NodePack(
    name="ComfyUI-AnimateDiff-Evolved (Kosinkadink)",
    nodes=(
        "ADE_LoadAnimateDiffModel",
        "ADE_ApplyAnimateDiffModelSimple",
        "ADE_UseEvolvedSampling",
        "ADE_MultivalDynamic",
    ),
    feature="text-to-video (AnimateDiff)",
)
# Built-in nodes the graphs rely on (present in every ComfyUI since SVD support, 2023-11).
SVD_NODES = ("ImageOnlyCheckpointLoader", "SVD_img2vid_Conditioning", "VideoLinearCFGGuidance")
CONTROLNET_NODES = ("ControlNetLoader", "ControlNetApplyAdvanced")


@dataclass
class Graph:
    nodes: dict = field(default_factory=dict)
    sampler: str = ""
    output: str = ""
    _next: int = 1

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(self._next)
        self._next += 1
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id


def _sampler(
    graph: Graph, model, positive, negative, latent, *, seed: int, steps: int, cfg: float, scheduler: str
) -> str:
    sampler_name, comfy_scheduler = SAMPLERS[scheduler]
    graph.sampler = graph.add(
        "KSampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=float(cfg),
        sampler_name=sampler_name,
        scheduler=comfy_scheduler,
        positive=positive,
        negative=negative,
        latent_image=latent,
        denoise=1.0,
    )
    return graph.sampler


def _ip_adapter(graph: Graph, model, *, image_name: str, scale: float, ipadapter_model: str, clip_vision_model: str):
    """Patch `model` with IPAdapterAdvanced (ComfyUI_IPAdapter_plus) for the uploaded reference."""
    ipadapter = graph.add("IPAdapterModelLoader", ipadapter_file=ipadapter_model)
    clip_vision = graph.add("CLIPVisionLoader", clip_name=clip_vision_model)
    reference = graph.add("LoadImage", image=image_name)
    patched = graph.add(
        "IPAdapterAdvanced",
        model=model,
        ipadapter=[ipadapter, 0],
        image=[reference, 0],
        weight=float(scale),
        weight_type="linear",
        combine_embeds="concat",
        start_at=0.0,
        end_at=1.0,
        embeds_scaling="V only",
        clip_vision=[clip_vision, 0],
    )
    return [patched, 0]


def _controlnet(graph: Graph, positive, negative, vae, *, image_name: str, strength: float, controlnet_model: str):
    """Condition both prompts on the uploaded pose image through ControlNetApplyAdvanced (built in)."""
    controlnet = graph.add("ControlNetLoader", control_net_name=controlnet_model)
    pose = graph.add("LoadImage", image=image_name)
    applied = graph.add(
        "ControlNetApplyAdvanced",
        positive=positive,
        negative=negative,
        control_net=[controlnet, 0],
        image=[pose, 0],
        strength=float(strength),
        start_percent=0.0,
        end_percent=1.0,
        vae=vae,
    )
    return [applied, 0], [applied, 1]


def with_embedding_syntax(prompt: str, embeddings) -> str:
    """A1111 names an embedding by its bare name (`EasyNegative`); ComfyUI wants `embedding:EasyNegative`."""
    for name in embeddings:
        prompt = re.sub(rf"(?<![\w:-]){re.escape(name)}(?![\w-])", f"embedding:{name}", prompt)
    return prompt


def _models(graph: Graph, loader: str, loras, clip_skip: int | None):
    """The checkpoint's MODEL and CLIP through one LoraLoader per LoRA, then CLIPSetLastLayer for `clip_skip`."""
    model, clip = [loader, 0], [loader, 1]
    for name, weight in loras:
        lora = graph.add(
            "LoraLoader",
            model=model,
            clip=clip,
            lora_name=name,
            strength_model=float(weight),
            strength_clip=float(weight),
        )
        model, clip = [lora, 0], [lora, 1]
    if clip_skip not in (None, 1):  # A1111's clip skip 2 = ComfyUI's last layer -2
        clip = [graph.add("CLIPSetLastLayer", clip=clip, stop_at_clip_layer=-clip_skip), 0]
    return model, clip


def text_to_image(
    request: ImageRequest,
    *,
    checkpoint: str,
    ip_adapter: dict | None = None,
    batch_size: int = 1,
    controlnet: dict | None = None,
    loras=(),
    clip_skip: int | None = None,
    embeddings=(),
) -> Graph:
    """CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode -> PreviewImage.

    `ip_adapter` = {"image_name", "ipadapter_model", "clip_vision_model"} inserts IPAdapterAdvanced
    between the checkpoint and the sampler. `controlnet` = {"image_name", "controlnet_model"} conditions
    both prompts on the pose image at `request.control_scale`. `batch_size` > 1 is the AnimateDiff frame
    count. `loras` ((ComfyUI lora_name, weight), ...) chain LoraLoader nodes; `clip_skip` adds
    CLIPSetLastLayer; `embeddings` (the names ComfyUI has) are written `embedding:name` in the prompts.
    """
    graph = Graph()
    # 1. Models and conditioning.
    loader = graph.add("CheckpointLoaderSimple", ckpt_name=checkpoint)
    model, clip = _models(graph, loader, loras, clip_skip)
    encoded = [
        graph.add("CLIPTextEncode", text=with_embedding_syntax(text, embeddings), clip=clip)
        for text in (request.prompt, request.negative_prompt)
    ]
    positive, negative = [encoded[0], 0], [encoded[1], 0]
    if ip_adapter is not None:
        model = _ip_adapter(graph, model, scale=request.ip_adapter_scale, **ip_adapter)
    if controlnet is not None:
        positive, negative = _controlnet(
            graph, positive, negative, [loader, 2], strength=request.control_scale, **controlnet
        )
    # 2. Latents, denoising, decode.
    latent = graph.add("EmptyLatentImage", width=request.width, height=request.height, batch_size=batch_size)
    sampler = _sampler(
        graph,
        model,
        positive,
        negative,
        [latent, 0],
        seed=request.seed,
        steps=request.steps,
        cfg=request.guidance_scale,
        scheduler=request.scheduler,
    )
    decoded = graph.add("VAEDecode", samples=[sampler, 0], vae=[loader, 2])
    # 3. PreviewImage writes a lossless PNG to ComfyUI's temp dir (cleared on restart), not its outputs.
    graph.output = graph.add("PreviewImage", images=[decoded, 0])
    return graph


def text_to_video(
    request: VideoRequest,
    *,
    checkpoint: str,
    motion_model: str,
    ip_adapter: dict | None = None,
    loras=(),
    clip_skip: int | None = None,
    embeddings=(),
) -> Graph:
    """AnimateDiff-Evolved (Gen2 nodes) on the text-to-image graph: one latent per frame."""
    image_request = ImageRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        seed=request.seed,
        scheduler=request.scheduler,
        ip_adapter_scale=request.ip_adapter_scale,
    )
    graph = text_to_image(
        image_request,
        checkpoint=checkpoint,
        ip_adapter=ip_adapter,
        batch_size=request.frames,
        loras=loras,
        clip_skip=clip_skip,
        embeddings=embeddings,
    )
    sampler = graph.nodes[graph.sampler]["inputs"]
    motion = graph.add("ADE_LoadAnimateDiffModel", model_name=motion_model)
    scale = {}
    if request.motion_scale != 1.0:  # AnimateDiff-Evolved's motion scale, as a constant multival
        scale["scale_multival"] = [graph.add("ADE_MultivalDynamic", float_val=float(request.motion_scale)), 0]
    applied = graph.add("ADE_ApplyAnimateDiffModelSimple", motion_model=[motion, 0], **scale)
    evolved = graph.add(
        "ADE_UseEvolvedSampling", model=sampler["model"], beta_schedule="autoselect", m_models=[applied, 0]
    )
    sampler["model"] = [evolved, 0]
    return graph


def image_to_video(request: ImageToVideoRequest, *, checkpoint: str, image_name: str) -> Graph:
    """ComfyUI's built-in SVD nodes: ImageOnlyCheckpointLoader -> SVD_img2vid_Conditioning -> KSampler."""
    graph = Graph()
    loader = graph.add("ImageOnlyCheckpointLoader", ckpt_name=checkpoint)
    image = graph.add("LoadImage", image=image_name)
    conditioning = graph.add(
        "SVD_img2vid_Conditioning",
        clip_vision=[loader, 1],
        init_image=[image, 0],
        vae=[loader, 2],
        width=request.width,
        height=request.height,
        video_frames=request.frames,
        motion_bucket_id=request.motion_bucket_id,
        fps=request.fps,
        augmentation_level=float(request.noise_aug_strength),
    )
    guided = graph.add("VideoLinearCFGGuidance", model=[loader, 0], min_cfg=float(request.min_guidance_scale))
    graph.sampler = graph.add(
        "KSampler",
        model=[guided, 0],
        seed=request.seed,
        steps=request.steps,
        cfg=float(request.max_guidance_scale),
        sampler_name="euler",
        scheduler="karras",
        positive=[conditioning, 0],
        negative=[conditioning, 1],
        latent_image=[conditioning, 2],
        denoise=1.0,
    )
    decoded = graph.add("VAEDecode", samples=[graph.sampler, 0], vae=[loader, 2])
    graph.output = graph.add("PreviewImage", images=[decoded, 0])
    return graph

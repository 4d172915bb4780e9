"""Files a run writes: PNGs with their generation parameters, sheets, GIF/WebP/MP4, re-timed frames.

Every file is written through `animenb.atomic.atomic_path`, so a reader (the gallery, a crash)
never sees half a file.

Encoding runs on threads (`encode_concurrently`, `save_pngs`): zlib, libwebp and the GIF
quantizer release the GIL and ffmpeg is its own process, so at 512 px a loop's 16 PNGs, GIF,
MP4 and WebP no longer queue one behind the other (on a 16-CPU GPU machine they took 2.4 s
of a 3.3 s tiny loop). The one rule: Pillow's `save` sets attributes on the image it saves,
so no image may be saved by two threads at once.
"""

from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .atomic import atomic_path
from .backends.samplers import SCHEDULER_NAMES, sampler

# The text chunks ComfyUI writes into its PNGs and reads back when a PNG is dropped on it.
COMFYUI_CHUNKS = ("prompt", "workflow")


# animenb scheduler name (A1111's own or an alias) -> A1111's (Sampler, Schedule type), the names
# A1111-reading tools (sd-parsers, image browsers, model sites) know. "euler_karras" is what SVD samples with.
A1111_SAMPLERS: dict[str, tuple[str, str]] = {
    **{name: sampler(name).a1111 for name in SCHEDULER_NAMES},
    "euler_karras": ("Euler", "Karras"),
}
# A1111's own fields, in its order: (animenb key, A1111 name). Any other key is appended as `Key name`.
_A1111_FIELDS = (
    ("steps", "Steps"),
    ("sampler", None),
    ("cfg_scale", "CFG scale"),
    ("seed", "Seed"),
    ("size", "Size"),
    ("model_hash", "Model hash"),
    ("model", "Model"),
    ("vae_hash", "VAE hash"),
    ("vae", "VAE"),
    ("clip_skip", "Clip skip"),
    ("lora_hashes", "Lora hashes"),
    ("ti_hashes", "TI hashes"),
)
# Kept out of the text: the prompts have their own lines; the JSON chunk carries everything.
_NOT_IN_TEXT = {"prompt", "negative_prompt", "sampler", "animenb", "lora_tags"}


def a1111_quote(value) -> str:
    """A1111's `quote()`: a value holding `,`, `:` or a newline is written as a JSON string."""
    text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def parameters_text(params: dict) -> str:
    """A1111 `parameters` text: the prompt, `Negative prompt: ...`, then one line of `Name: value` fields.

    A1111's names and order first (`Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash,
    Model`), then animenb's own fields (`Phase`, `Pose`, `Frame`...). `sampler` is an animenb
    scheduler name, written as A1111's sampler and schedule type (`dpmpp_2m_karras` ->
    `Sampler: DPM++ 2M, Schedule type: Karras`).
    """
    lines = [" ".join(str(p) for p in (params.get("prompt", ""), params.get("lora_tags")) if p)]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields: list[tuple[str, object]] = []
    for key, name in _A1111_FIELDS:
        value = params.get(key)
        if value is None:
            continue
        if key == "sampler":
            if value not in A1111_SAMPLERS:
                raise ValueError(f"`sampler` must be one of {', '.join(A1111_SAMPLERS)}, got {value!r}.")
            sampler, schedule = A1111_SAMPLERS[value]
            fields += [("Sampler", sampler), ("Schedule type", schedule)]
        else:
            fields.append((name or key, value))
    known = {key for key, _ in _A1111_FIELDS} | _NOT_IN_TEXT
    fields += [
        (key.replace("_", " ").capitalize(), value)
        for key, value in params.items()
        if key not in known and value is not None
    ]
    if "animenb" in params:
        fields.append(("Version", f"animenb {params['animenb']}"))
    lines.append(", ".join(f"{name}: {a1111_quote(value)}" for name, value in fields))
    return "\n".join(lines)


def a1111_model_fields(used: dict) -> dict:
    """PNG-info fields for the models a job used (a backend's `last_models`): the prompt with A1111's
    `<lora:name:weight>` tags appended (how A1111 records LoRAs, and what readers such as sd-parsers keep),
    `Clip skip`, `Lora hashes` and `TI hashes` (`"name: hash, ..."`, as A1111 writes them)."""
    fields: dict = {}
    loras = used.get("loras") or []
    if loras:
        fields["lora_tags"] = " ".join(f"<lora:{e['name']}:{e['weight']:g}>" for e in loras)
        fields["lora_hashes"] = ", ".join(f"{e['name']}: {e['hash']}" for e in loras)
    if used.get("embeddings"):
        fields["ti_hashes"] = ", ".join(f"{e['name']}: {e['hash']}" for e in used["embeddings"])
    if used.get("clip_skip") is not None:
        fields["clip_skip"] = used["clip_skip"]
    if used.get("model_hash"):  # a single-file checkpoint: A1111's `Model` is its file name's stem
        fields.update(model=used["model"], model_hash=used["model_hash"])
    return fields


def save_png(image: Image.Image, path: Path, params: dict) -> Path:
    """PNG with `parameters` (A1111 text) and `animenb` (JSON) text chunks.

    ComfyUI's own chunks on `image` (`prompt`: the API graph, `workflow`: the editor graph, as the
    ComfyUI backend attaches them) are kept, so the file still loads back into ComfyUI.
    """
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(params))
    info.add_text("animenb", json.dumps(params, sort_keys=True, default=str))
    for key in COMFYUI_CHUNKS:
        if isinstance(image.info.get(key), str):
            info.add_text(key, image.info[key])
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def encode_concurrently(*calls: Callable[[], object]) -> list:
    """Run encoders side by side on up to 8 threads; their results in order (the first error is raised)."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(
        max_workers=min(8, len(calls), os.cpu_count() or 1), thread_name_prefix="animenb-encode"
    ) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def save_pngs(items: list[tuple[Image.Image, Path, dict]]) -> list[Path]:
    """`save_png` for (image, path, params) items, concurrently; each image object may appear once."""
    if len({id(image) for image, _, _ in items}) != len(items):
        raise ValueError("save_pngs: an image appears twice (Pillow cannot save one image from two threads).")
    return encode_concurrently(*(lambda item=item: save_png(*item) for item in items))


def read_png_parameters(path: Path) -> dict:
    with Image.open(path) as im:
        return json.loads(im.text["animenb"])


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def compose_sheet(
    images: list[Image.Image], labels: list[str], title: str, columns: int = 4, footer: str = ""
) -> Image.Image:
    """A labelled grid: title bar, one captioned cell per image, optional footer (e.g. the models label)."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    label_h = max(14, height // 8)
    title_h = max(20, height // 5)
    footer_h = label_h if footer else 0
    caption_font = _font(max(9, label_h * 7 // 10))  # ascent + descent fit the band: the next row never cuts them
    sheet = Image.new("RGB", (columns * width, title_h + rows * (height + label_h) + footer_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), title, fill="black", font=_font(max(10, title_h // 2)))
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * width, title_h + (i // columns) * (height + label_h)
        sheet.paste(image.convert("RGB"), (x, y))
        draw.text((x + 4, y + height + 1), label, fill="black", font=caption_font)
    if footer:
        draw.text((6, sheet.height - footer_h + 1), footer, fill="gray", font=caption_font)
    return sheet


def close_loop(frames: list[Image.Image], length: int) -> list[Image.Image]:
    """Cross-fade the generated tail into the head so frame `length-1` leads back to frame 0.

    `frames` holds `length + overlap` frames of one continuous motion. Output frame i < overlap
    is a blend of frames[length + i] (the motion's natural continuation after the last kept
    frame) and frames[i], weighted linearly towards frames[i]; frames overlap..length-1 stay as
    generated. So the step from the last output frame to the first is an ordinary motion step.
    """
    overlap = len(frames) - length
    if overlap < 0:
        raise ValueError(f"`frames` must hold at least {length} frames, got {len(frames)}.")
    out = []
    for i in range(length):
        if i < overlap:
            weight = (i + 1) / (overlap + 1)  # share of the head frame
            tail = np.asarray(frames[length + i].convert("RGB"), dtype=np.float32)
            head = np.asarray(frames[i].convert("RGB"), dtype=np.float32)
            blended = Image.fromarray(np.rint(weight * head + (1 - weight) * tail).astype(np.uint8))
            blended.info.update(frames[i].info)  # e.g. the ComfyUI graph that made the batch (see save_png)
            out.append(blended)
        else:
            out.append(frames[i].convert("RGB"))
    return out


def retime(frames: list[Image.Image], seconds: float, fps: int) -> Iterator[Image.Image]:
    """Resample a clip to exactly round(seconds * fps) frames by linear blending of neighbours, made one at
    a time as they are taken (`save_mp4` streams them): 30 s at 60 fps of 2048 px would be 22 GB at once."""
    count = round(seconds * fps)
    if count < 2 or len(frames) < 2:
        raise ValueError(f"`retime` needs >= 2 input and output frames, got {len(frames)} -> {count}.")
    return _blend_at(frames, np.linspace(0, len(frames) - 1, count))


def _blend_at(frames: list[Image.Image], positions: np.ndarray) -> Iterator[Image.Image]:
    for p in positions:
        lo = int(np.floor(p))
        hi = min(lo + 1, len(frames) - 1)
        t = p - lo
        a = np.asarray(frames[lo].convert("RGB"), dtype=np.float32)
        b = np.asarray(frames[hi].convert("RGB"), dtype=np.float32)
        yield Image.fromarray(np.rint((1 - t) * a + t * b).astype(np.uint8))


def frame_durations_ms(count: int, fps: int, tick_ms: int) -> list[int]:
    """Per-frame durations in multiples of `tick_ms` that add up to exactly count / fps seconds.

    GIF stores durations in 10 ms ticks, so 8 fps (125 ms) alternates 130/120 ms.
    """
    total = round(1000 * count / fps)
    if total % tick_ms:
        raise ValueError(f"{count} frames at {fps} fps ({total} ms) is not a multiple of {tick_ms} ms.")
    bounds = [round(i * total / count / tick_ms) * tick_ms for i in range(count + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def save_gif(frames: list[Image.Image], path: Path, fps: int) -> Path:
    """Looping GIF with one palette for all frames.

    One fast-octree palette from a strip of the frames (each at most 128 px) is mapped onto every
    frame: no palette shimmer across the loop, and 16 frames at 512 px encode in ~0.15 s instead
    of the ~9.8 s of Pillow's per-frame quantization. Like any GIF writer, Pillow stores
    identical consecutive frames once with their durations added, so the duration stays exact.
    """
    durations = frame_durations_ms(len(frames), fps, tick_ms=10)
    width, height = frames[0].size
    scale = min(1.0, 128 / max(width, height))
    cell = (max(1, round(width * scale)), max(1, round(height * scale)))
    strip = Image.new("RGB", (cell[0], cell[1] * len(frames)))
    for index, frame in enumerate(frames):
        strip.paste(frame.convert("RGB").resize(cell, Image.BILINEAR), (0, index * cell[1]))
    palette = strip.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    indexed = [frame.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    with atomic_path(path) as tmp:
        indexed[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=indexed[1:],
            duration=durations,
            loop=0,
            disposal=1,
            optimize=False,
        )
    return Path(path)


def save_webp(frames: list[Image.Image], path: Path, fps: int) -> Path:
    durations = frame_durations_ms(len(frames), fps, tick_ms=1)
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp,
            format="WEBP",
            save_all=True,
            append_images=frames[1:],
            duration=durations,
            loop=0,
            lossless=False,
            quality=90,
            method=4,
        )
    return Path(path)


def save_mp4(frames: Iterable[Image.Image], path: Path, fps: int) -> Path:
    """H.264 MP4 (yuv420p, so any player plays it) at `fps`: duration = frame count / fps exactly. `frames`
    may be an iterator (`retime`): each frame goes to the encoder as it comes, none is kept."""
    import imageio_ffmpeg

    frames = iter(frames)
    first = next(frames)
    width, height = first.size
    if width % 2 or height % 2:
        raise ValueError(f"MP4 (yuv420p) needs even width and height, got {width}x{height}.")
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=2,
            output_params=["-movflags", "+faststart", "-crf", "18"],
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in itertools.chain([first], frames):
            writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
        writer.close()
    return Path(path)


def video_frames_and_seconds(path: Path) -> tuple[int, float]:
    """(frame count, duration in seconds) read back from a video file by ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))


def animation_frames_and_seconds(path: Path) -> tuple[int, float]:
    """(frame count, duration in seconds) of an animated GIF or WebP."""
    with Image.open(path) as im:
        total_ms = 0
        for index in range(im.n_frames):
            im.seek(index)
            im.load()  # WebP reports a frame's duration only once it is decoded
            total_ms += im.info["duration"]
        return im.n_frames, total_ms / 1000

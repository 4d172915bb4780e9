"""The sweep's grid image, as A1111's X/Y/Z plot draws it: X values across, Y values down, one page per Z value.

Each cell is its run's image (a sheet, a loop's first frame, a video's source) fitted into a `cell` px
box, with the cell's quality score and gate verdict printed under it; the axis labels sit above the
columns and left of the rows, a Z page has its value as a title. Sizes (`GridLayout`) are exact, so a
test can check them:

    width  = label_width + columns x cell
    height = title_height + header_height + rows x (cell + caption_height)

The PNG carries the sweep's recipe in its PNG info: A1111's `parameters` text with `Script: X/Y/Z plot`
and the X/Y/Z types and values, and the whole recipe as JSON (chunk `sweep`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from animenb.atomic import atomic_path
from animenb.media import A1111_SAMPLERS, parameters_text

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
VERDICT_INK = {"pass": (20, 120, 40), "fail": (190, 30, 30), "review": (200, 120, 0)}
AXIS_LETTERS = ("X", "Y", "Z")


@dataclass(frozen=True)
class GridLayout:
    columns: int
    rows: int
    cell: int = 192
    label_width: int = 0  # 0 without a Y axis
    header_height: int = 28
    caption_height: int = 22
    title_height: int = 0  # a Z page's title

    @property
    def size(self) -> tuple[int, int]:
        return (
            self.label_width + self.columns * self.cell,
            self.title_height + self.header_height + self.rows * (self.cell + self.caption_height),
        )

    def cell_origin(self, column: int, row: int) -> tuple[int, int]:
        return (
            self.label_width + column * self.cell,
            self.title_height + self.header_height + row * (self.cell + self.caption_height),
        )


def axis_label(name: str, value: Any) -> str:
    return f"{name}: {value:g}" if isinstance(value, float) else f"{name}: {value}"


def caption(result: dict) -> str:
    """`q 0.82 pass` under a cell (`failed` / `cancelled` for a cell that did not finish)."""
    if result.get("status") not in (None, "succeeded"):
        return str(result["status"])
    score = result.get("quality_score")
    verdict = result.get("verdict") or ""
    return f"q {score:.2f} {verdict}".strip() if isinstance(score, (int, float)) else (verdict or "unscored")


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(image: Image.Image | None, box: int) -> Image.Image:
    tile = Image.new("RGB", (box, box), (235, 235, 235))
    if image is None:
        ImageDraw.Draw(tile).text((box // 2, box // 2), "no image", fill=(120, 120, 120), font=_font(12), anchor="mm")
        return tile
    image = image.convert("RGB")
    scale = min(box / image.width, box / image.height)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    tile.paste(fitted, ((box - fitted.width) // 2, (box - fitted.height) // 2))
    return tile


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int, fill=INK, size: int = 13) -> None:
    """`text` centred at `xy`, shortened with … to fit `width` px."""
    font = _font(size)
    while len(text) > 1 and draw.textlength(text, font=font) > width - 4:
        text = text[:-2] + "…"
    draw.text(xy, text, fill=fill, font=font, anchor="mm")


def grid_pages(
    axes: dict[str, list],
    cells: Sequence[dict],
    results: Sequence[dict],
    images: Sequence[Image.Image | None],
    *,
    mode: str = "grid",
    cell: int = 192,
) -> list[Image.Image]:
    """One image per Z value (one in all without a Z axis, or in "zip" mode: the cells in one row).

    `cells[i]` are cell i's axis values, `results[i]` its row of the sweep's table (quality_score, verdict,
    status), `images[i]` its picture (None: a grey "no image" tile)."""
    names = list(axes)
    if mode == "zip":
        x_values, y_values, z_values = list(range(len(cells))), [None], [None]
        x_labels = [", ".join(axis_label(k, v) for k, v in c.items()) for c in cells]
    else:
        x_values = axes[names[0]]
        y_values = axes[names[1]] if len(names) > 1 else [None]
        z_values = axes[names[2]] if len(names) > 2 else [None]
        x_labels = [axis_label(names[0], v) for v in x_values]
    layout = GridLayout(
        columns=len(x_values),
        rows=len(y_values),
        cell=cell,
        label_width=cell * 2 // 3 if y_values != [None] else 0,
        title_height=26 if z_values != [None] else 0,
    )
    pages = []
    for z, z_value in enumerate(z_values):
        page = Image.new("RGB", layout.size, BACKGROUND)
        draw = ImageDraw.Draw(page)
        if z_value is not None:
            _text(draw, (page.width // 2, layout.title_height // 2), axis_label(names[2], z_value), page.width, size=15)
        for column, label in enumerate(x_labels):
            x, _ = layout.cell_origin(column, 0)
            _text(draw, (x + cell // 2, layout.title_height + layout.header_height // 2), label, cell)
        for row, y_value in enumerate(y_values):
            if y_value is not None:
                _, y = layout.cell_origin(0, row)
                _text(draw, (layout.label_width // 2, y + cell // 2), axis_label(names[1], y_value), layout.label_width)
            for column in range(len(x_values)):
                index = column if mode == "zip" else column + len(x_values) * (row + len(y_values) * z)
                x, y = layout.cell_origin(column, row)
                page.paste(_fit(images[index], cell), (x, y))
                result = results[index]
                _text(
                    draw,
                    (x + cell // 2, y + cell + layout.caption_height // 2),
                    caption(result),
                    cell,
                    fill=VERDICT_INK.get(result.get("verdict") or "", INK)
                    if result.get("status") == "succeeded"
                    else VERDICT_INK["fail"],
                )
        pages.append(page)
    return pages


def recipe_text_fields(recipe: dict) -> dict:
    """The fields of a grid's A1111 `parameters` text: the shared parameters in A1111's names,
    `Script: X/Y/Z plot` and each axis's type and values."""
    shared = recipe.get("parameters", {})
    params: dict[str, Any] = {
        "prompt": shared.get("prompt", ""),
        "negative_prompt": shared.get("negative_prompt", ""),
        "steps": shared.get("steps"),
        "cfg_scale": shared.get("guidance_scale"),
        "seed": shared.get("seed"),
    }
    if shared.get("scheduler") in A1111_SAMPLERS:
        params["sampler"] = shared["scheduler"]
    if shared.get("width") and shared.get("height"):
        params["size"] = f"{shared['width']}x{shared['height']}"
    params["script"] = "X/Y/Z plot"
    for letter, (name, values) in zip(AXIS_LETTERS, recipe.get("axes", {}).items()):
        params[f"{letter.lower()}_type"] = name
        params[f"{letter.lower()}_values"] = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
    return params


def _save(image: Image.Image, path: Path, recipe: dict) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(recipe_text_fields(recipe)))
    info.add_text("sweep", json.dumps(recipe, sort_keys=True, default=str))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def save_grid(pages: list[Image.Image], out_dir: Path, recipe: dict) -> list[Path]:
    """`grid.png` (the pages one under another) and, with a Z axis, `grid-z<k>.png` per page; each with the
    recipe in its PNG info. Returns the paths written."""
    combined = pages[0]
    if len(pages) > 1:
        combined = Image.new("RGB", (max(p.width for p in pages), sum(p.height for p in pages)), BACKGROUND)
        top = 0
        for page in pages:
            combined.paste(page, (0, top))
            top += page.height
    paths = [_save(combined, Path(out_dir) / "grid.png", recipe)]
    if len(pages) > 1:
        paths += [_save(page, Path(out_dir) / f"grid-z{k + 1}.png", recipe) for k, page in enumerate(pages)]
    return paths

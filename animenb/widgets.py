"""`ExplorerPanel`: an ipywidgets panel for tuning a phase interactively in the notebook's own kernel.

    from animenb.widgets import explore
    panel = explore(models="tiny")      # displays as the panel in JupyterLab
    panel.generate()                    # what the Generate button does, synchronously
    panel.compare([8, 15, 25, 40])      # same seed at several step counts (a one-axis sweep): images, time, quality

Every button handler is a plain method (`generate`, `compare`, `cancel`, `new_seed`), so the
panel works headless: tests construct it, set widget values and call the methods (or
`button.click()`) with `background=False`. In JupyterLab (`background=True`, the default
inside a kernel) a click runs the work on a thread, so the kernel keeps handling widget
messages: the progress bar moves and Cancel gets through while the phase runs.

Progress: the phase functions' `on_progress` events drive a `FloatProgress`; events that
carry a preview (`ProgressEvent.preview`, e.g. ComfyUI's sampler previews) are shown as
step previews. Each Generate or Compare gets its own `animenb.progress.CancelToken`; Cancel cancels it,
so the phase stops at its next step (`Cancelled`) and a comparison before its next step count.
"""

from __future__ import annotations

import base64
import html
import io
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import ipywidgets as W
from PIL import Image

from . import progress as _progress
from .backends.base import SCHEDULERS
from .config import default_profile
from .phases import PHASE_FUNCTIONS, PHASES, PhaseResult, get_phase
from .phases.common import stamped_output_dir
from .phases.spec import phase_spec
from .progress import Cancelled, CancelToken, ProgressEvent
from .sweeps.local import run_plan
from .sweeps.plan import build_plan

DEFAULT_COMPARE_STEPS = (8, 15, 25, 40)
SIZES: tuple[tuple[str, tuple[int | None, int | None]], ...] = (
    ("profile default", (None, None)),
    ("64 × 64", (64, 64)),
    ("128 × 128", (128, 128)),
    ("256 × 256", (256, 256)),
    ("512 × 512", (512, 512)),
    ("512 × 768", (512, 768)),
    ("768 × 512", (768, 512)),
    ("768 × 768", (768, 768)),
    ("1024 × 1024", (1024, 1024)),
)
THUMB_PX = 128


@dataclass
class RunRecord:
    """One generation made by the panel (a history entry, or one cell of a comparison)."""

    phase: str
    prompt: str
    seed: int
    steps: int
    scheduler: str
    guidance_scale: float
    output_dir: Path
    seconds: float
    thumbnail: bytes = field(repr=False)  # PNG (or GIF for loops) bytes
    thumbnail_format: str = "png"
    score: float | None = None
    passed: bool | None = None
    result: PhaseResult | None = field(default=None, repr=False)

    @property
    def step_rate(self) -> float | None:
        """Denoising steps per second of the generation (all poses of a sheet counted)."""
        generate = (self.result.manifest.get("timings") or {}).get("generate_seconds") if self.result else None
        total = self.steps * (8 if self.phase == "CHARACTER_SHEET" else 1)
        return round(total / generate, 3) if generate else None

    def caption(self) -> str:
        score = "" if self.score is None else f" · q {self.score:.2f} {'✓' if self.passed else '✗'}"
        return f"{self.steps} steps · {self.seconds:.2f} s{score}<br>seed {self.seed}"


def parse_steps(text: str | Sequence[int]) -> list[int]:
    """ "8, 15, 25, 40" (or "[8, 15]", or a list) -> [8, 15, 25, 40]: positive integers, duplicates dropped, order
    kept."""
    items: list[Any]
    if isinstance(text, str):
        items = text.translate(str.maketrans(",[]()", "     ")).split()
    else:
        items = list(text)
    steps: list[int] = []
    for item in items:
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"`compare steps` must be integers, got {item!r}.") from None
        if isinstance(item, float) and item != value or not 1 <= value <= 150:
            raise ValueError(f"`compare steps` must be integers in [1, 150], got {item!r}.")
        if value not in steps:
            steps.append(value)
    if not steps:
        raise ValueError('`compare steps` needs at least one step count, e.g. "8, 15, 25, 40".')
    return steps


def _thumbnail(result: PhaseResult, size: int = THUMB_PX) -> tuple[bytes, str]:
    """A small preview of a run: the sheet, the loop as an animated GIF, a video's first frame."""
    outputs = result.manifest["outputs"]
    if result.phase.name == "ANIMATION_LOOP" and outputs.get("gif"):
        return result.path("gif").read_bytes(), "gif"
    if result.phase.name == "CHARACTER_SHEET":
        with Image.open(result.path("sheet")) as im:
            image = im.convert("RGB")
    else:
        image = result.images[0].convert("RGB") if result.images else Image.new("RGB", (size, size))
    image.thumbnail((size * 2, size * 2))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), "png"


class ExplorerPanel:
    """Prompt, phase, steps, guidance, scheduler, seed and size controls; Generate / Cancel / Compare.

    State after work: `history` (newest first, at most `history_size` RunRecords), `last`
    (the latest RunRecord), `comparison` (a pandas DataFrame: steps, seconds, step_rate,
    score, passed, output_dir) and `comparison_runs`, `events` (ProgressEvents of the
    latest run), `status` ("idle", "running", "done", "cancelled", "error") and `error`.
    `phase_options` are extra keyword arguments per phase name (e.g. `{"ANIMATION_LOOP":
    {"frames": 8}}`). `negative_prompt` and `guidance_scale` left None show the selected phase's
    defaults (animenb.phases.spec) and follow the phase control until edited.
    """

    def __init__(
        self,
        *,
        prompt: str = "anime girl with blue hair, school uniform",
        negative_prompt: str | None = None,
        phase: int | str = "CHARACTER_SHEET",
        steps: int = 15,
        guidance_scale: float | None = None,
        scheduler: str = "dpmpp_2m",
        seed: int = 42,
        width: int | None = None,
        height: int | None = None,
        models: str | None = None,
        backend: str = "diffusers",
        backend_options: dict | None = None,
        output_dir: str | Path | None = None,
        compare_steps: Sequence[int] = DEFAULT_COMPARE_STEPS,
        score: bool = True,
        history_size: int = 12,
        phase_options: dict[str, dict] | None = None,
        background: bool | None = None,
    ):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"`scheduler` must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}.")
        self.models = models or default_profile()
        self.backend = backend
        self.backend_options = backend_options
        self.output_dir = Path(output_dir).expanduser().resolve() if output_dir else None
        self.history_size = history_size
        self.phase_options = {k.upper(): dict(v) for k, v in (phase_options or {}).items()}
        self.background = _progress.in_kernel() if background is None else background

        self.history: list[RunRecord] = []
        self.last: RunRecord | None = None
        self.comparison = None  # pandas.DataFrame after compare()
        self.comparison_runs: list[RunRecord] = []
        self.events: list[ProgressEvent] = []
        self.status = "idle"
        self.error: str | None = None
        self._cancel = CancelToken()  # the current run's; a new one per Generate / Compare
        self._thread: threading.Thread | None = None

        # controls
        style = {"description_width": "110px"}
        wide = W.Layout(width="98%")
        self.prompt = W.Textarea(
            value=prompt, description="prompt", layout=W.Layout(width="98%", height="60px"), style=style
        )
        defaults = phase_spec(phase).defaults
        self.negative_prompt = W.Text(
            value=defaults["negative_prompt"] if negative_prompt is None else negative_prompt,
            description="negative prompt",
            layout=wide,
            style=style,
        )
        self.phase = W.Dropdown(
            options=[(f"{p.id} · {p.name}", p.name) for p in PHASES],
            value=get_phase(phase).name,
            description="phase",
            style=style,
        )
        self.steps = W.IntSlider(value=steps, min=1, max=60, description="steps", continuous_update=False, style=style)
        self.guidance = W.FloatSlider(
            value=defaults["guidance_scale"] if guidance_scale is None else guidance_scale,
            min=0.0,
            max=20.0,
            step=0.5,
            description="guidance",
            continuous_update=False,
            style=style,
        )
        self.scheduler = W.Dropdown(options=list(SCHEDULERS), value=scheduler, description="scheduler", style=style)
        self.seed = W.BoundedIntText(value=seed, min=0, max=2**32 - 1, description="seed", style=style)
        self.new_seed_button = W.Button(
            description="new seed", icon="random", tooltip="draw a random seed", layout=W.Layout(width="110px")
        )
        sizes = list(SIZES)
        if (width, height) not in [v for _l, v in sizes]:
            sizes.append((f"{width} × {height}", (width, height)))
        self.size = W.Dropdown(options=sizes, value=(width, height), description="size", style=style)
        self.score_quality = W.Checkbox(value=score, description="score quality", indent=False)
        self.compare_steps = W.Text(
            value=", ".join(str(s) for s in parse_steps(compare_steps)), description="compare steps", style=style
        )
        # Sized to their labels: in JupyterLab's row the default width cut them to "Ge…", "Can…".
        fit = dict(width="auto", flex="0 0 auto")
        self.generate_button = W.Button(
            description="Generate", button_style="primary", icon="play", layout=W.Layout(**fit)
        )
        self.cancel_button = W.Button(
            description="Cancel", button_style="warning", icon="stop", disabled=True, layout=W.Layout(**fit)
        )
        self.compare_button = W.Button(description="Compare steps", icon="th", layout=W.Layout(**fit))

        # outputs
        self.progress = W.FloatProgress(
            value=0.0,
            min=0.0,
            max=100.0,
            description="idle",
            style={"description_width": "110px", "bar_color": "#4a7ebb"},
            layout=W.Layout(width="60%"),
        )
        self.status_line = W.HTML(value="")
        self.preview = W.Image(format="png", layout=W.Layout(max_width="256px", display="none"))
        self.result_view = W.HTML(value="")
        self.result_image = W.Image(format="png", layout=W.Layout(max_width="512px", display="none"))
        self.history_strip = W.HBox(layout=W.Layout(overflow="auto hidden", flex_flow="row nowrap"))
        self.compare_grid = W.GridBox(layout=W.Layout(grid_template_columns="repeat(4, 200px)", grid_gap="6px"))
        self.compare_table = W.HTML(value="")

        self.phase.observe(self._follow_phase_defaults, names="value")
        self.new_seed_button.on_click(lambda _b: self.new_seed())
        self.generate_button.on_click(lambda _b: self._launch(self.generate))
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.compare_button.on_click(lambda _b: self._launch(self.compare))

        controls = W.VBox(
            [
                self.prompt,
                self.negative_prompt,
                W.HBox([self.phase, self.scheduler]),
                W.HBox([self.steps, self.guidance]),
                W.HBox([self.seed, self.new_seed_button, self.size]),
                W.HBox(
                    [
                        self.generate_button,
                        self.cancel_button,
                        self.compare_button,
                        self.compare_steps,
                        self.score_quality,
                    ]
                ),
            ]
        )
        self.widget = W.VBox(
            [
                W.HTML(
                    f"<b>animenb explorer</b> · models <code>{html.escape(self.models)}</code> · "
                    f"backend <code>{html.escape(backend)}</code>"
                ),
                controls,
                W.HBox([self.progress, self.status_line]),
                self.preview,
                self.result_view,
                self.result_image,
                W.HTML("<b>history</b>"),
                self.history_strip,
                W.HTML("<b>compare steps</b>"),
                self.compare_grid,
                self.compare_table,
            ]
        )

    # -- display ------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- handlers (public: the buttons call these) --------------------------------------
    def _follow_phase_defaults(self, change: dict) -> None:
        """A field still at the old phase's default takes the new phase's (one request, one output)."""
        old, new = phase_spec(change["old"]).defaults, phase_spec(change["new"]).defaults
        for control, name in ((self.negative_prompt, "negative_prompt"), (self.guidance, "guidance_scale")):
            if control.value == old[name]:
                control.value = new[name]

    def new_seed(self) -> int:
        self.seed.value = secrets.randbelow(2**32)
        return self.seed.value

    def cancel(self) -> None:
        """Stop the running phase at its next step, and a comparison before its next step count."""
        self._cancel.cancel()
        self._set_status("cancelling…")

    def parameters(self, steps: int | None = None) -> dict[str, Any]:
        """The phase function's keyword arguments from the current widget values."""
        width, height = self.size.value
        params = dict(
            negative_prompt=self.negative_prompt.value,
            seed=int(self.seed.value),
            steps=int(steps if steps is not None else self.steps.value),
            width=width,
            height=height,
            guidance_scale=float(self.guidance.value),
            scheduler=self.scheduler.value,
            models=self.models,
            backend=self.backend,
            backend_options=self.backend_options,
        )
        params.update(self.phase_options.get(self.phase.value, {}))
        return params

    def generate(self) -> RunRecord | None:
        """Run the selected phase once with the current values; adds the result to the history."""
        return self._guard(self._generate)

    def compare(self, steps: Sequence[int] | str | None = None) -> Any:
        """The same seed at several step counts (default: the "compare steps" field); returns the table."""
        if steps is not None:
            self.compare_steps.value = ", ".join(str(s) for s in parse_steps(steps))
        return self._guard(self._compare)

    # -- work --------------------------------------------------------------------------
    def _launch(self, work: Callable[[], Any]) -> None:
        if self.status == "running" or (self._thread is not None and self._thread.is_alive()):
            return
        if not self.background:
            work()
            return
        self._set_busy(True)  # before the thread starts, so a double click cannot start two
        self._thread = threading.Thread(target=work, name="animenb-explorer", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until background work started by a button finishes."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _guard(self, work: Callable[[], Any]) -> Any:
        self._cancel = CancelToken()
        self.error = None
        self._set_busy(True)
        self.status = "running"
        try:
            value = work()
        except Cancelled as exc:
            self.status = "cancelled"
            self._set_status(html.escape(str(exc)), colour="#a60")
            value = None
        except Exception as exc:  # shown in the panel: a click must never raise into the kernel's comm
            self.status, self.error = "error", f"{type(exc).__name__}: {exc}"
            self._set_status(html.escape(self.error), colour="#b00")
            value = None
        else:
            self.status = "done"
        finally:
            self._set_busy(False)
        self.progress.description = self.status
        return value

    def _run_phase(self, steps: int | None, output_dir: Path | None, label: str) -> RunRecord:
        name = self.phase.value
        prompt = self.prompt.value
        params = self.parameters(steps)
        self.events = []
        self.progress.value = 0.0
        self.progress.description = label

        def on_progress(event: ProgressEvent) -> None:
            self.events.append(event)
            self.progress.value = float(event.percent)
            eta = "" if event.eta_seconds is None else f" · eta {event.eta_seconds:.1f} s"
            self._set_status(f"{html.escape(event.stage)} · step {event.step}/{event.total_steps}{eta}")
            if event.preview and event.preview.startswith("data:image/"):
                head, _, data = event.preview.partition(",")
                self.preview.format = head[len("data:image/") :].split(";")[0] or "png"
                self.preview.value = base64.b64decode(data)
                self.preview.layout.display = None

        started = time.perf_counter()
        result = PHASE_FUNCTIONS[name](
            prompt, output_dir=output_dir, on_progress=on_progress, display=None, cancel=self._cancel, **params
        )
        seconds = time.perf_counter() - started
        score = passed = None
        if self.score_quality.value:
            from .quality import record_quality, score_output_dir

            self._set_status("scoring quality…")
            report = score_output_dir(result.output_dir)
            record_quality(result.output_dir, report)
            score, passed = float(report.score), bool(report.passed)
        thumb, fmt = _thumbnail(result)
        return RunRecord(
            phase=name,
            prompt=prompt,
            seed=int(result.manifest["seed"]),
            steps=params["steps"],
            scheduler=params["scheduler"],
            guidance_scale=params["guidance_scale"],
            output_dir=result.output_dir,
            seconds=round(seconds, 3),
            thumbnail=thumb,
            thumbnail_format=fmt,
            score=score,
            passed=passed,
            result=result,
        )

    def _run_dir(self, kind: str) -> Path | None:
        if self.output_dir is None and kind == "run":
            return None  # the phase's default: outputs/<stamp>-<phase>-<id>/
        return stamped_output_dir(f"{kind}-{self.phase.value}", self.output_dir)

    def _generate(self) -> RunRecord:
        record = self._run_phase(None, self._run_dir("run"), "generating")
        self.last = record
        self.history.insert(0, record)
        del self.history[self.history_size :]
        self._show_result(record)
        self._render_history()
        self._set_status(f"done in {record.seconds:.2f} s · <code>{html.escape(str(record.output_dir))}</code>")
        return record

    def _compare(self):
        import pandas as pd

        steps_list = parse_steps(self.compare_steps.value)
        if self.seed.value is None:
            self.new_seed()
        root = self._run_dir("compare")
        # A one-axis sweep (animenb.sweeps): checked by the phase's spec, recorded with its grid image in `root`.
        names = phase_spec(self.phase.value).names
        shared = {k: v for k, v in self.parameters().items() if k in names and k != "steps"}
        plan = build_plan(self.phase.value, {**shared, "prompt": self.prompt.value}, {"steps": steps_list})
        self._warm()
        self.comparison_runs = []
        self.compare_grid.children = ()
        self.compare_table.value = ""

        def run_cell(index: int, values: dict, run_dir: Path) -> None:
            steps = values["steps"]
            if self._cancel.cancelled:
                raise Cancelled(f"comparison cancelled before {steps} steps")
            record = self._run_phase(steps, run_dir, f"{steps} steps")
            self.comparison_runs.append(record)
            self.compare_grid.children = tuple(self._card(r, width=190) for r in self.comparison_runs)

        run_plan(plan, root, run_cell=run_cell, stop_on=(Cancelled,))
        table = pd.DataFrame(
            [
                {
                    "steps": r.steps,
                    "seconds": r.seconds,
                    "step_rate": r.step_rate,
                    "score": r.score,
                    "passed": r.passed,
                    "seed": r.seed,
                    "output_dir": str(r.output_dir),
                }
                for r in self.comparison_runs
            ]
        )
        self.comparison = table
        self.compare_table.value = table.drop(columns=["output_dir"]).to_html(index=False, float_format="%.3f")
        self._set_status(f"compared {len(steps_list)} step counts · <code>{html.escape(str(root))}</code>")
        return table

    def _warm(self) -> None:
        """Load the phase's pipelines before timing a comparison (the first step count would pay the load)."""
        if self.backend != "diffusers":
            return
        from .models import pipeline

        self._set_status("loading models…")
        kinds = {"CHARACTER_SHEET": ("sd",), "ANIMATION_LOOP": ("animatediff",), "FULL_VIDEO": ("sd", "svd")}
        for kind in kinds[self.phase.value]:
            pipeline(kind, self.models)

    # -- rendering ------------------------------------------------------------------------
    def _set_busy(self, busy: bool) -> None:
        self.generate_button.disabled = busy
        self.compare_button.disabled = busy
        self.cancel_button.disabled = not busy

    def _set_status(self, text: str, colour: str | None = None) -> None:
        self.status_line.value = f'<span style="color:{colour}">{text}</span>' if colour else text

    def _card(self, record: RunRecord, width: int = THUMB_PX) -> W.VBox:
        image = W.Image(value=record.thumbnail, format=record.thumbnail_format, layout=W.Layout(width=f"{width}px"))
        return W.VBox(
            [image, W.HTML(f"<small>{record.caption()}</small>")], layout=W.Layout(width=f"{width + 8}px", margin="2px")
        )

    def _render_history(self) -> None:
        self.history_strip.children = tuple(self._card(r) for r in self.history)

    def _show_result(self, record: RunRecord) -> None:
        manifest = record.result.manifest if record.result else {}
        score = (
            ""
            if record.score is None
            else (f" · quality {record.score:.3f} ({'passes' if record.passed else 'below'} the gate)")
        )
        self.result_view.value = (
            f"<b>{record.phase}</b> · seed {record.seed} · {record.steps} steps · "
            f"{html.escape(str(manifest.get('models', '')))} · {record.seconds:.2f} s{score}"
        )
        if record.result is not None and record.phase == "CHARACTER_SHEET":
            self.result_image.format, self.result_image.value = "png", record.result.path("sheet").read_bytes()
        else:
            self.result_image.format, self.result_image.value = record.thumbnail_format, record.thumbnail
        self.result_image.layout.display = None


def explore(**kwargs) -> ExplorerPanel:
    """An `ExplorerPanel` (keyword arguments as its constructor); as a cell's last value it shows the panel."""
    return ExplorerPanel(**kwargs)

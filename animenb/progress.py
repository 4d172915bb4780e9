"""Per-step progress for phase functions: published as display data in a kernel, a tqdm bar elsewhere.

The job runner intercepts the custom MIME bundle (`PROGRESS_MIME`) from the kernel's
iopub stream and fans it out over WebSocket; JupyterLab renders the HTML fallback as a
progress bar updated in place; plain Python gets a tqdm bar (`ProgressDisplay`). One event carries:

    {"phase", "stage", "stage_index", "stage_count", "step", "total_steps",
     "percent", "eta_seconds", "elapsed_seconds", "time", "part", "preview"?}

`step`/`total_steps` count denoising steps over the whole phase (e.g. 8 poses x 15
steps), so `percent` never goes backwards across stages. The ETA comes from the
measured step rate since the first completed step (the first step includes warm-up),
never from a straight line from zero.

In a kernel, events are shown at most every `KERNEL_MIN_INTERVAL` seconds (the first and
the final one always; a skipped event's step and stage arrive with the next one shown, and so does
its preview when that event has none, so previews reach subscribers whatever the step speed):
each display message costs ~4 ms between the kernel and the job runner on a 2-core
machine (measured: 26 events took 8% of a 1.1 s tiny job), and a progress bar gains
nothing from more than ten updates a second. `publish` callbacks still get every event.
"""

from __future__ import annotations

import html
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

PROGRESS_MIME = "application/vnd.animenb.progress+json"
# What a progress event measures: a phase's generation, its quality scoring, or a whole chain of phases.
PROGRESS_PARTS = ("generation", "quality", "chain")
KERNEL_MIN_INTERVAL = 0.1  # seconds between events shown as display data (see module docstring)


class Cancelled(Exception):
    """Raised inside a step callback when the run's `CancelToken` was cancelled."""


class CancelToken:
    """Cooperative cancel of one in-process run (a phase, a comparison of several, a chain): `cancel()`
    from any thread; the run stops at its next denoising step with `Cancelled`. A token belongs to the
    run it was given to, so runs side by side (threads, notebooks) never cancel each other; jobs are
    cancelled by a kernel interrupt instead."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class ProgressEvent:
    phase: str
    stage: str
    stage_index: int
    stage_count: int
    step: int
    total_steps: int
    percent: float
    eta_seconds: float | None
    elapsed_seconds: float
    time: float = field(default_factory=time.time)
    preview: str | None = None  # data:image/png;base64,... when the backend offers one
    part: str = "generation"  # what progresses: one of PROGRESS_PARTS

    def as_dict(self) -> dict:
        data = asdict(self)
        if data["preview"] is None:
            del data["preview"]
        return data

    def text(self) -> str:
        eta = "?" if self.eta_seconds is None else f"{self.eta_seconds:.1f}s"
        return f"{self.phase} [{self.stage}] step {self.step}/{self.total_steps} {self.percent:5.1f}% eta {eta}"

    def html(self) -> str:
        return (
            f'<div class="animenb-progress"><progress value="{self.percent:.1f}" max="100" '
            f'style="width:60%"></progress> <code>{html.escape(self.text())}</code></div>'
        )


def in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class ProgressReporter:
    """Counts steps across the stages of one phase and publishes `ProgressEvent`s.

    `publish` receives every event (the widgets and tests use it); `display` chooses
    the built-in sink: "auto" (display data in a kernel, tqdm otherwise), "kernel",
    "tqdm" or None; `cancel`, when given, stops the run at its next step once cancelled.
    """

    def __init__(
        self,
        phase: str,
        total_steps: int,
        stage_count: int = 1,
        *,
        publish: Callable[[ProgressEvent], None] | None = None,
        display: str | None = "auto",
        cancel: CancelToken | None = None,
    ):
        if total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1, got {total_steps}.")
        self.phase = phase
        self.total_steps = total_steps
        self.stage_count = stage_count
        self.publish = publish
        self.sink = ProgressDisplay(display, desc=phase)
        self.step = 0
        self.stage = "starting"
        self.stage_index = 0
        self.last_event: ProgressEvent | None = None
        self._started = time.perf_counter()
        self._rate_origin: tuple[float, int] | None = None  # (time, step) of the first completed step
        self.cancel = cancel

    def start_stage(self, name: str) -> None:
        self.stage = name
        self.stage_index += 1
        self._emit()

    def on_step(self, preview: str | None = None) -> None:
        """One denoising step finished; raises `Cancelled` if the run's token was cancelled."""
        self.step = min(self.step + 1, self.total_steps)
        now = time.perf_counter()
        if self._rate_origin is None:
            self._rate_origin = (now, self.step)
        self._emit(preview)
        if self.cancel is not None and self.cancel.cancelled:
            raise Cancelled(f"{self.phase} cancelled at step {self.step}/{self.total_steps}")

    def finish(self, stage: str = "done") -> None:
        self.step = self.total_steps
        self.stage = stage
        self._emit(force=True)
        self.sink.close()

    def eta_seconds(self) -> float | None:
        if self._rate_origin is None:
            return None
        t0, s0 = self._rate_origin
        done = self.step - s0
        if done < 1:
            return None
        rate = done / max(time.perf_counter() - t0, 1e-9)
        return (self.total_steps - self.step) / rate

    def _emit(self, preview: str | None = None, force: bool = False) -> None:
        event = ProgressEvent(
            phase=self.phase,
            stage=self.stage,
            stage_index=self.stage_index,
            stage_count=self.stage_count,
            step=self.step,
            total_steps=self.total_steps,
            percent=round(100.0 * self.step / self.total_steps, 2),
            eta_seconds=None if (eta := self.eta_seconds()) is None else round(eta, 3),
            elapsed_seconds=round(time.perf_counter() - self._started, 3),
            preview=preview,
        )
        self.last_event = event
        if self.publish is not None:
            self.publish(event)
        self.sink.show(event, force=force)


class ProgressDisplay:
    """Where progress is shown: display data updated in place in a kernel (the job runner reads its
    `PROGRESS_MIME` part; JupyterLab renders the HTML bar), a tqdm bar in percent elsewhere, or nothing.

    `mode` is "auto" (kernel when inside one, else tqdm), "kernel", "tqdm" or None. In a
    kernel an event is shown when `force` is set or `min_interval` seconds have passed since
    the last one shown.
    """

    def __init__(self, mode: str | None = "auto", desc: str = "", min_interval: float = KERNEL_MIN_INTERVAL):
        self.mode = ("kernel" if in_kernel() else "tqdm") if mode == "auto" else mode
        self.desc = desc
        self.min_interval = min_interval
        self._display_id = uuid.uuid4().hex
        self._displayed = False
        self._shown_at = float("-inf")
        self._held_preview: str | None = None  # the latest preview of the events skipped since the last shown
        self._bar: Any = None  # tqdm's bar, made on the first event in "tqdm" mode

    def show(self, event: ProgressEvent, force: bool = False) -> None:
        if self.mode == "kernel":
            from IPython.display import display

            now = time.monotonic()
            if not force and now - self._shown_at < self.min_interval:
                self._held_preview = event.preview or self._held_preview
                return
            self._shown_at = now
            if event.preview is None and self._held_preview is not None:
                event = replace(event, preview=self._held_preview)
            self._held_preview = None

            bundle = {PROGRESS_MIME: event.as_dict(), "text/html": event.html(), "text/plain": event.text()}
            display(bundle, raw=True, display_id=self._display_id, update=self._displayed)
            self._displayed = True
        elif self.mode == "tqdm":
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=100.0,
                    desc=self.desc,
                    unit="%",
                    leave=False,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}{postfix}]",
                )
            self._bar.set_postfix_str(event.stage, refresh=False)
            self._bar.update(event.percent - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

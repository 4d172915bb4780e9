"""The Tornado application: `ServerConfig`, the `AnimeService` it serves, and `make_app`.

`AnimeService` does the server's business, so handlers stay parse -> one service call -> write:
`health()`, `status(job)` (the one status model of /status, GET /generation/{id}, /jobs rows and the
WebSocket `state` and `finished` events), `jobs(...)`, `gallery(...)`, `phases()`, `generate(...)` and
`orchestrate(...)` (validate, then `admit`), `admit(request)` (the one place a job is admitted to the
queue: every limit on what may be queued lives there), `cancel(job, caller)`, `thumbnail(job, rel)`,
`stats()` and `collect_garbage(...)`.

    service = AnimeService(ServerConfig(models="tiny", home=..., outputs=...))
    app = make_app(service)            # extra keyword arguments become tornado settings
    await service.start()              # restart policy, then the slots and the dispatcher
    make_http_server(app, service.config.http_limits).listen(8328, "127.0.0.1")
    ...
    await service.stop()

Settings read by handlers: `animenb` (the service). Defaults set here:
`websocket_ping_interval` 20 s (tornado's default is off), `websocket_ping_timeout` 20 s,
`websocket_max_message_size` 64 KiB (clients only listen), `serve_traceback` False.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tornado.web

from animenb import config
from animenb.gpu_info import gpu_facts
from animenb.phases.catalog import PHASES
from animenb.phases.cost import frames_handled, images_per_step, job_cost, orchestration_cost, render_size
from animenb.retention import collect_garbage
from animenb.runner.events import EventBus
from animenb.runner.orchestration import ORCHESTRATION_KIND
from animenb.runner.runner import TURN_KEY, JobRunner
from animenb.store import JobNotFoundError, JobRecord, JobStatus, SqliteJobStore, StoreUnavailable
from animenb.store.sqlite_database import BRIEF_WAIT
from animenb.store.tokens_base import ANONYMOUS
from animenb.store.tokens_sqlite import SqliteTokenStore
from animenb.sweeps.plan import plan_from_dict
from animenb.sweeps.report import SWEEP_KIND

from . import views
from .auth import Identity, can_cancel, can_read, new_cancel_token
from .handlers import NotFoundHandler, default_handlers
from .headers import SecurityHeaders
from .home_lock import HomeLock
from .limits import HttpLimits, JobLimits, WebSocketCounter, make_http_server
from .openapi import openapi_handlers
from .orchestrate_validation import validate_orchestrate
from .pages import page_handlers  # the gallery page at / and /gallery
from .redaction import install_log_redaction
from .requests import Caller, JobRequest
from .reviews import review_handlers, review_store
from .stats import admin_stats, typical_duration
from .sweeps import sweep_handlers
from .thumbnails import SingleFlight, make_thumbnail
from .validation import APIError, validate_generate

log = logging.getLogger(__name__)

API_VERSION = "3.0.0-bulletproof"
SERVICE_NAME = "animenb-anime-production"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8328
STORE_NAME = "jobs.sqlite"


@dataclass
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    models: str | None = None  # profile name or YAML path; None: $ANIMENB_MODELS or "tiny"
    home: str | Path | None = None  # store, thumbnails; None: $ANIMENB_HOME or ~/.cache/animenb
    outputs: str | Path | None = None  # outputs/<job_id>/; None: $ANIMENB_OUTPUTS or ./outputs
    backend: str | None = None  # "diffusers" (default in the notebooks) or "comfyui"
    comfyui_url: str | None = None
    comfyui_urls: tuple[str, ...] = ()  # several ComfyUI servers, one slot each (comfyui_url: the first)
    executor: str = "local"  # "local" (warm kernels here) or "ray" (actors on a Ray cluster)
    ray_address: str | None = None  # None: start a local Ray cluster; "auto" or HOST:PORT: join one
    ray_slots: int | None = None  # Ray actors (default one per cluster GPU, or 1 without GPUs)
    ray_shared_outputs: bool = False  # actors write outputs in place (the outputs folder is shared)
    devices: list[str] | None = None  # None: one warm kernel per GPU, or one "cpu"
    warm: bool = True  # False: a fresh kernel per job (benchmarks)
    notebook_for: Callable[[JobRecord], Path] | None = None  # tests: which notebook runs a job
    quality: bool = True  # score every phase job (the quality gate) in its own kernel
    cancel_grace: float = 1.0
    kernel_env: dict | None = None  # extra environment of the kernels, e.g. {"OMP_NUM_THREADS": "1"}
    notebooks_dir: str | Path | None = None  # phase notebooks (None: the checkout's notebooks/)
    max_queue: int = 512  # queued jobs in all; beyond it POST /generate answers 429 + Retry-After
    max_queued_per_user: int = 64  # queued jobs per owner ("anonymous" callers share one allowance)
    http_limits: HttpLimits = HttpLimits()  # body size/time, idle sockets, WebSockets per address
    job_limits: JobLimits = JobLimits()  # job cost by role, job timeout
    allow_origins: tuple[str, ...] = ()  # web origins besides the server's own that may POST/DELETE (CSRF)

    def resolved(self) -> "ServerConfig":
        home = Path(self.home or config.home_dir()).expanduser().resolve()
        outputs = Path(self.outputs or config.outputs_dir()).expanduser().resolve()
        urls = tuple(self.comfyui_urls) or ((self.comfyui_url,) if self.comfyui_url else ())
        return ServerConfig(
            **{
                **self.__dict__,
                "home": home,
                "outputs": outputs,
                "models": self.models or config.default_profile(),
                "comfyui_urls": urls,
                "comfyui_url": self.comfyui_url or (urls[0] if urls else None),
            }
        )


def model_label(profile: str) -> dict:
    """`components.models` for /health; never fails (profiles are another module's concern)."""
    info: dict[str, Any] = {"profile": profile, "label": profile, "tiny": profile == "tiny"}
    try:
        from animenb.profiles import load_profile

        loaded = load_profile(profile)
        info.update(
            profile=loaded.name,
            label=loaded.label,
            tiny=loaded.is_tiny,
            default_size=loaded.default_size,
            svd_size=list(loaded.native_size("svd")),
        )
    except Exception as exc:  # unknown profile: say so rather than fail health
        info["error"] = str(exc)
    if info["tiny"]:
        info["label"] = "tiny (random weights)"
        info["note"] = "random-weight models built locally: outputs are noise, for tests and demos"
    return info


class GpuProbe:
    """GPU facts for /health and /admin/stats from NVML (animenb.gpu_info): no torch import, no
    subprocess and no CUDA context in the server; read at most every `gpu_info.TTL_SECONDS`."""

    def start(self) -> None:
        # NVML's first initialisation loads the driver library: off the event loop, at start-up.
        asyncio.get_running_loop().run_in_executor(None, gpu_facts)

    async def info(self) -> dict:
        return gpu_facts()  # cached: microseconds


class AnimeService:
    """What the handlers talk to: the store, the event bus, the runner and static facts, and the
    business methods (module docstring)."""

    def __init__(self, cfg: ServerConfig | None = None, *, store: SqliteJobStore | None = None):
        self.config = (cfg or ServerConfig()).resolved()
        home, outputs, models = self.config.home, self.config.outputs, self.config.models
        assert home is not None and outputs is not None and models is not None  # resolved() fills them
        self.home = Path(home)
        self.outputs_dir = Path(outputs)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.chmod(0o700)  # the store (private prompts, token hashes) and caches: the server's user only
        self.home_lock = HomeLock(self.home)
        self.home_lock.acquire()  # before the store: a second server on this home must not touch its jobs
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.thumbnails_dir = self.home / "thumbnails"
        self._thumbnails = SingleFlight()  # one making of each thumbnail at a time
        self._admitting = asyncio.Lock()  # one admission (queue check + insert) at a time
        self.store = store or SqliteJobStore(self.home / STORE_NAME)
        self.tokens = SqliteTokenStore(self.store.db)  # same database: `animenb token` writes, we read
        self.bus = EventBus()
        kernel_env = {"ANIMENB_HOME": str(self.home), **(self.config.kernel_env or {})}
        self.runner = JobRunner(
            self.store,
            self.bus,
            outputs_dir=self.outputs_dir,
            devices=self.config.devices,
            models=self.config.models,
            backend=self.config.backend,
            comfyui_url=self.config.comfyui_url,
            comfyui_urls=list(self.config.comfyui_urls),
            executor=self.config.executor,
            executor_options=self._executor_options(),
            notebook_for=self.config.notebook_for,
            quality=self.config.quality,
            warm=self.config.warm,
            notebooks_dir=self.config.notebooks_dir,
            cancel_grace=self.config.cancel_grace,
            kernel_env=kernel_env,
            job_timeout=self.config.job_limits.timeout_seconds,
        )
        self.models = model_label(models)
        self.default_size = self.models.get("default_size", 512)  # what a job without width/height costs
        self.svd_size = tuple(self.models.get("svd_size", (self.default_size, self.default_size)))  # phase 3's
        self.websockets = WebSocketCounter(self.config.http_limits.max_websockets_per_client)
        self.gpu = GpuProbe()
        self.started_at = time.time()

    def _executor_options(self) -> dict:
        cfg = self.config
        if cfg.executor != "ray":
            return {}
        return {"address": cfg.ray_address, "slots": cfg.ray_slots, "shared_outputs": cfg.ray_shared_outputs}

    async def start(self) -> None:
        await self.runner.start()
        self.gpu.start()

    async def stop(self) -> None:
        try:
            await self.runner.stop()
            self.store.close()
        finally:
            self.home_lock.release()

    # -- reading ---------------------------------------------------------------------------------
    def readable_job(self, job_id: str, identity: Identity | None) -> JobRecord | None:
        """The job if `identity` may read it, else None (an unknown job and someone else's private job look
        the same, so a private job's existence never leaks)."""
        try:
            job = self.store.get(job_id)
        except JobNotFoundError:
            return None
        return job if can_read(identity, job) else None

    def status(self, job: JobRecord, ws_base: str = "") -> dict:
        """The job's status body: one model wherever a job's state is shown (module docstring). An
        orchestration parent adds its `children`, the chain's `reason` and `attempts_by_phase`."""
        queue_position = self.store.queue_position(job.id) if job.status is JobStatus.QUEUED else None
        # only a finished output can be reviewed (POST /review), so no other job needs the query
        reviews = review_store(self).list(job.id) if job.status is JobStatus.SUCCEEDED else None
        return views.job_status(
            job,
            live_progress=self.runner.live_progress(job.id),
            queue_position=queue_position,
            children=self.runner.children(job),
            reviews=reviews,
            ws_base=ws_base,
        )

    def jobs(self, *, status: list[str] | None, limit: int, cursor: str | None, scope: dict, caller: Caller) -> dict:
        """GET /jobs: one page of the jobs in `scope` (store.list filters), newest first, as status bodies."""
        jobs, next_cursor = self.store.list(status=status, limit=limit, cursor=cursor, **scope)
        return {
            "jobs": [self.status(j, caller.ws_base) for j in jobs],
            "count": self.store.count(status=status, **scope),
            "user": caller.name,
            "limit": limit,
            "next_cursor": next_cursor,
        }

    def gallery(self, *, phase: int | None, limit: int, cursor: str | None) -> dict:
        # A parent's card (a sweep's grid, a chain's finals) stands for its children, so they are left out.
        query = dict(status="succeeded", visibility="public", phase=phase, top_level=True)
        jobs, next_cursor = self.store.list(**query, limit=limit, cursor=cursor)
        return {
            "message": "Public gallery",
            "gallery": [views.gallery_item(j) for j in jobs],
            "count": self.store.count(**query),
            "limit": limit,
            "next_cursor": next_cursor,
        }

    def phases(self) -> dict:
        return {**views.phases_body(self.runner.notebooks_dir), "limits": self.limits()}

    def limits(self) -> dict:
        """What one caller may ask (GET /phases and /health show it): job cost by role, job timeout, HTTP."""
        return {
            **self.config.job_limits.as_dict(),
            "profile_default_size": self.default_size,
            "profile_svd_size": list(self.svd_size),
            "http": self.config.http_limits.as_dict(),
        }

    async def health(self) -> dict:
        """GET /health: components, job counts and what this server offers; "degraded" names what is down."""
        comfyui = await self.comfyui_health()
        runner = self.runner.health()
        degraded: dict[str, str] = {}  # component -> why
        if comfyui.get("status") not in ("healthy", "not configured"):
            degraded["comfyui"] = f"ComfyUI is {comfyui.get('status')}"
        if runner["stalled"]:
            degraded["kernels"] = "no kernel is ready"
        store = self.store_health(runner["unrecorded_ends"])
        if store["status"] != "healthy":
            degraded["store"] = store["reason"]
        if runner["dispatcher"]["failing"]:
            degraded["dispatcher"] = "the dispatcher is failing and restarting"
        missing = [p.notebook for p in PHASES if not (self.runner.notebooks_dir / p.notebook).is_file()]
        if missing:  # e.g. an installed package without its notebooks: every job would fail
            degraded["notebooks"] = f"missing from {self.runner.notebooks_dir}: {', '.join(missing)}"
        if "error" in self.models:
            degraded["models"] = self.models["error"]
        body = views.health_body(
            service=SERVICE_NAME,
            version=API_VERSION,
            uptime_seconds=time.time() - self.started_at,
            counts=self.store.counts_by_status(),
            comfyui=comfyui,
            gpu=await self.gpu.info(),
            runner=runner,
            models=self.models,
            backend=self.config.backend or "diffusers",
            degraded=degraded,
        )
        body["components"]["store"] = store
        body["components"]["dispatcher"] = {
            "status": "degraded" if runner["dispatcher"]["failing"] else "healthy",
            **runner["dispatcher"],
        }
        body["limits"] = self.limits()
        from animenb.quality.config import active_config_path  # lazily: animenb.quality loads OpenCV

        body["quality_config"] = str(active_config_path(self.home))  # calibrated once `animenb calibrate` ran
        return body

    def store_health(self, pending: int) -> dict:
        """The store's part of /health: "degraded" with the reason while writes fail (reads still answer);
        `pending` jobs ended whose end is not stored yet (`JobRunner.record_end`)."""
        fault = getattr(getattr(self.store, "db", None), "fault", None)
        if fault is None:
            return {"status": "healthy", "unrecorded_ends": pending}
        return {"status": "degraded", "reason": fault["reason"], "since": fault["since"], "unrecorded_ends": pending}

    # -- submitting --------------------------------------------------------------------------------
    async def generate(self, data: dict, caller: Caller) -> tuple[JobRecord, dict]:
        """POST /generate: validate the body, choose the job's visibility, admit it. Returns the job and
        the 202 reply."""
        phase, values, visibility = validate_generate(
            data,
            self.outputs_dir,
            lambda job_id: self.readable_job(job_id, caller.identity) is not None,
            self.config.backend,
        )
        if values.get("backend") == "comfyui" and not self.config.comfyui_url:
            raise APIError(
                422,
                "comfyui_not_configured",
                "`backend` comfyui needs a ComfyUI server: start animenb serve with --comfyui-url URL.",
                "backend",
            )
        if "visibility" not in data and caller.identity is not None:
            visibility = "private"  # a token's jobs are its own unless it says "public"
        if visibility == "private" and caller.identity is None:
            raise APIError(
                401, "auth_required", "A private job needs a token (only its owner could see it).", "visibility"
            )
        cancel_token, extra = new_cancel_token() if caller.identity is None else (None, {})
        job = await self.admit(
            JobRequest(
                kind="phase",
                phase=phase,
                parameters=values,
                owner=caller.name,
                visibility=visibility,
                extra={**extra, TURN_KEY: caller.turn},
                exempt_from_user_limit=caller.is_admin,
                role=caller.role,
            )
        )
        reply = {**self._accepted(job, caller), "phase": phase}
        if cancel_token is not None:  # an anonymous job: whoever holds this may cancel it
            reply["cancel_token"] = cancel_token
        return job, reply

    async def orchestrate(self, data: dict, caller: Caller) -> tuple[JobRecord, dict]:
        """POST /orchestrate (the caller is an admin): validate the body, admit the parent job. Returns the
        job and the 202 reply."""
        if not self.runner.quality:
            raise APIError(
                409,
                "quality_disabled",
                "Orchestration gates every phase on its quality score, and this "
                "server does not score jobs (`serve --no-quality`).",
            )
        values, visibility = validate_orchestrate(
            data,
            self.outputs_dir,
            self.runner.models,
            lambda job_id: self.readable_job(job_id, caller.identity) is not None,
        )
        if visibility is None:  # like /generate: a token's jobs are its own unless it says "public"
            visibility = "private" if caller.identity is not None else "public"
        job = await self.admit(
            JobRequest(
                kind=ORCHESTRATION_KIND,
                phase=None,
                parameters=values,
                owner=caller.name,
                visibility=visibility,
                exempt_from_user_limit=True,
                role=caller.role,
            )
        )
        return job, {
            **self._accepted(job, caller),
            "kind": ORCHESTRATION_KIND,
            "max_retries": values["max_retries"],
            "thresholds": values["thresholds"],
            "seed": values["seed"],
        }

    async def admit(self, request: JobRequest) -> JobRecord:
        """The one place a job is admitted: 422 `job_too_costly` past its role's cost cap
        (`JobLimits`), 429 + Retry-After when the queue (or the owner's share of it) is full, else the
        job is queued (committed on return; the write runs off the event loop). `_admitting` keeps the
        check and the insert from interleaving with another request's; a request waits for it at most
        BRIEF_WAIT s (then 503, as for the database's own lock)."""
        self.check_cost(request)
        try:
            await asyncio.wait_for(self._admitting.acquire(), BRIEF_WAIT)
        except asyncio.TimeoutError:
            raise StoreUnavailable("other requests' writes are waiting for the database") from None
        try:
            self.check_queue_room(request)
            return await self.runner.submit_request(
                request.parameters,
                phase=request.phase,
                kind=request.kind,
                owner=request.owner,
                visibility=request.visibility,
                extra=request.extra,
            )
        finally:
            self._admitting.release()

    def check_queue_room(self, request: JobRequest) -> None:
        """429 + Retry-After when the queue (or the owner's share of it) has no room for `request`."""
        cfg, store = self.config, self.store
        queued = store.count(status=JobStatus.QUEUED) + request.children
        user_full = (
            not request.exempt_from_user_limit
            and cfg.max_queued_per_user is not None
            and store.count(status=JobStatus.QUEUED, owner=request.owner) + request.children >= cfg.max_queued_per_user
        )
        if queued >= cfg.max_queue or user_full:
            kernels = max(1, len(self.runner.slots))
            wait = typical_duration(store) * (min(queued, cfg.max_queue) if not user_full else 1) / kernels
            retry = str(max(1, min(600, math.ceil(wait))))
            if user_full:
                raise APIError(
                    429,
                    "too_many_queued",
                    f"`{request.owner}` already has {cfg.max_queued_per_user} "
                    f"queued jobs (the per-user limit); retry after {retry} s.",
                    headers={"Retry-After": retry},
                )
            raise APIError(
                429,
                "queue_full",
                f"The queue is full ({cfg.max_queue} jobs); retry after {retry} s.",
                headers={"Retry-After": retry},
            )

    @property
    def render_sizes(self) -> dict:
        """What a job without width/height renders at, as animenb.phases.cost takes it: the profile's
        default size, and phase 3's SVD size."""
        return {"default_size": self.default_size, "svd_size": self.svd_size}

    def check_cost(self, request: JobRequest) -> float:
        """The request's cost (animenb.phases.cost); 422 `job_too_costly` past its role's cap."""
        phase = request.phase if request.kind == "phase" and request.phase is not None else 1  # parents: phase 1's size
        if request.kind == ORCHESTRATION_KIND:
            cost = orchestration_cost(request.parameters, **self.render_sizes)
        elif request.kind == SWEEP_KIND:
            cost = plan_from_dict(request.parameters["sweep"]).cost(**self.render_sizes)
        else:
            cost = job_cost(phase, request.parameters, **self.render_sizes)
        cap = self.config.job_limits.max_cost(request.role)
        if cap is not None and cost > cap:
            p = request.parameters
            width, height = render_size(phase, p, **self.render_sizes)
            size = f"{width} x {height} px"
            what = (
                f"{size} x {p.get('steps')} steps x {images_per_step(phase, p)} images, "
                f"{frames_handled(phase, p)} frames"
                if request.kind == "phase"
                else f"{size}, {p.get('steps')} steps, the whole chain"
                if request.kind == ORCHESTRATION_KIND
                else f"{request.children} cells together"
            )
            hint = ", or send a token" if request.role == "anonymous" else ""
            raise APIError(
                422,
                "job_too_costly",
                f"This job costs {cost:,.0f} megapixel-steps ({what}); "
                f"{request.role} callers may queue at most {cap:,.0f}. Ask for fewer pixels, steps or "
                f"frames{hint}.",
            )
        return cost

    def _accepted(self, job: JobRecord, caller: Caller) -> dict:
        return {
            "job_id": job.id,
            "status": job.status.value,
            "status_url": views.status_url(job.id),
            "ws_url": views.ws_url(job.id, caller.ws_base),
            "queue_position": self.store.queue_position(job.id),
        }

    async def cancel(self, job: JobRecord, caller: Caller, cancel_token: str | None = None) -> dict:
        """DELETE /generation/{id}: 403 unless the caller may cancel it (an anonymous job: with the
        `cancel_token` its 202 returned), 409 once finished; else the job is cancelled (queued) or stopped
        (running) and its status body returned."""
        if not can_cancel(caller.identity, job, cancel_token):
            if job.owner == ANONYMOUS:
                raise APIError(
                    403,
                    "forbidden",
                    f"Job {job.id} is anonymous: cancelling it needs the `cancel_token` "
                    f"its 202 returned (X-Cancel-Token header) or an admin token.",
                    "cancel_token",
                )
            raise APIError(
                403,
                "forbidden",
                f"Job {job.id} belongs to `{job.owner}`; only its owner or an admin may cancel it.",
                "job_id",
            )
        if job.terminal:
            raise APIError(
                409, "job_finished", f"Job {job.id} already finished ({job.status.value}); nothing to cancel.", "job_id"
            )
        return self.status(await self.runner.cancel(job.id), caller.ws_base)

    async def thumbnail(self, job: JobRecord, rel: str) -> bytes:
        """PNG bytes of the thumbnail of `job`'s file `rel` (made once, remade when the file is newer), or
        APIError 404 (no such file in the job's own folder, or not an image or video) / 422 (unreadable)."""
        root = (self.outputs_dir / job.id).resolve()
        source = (root / rel).resolve()
        if root not in source.parents or not source.is_file():
            raise APIError(404, "file_not_found", "No such output file.", "file")
        if source.suffix.lower() not in views.IMAGE_SUFFIXES | views.VIDEO_SUFFIXES:
            raise APIError(404, "no_thumbnail", "Thumbnails exist for images and videos only.", "file")
        target = self.thumbnails_dir / job.id / f"{rel}.png"
        if not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
            try:
                await self._thumbnails.run(
                    target, lambda: asyncio.get_running_loop().run_in_executor(None, make_thumbnail, source, target)
                )
            except Exception:
                log.exception("thumbnail of %s failed", source)  # details (paths) stay in the server log
                raise APIError(422, "thumbnail_failed", f"Could not make a thumbnail of {rel}.", "file") from None
        return target.read_bytes()

    # -- administration ------------------------------------------------------------------------------
    async def stats(self) -> dict:
        """GET /admin/stats: see animenb.server.stats."""
        return await admin_stats(self)

    async def collect_garbage(self, older_than: float, *, dry_run: bool) -> dict:
        """POST /admin/gc: animenb.retention on this server's store, outputs and thumbnails (off the loop)."""
        report = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: collect_garbage(
                self.store, self.outputs_dir, older_than=older_than, thumbnails_dir=self.thumbnails_dir, dry_run=dry_run
            ),
        )
        return report.as_dict()

    # -- components ----------------------------------------------------------------------------------
    async def comfyui_health(self) -> dict:
        """The ComfyUI server's health; with several, the first's fields plus `servers` (each one's), and
        "healthy" only when all are."""
        urls = self.config.comfyui_urls
        if len(urls) > 1:
            each = await asyncio.gather(*(self._one_comfyui_health(url) for url in urls))
            worst = next((h for h in each if h.get("status") != "healthy"), each[0])
            return {**each[0], "status": worst.get("status"), "servers": list(each)}
        return await self._one_comfyui_health(self.config.comfyui_url)

    async def _one_comfyui_health(self, url: str | None) -> dict:
        if not url:
            return {"status": "not configured", "url": None, "queue_running": None}
        try:
            from animenb.backends.comfyui import comfyui_health
        except ImportError:
            pass
        else:
            return await asyncio.get_running_loop().run_in_executor(None, comfyui_health, url)
        from tornado.httpclient import AsyncHTTPClient

        try:
            await AsyncHTTPClient().fetch(url.rstrip("/") + "/system_stats", request_timeout=2.0)
            return {"status": "healthy", "url": url, "queue_running": None}
        except Exception as exc:
            return {"status": "unreachable", "url": url, "queue_running": None, "error": str(exc)}


def make_app(service: AnimeService, **settings: Any) -> tornado.web.Application:
    defaults = {
        "websocket_ping_interval": 20,
        "websocket_ping_timeout": 20,
        "websocket_max_message_size": 64 * 1024,
        "serve_traceback": False,
        "default_handler_class": NotFoundHandler,
    }
    install_log_redaction()
    handlers = default_handlers + review_handlers + sweep_handlers + openapi_handlers + page_handlers
    app = tornado.web.Application(handlers, animenb=service, **{**defaults, **settings})
    app.add_transform(SecurityHeaders)
    return app


async def serve(
    cfg: ServerConfig, *, ready: Callable[[AnimeService], None] | None = None, stop_event: asyncio.Event | None = None
) -> None:
    """Run until `stop_event` is set (or forever); stops kernels cleanly."""
    service = AnimeService(cfg)
    app = make_app(service)
    server = make_http_server(app, service.config.http_limits, xheaders=False)
    server.listen(service.config.port, service.config.host)
    await service.start()
    if ready:
        ready(service)
    try:
        await (stop_event or asyncio.Event()).wait()
    finally:
        server.stop()
        await service.stop()

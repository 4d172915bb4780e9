"""Thin REST handlers under /api/anime; routes at the bottom (`default_handlers`).

Every error is JSON, `{"error": {"code", "message", "field"}}`, from one `write_error`;
tracebacks go to the log, never to clients.
"""
from __future__ import annotations

import asyncio
import json
import mimetypes
import os
from pathlib import Path
from typing import Any

import tornado.web
from tornado.web import HTTPError

from animenb.store import JobNotFoundError, JobStatus

from . import views
from .validation import (JOB_ID_RE, APIError, parse_cursor, parse_json_body, parse_limit, validate_generate)
from .websocket import JobSocketHandler

API = views.API
THUMBNAIL_SIZE = 256
mimetypes.add_type("application/x-ipynb+json", ".ipynb")


class JSONErrorMixin:
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            error = {"code": exc.code, "message": exc.message, "field": exc.field}
        elif isinstance(exc, HTTPError) and status_code < 500:
            message = exc.log_message % exc.args if exc.log_message and exc.args else (exc.log_message or self._reason)
            error = {"code": self._reason.lower().replace(" ", "_"), "message": message, "field": None}
        else:
            error = {"code": "internal_error", "message": "Internal server error (details are in the server log).",
                     "field": None}
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": error}))


class BaseHandler(JSONErrorMixin, tornado.web.RequestHandler):
    @property
    def service(self):
        return self.settings["animenb"]

    @property
    def user(self) -> str:
        return "anonymous"  # auth (bearer tokens) comes with the hardening issue

    def ws_base(self) -> str:
        scheme = "wss" if self.request.protocol == "https" else "ws"
        return f"{scheme}://{self.request.host}"

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, default=str))

    def get_job(self, job_id: str):
        try:
            return self.service.store.get(job_id)
        except JobNotFoundError:
            raise APIError(404, "job_not_found", f"Job not found: {job_id}", "job_id") from None

    def status_body(self, job) -> dict:
        runner = self.service.runner
        return views.job_status(job, live_progress=runner.live_progress(job.id),
                                queue_position=self.service.store.queue_position(job.id) if job.status is JobStatus.QUEUED else None,
                                ws_base=self.ws_base())

    def status_filter(self) -> list[str] | None:
        raw = self.get_query_argument("status", None)
        if not raw:
            return None
        statuses = [s.strip() for s in raw.split(",") if s.strip()]
        valid = [s.value for s in JobStatus]
        for s in statuses:
            if s not in valid:
                raise APIError(422, "invalid_value", f"`status` must be one of {', '.join(valid)}, got {s!r}.", "status")
        return statuses


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise APIError(404, "not_found", f"No such endpoint: {self.request.method} {self.request.path}")


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        self.write_json(await views.health_body(self.service))


class JobsHandler(BaseHandler):
    def get(self) -> None:
        store = self.service.store
        limit = parse_limit(self.get_query_argument("limit", None))
        cursor = parse_cursor(self.get_query_argument("cursor", None))
        status = self.status_filter()
        jobs, next_cursor = store.list(status=status, limit=limit, cursor=cursor)
        self.write_json({"jobs": [self.status_body(j) for j in jobs], "count": store.count(status=status),
                         "user": self.user, "limit": limit, "next_cursor": next_cursor})


class GalleryHandler(BaseHandler):
    def get(self) -> None:
        store = self.service.store
        limit = parse_limit(self.get_query_argument("limit", None), default=24)
        cursor = parse_cursor(self.get_query_argument("cursor", None))
        phase = self.get_query_argument("phase", None)
        jobs, next_cursor = store.list(status="succeeded", limit=limit, cursor=cursor)
        items = [views.gallery_item(j) for j in jobs]
        if phase:
            items = [i for i in items if str(i["phase"]) == phase or i["phase_name"] == phase.upper()]
        self.write_json({"message": "Public gallery", "gallery": items, "count": store.count(status="succeeded"),
                         "limit": limit, "next_cursor": next_cursor})


class PhasesHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(views.phases_body(self.service.runner.notebooks_dir))


class GenerateHandler(BaseHandler):
    def post(self) -> None:
        data = parse_json_body(self.request.body)
        phase, values, visibility = validate_generate(data, self.service.outputs_dir)
        job = self.service.runner.submit(values, phase=phase, owner=self.user, visibility=visibility)
        status_url = f"{API}/generation/{job.id}/status"
        self.set_header("Location", status_url)
        self.write_json({"job_id": job.id, "status": job.status.value, "phase": phase, "status_url": status_url,
                         "ws_url": f"{self.ws_base()}/ws/job/{job.id}",
                         "queue_position": self.service.store.queue_position(job.id)}, status=202)


class StatusHandler(BaseHandler):
    def get(self, job_id: str) -> None:
        self.write_json(self.status_body(self.get_job(job_id)))


class GenerationHandler(BaseHandler):
    def get(self, job_id: str) -> None:
        self.write_json(self.status_body(self.get_job(job_id)))

    async def delete(self, job_id: str) -> None:
        job = self.get_job(job_id)
        if job.terminal:
            raise APIError(409, "job_finished", f"Job {job_id} already finished ({job.status.value}); nothing to cancel.",
                           "job_id")
        job = await self.service.runner.cancel(job_id)
        self.write_json(self.status_body(job))


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and "\\" not in path and all(p and not p.startswith(".") for p in parts)


class OutputHandler(JSONErrorMixin, tornado.web.StaticFileHandler):
    """GET /api/anime/outputs/<job_id>/<file>: a job's files, the executed notebook included."""

    @property
    def service(self):
        return self.settings["animenb"]

    def initialize(self, **kwargs) -> None:  # root comes from the service
        super().initialize(path=str(self.settings["animenb"].outputs_dir))

    async def get(self, path: str, include_body: bool = True) -> None:
        job_id, _, rel = path.partition("/")
        if not JOB_ID_RE.match(job_id) or not _safe_relative(rel):
            raise APIError(404, "file_not_found", "No such output file.", "file")
        try:
            self.service.store.get(job_id)
        except JobNotFoundError:
            raise APIError(404, "job_not_found", f"Job not found: {job_id}", "job_id") from None
        await super().get(path, include_body)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        real_root = os.path.realpath(root)
        real = os.path.realpath(absolute_path)
        if not real.startswith(real_root + os.sep) or not os.path.isfile(real):
            raise APIError(404, "file_not_found", "No such output file.", "file")
        return super().validate_absolute_path(root, absolute_path)

    def get_content_type(self) -> str:
        if self.absolute_path.endswith(".ipynb"):
            return "application/x-ipynb+json"
        return super().get_content_type()

    @classmethod
    def get_cache_time(cls, path: str, modified, mime_type: str) -> int:
        return 0


def make_thumbnail(source: Path, target: Path, size: int = THUMBNAIL_SIZE) -> None:
    from PIL import Image

    if source.suffix.lower() in views.VIDEO_SUFFIXES:
        import imageio.v2 as imageio

        reader = imageio.get_reader(str(source), format="ffmpeg")
        try:
            image = Image.fromarray(reader.get_data(0))
        finally:
            reader.close()
    else:
        image = Image.open(source)
        image.seek(0)
    image = image.convert("RGB")
    image.thumbnail((size, size))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, target)


class ThumbnailHandler(BaseHandler):
    """GET /api/anime/thumbnails/<job_id>/<file>: a PNG at most 256 px, cached under home/thumbnails."""

    async def get(self, job_id: str, rel: str) -> None:
        self.get_job(job_id)
        root = (self.service.outputs_dir / job_id).resolve()
        source = (root / rel).resolve()
        if not _safe_relative(rel) or root not in source.parents or not source.is_file():
            raise APIError(404, "file_not_found", "No such output file.", "file")
        if source.suffix.lower() not in views.IMAGE_SUFFIXES | views.VIDEO_SUFFIXES:
            raise APIError(404, "no_thumbnail", "Thumbnails exist for images and videos only.", "file")
        target = self.service.thumbnails_dir / job_id / f"{rel}.png"
        if not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
            try:
                await asyncio.get_running_loop().run_in_executor(None, make_thumbnail, source, target)
            except Exception as exc:
                raise APIError(422, "thumbnail_failed", f"Could not make a thumbnail: {exc}", "file") from None
        self.set_header("Content-Type", "image/png")
        self.finish(target.read_bytes())


JOB_ID = r"(?P<job_id>[0-9a-f]{32})"
default_handlers = [
    (rf"{API}/health/?", HealthHandler),
    (rf"{API}/jobs/?", JobsHandler),
    (rf"{API}/gallery/?", GalleryHandler),
    (rf"{API}/phases/?", PhasesHandler),
    (rf"{API}/generate/?", GenerateHandler),
    (rf"{API}/generation/{JOB_ID}/status/?", StatusHandler),
    (rf"{API}/generation/{JOB_ID}/?", GenerationHandler),
    (rf"{API}/outputs/(.+)", OutputHandler),
    (rf"{API}/thumbnails/{JOB_ID}/(?P<rel>.+)", ThumbnailHandler),
    (r"/ws/job/(?P<job_id>[^/]+)", JobSocketHandler),
    (rf"{API}/ws/job/(?P<job_id>[^/]+)", JobSocketHandler),
]

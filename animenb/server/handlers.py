"""Thin REST handlers under /api/anime; routes at the bottom (`default_handlers`).

Each handler parses its request, makes one call to the service (`animenb.server.app.AnimeService`) and
writes the answer. Every error is JSON, `{"error": {"code", "message", "field"}}`, from one
`write_error`; tracebacks go to the log, never to clients. Who may see what: `animenb.server.auth`.
"""

from __future__ import annotations

import errno
import json
import logging
import mimetypes
import os
from typing import Any

import tornado.web
from tornado.web import HTTPError

from animenb.phases.catalog import get_phase
from animenb.retention import parse_age
from animenb.store import JobStatus, StoreUnavailable

from . import views
from .auth import AuthMixin, require_role
from .csrf import check_csrf, check_host
from .limits import LimitedBodyMixin
from .mixins import HandlerMixin
from .requests import Caller
from .validation import JOB_ID_RE, APIError, invalid, parse_cursor, parse_json_body, parse_limit
from .websocket import JobSocketHandler

log = logging.getLogger(__name__)
API = views.API
STORE_RETRY_AFTER = "2"  # seconds: a lock held by another process is usually brief
mimetypes.add_type("application/x-ipynb+json", ".ipynb")


def storage_error(exc: BaseException | None) -> APIError | None:
    """The answer to a write that could not happen: 507 when the disk is full (nothing was written), 503 +
    Retry-After while the database is locked; None for any other error."""
    if isinstance(exc, StoreUnavailable) and exc.full or isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return APIError(
            507,
            "insufficient_storage",
            "The server's disk is full; nothing was written. Retry once an operator has freed space.",
        )
    if isinstance(exc, StoreUnavailable):
        return APIError(
            503,
            "store_unavailable",
            f"The job store cannot write now ({exc.reason}); nothing was written. Retry after {STORE_RETRY_AFTER} s.",
            headers={"Retry-After": STORE_RETRY_AFTER},
        )
    return None


class JSONErrorMixin(HandlerMixin):
    def log_exception(self, typ, value, tb) -> None:
        if storage_error(value) is not None:  # an expected fault, reported by /health: no traceback
            log.warning("%s %s: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        exc = storage_error(exc) or exc
        if isinstance(exc, APIError):
            self.set_status(exc.status_code)
            error = {"code": exc.code, "message": exc.message, "field": exc.field}
        elif isinstance(exc, HTTPError) and status_code < 500:
            message = exc.log_message % exc.args if exc.log_message and exc.args else (exc.log_message or self._reason)
            error = {"code": self._reason.lower().replace(" ", "_"), "message": message, "field": None}
        else:
            error = {
                "code": "internal_error",
                "message": "Internal server error (details are in the server log).",
                "field": None,
            }
        self.clear_header("Content-Disposition")
        for name, value in getattr(exc, "headers", {}).items():  # Retry-After, WWW-Authenticate
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": error}))


@tornado.web.stream_request_body  # prepare() sees the headers before the body is read (LimitedBodyMixin)
class BaseHandler(LimitedBodyMixin, JSONErrorMixin, AuthMixin, tornado.web.RequestHandler):
    @property
    def service(self):
        return self.settings["animenb"]

    def prepare(self):
        self.check_body_size()  # 413 from the Content-Length alone
        check_host(self.request, self.service.config.host, self.service.config.allow_origins)
        check_csrf(self.request, self.service.config.allow_origins)
        self.current_user = self.get_current_user()  # a bad or revoked token is a 401 everywhere, never anonymous

    def ws_base(self) -> str:
        scheme = "wss" if self.request.protocol == "https" else "ws"
        return f"{scheme}://{self.request.host}"

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, default=str))

    def get_job(self, job_id: str):
        """The job if the caller may read it; a private job of someone else is "not found" too."""
        job = self.readable_job(job_id)
        if job is None:
            raise APIError(404, "job_not_found", f"Job not found: {job_id}", "job_id")
        return job

    def caller(self) -> Caller:
        return Caller(identity=self.current_user, ws_base=self.ws_base(), address=self.request.remote_ip)

    def write_accepted(self, reply: dict) -> None:
        """202 with `Location`: the new job's status URL."""
        self.set_header("Location", reply["status_url"])
        self.write_json(reply, status=202)

    def status_filter(self) -> list[str] | None:
        raw = self.get_query_argument("status", None)
        if not raw:
            return None
        statuses = [s.strip() for s in raw.split(",") if s.strip()]
        valid = [s.value for s in JobStatus]
        for s in statuses:
            if s not in valid:
                raise APIError(
                    422, "invalid_value", f"`status` must be one of {', '.join(valid)}, got {s!r}.", "status"
                )
        return statuses


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise APIError(404, "not_found", f"No such endpoint: {self.request.method} {self.request.path}")


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        self.write_json(await self.service.health())


class JobsHandler(BaseHandler):
    """Anonymous: public jobs. A token: its own jobs (public and private). Admins: `?owner=NAME` or `?owner=*`."""

    def scope(self) -> dict:
        identity = self.current_user
        owner = self.get_query_argument("owner", None)
        if identity is None:
            if owner is not None:
                raise APIError(401, "auth_required", "`owner` needs an admin token.", "owner")
            return {"visibility": "public"}
        if owner is None or owner == identity.name:
            return {"owner": identity.name}
        if not identity.is_admin:
            raise APIError(403, "forbidden", "Only admins may list other users' jobs.", "owner")
        return {} if owner == "*" else {"owner": owner}

    def get(self) -> None:
        limit = parse_limit(self.get_query_argument("limit", None))
        cursor = parse_cursor(self.get_query_argument("cursor", None))
        self.write_json(
            self.service.jobs(
                status=self.status_filter(), limit=limit, cursor=cursor, scope=self.scope(), caller=self.caller()
            )
        )


class GalleryHandler(BaseHandler):
    def get(self) -> None:
        limit = parse_limit(self.get_query_argument("limit", None), default=24)
        cursor = parse_cursor(self.get_query_argument("cursor", None))
        phase = self.get_query_argument("phase", None)
        if phase is not None:  # `?phase=` (empty) is a bad value, not "all phases"
            try:
                phase = get_phase(phase).id
            except ValueError as exc:
                raise APIError(422, "invalid_value", str(exc), "phase") from None
        self.write_json(self.service.gallery(phase=phase, limit=limit, cursor=cursor))


class PhasesHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(self.service.phases())


class GenerateHandler(BaseHandler):
    async def post(self) -> None:
        data = parse_json_body(self.request.body, self.request.headers.get("Content-Type"))
        _, reply = await self.service.generate(data, self.caller())
        self.write_accepted(reply)


class OrchestrateHandler(BaseHandler):
    """POST /api/anime/orchestrate (admin token): the gated chain as one parent job (body:
    animenb.server.orchestrate_validation); 202 {job_id, status, kind, status_url, ws_url, queue_position, ...}."""

    async def post(self) -> None:
        require_role(self, "admin")  # AUTH CHECK: the one call that guards this endpoint
        data = parse_json_body(self.request.body, self.request.headers.get("Content-Type"))
        _, reply = await self.service.orchestrate(data, self.caller())
        self.write_accepted(reply)


class StatusHandler(BaseHandler):
    """GET /generation/{id}/status (and GET /generation/{id}): the job's status body."""

    def get(self, job_id: str) -> None:
        self.write_json(self.service.status(self.get_job(job_id), self.ws_base()))


class GenerationHandler(StatusHandler):
    async def delete(self, job_id: str) -> None:
        cancel_token = self.request.headers.get("X-Cancel-Token") or self.get_query_argument("cancel_token", None)
        self.write_json(await self.service.cancel(self.get_job(job_id), self.caller(), cancel_token))


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return (
        bool(path)
        and "\\" not in path
        and not any(ord(c) < 32 for c in path)
        and all(p and not p.startswith(".") for p in parts)
    )


class OutputHandler(JSONErrorMixin, AuthMixin, tornado.web.StaticFileHandler):
    """GET /api/anime/outputs/<job_id>/<file>: a job's files, the executed notebook included."""

    @property
    def service(self):
        return self.settings["animenb"]

    def initialize(self, **kwargs) -> None:  # root comes from the service
        super().initialize(path=str(self.settings["animenb"].outputs_dir))

    def prepare(self) -> None:
        check_host(self.request, self.service.config.host, self.service.config.allow_origins)

    async def get(self, path: str, include_body: bool = True) -> None:
        job_id, _, rel = path.partition("/")
        if not JOB_ID_RE.match(job_id) or not _safe_relative(rel):
            raise APIError(404, "file_not_found", "No such output file.", "file")
        if self.readable_job(job_id) is None:
            raise APIError(404, "job_not_found", f"Job not found: {job_id}", "job_id")
        await super().get(path, include_body)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        # Containment in the job's own folder: a symlink in one job's folder to another job's
        # (private) file must not be served as if it were this job's.
        job_id = os.path.relpath(absolute_path, root).split(os.sep, 1)[0]
        real_root = os.path.realpath(os.path.join(root, job_id))
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


class ThumbnailHandler(BaseHandler):
    """GET /api/anime/thumbnails/<job_id>/<file>: a PNG at most 256 px, cached under home/thumbnails."""

    async def get(self, job_id: str, rel: str) -> None:
        job = self.get_job(job_id)
        if not _safe_relative(rel):
            raise APIError(404, "file_not_found", "No such output file.", "file")
        png = await self.service.thumbnail(job, rel)
        self.set_header("Content-Type", "image/png")
        self.finish(png)


class AdminStatsHandler(BaseHandler):
    """GET /api/anime/admin/stats (admin token): see animenb.server.stats."""

    async def get(self) -> None:
        require_role(self, "admin")
        self.write_json(await self.service.stats())


class AdminGcHandler(BaseHandler):
    """POST /api/anime/admin/gc {"older_than": "7d", "dry_run": false} (admin token): animenb.retention."""

    async def post(self) -> None:
        require_role(self, "admin")
        data = parse_json_body(self.request.body, self.request.headers.get("Content-Type"))
        unknown = sorted(set(data) - {"older_than", "dry_run"})
        if unknown:
            raise invalid(unknown[0], f"Unknown field `{unknown[0]}`; accepted: older_than, dry_run.", "unknown_field")
        if "older_than" not in data:
            raise invalid("older_than", '`older_than` is required, e.g. "7d".', "missing_field")
        if type(data["older_than"]) not in (str, int, float):
            raise invalid("older_than", f"`older_than` must be a string like 7d, got {data['older_than']!r}.")
        try:
            older_than = parse_age(data["older_than"])
        except ValueError as exc:
            raise invalid("older_than", str(exc)) from None
        dry_run = data.get("dry_run", False)
        if type(dry_run) is not bool:
            raise invalid("dry_run", f"`dry_run` must be true or false, got {dry_run!r}.")
        self.write_json(await self.service.collect_garbage(older_than, dry_run=dry_run))


from .models_handler import ModelsHandler  # noqa: E402  (it builds on BaseHandler above)

JOB_ID = r"(?P<job_id>[0-9a-f]{32})"
default_handlers = [
    (rf"{API}/health/?", HealthHandler),
    (rf"{API}/jobs/?", JobsHandler),
    (rf"{API}/gallery/?", GalleryHandler),
    (rf"{API}/phases/?", PhasesHandler),
    (rf"{API}/models/?", ModelsHandler),
    (rf"{API}/generate/?", GenerateHandler),
    (rf"{API}/orchestrate/?", OrchestrateHandler),
    (rf"{API}/generation/{JOB_ID}/status/?", StatusHandler),
    (rf"{API}/generation/{JOB_ID}/?", GenerationHandler),
    (rf"{API}/outputs/(.+)", OutputHandler),
    (rf"{API}/thumbnails/{JOB_ID}/(?P<rel>.+)", ThumbnailHandler),
    (rf"{API}/admin/stats/?", AdminStatsHandler),
    (rf"{API}/admin/gc/?", AdminGcHandler),
    (rf"/ws/job/{JOB_ID}", JobSocketHandler),
    (rf"{API}/ws/job/{JOB_ID}", JobSocketHandler),
]

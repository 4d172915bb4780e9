"""`ws://host/ws/job/{job_id}`: a job's live events.

On connect the client gets {"event": "state", "seq", "state": <status body>}; with
`?after=N` the events it missed (seq > N, from a short per-job history) come first.
Then every event as it happens ("started", "progress", "finished"); the terminal
"finished" event carries the final status body as `state` too (the same model as
/status: an orchestration's `children` included), then the server closes with 1000. A job that has already
finished gets its state and its "finished" event, then the close. An unknown job id is accepted and closed
at once with code 4404 and reason "Job not found: <id>" (a browser sees the reason;
a failed handshake would hide it); a path that is not a 32-hex job id is a plain 404.
Close reasons are cut to the 123 bytes a close frame holds. Origins: the server's own or one
given with `--allow-origin` (else 403). One client may hold at most
`HttpLimits.max_websockets_per_client` job sockets open (a client: an IPv4 address, an IPv6 /64, or all of
loopback; see `limits.client_key`, also for proxies); past that the handshake is a 429.

A private job needs its owner's (or an admin's) token, as `Authorization: Bearer <token>`
or `?token=<token>`; without it the job is "not found" (4404). A bad or revoked token
closes with 4401 (see animenb.server.auth).
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from animenb.runner.events import JobEvent, JobFinishedEvent, JobStateEvent

from . import views
from .auth import identify
from .csrf import host_allowed, origin_allowed
from .validation import APIError

log = logging.getLogger(__name__)
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code

CLOSE_JOB_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY = 4429


class JobSocketHandler(WebSocketHandler):
    subscription = None
    job_id: str | None = None
    counted_address: str | None = None  # set while this socket counts against its address's cap

    @property
    def service(self):
        return self.settings["animenb"]

    def ws_base(self) -> str:
        scheme = "wss" if self.request.protocol == "https" else "ws"
        return f"{scheme}://{self.request.host}"

    def _dump(self, event: JobEvent) -> str:
        """The event's wire form, serialised once and shared by every subscriber (200 subscribers: 1 dumps, not
        200); a "finished" event carries the status body with the URLs of the host the client used, so it is
        made once per host."""
        cache: dict[Any, Any] = event.__dict__  # shared by the subscribers, keyed by wire variant
        key = ("_wire", *self._variant(event))
        wire = cache.get(key)
        if wire is None:
            data = event.as_dict()
            if isinstance(event, JobFinishedEvent):
                data["outputs"] = [views.output_url(event.job_id, f) for f in event.outputs]
                job = event.record or self.service.store.get(event.job_id)
                data["state"] = self.service.status(job, self.ws_base())
            wire = cache[key] = json.dumps(data, default=str)
        return wire

    def send(self, event: JobEvent) -> None:
        try:
            self._write_shared_frame(event)
        except (WebSocketClosedError, StreamClosedError):
            self._unsubscribe()
            return
        if event.terminal:
            self._unsubscribe()
            self.close(1000, "job finished")

    def _write_shared_frame(self, event: JobEvent) -> None:
        """Write the event as one text frame built once for every subscriber (`text_frame`) straight to this
        socket's stream. Tornado's `write_message` frames each copy again and wraps it in a task: about 100 us
        a subscriber on a 2-CPU box, 20 ms for 200 of them, where the bare write costs a third of that.
        Valid because this server never negotiates compression (no `get_compression_options`) and never
        masks (RFC 6455: server frames are unmasked)."""
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            raise WebSocketClosedError()
        cache: dict[Any, Any] = event.__dict__
        key = ("_frame", *self._variant(event))
        frame = cache.get(key)
        if frame is None:
            frame = cache[key] = text_frame(self._dump(event))
        connection.stream.write(frame)

    def _variant(self, event: JobEvent) -> tuple:
        """What a subscriber's copy of `event` depends on: nothing, or for "finished" the host in its URLs."""
        return (self.ws_base(),) if isinstance(event, JobFinishedEvent) else ()

    def check_origin(self, origin: str) -> bool:
        """Same origin as tornado's default, plus the origins given with `--allow-origin`."""
        return origin_allowed(origin, self.request, self.service.config.allow_origins)

    async def get(self, *args, **kwargs) -> None:
        config, counter = self.service.config, self.service.websockets
        if not host_allowed(self.request.host, config.host, config.allow_origins):  # DNS rebinding (csrf.py)
            self._refuse(
                421, "host_not_allowed", "Host", f"This server does not answer to host {self.request.host[:100]!r}."
            )
            return
        # Past the per-client cap the handshake is refused before the upgrade (429 JSON).
        if counter.full(self.request.remote_ip):
            self.set_header("Retry-After", "5")
            self._refuse(
                429,
                "too_many_websockets",
                None,
                f"At most {counter.cap} job WebSockets may be open from one address at once.",
            )
            return
        await super().get(*args, **kwargs)

    def _refuse(self, status: int, code: str, field: str | None, message: str) -> None:
        """Answer the handshake with a JSON error instead of upgrading."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": {"code": code, "field": field, "message": message}}))

    def open(self, job_id: str) -> None:
        self.job_id = job_id
        if not self.service.websockets.acquire(self.request.remote_ip):  # raced past the check in get()
            self.close(CLOSE_TOO_MANY, "too many job WebSockets from this address")
            return
        self.counted_address = self.request.remote_ip
        bus = self.service.bus
        try:
            identity = identify(self.settings, self.request, allow_query=True)
        except APIError as exc:
            self.close(CLOSE_UNAUTHORIZED, exc.message)
            return
        job = self.service.readable_job(job_id, identity)
        if job is None:
            self.close(CLOSE_JOB_NOT_FOUND, f"Job not found: {job_id}")
            return
        try:
            after = int(self.get_query_argument("after", "0") or 0)
        except ValueError:
            self.close(CLOSE_BAD_REQUEST, "`after` must be an integer event seq")
            return
        # Subscribing and reading the state happen on the loop thread with no await between:
        # no event can fall in the gap.
        if not job.terminal:
            self.subscription = bus.subscribe(job_id, self.send)
        for event in bus.history(job_id, after) if after else ():
            if not event.terminal:
                self.write_message(self._dump(event))
        snapshot = JobStateEvent(
            job_id=job_id, state=self.service.status(job, self.ws_base()), seq=bus.last_seq(job_id)
        )
        self.write_message(self._dump(snapshot))
        if job.terminal:
            ran = None if job.started_at is None or job.finished_at is None else job.finished_at - job.started_at
            self.send(JobFinishedEvent.build(job, duration=ran, seq=bus.last_seq(job_id)))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        super().close(code, close_reason(reason) if reason is not None else None)

    def on_message(self, message) -> None:
        pass  # clients only listen

    def _unsubscribe(self) -> None:
        if self.subscription is not None:
            self.service.bus.unsubscribe(self.subscription)
            self.subscription = None

    def on_close(self) -> None:
        self._unsubscribe()
        if self.counted_address is not None:
            self.service.websockets.release(self.counted_address)
            self.counted_address = None


def text_frame(text: str) -> bytes:
    """An unmasked, uncompressed, final WebSocket text frame holding `text` (RFC 6455 section 5.2)."""
    data = text.encode("utf-8")
    if len(data) < 126:
        header = struct.pack("!BB", 0x81, len(data))
    elif len(data) <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, len(data))
    else:
        header = struct.pack("!BBQ", 0x81, 127, len(data))
    return header + data


def close_reason(reason: str) -> str:
    """`reason` cut to fit a close frame (123 bytes of UTF-8), never splitting a character."""
    data = reason.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return data[: MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."

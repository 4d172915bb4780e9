"""`animenb watch JOB_ID`: a tqdm bar driven by the job's WebSocket (ws://host/ws/job/<id>).

The server sends the job's state on connect, then "started" / "progress" / "finished"
events, then closes. If the connection drops before "finished", watch reconnects with
`?after=<last seq>` (the server replays what was missed). Exit status: 0 when the job
succeeded, 1 when it failed, was cancelled or was lost; 2 for errors of watch itself
(unknown job, server unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from ._client import add_server_arguments, api_error, base_url, headers, ws_url

HELP = "follow a job's progress with a progress bar until it ends (exit 0 succeeded, 1 failed/cancelled/lost)"
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CLOSE_JOB_NOT_FOUND, CLOSE_BAD_REQUEST = 4404, 4400
RECONNECTS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  animenb watch 3f2c...e1            bar on stderr, result on stdout\n"
        "  animenb watch $ID && echo done     exit status 0 only when the job succeeded\n"
        "  animenb watch $ID --no-progress    just the result line (for logs)"
    )
    parser.add_argument("job_id", metavar="JOB_ID", help="the job's id (32 hex digits, from `animenb jobs`)")
    add_server_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no bar; print only the final result")


class _Bar:
    """A 0-100 % bar (phases and orchestrations have stages of different step counts)."""

    def __init__(self, job_id: str, enabled: bool):
        self.job_id, self.enabled, self.bar, self.percent = job_id, enabled, None, 0.0
        self.desc = job_id[:8]

    def _ensure(self):
        if self.bar is None and self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=100,
                desc=self.desc,
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}",
            )
        return self.bar

    def describe(self, state: dict) -> None:
        name = state.get("phase_name") or (f"phase {state['phase']}" if state.get("phase") else "")
        self.desc = f"{self.job_id[:8]} {name}".strip()
        if self.bar is not None:
            self.bar.set_description_str(self.desc, refresh=False)

    def update(self, percent: float | None, postfix: str) -> None:
        bar = self._ensure()
        if bar is None:
            return
        if percent is not None and percent > self.percent:
            bar.update(percent - self.percent)
            self.percent = percent
        bar.set_postfix_str(postfix)

    def progress(self, p: dict) -> None:
        parts = []
        if p.get("total_steps"):
            parts.append(f"step {p.get('step') or 0}/{p['total_steps']}")
        if p.get("stage"):
            parts.append(str(p["stage"]))
        if p.get("eta_seconds") is not None:
            parts.append(f"ETA {float(p['eta_seconds']):.1f}s")
        self.update(p.get("percent"), " · ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


async def _connect(url: str, job_id: str, token: str | None, after: int):
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    target = ws_url(url, f"/ws/job/{job_id}") + (f"?after={after}" if after else "")
    request = HTTPRequest(target, headers=headers(token), connect_timeout=10, request_timeout=30)
    try:
        return await websocket_connect(request, ping_interval=20, ping_timeout=20)
    except HTTPClientError as exc:
        body = exc.response.body if exc.response is not None and exc.response.body else b""
        raise ValueError(api_error(exc.code, body)) from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectionError(
            f"cannot reach the animenb server at {base_url(url)} ({exc}); is `animenb serve` running? (--url)"
        ) from None


async def watch(url: str, job_id: str, token: str | None = None, *, progress: bool = True) -> dict:
    """Follow the job to its end; returns the "finished" event (status, error, outputs)."""
    bar = _Bar(job_id, progress)
    after, drops = 0, 0
    try:
        while True:
            conn = await _connect(url, job_id, token, after)
            while True:
                message = await conn.read_message()
                if message is None:
                    break
                if not isinstance(message, str):
                    continue
                event = json.loads(message)
                after = max(after, int(event.get("seq") or 0))
                kind = event.get("event")
                if kind == "state":
                    state = event.get("state") or {}
                    bar.describe(state)
                    if state.get("status") == "queued":
                        pos = state.get("queue_position")
                        bar.update(None, f"queued{f' (position {pos})' if pos else ''}")
                    elif state.get("status") == "running":
                        bar.progress(state.get("progress") or {})
                elif kind == "started":
                    bar.update(None, f"started on {event.get('device', '?')}")
                elif kind == "progress":
                    drops = 0
                    bar.progress(event)
                elif kind == "finished":
                    if event.get("status") == "succeeded":
                        bar.update(100.0, "done")
                    return event
            if conn.close_code == CLOSE_JOB_NOT_FOUND:
                raise ValueError(conn.close_reason or f"Job not found: {job_id}")
            if conn.close_code == CLOSE_BAD_REQUEST:
                raise ValueError(conn.close_reason or "the server refused the request")
            drops += 1  # closed before "finished": the server restarted or the network dropped
            if drops > RECONNECTS:
                raise ConnectionError(
                    f"lost the connection to {base_url(url)} {RECONNECTS} times while "
                    f"watching {job_id}; the job may still be running"
                )
            await asyncio.sleep(min(2.0 * drops, 5.0))
    finally:
        bar.close()


def run(args: argparse.Namespace) -> int:
    job_id = args.job_id.strip().lower()
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"`JOB_ID` must be 32 hex digits (see `animenb jobs`), got {args.job_id!r}.")
    base_url(args.url)  # a bad --url fails here, before any connection
    final = asyncio.run(watch(args.url, job_id, args.token, progress=not args.no_progress))
    status = final.get("status", "unknown")
    duration = final.get("duration_seconds")
    took = f" in {duration:.1f} s" if isinstance(duration, (int, float)) else ""
    print(f"job {job_id} {status}{took}")
    base = base_url(args.url)
    for path in final.get("outputs") or []:
        if not str(path).endswith("/notebook.ipynb"):
            print(f"  {base}{path}")
    if status in ("succeeded", "failed"):
        print(f"  notebook: {base}/api/anime/outputs/{job_id}/notebook.ipynb")
    if status == "succeeded":
        return 0
    error = final.get("error") or {}
    if error:
        print(f"  {error.get('type', 'error')}: {error.get('message', '')}".rstrip(), file=sys.stderr)
    return 1

"""JSON bodies of the API, built from store records (handlers stay thin)."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote

from animenb import __version__
from animenb.phases.catalog import DEFAULT_GATE, PHASES, QUALITY_GATES, WORKFLOW, get_phase
from animenb.phases.spec import phase_spec
from animenb.store import JobRecord, JobStatus
from animenb.store.jobs_common import iso

API = "/api/anime"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".webm"}
# Which listed output represents a job in the gallery, best first (manifest "kind" values).
PRIMARY_KINDS = ("grid", "sheet", "loop", "gif", "video", "mp4", "image")  # "grid": a sweep's card


def output_url(job_id: str, path: str) -> str:
    return f"{API}/outputs/{job_id}/{quote(path)}"


def thumbnail_url(job_id: str, path: str) -> str:
    return f"{API}/thumbnails/{job_id}/{quote(path)}"


def status_url(job_id: str) -> str:
    return f"{API}/generation/{job_id}/status"


def ws_url(job_id: str, ws_base: str = "") -> str:
    return f"{ws_base}/ws/job/{job_id}"


def phase_name(phase: int | None) -> str | None:
    try:
        return get_phase(phase).name if phase is not None else None
    except ValueError:
        return None


def _progress(job: JobRecord, live: dict | None) -> dict:
    base = {"percent": 0.0, "stage": job.status.value, "step": 0, "total_steps": None, "eta_seconds": None}
    stored = live or job.progress or {}
    base.update(
        {
            k: stored[k]
            for k in ("percent", "stage", "part", "step", "total_steps", "eta_seconds", "elapsed_seconds", "updated_at")
            if k in stored
        }
    )
    if job.status is JobStatus.SUCCEEDED:
        base.update(percent=100.0, eta_seconds=0.0)
    if job.terminal and job.started_at is not None and job.finished_at is not None:
        # the whole run, scoring included (a progress event's own figure stops at its last step)
        base["elapsed_seconds"] = round(job.finished_at - job.started_at, 3)
    return base


def _quality(job: JobRecord) -> dict | None:
    quality = job.outputs.quality
    if quality is None:
        return None
    shown = ("score", "passed", "verdict", "review_reasons", "threshold", "failures", "error")
    return {k: quality.get(k) for k in shown if k in quality}


def job_status(
    job: JobRecord,
    *,
    live_progress: dict | None = None,
    queue_position: int | None = None,
    children: list[dict] | None = None,
    reviews: list[dict] | None = None,
    ws_base: str = "",
) -> dict:
    """The status body of a job (`AnimeService.status` gathers the arguments). `reviews` are the reviewers'
    verdicts on it (as GET /reviews lists them; none for an unfinished job). `children` (an orchestration
    parent's child rows) adds `children`, the chain's `reason` and `attempts_by_phase`."""
    files = job.outputs.files
    body = {
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status.value,
        "phase": job.phase,
        "phase_name": phase_name(job.phase),
        "progress": _progress(job, live_progress),
        "queue_position": queue_position,
        "outputs": [output_url(job.id, f) for f in files],
        "notebook_url": output_url(job.id, "notebook.ipynb") if job.started_at else None,
        "quality": _quality(job),
        "reviews": list(reviews or []),
        "error": job.error.as_dict() if job.error else None,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "status_sequence": job.status_sequence,
        "attempts": job.attempts,
        "prompt": job.parameters.get("prompt"),
        "seed": job.parameters.get("seed"),
        "owner": job.owner,
        "visibility": job.visibility,
        "parent_id": job.parent_id,
        "status_url": status_url(job.id),
        "ws_url": ws_url(job.id, ws_base),
    }
    if children is not None:
        body.update(
            children=children, reason=job.outputs.reason, attempts_by_phase=(job.outputs.quality or {}).get("phases")
        )
    return body


def primary_output(job: JobRecord) -> tuple[str | None, str | None]:
    """(the file that represents the job, an image to thumbnail) from the manifest's file list."""
    listed = [f for f in job.outputs.listed if f.get("path")]
    media = [f for f in listed if PurePosixPath(f["path"]).suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
    if not media:
        media = [
            {"path": p, "kind": ""}
            for p in job.outputs.files
            if PurePosixPath(p).suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
        ]
    if not media:
        return None, None
    rank = {kind: i for i, kind in enumerate(PRIMARY_KINDS)}
    media.sort(key=lambda f: rank.get(str(f.get("kind", "")).lower(), len(rank)))
    primary = media[0]["path"]
    images = [f["path"] for f in media if PurePosixPath(f["path"]).suffix.lower() in IMAGE_SUFFIXES]
    return primary, (images[0] if images else primary)


def gallery_item(job: JobRecord) -> dict:
    primary, thumb = primary_output(job)
    listed = {f.get("path"): f for f in job.outputs.listed}
    files = []
    for path in job.outputs.files:
        entry = listed.get(path, {})
        files.append(
            {
                "path": path,
                "url": output_url(job.id, path),
                "kind": entry.get("kind"),
                "media_type": entry.get("media_type"),
                "bytes": entry.get("bytes"),
            }
        )
    return {
        "job_id": job.id,
        "phase": job.phase,
        "phase_name": phase_name(job.phase),
        "prompt": job.parameters.get("prompt"),
        "seed": job.parameters.get("seed") if job.outputs.seed is None else job.outputs.seed,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "url": output_url(job.id, primary) if primary else None,
        "thumbnail_url": thumbnail_url(job.id, thumb) if thumb else None,
        "notebook_url": output_url(job.id, "notebook.ipynb"),
        "quality": _quality(job),
        "files": files,
    }


def phases_body(notebooks_dir) -> dict:
    phases = []
    for phase in PHASES:
        spec = phase_spec(phase.id)  # what POST /generate accepts for this phase, from the one spec
        phases.append(
            {
                **phase.as_dict(),
                "notebook": phase.notebook,
                "available": (notebooks_dir / phase.notebook).is_file(),
                "parameters_file": f"parameters/{phase.parameters_file}",
                "request_fields": [p.as_dict() for p in spec.api_params],
                "rules": [r.as_dict() for r in spec.rules],
            }
        )
    return {"phases": phases, "workflow": WORKFLOW, "quality_gates": QUALITY_GATES, "quality_threshold": DEFAULT_GATE}


def features(scored: bool) -> list[str]:
    """Only what exists in this process (`scored`: phase jobs get a quality score)."""
    found = [
        "Real-time job status tracking",
        "WebSocket progress updates",
        "Structured file organization (outputs/<job_id>/ with manifest.json and the executed notebook)",
        "GPU resource management (one warm kernel and one job at a time per device)",
        "Error handling and recovery (durable SQLite queue, dead-kernel restart, restart recovery)",
        "Performance optimization (15 steps by default, warm kernels with a model cache)",
    ]
    if scored:
        found.insert(4, "Character consistency checking (quality scoring after every phase)")
    return found


def health_body(
    *,
    service: str,
    version: str,
    uptime_seconds: float,
    counts: dict[str, int],
    comfyui: dict,
    gpu: dict,
    runner: dict,
    models: dict,
    backend: str,
    degraded: dict[str, str],
) -> dict:
    """GET /health from the facts `AnimeService.health` gathered (`runner`: `JobRunner.health()`;
    `degraded`: component -> why). `version` is the API's, `animenb_version` the package's."""
    kernels = runner["kernels"]
    return {
        "status": "degraded" if degraded else "healthy",
        "service": service,
        "version": version,
        "animenb_version": __version__,
        "uptime_seconds": round(uptime_seconds, 1),
        "components": {
            "comfyui": comfyui,
            "gpu": {**gpu, "active_generation": runner["generating"]},
            "jobs": {
                "active_count": counts["queued"] + counts["running"],
                "total_tracked": sum(counts.values()),
                "queued": counts["queued"],
                "running": counts["running"],
                "by_status": counts,
            },
            "models": models,
            "backend": backend,
            "kernels": {
                "warm": runner["warm"],
                "ready": sum(k["ready"] for k in kernels),
                "total": len(kernels),
                "devices": kernels,
            },
            "executor": runner["executor"],
        },
        "degraded_components": list(degraded),
        "degraded_reasons": degraded,
        "bulletproof_features": features(runner["scored"]),
    }

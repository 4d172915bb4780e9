"""`animenb serve`: the REST + WebSocket job service (see animenb.server)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

HELP = "serve the anime production API (REST + WebSocket) on 127.0.0.1:8328"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8328, help="port (default 8328)")
    parser.add_argument("--models", default=None, help="model profile name or YAML (default $ANIMENB_MODELS or tiny)")
    parser.add_argument("--home", default=None, help="job store and caches (default $ANIMENB_HOME or ~/.cache/animenb)")
    parser.add_argument("--outputs", default=None, help="where jobs write outputs/<job_id>/ (default ./outputs)")
    parser.add_argument("--backend", default=None, choices=["diffusers", "comfyui"], help="generation backend")
    parser.add_argument(
        "--comfyui-url",
        action="append",
        default=[],
        metavar="URL",
        help="ComfyUI server, e.g. http://127.0.0.1:8188; repeat it for several servers (each gets "
        "its own worker, so their jobs run in parallel)",
    )
    parser.add_argument(
        "--executor",
        default="local",
        choices=["local", "ray"],
        help="where jobs run: warm kernels in this process (default) or Ray actors, one per GPU "
        "of a cluster (needs pip install -e '.[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join: auto (the one on this machine) or HOST:PORT; default: start a local one",
    )
    parser.add_argument(
        "--ray-slots",
        type=int,
        default=None,
        help="Ray actors to start (default one per GPU of the cluster; on a CPU-only cluster 1, each taking one CPU)",
    )
    parser.add_argument(
        "--ray-shared-outputs",
        action="store_true",
        help="the outputs folder is mounted at the same path on every Ray node: actors write in "
        "place instead of returning files through the object store",
    )
    parser.add_argument(
        "--cold-kernels",
        action="store_true",
        help="start a fresh kernel for every job (for comparison; warm kernels are the default)",
    )
    parser.add_argument(
        "--no-quality",
        action="store_true",
        help="do not score phase jobs (no quality score, no gate; orchestration is refused)",
    )
    parser.add_argument(
        "--notebooks",
        default=None,
        help="directory of phase notebooks (01_character_sheet.ipynb ...; default the checkout's notebooks/)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=512, help="queued jobs in all before POST /generate answers 429 (default 512)"
    )
    parser.add_argument(
        "--max-queued-per-user",
        type=int,
        default=64,
        help="queued jobs per token name (anonymous callers share one allowance; default 64)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://app.example) besides the server's own that may POST/DELETE "
        "and open job WebSockets; repeatable",
    )
    parser.add_argument(
        "--body-timeout", type=float, default=None, help="seconds a client may take to send a request body (default 10)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="seconds a connection may take to send its request headers or stay idle (default 30)",
    )
    parser.add_argument(
        "--max-websockets-per-client",
        type=int,
        default=None,
        help="open job WebSockets per client address (default 64)",
    )
    parser.add_argument(
        "--max-job-cost",
        action="append",
        default=[],
        metavar="ROLE=N",
        help="the most megapixel-steps (width x height x steps x images / 1e6) one job of a role "
        "(anonymous, user, admin) may cost; 'none' for no limit; repeatable "
        "(defaults anonymous=300 user=1500 admin=15000)",
    )
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a running job past this fails with error type Timeout (default 3600; 0: none)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def job_limits(costs: list[str], timeout: float | None):
    """`JobLimits` from `--max-job-cost ROLE=N` (N a number or "none") and `--job-timeout S` (0: none)."""
    from animenb.server.limits import ROLES, JobLimits

    values: dict = {}
    for item in costs:
        role, _, number = item.partition("=")
        if role not in ROLES or not number:
            raise ValueError(
                f"`--max-job-cost` must look like ROLE=N with ROLE one of {', '.join(ROLES)}, got {item!r}."
            )
        try:
            values[role] = None if number.strip().lower() == "none" else float(number)
        except ValueError:
            raise ValueError(f"`--max-job-cost` {role}: N must be a number or none, got {number!r}.") from None
    if timeout is not None:
        values["timeout_seconds"] = timeout or None
    return JobLimits(**values)


def run(args: argparse.Namespace) -> int:
    # The notebooks' kernels read these too: set them before anything starts.
    if args.home:
        os.environ["ANIMENB_HOME"] = os.path.abspath(os.path.expanduser(args.home))
    if args.executor != "ray" and (args.ray_address or args.ray_slots or args.ray_shared_outputs):
        raise ValueError("--ray-address, --ray-slots and --ray-shared-outputs need --executor ray.")
    if args.ray_slots is not None and args.ray_slots < 1:
        raise ValueError(f"--ray-slots must be at least 1, got {args.ray_slots}.")
    if args.backend == "comfyui" and not args.comfyui_url:
        raise ValueError("--backend comfyui needs --comfyui-url URL (the ComfyUI server to drive).")
    if args.models:
        os.environ["ANIMENB_MODELS"] = args.models
    if args.outputs:
        os.environ["ANIMENB_OUTPUTS"] = os.path.abspath(os.path.expanduser(args.outputs))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)

    from animenb.server.app import ServerConfig, serve
    from animenb.server.limits import HttpLimits

    cfg = ServerConfig(
        host=args.host,
        port=args.port,
        models=args.models,
        home=args.home,
        outputs=args.outputs,
        backend=args.backend,
        comfyui_urls=tuple(args.comfyui_url),
        executor=args.executor,
        ray_address=args.ray_address,
        ray_slots=args.ray_slots,
        ray_shared_outputs=args.ray_shared_outputs,
        warm=not args.cold_kernels,
        notebooks_dir=args.notebooks,
        quality=not args.no_quality,
        max_queue=args.max_queue,
        max_queued_per_user=args.max_queued_per_user,
        allow_origins=tuple(args.allow_origin),
        http_limits=HttpLimits(
            **{
                name: value
                for name, value in (
                    ("body_timeout", args.body_timeout),
                    ("idle_timeout", args.idle_timeout),
                    ("max_websockets_per_client", args.max_websockets_per_client),
                )
                if value is not None
            }
        ),
        job_limits=job_limits(args.max_job_cost, args.job_timeout),
    )

    def ready(service) -> None:
        models = service.models
        print(f"animenb serving http://{cfg.host}:{cfg.port}/api/anime  (ws://{cfg.host}:{cfg.port}/ws/job/<id>)")
        print(
            f"  models:  {models['label']}"
            + ("  -- random weights: images are noise (offline tests/demos)" if models.get("tiny") else "")
        )
        print(f"  store:   {service.home / 'jobs.sqlite'}")
        print(f"  outputs: {service.outputs_dir}")
        print(
            f"  kernels: {', '.join(s.device for s in service.runner.slots)} "
            f"({'warm' if cfg.warm else 'cold'}, {cfg.executor}); "
            f"ComfyUI: {', '.join(cfg.comfyui_urls) or 'not configured'}"
        )
        for job in service.runner.recovered:
            print(f"  recovered job {job.id}: {job.status.value}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, ready=ready, stop_event=stop)

    from animenb.server.home_lock import HomeInUseError

    try:
        asyncio.run(main())
    except HomeInUseError as exc:  # another server holds this home: say so, no traceback
        print(f"animenb serve: error: {exc}", file=sys.stderr)
        return 2
    return 0

"""`RayExecutor`: jobs run on Ray actors, one per GPU of a cluster, each owning a warm kernel.

    animenb serve --executor ray [--ray-address auto|HOST:PORT] [--ray-slots N] [--ray-shared-outputs]

The server, its SQLite store and its queue stay where they are (`JobRunner`); only where a job's
notebooks run changes. Each slot is a long-lived `KernelActor` (`animenb.runner.ray_actor`, the part that
runs on a worker node; `num_gpus=1`; on a cluster without GPUs,
`--ray-slots N` actors with `num_cpus=1`) that starts a `WarmKernel` on its node and runs the same
papermill engine (`animenb`) and the same notebooks on it, so its module-level model cache stays warm
between jobs. The runner places a job on an idle actor that already ran the job's models when there is
one (`animenb.runner.executors.place`).

Outputs: an actor writes the job's files into a scratch folder on its node and returns them through
Ray's object store with each notebook's result (only files new or changed since the previous notebook
of the job); the server writes them into its own outputs/<job_id>/, with the scratch path in executed
notebooks replaced by the server's, so manifests, hashes and notebooks read as a local run's. A new
actor deletes the scratch folders of actors on its node whose process is gone (killed mid-job). With
`--ray-shared-outputs` (the server's outputs folder mounted at the same path on every node) actors write
in place and nothing travels.

Progress: the kernel's progress display data is kept by the actor per job; the slot long-polls it
(`KernelActor.progress`, one actor call per batch of events) and hands each payload to the driver,
which publishes it on the server's event bus (WebSocket fan-out) as for a local kernel.

Cancel: the actor interrupts its kernel (SIGINT, as locally); past the grace period the runner's kill
ends the actor (`ray.kill`) and a replacement starts. An actor or node that dies mid-job raises
`SlotLost`: the job is re-queued once if it wrote nothing, else `lost` with the reason, and the slot
starts a new actor.

Cluster: `--ray-address HOST:PORT` joins a cluster an operator started (`ray start --head`, then
`ray start --address` on each worker); connecting runs on a thread, so the server answers while it
does. Nodes may join and leave: the list /health shows is refreshed every `NODES_REFRESH` s off the
event loop, and a replacement actor goes wherever Ray finds its resources, a node that joined later
included (docs/cluster.md).

Ray is an optional extra (`pip install -e '.[ray]'`): it is imported only here, when the executor
starts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from animenb import atomic
from animenb.runner.public_paths import CHECKOUT

from .executors import Executor, JobCancelledBeforeStart, NotebookRun, Slot, SlotLost, start_until_up

log = logging.getLogger(__name__)

START_TIMEOUT = 180.0  # seconds for an actor to be placed and its kernel to start
POLL_SECONDS = 1.0  # how long one progress call waits for new events
NODES_REFRESH = 2.0  # seconds between two reads of the cluster's node list (for /health)
# Environment the server passes on to actors' kernels (a remote node does not inherit the server's).
FORWARDED_ENV = (
    "ANIMENB_THREADS",
    "TRANSFORMERS_VERBOSITY",
    "HF_HUB_OFFLINE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    # where weights are and may be fetched from (animenb.model_files, huggingface_hub)
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "ANIMENB_CHECKPOINTS",
    "ANIMENB_VAES",
    "ANIMENB_LORAS",
    "ANIMENB_EMBEDDINGS",
)


def _raise_error(error: dict) -> None:
    """Raise locally what the actor's notebook raised, so the driver classifies it as a local run's."""
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if error["kind"] == "execution":
        raise PapermillExecutionError(
            error["cell_index"],
            error["exec_count"],
            error["source"],
            error["ename"],
            error["evalue"],
            error["traceback"],
        )
    if error["kind"] == "dead_kernel":
        raise DeadKernelError(error["message"])
    if error.get("name") == "JobCancelledBeforeStart":
        raise JobCancelledBeforeStart(error["message"])
    raise RuntimeError(f"{error.get('name')}: {error.get('message')}")


class RaySlot(Slot):
    """The server's handle on one `KernelActor` (module docstring); replaces its actor when it dies."""

    def __init__(
        self,
        executor: "RayExecutor",
        index: int,
        *,
        resources: dict,
        comfyui_url: str | None = None,
        comfyui_only: bool = False,
    ):
        super().__init__(warm=executor.warm)
        self.executor = executor
        self.index = index
        self.resources = resources
        self.comfyui_url = comfyui_url
        self.comfyui_only = comfyui_only
        self.device = f"ray:{'comfyui' if comfyui_only else 'gpu' if resources.get('num_gpus') else 'cpu'}{index}"
        self.actor = None
        self.info: dict | None = None
        self.replacements = 0
        self.last_loss: str | None = None
        self.current_job: str | None = None  # the job whose notebook runs now (what `interrupt` stops)
        self._replacing: asyncio.Task | None = None
        self._closed = False

    @property
    def ready(self) -> bool:
        return self.actor is not None and self.info is not None

    async def start(self) -> None:
        import ray

        cls = self.executor.actor_class()
        actor = cls.options(**self.resources).remote(
            env=self.executor.env, warm=self.warm, shared_outputs=self.executor.shared_outputs, label=self.device
        )
        try:
            info = await asyncio.wait_for(actor.start.remote(), START_TIMEOUT)
        except BaseException:
            ray.kill(actor, no_restart=True)
            raise
        self.actor, self.info = actor, info
        self.loaded = []  # a new actor's model cache is empty
        log.info(
            "Ray actor %s started on node %s (pid %s, GPUs %s)",
            self.device,
            info["node_ip"],
            info["pid"],
            ",".join(info["gpu_ids"]) or "none",
        )

    def job_dir(self, job_id: str, out_dir: Path) -> Path:
        if self.info is None or self.info["shared_outputs"]:
            return out_dir
        return Path(self.info["outputs_root"]) / job_id

    async def run_notebook(self, run: NotebookRun) -> None:
        import ray.exceptions

        actor, info = self.actor, self.info
        if actor is None or info is None:
            raise SlotLost(f"the Ray actor of {self.device} is not running ({self.last_loss or 'starting'})")
        self.current_job = run.job_id
        text = await asyncio.get_running_loop().run_in_executor(None, run.notebook.read_text, "utf-8")
        ref = actor.run.remote(
            run.job_id,
            str(run.notebook),
            text,
            run.output_name,
            run.parameters,
            run.execution_timeout,
            run.cancel_event.is_set(),
            run.extra_cells,
        )
        seen = [0]
        pump = asyncio.get_running_loop().create_task(self._pump(actor, run, seen))
        try:
            result = await ref
        except ray.exceptions.RayActorError as exc:  # the actor's process or its node died
            pump.cancel()
            reason = self._lost(actor, exc)
            raise SlotLost(
                f"The Ray actor running this job ({self.device} on node {info['node_ip']}) died: {reason}"
            ) from None
        pump.cancel()
        try:  # events the pump had not fetched yet (the notebook's last ones)
            for payload in await actor.progress.remote(run.job_id, seen[0], 0):
                run.on_progress(payload)
        except ray.exceptions.RayError:
            pass
        if result["files"]:
            await asyncio.get_running_loop().run_in_executor(None, self._write_files, run, info, result["files"])
        if result["error"] is not None:
            _raise_error(result["error"])

    async def _pump(self, actor, run: NotebookRun, seen: list[int]) -> None:
        """Long-poll the actor for progress payloads and hand them to the driver as they come."""
        while True:
            try:
                events = await actor.progress.remote(run.job_id, seen[0], POLL_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                return
            seen[0] += len(events)
            for payload in events:
                run.on_progress(payload)

    def _write_files(self, run: NotebookRun, info: dict, files: dict[str, bytes]) -> None:
        """Server side: the actor's files (`info`: what it reported at start) into outputs/<job_id>/; its scratch
        paths in notebooks become ours."""
        scratch = str(Path(info["outputs_root"]) / run.job_id)
        roots = {scratch: str(run.out_dir)}
        for name, theirs in info["roots"].items():
            ours = {"checkout": str(CHECKOUT), "python": sys.prefix}[name]
            if theirs != ours:
                roots[theirs] = ours
        out_dir = run.out_dir.resolve()
        for rel, data in files.items():
            target = (out_dir / rel).resolve()
            if out_dir not in target.parents:  # a file name from elsewhere must not escape the job's folder
                log.warning("job %s: ignoring returned file %r outside its output folder", run.job_id, rel)
                continue
            if rel.endswith(".ipynb"):
                text = data.decode("utf-8")
                for theirs, ours in sorted(roots.items(), key=lambda kv: -len(kv[0])):
                    text = text.replace(theirs, ours)
                data = text.encode("utf-8")
            atomic.write_bytes(target, data)

    def _lost(self, actor, exc: BaseException) -> str:
        """The actor died: note why, start a replacement in the background; returns the reason."""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.actor is actor:
            self.actor = self.info = None
            self.last_loss = reason
            if not self._closed and (self._replacing is None or self._replacing.done()):
                self._replacing = asyncio.get_running_loop().create_task(self._replace())
        return reason

    async def _replace(self) -> None:
        if await start_until_up(self.start, given_up=lambda: self._closed, what=f"a new Ray actor for {self.device}"):
            self.replacements += 1

    async def interrupt(self) -> bool:
        actor = self.actor
        if actor is None:
            return False
        try:
            return bool(await actor.interrupt.remote(self.current_job or ""))
        except Exception:
            log.exception("interrupting %s failed", self.device)
            return False

    async def kill(self) -> None:
        """Cancel escalation: end the actor (its kernel goes with it); `run_notebook` then raises `SlotLost`."""
        import ray

        actor = self.actor
        if actor is not None:
            log.warning("killing Ray actor %s (a job ignored its interrupts)", self.device)
            ray.kill(actor, no_restart=True)

    def release(self, job_id: str, *, reset: bool) -> None:
        if self.actor is not None:
            self.actor.release.remote(job_id, reset)

    async def close(self) -> None:
        import ray

        self._closed = True
        if self._replacing is not None:
            self._replacing.cancel()
        actor, self.actor = self.actor, None
        if actor is not None:
            try:
                await asyncio.wait_for(actor.shutdown.remote(), 15)
            except Exception:
                pass
            ray.kill(actor, no_restart=True)

    def describe(self) -> dict:
        info = super().describe()
        facts = self.info or {}
        info.update(
            {
                "job_id": self.current_job if self.busy else None,
                "node_ip": facts.get("node_ip"),
                "node_id": facts.get("node_id"),
                "pid": facts.get("pid"),
                "kernel_pid": facts.get("kernel_pid"),
                "gpu_ids": facts.get("gpu_ids"),
                "resources": self.resources,
                "replacements": self.replacements,
                "last_loss": self.last_loss,
            }
        )
        return info


class RayExecutor(Executor):
    """Slots on a Ray cluster (module docstring). `address`: None starts a local cluster, "auto" joins the
    one on this machine, HOST:PORT joins that one. `slots`: the number of actors (default one per GPU of
    the cluster, or 1 without GPUs)."""

    kind = "ray"

    def __init__(
        self,
        *,
        env: dict,
        warm: bool = True,
        outputs_dir: Path,
        address: str | None = None,
        slots: int | None = None,
        shared_outputs: bool = False,
        comfyui_urls: list[str] | None = None,
    ):
        super().__init__()
        if slots is not None and slots < 1:
            raise ValueError(f"`slots` must be at least 1, got {slots}.")
        self.env = {**{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}, **env}
        self.warm = warm
        self.address = address
        self.requested_slots = slots
        self.shared_outputs = str(Path(outputs_dir).resolve()) if shared_outputs else None
        self.comfyui_urls = list(comfyui_urls or [])
        self.owns_ray = False
        self._actor_class = None
        self._nodes: list[dict] | None = None  # ray.nodes() as of the last refresh
        self._nodes_error: str | None = None
        self._watch_nodes: asyncio.Task | None = None

    def actor_class(self):
        if self._actor_class is None:
            import ray

            from .ray_actor import KernelActor

            # run + progress + interrupt + describe + release can overlap.
            self._actor_class = ray.remote(max_concurrency=8)(KernelActor)
        return self._actor_class

    async def prepare(self) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("`--executor ray` needs Ray: pip install -e '.[ray]'") from None
        loop = asyncio.get_running_loop()
        if not ray.is_initialized():
            t0 = time.perf_counter()
            connect = functools.partial(
                ray.init,
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
            if self.address is None:
                # A local cluster's processes die with the *thread* that started them (PR_SET_PDEATHSIG):
                # this one, which lives as long as the server. Joining a running cluster starts nothing here,
                # so it runs on a thread and the server keeps answering meanwhile.
                connect()
            else:
                await loop.run_in_executor(None, connect)
            self.owns_ray = True
            log.info("connected to Ray cluster %s in %.1f s", self.address or "(local)", time.perf_counter() - t0)
        await self._refresh_nodes()
        self._watch_nodes = loop.create_task(self._keep_nodes_fresh(), name="animenb-ray-nodes")
        gpus = int((await loop.run_in_executor(None, ray.cluster_resources)).get("GPU", 0))
        if gpus:
            count, resources = self.requested_slots or gpus, {"num_gpus": 1, "num_cpus": 0}
        else:
            count, resources = self.requested_slots or 1, {"num_cpus": 1}
        self.slots = [RaySlot(self, i, resources=resources) for i in range(count)]
        if len(self.comfyui_urls) > 1:  # ComfyUI does the work: these actors only drive it
            self.slots += [
                RaySlot(self, i, resources={"num_cpus": 0}, comfyui_url=url, comfyui_only=True)
                for i, url in enumerate(self.comfyui_urls)
            ]

    async def _refresh_nodes(self) -> None:
        import ray

        try:
            nodes = await asyncio.get_running_loop().run_in_executor(None, ray.nodes)
        except Exception as exc:  # health must answer even when the cluster does not
            self._nodes_error = str(exc) or type(exc).__name__
            return
        self._nodes, self._nodes_error = nodes, None

    async def _keep_nodes_fresh(self) -> None:
        while True:
            await asyncio.sleep(NODES_REFRESH)
            await self._refresh_nodes()

    async def close(self) -> None:
        if self._watch_nodes is not None:
            self._watch_nodes.cancel()
        await super().close()
        if self.owns_ray:
            import ray

            ray.shutdown()

    def describe(self) -> dict:
        """The executor for /health and /admin/stats: every node Ray knows (alive or gone, as of the last
        refresh), its resources and the slots whose actor runs there."""
        info: dict[str, Any] = {
            "kind": self.kind,
            "address": self.address or "local",
            "outputs": "shared filesystem" if self.shared_outputs else "returned through the object store",
        }
        if self._nodes_error is not None:
            info["cluster_error"] = self._nodes_error
        if self._nodes is None:
            return info
        on_node: dict[str, list[str]] = {}
        for slot in self.slots:
            node = (getattr(slot, "info", None) or {}).get("node_id")
            if node:
                on_node.setdefault(node, []).append(slot.device)
        nodes = [
            {
                "node_id": n.get("NodeID"),
                "ip": n.get("NodeManagerAddress"),
                "alive": bool(n.get("Alive")),
                "gpus": n.get("Resources", {}).get("GPU", 0),
                "cpus": n.get("Resources", {}).get("CPU", 0),
                "slots": on_node.get(str(n.get("NodeID")), []),
            }
            for n in self._nodes
        ]
        alive = [n for n in nodes if n["alive"]]
        info["cluster"] = {
            "nodes": alive,
            "gone": [n for n in nodes if not n["alive"]],
            "gpus": sum(n["gpus"] for n in alive),
            "cpus": sum(n["cpus"] for n in alive),
        }
        return info

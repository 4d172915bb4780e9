"""`--executor ray` on a real local Ray cluster (started here with 2 logical GPUs on this CPU machine):
jobs through the real server on Ray actors, outputs identical to a local run, two jobs at once on two
actors, cancel of a running remote job, an actor killed mid-job (restart policy, replacement), placement
by loaded models, and several ComfyUI servers (with both executors).

Under CI=true a Ray that cannot start fails these tests with the reason; they never skip silently there.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_asyncio

from tests.comfyui.fixtures import (HERE as COMFYUI_HERE, _start_or_fail, comfyui_install,  # noqa: F401
                                    comfyui_packs_server, write_stub_pack_models)
from raycluster import one_ray_cluster_at_a_time
from tests.serverkit import call, submit, wait_status

RAY_START_TIMEOUT = 180.0
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster declaring 3 GPUs (logical: nothing here uses CUDA) and 2 CPUs; always shut down.
    `srv` takes two of the GPUs, the ComfyUI test's server the third."""
    try:
        import ray
    except ImportError as exc:
        if _in_ci():
            pytest.fail(f"Ray is not installed (pip install -e '.[ray]'): {exc}", pytrace=False)
        pytest.skip(f"Ray is not installed: {exc}")
    error: list[BaseException] = []
    up, stop = threading.Event(), threading.Event()

    def own_the_cluster():
        # Ray's head processes die with the *thread* that started them (PR_SET_PDEATHSIG), so this thread
        # starts the cluster and lives until teardown.
        try:
            ray.init(num_gpus=3, num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024 * 1024,
                     log_to_driver=False, configure_logging=False)
        except BaseException as exc:  # reported below, with the reason
            error.append(exc)
            return
        finally:
            up.set()
        stop.wait()
        ray.shutdown()

    with one_ray_cluster_at_a_time():
        owner = threading.Thread(target=own_the_cluster, name="ray-cluster-owner", daemon=True)
        owner.start()
        if not up.wait(RAY_START_TIMEOUT) or error:
            stop.set()
            why = f"{type(error[0]).__name__}: {error[0]}" if error else f"not up within {RAY_START_TIMEOUT:.0f} s"
            pytest.fail(f"the local Ray cluster did not start: {why}", pytrace=False)
        yield ray
        stop.set()
        owner.join(60)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(ray_cluster, tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("ray"), models="tiny", executor="ray", ray_slots=2,
                                 cancel_grace=0.5) as server:
        yield server


async def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def slot_of(srv, job_id: str):
    worker = srv.service.store.get(job_id).worker or ""
    return next(s for s in srv.service.runner.slots if worker.endswith("/" + s.device))


# The first test: it needs the actors' model caches empty (a new server).
async def test_placement_prefers_the_actor_that_already_ran_the_jobs_models(srv):
    runner = srv.service.runner
    assert all(not s.loaded for s in runner.slots), "run this test first: the actors must not have run jobs yet"
    first2 = runner.submit({"prompt": "test:echo"}, phase=2)
    await wait_for(lambda: srv.service.store.get(first2.id).terminal, what="the phase-2 job")
    first3 = runner.submit({"prompt": "test:echo"}, phase=3)
    await wait_for(lambda: srv.service.store.get(first3.id).terminal, what="the phase-3 job")
    a, b = slot_of(srv, first2.id), slot_of(srv, first3.id)
    assert a is not b  # the phase-3 job went to the actor with nothing loaded, not the phase-2 one's
    hits = runner.placements["model_hits"]
    # Both idle, queued in the other order: each goes back to the actor that holds its models.
    again3 = runner.submit({"prompt": "test:echo"}, phase=3)
    again2 = runner.submit({"prompt": "test:echo"}, phase=2)
    for job in (again3, again2):
        await wait_for(lambda: srv.service.store.get(job.id).terminal, what="the repeated jobs")
    assert slot_of(srv, again3.id) is b and slot_of(srv, again2.id) is a
    assert runner.placements["model_hits"] == hits + 2
    assert all(srv.service.store.get(j.id).status.value == "succeeded" for j in (first2, first3, again2, again3))


async def test_health_and_admin_stats_show_the_cluster(srv):
    _, health, _ = await srv.request("GET", "/api/anime/health")
    kernels = health["components"]["kernels"]
    executor = health["components"]["executor"]
    assert executor["kind"] == "ray" and executor["cluster"]["gpus"] == 3 and len(executor["cluster"]["nodes"]) == 1
    assert kernels["total"] == 2 and kernels["ready"] == 2
    actors = kernels["devices"]
    gpus = [g for a in actors for g in a["gpu_ids"]]
    assert len(gpus) == 2 and len(set(gpus)) == 2  # one GPU each
    for actor in actors:
        assert actor["node_ip"] and actor["node_id"] == executor["cluster"]["nodes"][0]["node_id"]
        assert "pid" not in actor and actor["busy"] is False and "jobs_run" in actor and "loaded" in actor
    admin = srv.service.tokens.create("ops", "admin")[1]
    _, stats, _ = await call(srv, "GET", "/api/anime/admin/stats", token=admin)
    assert stats["executor"]["kind"] == "ray" and len(stats["kernels"]["devices"]) == 2
    assert all(actor["pid"] != os.getpid() for actor in stats["kernels"]["devices"])  # process ids: admins only


async def test_a_job_on_an_actor_matches_the_same_job_run_locally(srv, tmp_path, start_live_server):
    """Files come back through the object store (the actors write to their own scratch folders): the same
    bytes, the same manifest (timings aside) and the same executed notebook as a local run's, the quality
    gate's cell (run on the actor's kernel) included."""
    request = dict(prompt="a girl with red hair", seed=7, steps=2, width=64, height=64)
    remote = await submit(srv, **request)
    status = await wait_status(srv, remote["job_id"], timeout=300)
    assert status["status"] == "succeeded", status["error"]
    actor_dir = slot_of(srv, remote["job_id"]).job_dir(remote["job_id"], Path("/unused"))
    assert not str(actor_dir).startswith(str(srv.service.outputs_dir))  # nothing assumed shared
    async with start_live_server(tmp_path, models="tiny") as local_srv:
        local = await submit(local_srv, **request)
        assert (await wait_status(local_srv, local["job_id"], timeout=300))["status"] == "succeeded"
        local_dir = local_srv.service.outputs_dir / local["job_id"]
    remote_dir = srv.service.outputs_dir / remote["job_id"]

    def files(root: Path) -> dict:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.suffix not in (".ipynb", ".json")}

    assert files(remote_dir) == files(local_dir) and len(files(remote_dir)) >= 10

    def manifest(root: Path) -> dict:
        data = json.loads((root / "manifest.json").read_text())
        data.pop("timings", None)
        data.pop("created_at", None)
        data["quality"].pop("scored_at")  # and quality.json, which holds it
        data["files"] = [f for f in data["files"] if f["path"] != "quality.json"]
        return data

    assert manifest(remote_dir) == manifest(local_dir)
    assert status["quality"]["score"] == manifest(local_dir)["quality"]["score"] is not None

    def notebook(root: Path, job_id: str) -> list:
        nb = json.loads((root / "notebook.ipynb").read_text().replace(job_id, "<job>"))
        return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]

    assert notebook(remote_dir, remote["job_id"]) == notebook(local_dir, local["job_id"])
    text = (remote_dir / "notebook.ipynb").read_text()
    assert str(actor_dir.parent) not in text and tempfile.gettempdir() + "/animenb-ray" not in text


async def test_two_jobs_run_at_once_on_two_actors(srv):
    jobs = [await submit(srv, prompt="test:progress 0.5", steps=8) for _ in range(2)]
    done = [await wait_status(srv, j["job_id"]) for j in jobs]
    assert [d["status"] for d in done] == ["succeeded", "succeeded"]
    a, b = (srv.service.store.get(j["job_id"]) for j in jobs)
    assert a.worker != b.worker
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # their run times overlap


async def test_cancel_interrupts_the_remote_kernel(srv):
    job = await submit(srv, prompt="test:sleep 0.4", steps=150)
    await wait_for(lambda: srv.service.runner.live_progress(job["job_id"]), what="the job's first progress")
    slot = slot_of(srv, job["job_id"])
    pid = slot.info["pid"]
    code, body, _ = await srv.request("DELETE", f"/api/anime/generation/{job['job_id']}"
                                                f"?cancel_token={job['cancel_token']}")
    assert code == 200 and body["status"] == "cancelled" and body["error"]["type"] == "Cancelled"
    await wait_for(lambda: not slot.busy, what="the slot to free up")
    assert slot.info and slot.info["pid"] == pid  # interrupted, not killed: the actor and its cache stay
    after = await submit(srv, prompt="test:progress", steps=2)
    assert (await wait_status(srv, after["job_id"]))["status"] == "succeeded"


async def test_a_job_that_ignores_interrupts_is_cancelled_by_killing_its_actor(srv):
    job = await submit(srv, prompt="test:stubborn 0.4", steps=150)
    await wait_for(lambda: srv.service.runner.live_progress(job["job_id"]), what="the job's first progress")
    slot = slot_of(srv, job["job_id"])
    replaced = slot.replacements
    code, body, _ = await srv.request("DELETE", f"/api/anime/generation/{job['job_id']}"
                                                f"?cancel_token={job['cancel_token']}")
    final = await wait_status(srv, job["job_id"], timeout=60)
    assert final["status"] == "cancelled" and final["error"]["type"] == "Cancelled"
    await wait_for(lambda: slot.ready and slot.replacements == replaced + 1, 180, "a replacement actor")


async def test_an_actor_killed_mid_job_requeues_it_once_then_it_is_lost(srv):
    store, runner = srv.service.store, srv.service.runner
    job = await submit(srv, prompt="test:sleep 0.4", steps=150)

    scratch: list[Path] = []

    async def kill_its_actor() -> None:
        await wait_for(lambda: store.get(job["job_id"]).status.value == "running"
                       and runner.live_progress(job["job_id"]), what="the job running")
        info = slot_of(srv, job["job_id"]).info
        scratch.append(Path(info["outputs_root"]))
        assert (scratch[-1] / job["job_id"]).is_dir()  # the job's files are being written there
        os.kill(info["pid"], signal.SIGKILL)

    await kill_its_actor()
    await wait_for(lambda: store.get(job["job_id"]).requeues == 1, what="the job re-queued")
    await kill_its_actor()  # it runs again (nothing was written): killed a second time, it is lost
    final = await wait_status(srv, job["job_id"], timeout=60)
    assert final["status"] == "lost" and final["error"]["type"] == "Lost"
    assert "died" in final["error"]["message"] and "re-queued once" in final["error"]["message"]
    await wait_for(lambda: all(s.ready for s in runner.slots), 180, "replacement actors")
    assert sum(s.replacements for s in runner.slots) >= 2
    assert not any(path.exists() for path in scratch)  # the replacements swept the killed actors' scratch
    after = await submit(srv, prompt="test:progress", steps=2)
    assert (await wait_status(srv, after["job_id"]))["status"] == "succeeded"


async def test_with_a_shared_outputs_folder_actors_write_in_place(ray_cluster, tmp_path, start_live_server):
    async with start_live_server(tmp_path, models="tiny", executor="ray", ray_slots=1, ray_shared_outputs=True,
                                 quality=False) as s:
        slot = s.service.runner.slots[0]
        job = await submit(s, prompt="test:progress", steps=2)
        assert (await wait_status(s, job["job_id"]))["status"] == "succeeded"
        out_dir = s.service.outputs_dir / job["job_id"]
        assert slot.info["shared_outputs"] and slot.job_dir(job["job_id"], out_dir) == out_dir
        assert (out_dir / "image.png").is_file() and (out_dir / "manifest.json").is_file()


# -- several ComfyUI servers -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_packs_server(comfyui_install):  # noqa: F811
    """Another ComfyUI like `comfyui_packs_server` (IP-Adapter stand-in pack), for two URLs at once."""
    workdir = Path(tempfile.mkdtemp(prefix="animenb-comfyui-packs2-"))
    server = _start_or_fail(comfyui_install, workdir, [COMFYUI_HERE / "custom_nodes"],
                            write_stub_pack_models(workdir / "models"))
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def prompts_run(url: str) -> int:
    with urllib.request.urlopen(url + "/history", timeout=10) as resp:
        return len(json.loads(resp.read()))


async def _both_comfyui_servers_get_work(srv, urls: list[str]) -> None:
    before = {url: prompts_run(url) for url in urls}
    jobs = [await submit(srv, prompt=f"a girl, take {i}", backend="comfyui", seed=i, steps=2) for i in range(2)]
    for job in jobs:
        status = await wait_status(srv, job["job_id"], timeout=400)
        assert status["status"] == "succeeded", status["error"]
    workers = {srv.service.store.get(j["job_id"]).worker for j in jobs}
    assert len(workers) == 2  # one worker per URL
    assert all(prompts_run(url) > before[url] for url in urls)
    _, health, _ = await srv.request("GET", "/api/anime/health")
    assert [s["url"] for s in health["components"]["comfyui"]["servers"]] == urls


async def test_several_comfyui_urls_each_get_a_worker_locally(comfyui_packs_server, second_packs_server,  # noqa: F811
                                                             tmp_path, start_live_server):
    urls = [comfyui_packs_server.url, second_packs_server.url]
    async with start_live_server(tmp_path, models="tiny", comfyui_urls=tuple(urls), quality=False) as s:
        assert [x.comfyui_url for x in s.service.runner.slots if x.comfyui_only] == urls
        await _both_comfyui_servers_get_work(s, urls)


async def test_several_comfyui_urls_each_get_an_actor_on_ray(ray_cluster, comfyui_packs_server,  # noqa: F811
                                                            second_packs_server, tmp_path, start_live_server):
    urls = [comfyui_packs_server.url, second_packs_server.url]
    async with start_live_server(tmp_path, models="tiny", comfyui_urls=tuple(urls), quality=False,
                                 executor="ray", ray_slots=1) as s:
        assert [x.comfyui_url for x in s.service.runner.slots if x.comfyui_only] == urls
        await _both_comfyui_servers_get_work(s, urls)

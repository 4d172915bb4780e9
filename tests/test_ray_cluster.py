"""`animenb serve --executor ray --ray-address HOST:PORT` on a two-node Ray cluster started like an operator's
(tests/raycluster.py: `ray start --head`, `ray start --address`, separate temp dirs and object stores, no
shared outputs): jobs run on both nodes and their files come back, a node killed mid-job re-queues its job
(never `running` forever), a node that joins later gets the replacement actor and work, and /health and
/admin/stats list the nodes. The server is a real `animenb serve` subprocess; everything is read over HTTP.

Under CI=true a cluster that cannot start fails these tests with the reason; they never skip silently there.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient

from animenb.phases.catalog import get_phase
from raycluster import RAY, RayNode, free_port, one_ray_cluster_at_a_time, token_env

REPO = Path(__file__).resolve().parent.parent
API = "/api/anime"
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Cluster:
    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, RayNode] = {}
        self.tries: dict[str, int] = {}
        self.env = token_env(root)

    def add(self, name: str) -> RayNode:
        head = not self.nodes
        tries = self.tries.get(name, 0) + 1
        self.tries[name] = tries
        node = RayNode(self.root / f"{name}-{tries}", head_port=self.port if head else None,
                       address=None if head else self.address, env=self.env)
        self.nodes[name] = node
        return node

    def revive(self, name: str, attempts: int = 3) -> None:
        """Start the worker `name` again if its `ray start` gave up: on a loaded machine its raylet can miss
        Ray's fixed 15 s wait for the dashboard agent's ports and abort."""
        if self.nodes[name].running:
            return
        if self.tries[name] >= attempts:
            raise AssertionError(f"Ray node {name} failed to start {attempts} times: "
                                 f"{self.nodes[name].log.read_text()[-1500:]}")
        self.add(name)

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()


class Server:
    def __init__(self, root: Path, address: str, ray_env: dict[str, str]):
        self.root, self.port = root, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        notebooks = root / "notebooks"
        notebooks.mkdir()
        (notebooks / get_phase(1).notebook).write_bytes((REPO / "tests" / "notebooks" / "progress.ipynb").read_bytes())
        self.outputs = root / "outputs"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **ray_env}
        self.log = open(root / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "animenb.cli", "serve", "--port", str(self.port), "--models", "tiny",
             "--home", str(root / "home"), "--outputs", str(self.outputs), "--notebooks", str(notebooks),
             "--no-quality", "--executor", "ray", "--ray-address", address, "--ray-slots", "2",
             "--log-level", "WARNING"], stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=root)
        self.client = AsyncHTTPClient()
        self.admin = None

    async def get(self, path: str, token: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await self.client.fetch(self.base + path, headers=headers, request_timeout=30)
        return json.loads(resp.body)

    async def submit(self, delay: float, steps: int = 20) -> str:
        body = json.dumps({"prompt": f"node {delay}", "steps": steps, "width": 64, "height": 64})
        resp = await self.client.fetch(self.base + f"{API}/generate", method="POST", body=body,
                                       headers={"Content-Type": "application/json"})
        return json.loads(resp.body)["job_id"]

    async def status(self, job_id: str) -> dict:
        return await self.get(f"{API}/generation/{job_id}/status")

    async def actors(self) -> list[dict]:
        return (await self.get(f"{API}/health"))["components"]["kernels"]["devices"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(tmp_path_factory):
    if not RAY.exists():
        if _in_ci():
            pytest.fail(f"Ray is not installed (pip install -e '.[ray]'): no {RAY}", pytrace=False)
        pytest.skip("Ray is not installed")
    with one_ray_cluster_at_a_time():
        async for both in _two_node_cluster(tmp_path_factory):
            yield both


async def _two_node_cluster(tmp_path_factory):
    root = Path(f"/tmp/anr-{os.getpid()}")  # short: Ray's socket paths must fit in 107 bytes
    root.mkdir(exist_ok=True)
    cluster = Cluster(root)
    cluster.add("head")
    await asyncio.sleep(5)  # the head's GCS first; a worker that finds none gives up
    cluster.add("worker1")
    server = Server(tmp_path_factory.mktemp("serve"), cluster.address, cluster.env)
    try:
        async def both_actors_up():
            cluster.revive("worker1")
            if server.proc.poll() is not None:
                raise AssertionError(f"animenb serve exited: {(server.root / 'serve.log').read_text()[-2000:]}")
            try:
                actors = await server.actors()
            except Exception:
                return None
            return actors if len(actors) == 2 and all(a["ready"] for a in actors) else None

        try:
            await wait_for(both_actors_up, 300, "two actors on the two-node cluster")
        except AssertionError as exc:
            logs = {name: node.log.read_text()[-1500:] for name, node in cluster.nodes.items()}
            pytest.fail(f"the two-node Ray cluster did not come up: {exc}; node logs: {logs}", pytrace=False)
        yield cluster, server
    finally:
        server.stop()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def nodes_of(server: Server, job_ids: list[str]) -> dict[str, str]:
    """{job_id: node_id} for the jobs while they run (from /health: each actor's node and current job)."""
    found: dict[str, str] = {}

    async def all_seen():
        for actor in await server.actors():
            if actor.get("job_id") in job_ids:
                found[actor["job_id"]] = actor["node_id"]
        return len(found) == len(job_ids)

    await wait_for(all_seen, 120, "the jobs running")
    return found


async def test_jobs_run_on_both_nodes_and_their_files_come_back(cluster):
    _, server = cluster
    actors = await server.actors()
    assert len({a["node_id"] for a in actors}) == 2  # one actor per node: each has one GPU
    jobs = [await server.submit(0.2), await server.submit(0.2)]
    placed = await nodes_of(server, jobs)
    assert len(set(placed.values())) == 2
    for job_id in jobs:
        final = await wait_for(lambda: _terminal(server, job_id), 180, "the job to finish")
        assert final["status"] == "succeeded", final
        out = server.outputs / job_id
        assert (out / "image.png").is_file() and (out / "manifest.json").is_file()
        notebook = (out / "notebook.ipynb").read_text()
        assert "animenb-ray-" not in notebook  # the actor's scratch path became the server's
    health = await server.get(f"{API}/health")
    nodes = health["components"]["executor"]["cluster"]["nodes"]
    assert len(nodes) == 2 and all(n["alive"] and len(n["slots"]) == 1 for n in nodes)


async def _terminal(server: Server, job_id: str) -> dict | None:
    body = await server.status(job_id)
    return body if body["status"] in ("succeeded", "failed", "cancelled", "lost") else None


async def cluster_view(server: Server) -> dict:
    return (await server.get(f"{API}/health"))["components"]["executor"]["cluster"]


async def test_a_node_killed_mid_job_requeues_it_and_a_late_joiner_gets_work(cluster):
    cluster_, server = cluster
    before = {n["node_id"] for n in (await cluster_view(server))["nodes"]}
    jobs = [await server.submit(0.5, steps=40), await server.submit(0.5, steps=40)]
    placed = await nodes_of(server, jobs)
    cluster_.nodes["worker1"].kill()

    async def worker_gone():
        view = await cluster_view(server)
        return view if len(view["nodes"]) == 1 and before - {n["node_id"] for n in view["nodes"]} else None

    view = await wait_for(worker_gone, 120, "the killed node listed as gone")
    (gone,) = before - {n["node_id"] for n in view["nodes"]}
    assert gone in {n["node_id"] for n in view["gone"]}
    victim = next(j for j in jobs if placed[j] == gone)
    for job_id in jobs:  # never `running` forever: the victim is re-queued (it wrote nothing yet) and runs again
        final = await wait_for(lambda: _terminal(server, job_id), 300, "the jobs to finish")
        assert final["status"] == "succeeded", final
    assert (await server.status(victim))["attempts"] == 2

    cluster_.add("worker2")

    async def replacement_on_late_joiner():
        cluster_.revive("worker2")
        actors = await server.actors()
        new = [a for a in actors if a["ready"] and a["node_id"] not in before]
        return new if len(actors) == 2 and all(a["ready"] for a in actors) and new else None

    new = await wait_for(replacement_on_late_joiner, 300, "the replacement actor on the node that joined")
    assert cluster_.nodes["worker2"].running
    jobs = [await server.submit(0.2), await server.submit(0.2)]
    placed = await nodes_of(server, jobs)
    assert new[0]["node_id"] in placed.values()
    for job_id in jobs:
        assert (await wait_for(lambda: _terminal(server, job_id), 180, "the jobs to finish"))["status"] == "succeeded"
    stats = await server.get(f"{API}/admin/stats", token=_admin_token(server))
    assert len(stats["executor"]["cluster"]["nodes"]) == 2 and len(stats["kernels"]["devices"]) == 2
    assert stats["executor"]["cluster"]["gone"]


def _admin_token(server: Server) -> str:
    out = subprocess.run([sys.executable, "-m", "animenb.cli", "token", "create", "--name", "ops", "--role", "admin",
                          "--home", str(server.root / "home")], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return next(w for w in out.stdout.split() if w.startswith("anb_"))

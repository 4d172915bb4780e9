"""The executor seam: placement of a job on an idle slot, and the store's look-ahead the dispatcher uses."""
from __future__ import annotations

import pytest

from animenb.runner.executors import Slot, model_key, place
from animenb.store import JobStatus, SqliteJobStore


class NamedSlot(Slot):
    """Placement reads only `loaded`, `comfyui_only` and identity; nothing here runs a notebook."""

    def __init__(self, device, loaded=(), comfyui_only=False, warm=True):
        super().__init__(warm=warm)
        self.device, self.loaded, self.comfyui_only = device, list(loaded), comfyui_only
        self.released: list[tuple[str, bool]] = []

    ready = True

    async def start(self): ...
    async def run_notebook(self, run): ...
    async def interrupt(self): return False
    async def kill(self): ...
    async def close(self): ...

    def release(self, job_id, *, reset):
        self.released.append((job_id, reset))


@pytest.fixture
def store():
    s = SqliteJobStore()
    yield s
    s.close()


def test_place_prefers_a_slot_holding_the_jobs_models_then_an_empty_one(store):
    sheet = store.create(phase=1, parameters={"prompt": "a"})
    loop = store.create(phase=2, parameters={"prompt": "b"})
    a = NamedSlot("a", loaded=[model_key(loop, "tiny")])
    b = NamedSlot("b", loaded=[model_key(sheet, "tiny")])
    c = NamedSlot("c")
    assert place(sheet, [a, b, c], models="tiny", backend=None, several_comfyui=False) == (b, True)
    assert place(loop, [a, b, c], models="tiny", backend=None, several_comfyui=False) == (a, True)
    video = store.create(phase=3, parameters={"prompt": "c"})
    assert place(video, [a, b, c], models="tiny", backend=None, several_comfyui=False) == (c, False)
    assert place(video, [a, b], models="tiny", backend=None, several_comfyui=False) == (a, False)
    assert model_key(sheet, "tiny") != model_key(sheet, "real")


def test_place_sends_comfyui_jobs_to_comfyui_slots_only_when_there_are_several(store):
    comfy = store.create(phase=1, parameters={"prompt": "a", "backend": "comfyui"})
    local = store.create(phase=1, parameters={"prompt": "b"})
    gpu, c0 = NamedSlot("gpu"), NamedSlot("c0", comfyui_only=True)
    assert place(comfy, [gpu, c0], models="tiny", backend=None, several_comfyui=True)[0] is c0
    assert place(local, [gpu, c0], models="tiny", backend=None, several_comfyui=True)[0] is gpu
    assert place(local, [c0], models="tiny", backend=None, several_comfyui=True)[0] is None
    assert place(local, [c0], models="tiny", backend="comfyui", several_comfyui=True)[0] is c0  # server default
    assert place(comfy, [gpu], models="tiny", backend=None, several_comfyui=False)[0] is gpu   # one URL: as before


def test_after_job_counts_the_job_notes_its_models_and_resets_a_warm_slot_only(store):
    sheet, loop = store.create(phase=1, parameters={"prompt": "a"}), store.create(phase=2, parameters={"prompt": "b"})
    warm, cold = NamedSlot("warm"), NamedSlot("cold", warm=False)
    warm.after_job("j1", warm=True, key=model_key(sheet, "tiny"), succeeded=True)
    warm.after_job("j2", warm=True, key=model_key(loop, "tiny"), succeeded=False)  # a failed job: its models unknown
    warm.after_job("j3", warm=False, key=model_key(loop, "tiny"), succeeded=True)  # the server stops: no reset
    warm.after_job("j4", warm=True, key=model_key(sheet, "tiny"), succeeded=True)
    assert warm.jobs_run == 4 and warm.loaded == [model_key(loop, "tiny"), model_key(sheet, "tiny")]
    assert warm.released == [("j1", True), ("j2", True), ("j3", False), ("j4", True)]
    cold.after_job("j5", warm=True)
    assert cold.jobs_run == 1 and cold.loaded == [] and cold.released == [("j5", False)]
    assert warm.describe()["jobs_run"] == 4


def test_next_queued_looks_ahead_oldest_first_without_claiming(store):
    jobs = [store.create(phase=1, parameters={"prompt": str(i)}) for i in range(3)]
    store.transition(jobs[0].id, JobStatus.RUNNING, expected=[JobStatus.QUEUED], worker="w")
    ahead = store.next_queued(5)
    assert [j.id for j in ahead] == [jobs[1].id, jobs[2].id]
    assert all(j.status is JobStatus.QUEUED for j in ahead)
    assert [j.id for j in store.next_queued(1)] == [jobs[1].id]


@pytest.mark.parametrize("argv, message", [
    (["--ray-slots", "2"], "need --executor ray"),
    (["--ray-address", "auto"], "need --executor ray"),
    (["--executor", "ray", "--ray-slots", "0"], "--ray-slots must be at least 1, got 0"),
])
def test_serve_refuses_ray_options_it_cannot_use(argv, message, capsys):
    from animenb.cli import main

    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_serve_takes_several_comfyui_urls():
    from animenb.cli import build_parser

    args = build_parser().parse_args(["serve", "--comfyui-url", "http://a:1", "--comfyui-url", "http://b:2"])
    assert args.comfyui_url == ["http://a:1", "http://b:2"] and args.executor == "local"


def test_a_slot_that_fails_to_start_is_retried_until_it_starts_or_is_given_up(caplog):
    import asyncio

    from animenb.runner.executors import start_until_up

    attempts = []

    async def flaky_start():
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise RuntimeError(f"no kernel yet ({len(attempts)})")

    started = asyncio.run(start_until_up(flaky_start, given_up=lambda: False, what="slot cpu", retry_seconds=0.01))
    assert started is True and len(attempts) == 3
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == [
        "starting slot cpu failed; retrying in 0.01 s"] * 2

    stopping = []

    async def failing_start():
        stopping.append(True)  # the server stops while this start fails
        raise RuntimeError("no kernel")

    given_up = asyncio.run(start_until_up(failing_start, given_up=lambda: bool(stopping), what="slot cpu",
                                          retry_seconds=0.01))
    assert given_up is False and len(stopping) == 1

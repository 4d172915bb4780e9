"""Step previews reach a job's WebSocket: the kernel shows at most ten progress events a second, and a
preview on a skipped event rides on the next one shown, so fast steps still deliver previews."""
from __future__ import annotations

import pytest

from serverkit import call, ws_messages

pytestmark = [pytest.mark.timeout(600)]


async def test_a_preview_skipped_by_the_rate_limit_rides_on_the_next_event(tmp_path, start_live_server):
    # tests/notebooks/previews.ipynb: 10 steps; each odd step waits past the rate limit (shown), each even
    # step carries a preview at once (skipped by the rate limit, so without the hand-over none would arrive).
    async with start_live_server(tmp_path) as srv:
        code, data, _ = await call(srv, "POST", "/api/anime/generate",
                                   {"prompt": "test:previews 0.15", "steps": 10, "width": 64, "height": 64})
        assert code == 202, data
        messages, _, _ = await ws_messages(data["ws_url"], timeout=120)
    previews = [m for m in messages if m["event"] == "progress" and m.get("preview")]
    assert len(previews) >= 4 and all(m["preview"].startswith("data:image/png;base64,") for m in previews)
    assert sorted({m["step"] for m in previews}) == [m["step"] for m in previews]  # each on a later event


@pytest.mark.slow


async def test_the_contract_example_socket_carries_previews(tmp_path, start_live_server):
    async with start_live_server(tmp_path, models="tiny", quality=False) as srv:
        # The contract's example request, as written: phase 1, 512 px, 10 steps (8 poses).
        code, data, _ = await call(srv, "POST", "/api/anime/generate",
                                   {"prompt": "anime girl with blue hair", "width": 512, "height": 512, "steps": 10})
        assert code == 202, data
        messages, _, _ = await ws_messages(data["ws_url"], timeout=480)
    progress = [m for m in messages if m["event"] == "progress"]
    previews = [m["preview"] for m in progress if m.get("preview")]
    assert messages[-1]["event"] == "finished" and messages[-1]["state"]["status"] == "succeeded"
    assert len(previews) >= 3 and all(p.startswith("data:image/png;base64,") for p in previews)

"""Start-up runs under the same step-down as a job, and a restarted worker starts on the rung
that last worked on its GPU (issue 9, defect 4). Before the fix an out-of-memory error in the
compiled rung's warm-up killed the worker, and the supervisor restarted it on the same rung:
a crash loop.

No GPU here to fill: the compiled rung's warm-up raises torch's own OutOfMemoryError. The
memory is real Redis (this suite's database).
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import redis as redis_lib
import torch

from svdq.shared.constants import RUNG_MEMORY_TTL, rung_key
from svdq.shared.settings import Settings
from svdq.worker import models, resident
from svdq.worker.identity import Identity
from svdq.worker.profiles import CPU_LEAN, CPU_PROFILE

pytestmark = pytest.mark.integration

COMPILED = dataclasses.replace(CPU_PROFILE, name="cpu-compiled", compile=True)


@pytest.fixture
def tiny_settings(model_dir):  # type: ignore[no-untyped-def]
    return dataclasses.replace(Settings.from_env({}), model_dir=model_dir)


@pytest.fixture
def memory(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis_lib.Redis.from_url(redis_url)
    identity = Identity("gpu3@node-7", ("svdq.tiny",), 3, "tiny")
    client.delete(rung_key("node-7", 3, "tiny"))
    yield resident.RungMemory.of(client, identity)
    client.delete(rung_key("node-7", 3, "tiny"))


@pytest.fixture
def warm_ups(monkeypatch):  # type: ignore[no-untyped-def]
    """The compiled rung's warm-up runs out of memory (as a 25-frame decode beside the
    CUDA-graph pool did); the profiles warmed are listed."""
    seen: list[str] = []

    def warm_up(model: models.LoadedModel, *_: object) -> float:
        seen.append(model.profile.name)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB")

    monkeypatch.setattr(models, "warm_up", warm_up)
    ladder = (COMPILED, CPU_LEAN)
    monkeypatch.setattr(resident, "process_plan", lambda *_: types.SimpleNamespace(ladder=ladder))
    return seen


def test_a_warm_up_oom_steps_down_and_a_restart_starts_there(
    tiny_settings, memory, warm_ups
) -> None:
    model = resident.load_initial(tiny_settings, "tiny", memory)
    assert warm_ups == ["cpu-compiled"] and model.profile == CPU_LEAN  # stepped down
    assert model.pipe is not None
    key = rung_key("node-7", 3, "tiny")
    assert memory.redis.get(key) == b"cpu-lean"
    assert 0 < memory.redis.ttl(key) <= RUNG_MEMORY_TTL

    # The supervisor restarts the worker: it starts on the rung that worked, no warm-up OOM.
    again = resident.load_initial(tiny_settings, "tiny", memory)
    assert again.profile == CPU_LEAN and again.lower == ()
    assert warm_ups == ["cpu-compiled"]


def test_without_a_memory_or_with_a_stale_name_it_starts_at_the_top(memory) -> None:
    ladder = (COMPILED, CPU_LEAN)
    assert resident.start_from(ladder, None) == ladder
    assert resident.start_from(ladder, "xt-24g") == ladder  # another card's, or renamed
    assert resident.start_from(ladder, "cpu-lean") == (CPU_LEAN,)
    assert memory.recall("tiny") is None


def test_redis_away_never_stops_a_worker(tiny_settings) -> None:
    gone = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    away = resident.RungMemory(gone, "node-7", 3)
    assert away.recall("tiny") is None  # logged; starts at the top
    model = resident.load_initial(tiny_settings, "tiny", away)
    assert model.profile == CPU_PROFILE

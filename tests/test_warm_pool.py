"""The warm pool's bookkeeping (hgrun.server.warm.WarmPool) at our engine seam: what is made,
taken, waited for, refused, swept and removed. What a warm run gives a user is tested on a real
dockerd in test_warm.py."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from fake_engine import FakeEngine
from test_supervisor import asyncio_test

from hgrun.engine import LABEL_APP, LABEL_INSTANCE, LABEL_RUN, ContainerSpec, ContainerStatus
from hgrun.errors import EngineError
from hgrun.models import SIZES
from hgrun.server.warm import LABEL_OWNER, WARM, HandoffStream, WarmPool, kept

OWNER = "host:1:me"


def spec(app: str = "1", *, run: str = "7", image: str = "img") -> ContainerSpec:
    return ContainerSpec(
        image=image,
        command=["echo", "hi"],
        env={"A": "b"},
        labels={LABEL_RUN: run, LABEL_APP: app, LABEL_INSTANCE: "i"},
        size=SIZES["standard"],
        stdin=True,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settle(engine: FakeEngine, running: int, *gone: str) -> None:
    """Until ``running`` containers run, none of ``gone`` among them."""
    for _ in range(500):
        ids = {c.id for c in engine.running()}
        if len(ids) == running and not ids & set(gone):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(engine.running())} running, wanted {running}")


@asyncio_test
async def test_a_kind_s_first_run_is_cold_and_the_next_takes_the_one_made_meanwhile() -> None:
    engine = FakeEngine()
    pool = WarmPool(engine, OWNER)
    assert await pool.take(spec()) is None
    await settle(engine, 1)
    (made,) = engine.running()
    assert made.spec.labels[LABEL_RUN] == WARM and made.spec.labels[LABEL_OWNER] == OWNER
    assert made.spec.command[:2] == ["sh", "-c"] and made.spec.env == {}
    taken = await pool.take(spec(run="8"))
    assert taken is not None and taken[0] == made.id
    assert isinstance(taken[1], HandoffStream)
    await settle(engine, 2)  # the next one is asked for at once
    await taken[1].hand_off()
    assert made.stdin.endswith(b'exec "$@"\n.\n')
    assert b"'hi'" in made.stdin and b"export A=" in made.stdin
    await pool.close()


@asyncio_test
async def test_a_run_waits_for_the_one_being_made_and_a_second_one_does_not() -> None:
    engine = FakeEngine()
    pool = WarmPool(engine, OWNER)
    assert await pool.take(spec()) is None
    await settle(engine, 1)
    held = engine.hold("start")
    first = await pool.take(spec())  # takes the idle one; the next is being made, held
    assert first is not None
    await held.reached()
    waiting = asyncio.ensure_future(pool.take(spec()))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert await pool.take(spec()) is None, "one run waits for it; the next is made as usual"
    held.release()
    second = await asyncio.wait_for(waiting, 5)
    assert second is not None and second[0] != first[0]
    await pool.close()


@asyncio_test
async def test_the_pool_s_size_is_kept_and_the_oldest_idle_one_makes_room() -> None:
    engine = FakeEngine()
    clock = Clock()
    pool = WarmPool(engine, OWNER, size=1, clock=clock)
    assert await pool.take(spec(app="1")) is None
    await settle(engine, 1)
    (first,) = engine.running()
    clock.now += 1
    assert await pool.take(spec(app="2")) is None
    await settle(engine, 1, first.id)
    (second,) = engine.running()
    assert second.spec.labels[LABEL_APP] == "2"
    assert first.id in engine.removed
    await pool.close()


@asyncio_test
async def test_containers_unused_past_idle_are_swept() -> None:
    engine = FakeEngine()
    clock = Clock()
    pool = WarmPool(engine, OWNER, idle=600, clock=clock)
    assert await pool.take(spec()) is None
    await settle(engine, 1)
    clock.now += 599
    pool.sweep()
    assert len(engine.running()) == 1
    clock.now += 1
    pool.sweep()
    await settle(engine, 0)
    assert await pool.take(spec()) is None, "a swept kind starts over"
    await pool.close()


@pytest.mark.parametrize(("code", "refused"), [(127, True), (126, True), (137, False)])
@asyncio_test
async def test_an_idle_container_that_ended_sends_its_run_the_usual_way(
    code: int, refused: bool
) -> None:
    # 127 or 126: its shell could not run (an image without sh), so the image is not tried
    # again; anything else (killed by hand, say) and a new one is made.
    engine = FakeEngine()
    pool = WarmPool(engine, OWNER)
    assert await pool.take(spec()) is None
    await settle(engine, 1)
    (dead,) = engine.running()
    engine.exit(dead.id, code)
    assert await pool.take(spec()) is None
    await asyncio.sleep(0.1)
    assert dead.id in engine.removed
    assert len(engine.running()) == (0 if refused else 1)
    assert (await pool.take(spec())) is None or not refused
    await pool.close()


@asyncio_test
async def test_what_the_shim_cannot_take_is_never_warm() -> None:
    engine = FakeEngine()
    pool = WarmPool(engine, OWNER)
    weird = dataclasses.replace(spec(), env={"NOT-A-NAME": "x"})
    detached = dataclasses.replace(spec(), stdin=False)
    for s in (weird, weird, detached, detached):
        assert await pool.take(s) is None
    await asyncio.sleep(0.05)
    assert engine.containers == {}


@asyncio_test
async def test_which_warm_containers_are_still_some_pool_s() -> None:
    engine = FakeEngine()
    pool = WarmPool(engine, OWNER)
    assert await pool.take(spec()) is None
    await settle(engine, 1)
    (mine,) = engine.running()
    state = engine.inspect(mine.id)
    assert pool.keeps(state, gone=lambda owner: True)
    stray = dataclasses.replace(state, id="old")  # mine by its label, but no longer held
    assert not pool.keeps(stray, gone=lambda owner: False)
    other = dataclasses.replace(state, labels={**state.labels, LABEL_OWNER: "host:2:other"})
    assert pool.keeps(other, gone=lambda owner: False)
    assert not pool.keeps(other, gone=lambda owner: owner == "host:2:other")
    # Recovery's rule (kept): the pool's word where there is one; else the owner's life.
    assert kept(pool, state, gone=lambda owner: True)
    assert not kept(pool, stray, gone=lambda owner: False)
    assert kept(None, other, gone=lambda owner: False)
    assert not kept(None, other, gone=lambda owner: owner == "host:2:other")
    await pool.close()
    assert mine.id in engine.removed and engine.containers == {}


@asyncio_test
async def test_a_write_waits_for_the_handoff_and_a_close_frees_it() -> None:
    engine = FakeEngine()
    pool = WarmPool(engine, OWNER)
    assert await pool.take(spec()) is None
    await settle(engine, 1)
    taken = await pool.take(spec())
    assert taken is not None
    container_id, stream = taken
    early = asyncio.ensure_future(stream.write(b"typed early\n"))
    await asyncio.sleep(0.05)
    assert not early.done() and engine.containers[container_id].stdin == b""
    await stream.hand_off()
    await asyncio.wait_for(early, 5)
    assert engine.containers[container_id].stdin.endswith(b".\ntyped early\n")
    assert engine.containers[container_id].status is ContainerStatus.RUNNING
    await pool.close()


@asyncio_test
async def test_an_engine_that_fails_to_make_one_refuses_nothing() -> None:
    # A start the engine refused (its trouble, not the image's) is tried again at the next
    # run; only a shell that could not run (126, 127) refuses an image.
    engine = FakeEngine()
    pool = WarmPool(engine, OWNER)
    engine.errors["start"] = EngineError("the engine is busy")
    assert await pool.take(spec()) is None
    await asyncio.sleep(0.1)
    assert engine.running() == [] and len(engine.removed) == 1
    assert await pool.take(spec()) is None
    await settle(engine, 1)
    assert await pool.take(spec()) is not None
    await pool.close()

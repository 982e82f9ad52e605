"""Rule 4: master fallback, limited to master_fallback_limit concurrent clients."""

from __future__ import annotations

import asyncio
import json
import random
import threading

import pytest

from atlas.selection import (
    FallbackToMaster,
    FallbackWanted,
    HealthSnapshot,
    MasterFallback,
    NodeChosen,
    NoneAvailable,
    Rule,
    Selector,
    admit,
)
from tests.selection.selection_helpers import NOW, VERSION, client, cluster, healthy, node


def no_viable_selector(limit: int) -> Selector:
    return Selector(cluster(node("a", accepting=False), node("b"), fallback_limit=limit))


NO_HEALTH = HealthSnapshot({"a": healthy()})


def test_counter_is_idempotent_per_client_and_released_when_clients_leave() -> None:
    fb = MasterFallback(2)
    assert fb.try_acquire("alice") and fb.try_acquire("bob")
    assert fb.try_acquire("alice")  # asks again: keeps its place, takes no second one
    assert fb.count == 2
    assert not fb.try_acquire("carol")
    fb.release("alice")
    fb.release("alice")  # releasing twice is harmless
    fb.release("nobody")
    assert fb.count == 1
    assert fb.try_acquire("carol")
    assert fb.clients() == frozenset({"bob", "carol"})
    assert fb.peak == 2


def test_changed_limit_applies_to_the_next_request_and_evicts_nobody() -> None:
    fb = MasterFallback(3)
    for who in ("a", "b", "c"):
        assert fb.try_acquire(who)
    assert not fb.try_acquire("d", limit=1)
    assert fb.count == 3 and fb.limit == 1
    fb.release("a")
    fb.release("b")
    assert not fb.try_acquire("d")
    fb.release("c")
    assert fb.try_acquire("d")
    with pytest.raises(ValueError):
        MasterFallback(-1)


def test_admit_uses_the_master_then_says_no_traffic_node_available() -> None:
    selector = no_viable_selector(limit=2)
    fb = MasterFallback(0)  # the configured limit (2) is what counts

    def route(client_id: str):  # type: ignore[no-untyped-def]
        return selector.route(
            NO_HEALTH, VERSION, client(), now=NOW, rng=random.Random(1), fallback=fb,
            client_id=client_id,
        )

    first = route("c1")
    assert isinstance(first, FallbackToMaster)
    assert first.rule is Rule.FALLBACK
    assert (first.host, first.port, first.client_id) == ("master.support.example.test", 443, "c1")
    assert first.reason == (
        "fallback: no viable node (1 not accepting, 1 offline); "
        "using the master (1 of 2 fallback places taken)"
    )
    assert isinstance(route("c2"), FallbackToMaster)
    third = route("c3")
    assert isinstance(third, NoneAvailable)
    assert third.rule is Rule.NONE
    assert third.retry_after_seconds == 5
    assert third.reason == (
        "no traffic node available (master fallback limit 2 reached); retry in 5 s — "
        "fallback: no viable node (1 not accepting, 1 offline)"
    )
    assert json.loads(json.dumps(third.to_dict()))["outcome"] == "none"
    fb.release("c1")
    assert isinstance(route("c3"), FallbackToMaster)


def test_zero_limit_means_never_the_master() -> None:
    selection = no_viable_selector(limit=0).select(
        NO_HEALTH, VERSION, client(), now=NOW, rng=random.Random(1)
    )
    assert isinstance(selection, FallbackWanted)
    d = admit(selection, MasterFallback(0), "c1", retry_after_seconds=30)
    assert isinstance(d, NoneAvailable)
    assert d.reason.startswith(
        "no traffic node available (master fallback limit 0 reached); retry in 30 s"
    )


def test_a_chosen_node_passes_through_admission() -> None:
    selector = Selector(cluster(node("a")))
    fb = MasterFallback(1)
    d = selector.route(
        HealthSnapshot({"a": healthy()}), VERSION, client(), now=NOW, rng=random.Random(1),
        fallback=fb, client_id="c1",
    )
    assert isinstance(d, NodeChosen)
    assert fb.count == 0


def test_limit_is_never_exceeded_by_concurrent_threads() -> None:
    """Each round, 32 threads ask at once while every admitted client still holds its
    place; exactly ``limit`` are admitted, the rest told to retry, then all leave."""
    limit, threads, rounds = 5, 32, 50
    selector = no_viable_selector(limit)
    fb = MasterFallback(limit)
    decided = threading.Barrier(threads)
    results: list[list[str]] = [[] for _ in range(rounds)]
    lock = threading.Lock()

    def worker(t: int) -> None:
        rng = random.Random(t)
        for r in range(rounds):
            decided.wait()
            client_id = f"t{t}-{r}"
            d = selector.route(
                NO_HEALTH, VERSION, client(), now=NOW, rng=rng, fallback=fb, client_id=client_id
            )
            with lock:
                results[r].append(d.outcome.value)
                assert fb.count <= limit
            decided.wait()  # everyone has decided; admitted clients still hold places
            fb.release(client_id)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=60)
        assert not th.is_alive()
    for outcomes in results:
        assert outcomes.count("master_fallback") == limit
        assert outcomes.count("none") == threads - limit
    assert fb.peak == limit
    assert fb.count == 0


async def test_limit_is_never_exceeded_by_concurrent_asyncio_tasks() -> None:
    limit = 3
    selector = no_viable_selector(limit)
    fb = MasterFallback(limit)
    holders: set[str] = set()
    most = 0
    outcomes: list[str] = []
    go = asyncio.Event()

    async def session(i: int) -> None:
        nonlocal most
        await go.wait()
        client_id = f"c{i}"
        d = selector.route(
            NO_HEALTH, VERSION, client(), now=NOW, rng=random.Random(i), fallback=fb,
            client_id=client_id,
        )
        outcomes.append(d.outcome.value)
        if isinstance(d, FallbackToMaster):
            holders.add(client_id)
            most = max(most, len(holders))
            assert len(holders) <= limit
            for _ in range(i % 5 + 1):  # hold the place across a few loop iterations
                await asyncio.sleep(0)
            holders.discard(client_id)
            fb.release(client_id)

    tasks = [asyncio.create_task(session(i)) for i in range(200)]
    go.set()
    await asyncio.gather(*tasks)
    assert most == limit
    assert fb.peak == limit
    assert fb.count == 0
    assert outcomes.count("master_fallback") >= limit
    assert "none" in outcomes

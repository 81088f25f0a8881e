import asyncio

from llmfleet.controller.workqueue import Requeue, WorkQueue


async def test_events_for_one_key_collapse_and_never_run_concurrently():
    running, calls, overlap = set(), [], []

    async def reconcile(key):
        if key in running:
            overlap.append(key)
        running.add(key)
        calls.append(key)
        await asyncio.sleep(0.05)
        running.discard(key)

    q = WorkQueue(reconcile, workers=4)
    q.start()
    for _ in range(10):
        q.add("a")
    q.add("b")
    await asyncio.sleep(0.01)
    for _ in range(5):
        q.add("a")  # arrives while "a" runs: exactly one more pass
    await asyncio.sleep(0.3)
    await q.stop()
    assert overlap == []
    assert calls.count("a") == 2 and calls.count("b") == 1


async def test_failures_retry_with_backoff_and_requeue_is_honoured():
    attempts = []

    async def reconcile(key):
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 3:
            raise RuntimeError("transient")
        if len(attempts) == 3:
            raise Requeue(0.05)

    q = WorkQueue(reconcile, workers=1, base_delay=0.02)
    q.start()
    q.add("k")
    await asyncio.sleep(0.5)
    await q.stop()
    assert len(attempts) == 4
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[1] > gaps[0] * 1.5  # exponential backoff

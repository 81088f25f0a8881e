"""Small helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time

import httpx


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition", explain=None):
    """Poll until `predicate()` is truthy and return it; fail with the last value seen
    (and what ``explain()`` says of the moment, when given)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}{detail}")


def kubectl_json(cluster, *args: str):
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


class Load:
    """Closed-loop chat requests through an OpenAI endpoint, in a thread, bounded in
    count and time: ``concurrency`` requests in flight until stopped. ``outcomes`` counts
    status codes, and the names of errors that got no response. With ``stream``, a
    stream that breaks after its response began (its 200 and headers; or one that ends
    without ``data: [DONE]``) counts as ``streaming:<error>``: it failed while already
    streaming."""

    def __init__(self, url: str, model: str, *, concurrency: int = 4, max_tokens: int = 4,
                 max_requests: int = 20_000, max_seconds: float = 120, stream: bool = False) -> None:
        self.url, self.model, self.concurrency, self.max_tokens = url, model, concurrency, max_tokens
        self.stream = stream
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.outcomes: collections.Counter = collections.Counter()
        self.in_flight = 0
        self.errors: list[tuple[float, str]] = []  # (seconds since the start, outcome) of each failure
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def describe(self) -> str:
        """The load now: for a failed wait's message."""
        state = "running" if self.running else "ended (stopped, or past its bounds)"
        last = f"; failures at {[f'{t:.1f}s {what}' for t, what in self.errors[-8:]]}" if self.errors else ""
        return (f"load {state} {time.monotonic() - self._started:.1f} s after its start: {self.in_flight} "
                f"in flight, {dict(self.outcomes)}{last}")

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ok(self) -> int:
        return self.outcomes[200]

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    @property
    def failed_while_streaming(self) -> int:
        return sum(n for k, n in self.outcomes.items() if str(k).startswith("streaming:"))

    async def _request(self, client: httpx.AsyncClient) -> int | str:
        body = {"model": self.model, "max_tokens": self.max_tokens, "messages": [{"role": "user", "content": "hi"}]}
        if not self.stream:
            return (await client.post("/v1/chat/completions", json=body)).status_code
        started = False
        try:
            async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                if r.status_code != 200:
                    await r.aread()
                    return r.status_code
                started = True  # its 200 and headers came: the answer has begun, no proxy can retry it
                done = False
                async for line in r.aiter_lines():
                    done = done or line.strip() == "data: [DONE]"
                return 200 if done else "streaming:truncated"
        except httpx.HTTPError as exc:
            return f"streaming:{type(exc).__name__}" if started else type(exc).__name__

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            async def worker() -> None:
                while not self._stop.is_set() and time.monotonic() < deadline and self.sent < self.max_requests:
                    self.in_flight += 1
                    try:
                        outcome = await self._request(client)
                    except httpx.HTTPError as exc:
                        outcome = type(exc).__name__
                    finally:
                        self.in_flight -= 1
                    self.outcomes[outcome] += 1
                    if outcome != 200:
                        self.errors.append((time.monotonic() - self._started, str(outcome)))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

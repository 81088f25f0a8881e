"""The activator: what answers for a model that has scaled to zero.

While none of a route's backends has a ready replica and some of them scale to zero,
the route table points their Envoy clusters here. For each request the activator
wakes the ModelDeployment named by the `x-llmfleet-backend` header (the cluster's
upstream filter sets it), holds the request until a replica is ready, and forwards it
there, streaming the answer back. Meanwhile the replica's readiness flips the route
back to the real cluster, so later requests no longer come here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from ..api import openai
from ..envoy.lua import BACKEND_HEADER
from ..routing.table import Endpoint

log = logging.getLogger(__name__)
# Hop-by-hop headers (RFC 9110 §7.6.1) and ones aiohttp sets itself.
_DROP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
         "host", "content-length"}


class ReadyEndpoints:
    """(namespace, ModelDeployment) → ready endpoints, updated from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        self._changed = asyncio.Condition()

    def update(self, endpoints: dict[tuple[str, str], tuple[Endpoint, ...]]) -> None:
        """Thread-safe: the routing reconciler runs in a worker thread."""
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._set(dict(endpoints))))

    async def _set(self, endpoints) -> None:
        async with self._changed:
            self._endpoints = endpoints
            self._changed.notify_all()

    async def wait(self, key: tuple[str, str], timeout: float) -> Endpoint | None:
        """A ready endpoint of `key`, waiting up to `timeout` seconds for one."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._endpoints.get(key)), timeout)
            except TimeoutError:
                return None
            endpoints = self._endpoints[key]
            return endpoints[int(time.monotonic() * 1000) % len(endpoints)]


def _error(status: int, message: str, err_type: str = "server_error") -> web.Response:
    return web.Response(status=status, text=json.dumps(openai.error_body(message, err_type)),
                        content_type="application/json")


class Activator:
    def __init__(
        self,
        wake: Callable[[str, str], Awaitable[None]],
        ready: ReadyEndpoints,
        *,
        timeout: float = 600.0,
    ) -> None:
        self.wake = wake
        self.ready = ready
        self.timeout = timeout
        self.held = 0  # requests waiting right now (a gauge for tests and metrics)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, address: str, port: int) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, address, port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        backend = request.headers.get(BACKEND_HEADER, "")
        namespace, _, name = backend.partition("/")
        if not namespace or not name:
            return _error(400, f"missing {BACKEND_HEADER} header: the activator only serves Envoy's routes",
                          "invalid_request_error")
        body = await request.read()
        start = time.monotonic()
        self.held += 1
        try:
            await self.wake(namespace, name)
            endpoint = await self.ready.wait((namespace, name), self.timeout)
        finally:
            self.held -= 1
        if endpoint is None:
            return _error(503, f"{backend} is scaled to zero and no replica became ready within {self.timeout:.0f} s")
        log.info("%s woke: request held %.2f s, forwarded to %s:%s",
                 backend, time.monotonic() - start, endpoint.address, endpoint.port)
        return await self._forward(request, body, endpoint)

    async def _forward(self, request: web.Request, body: bytes, endpoint: Endpoint) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        url = f"http://{endpoint.address}:{endpoint.port}{request.rel_url}"
        assert self._session is not None
        try:
            async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in _DROP})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as exc:
            # Envoy retries a 503 on another attempt (by then the route may point at the replica).
            return _error(503, f"the woken replica {endpoint.address}:{endpoint.port} failed: {exc}")

"""The operator's xDS server on a thread of its own, for synchronous callers (the
data-plane tests and benchmarks); the operator itself runs :class:`XdsServer` on its loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.message import Message

from llmfleet.envoy.xds import XdsServer
from llmfleet.routing.table import RouteTable


class BackgroundXdsServer:
    """An :class:`XdsServer` on its own thread and event loop."""

    def __init__(self, **kwargs: Any) -> None:
        self.server = XdsServer(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="xds", daemon=True)
        self._thread.start()

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def start(self, address: str = "0.0.0.0", port: int = 0) -> int:
        return self._run(self.server.start(address, port), 30)

    def update(self, table: RouteTable) -> str:
        return self.server.update(table)

    def set_resources(self, resources: Mapping[str, Sequence[Message]]) -> str:
        return self.server.set_resources(resources)

    def wait_acked(self, version: str | None = None, *, node_id: str | None = None,
                   timeout: float = 10.0) -> None:
        self._run(self.server.wait_acked(version, node_id=node_id, timeout=timeout), timeout + 5)

    def stop_serving(self, grace: float | None = 0.5) -> None:
        """Stop the gRPC server but keep the loop (``start`` may be called again)."""
        self._run(self.server.stop(grace), 30)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self.stop_serving()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

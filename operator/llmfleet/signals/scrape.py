"""Scraping replicas' ``/metrics`` over HTTP, and one load round for many ModelDeployments.

:func:`scrape` fetches and parses many targets at once with bounded concurrency and a
hard per-target deadline; whatever goes wrong with a target (refused, timeout, non-200,
oversized or unparsable body, engine series missing) comes back as a
:class:`ScrapeError` value, never as an exception. :class:`Scraper` adds a
:class:`~llmfleet.signals.load.LoadTracker` and turns a round into a
:class:`~llmfleet.signals.values.ModelLoad` per ModelDeployment.

The ``httpx.AsyncClient`` is the caller's (built once at operator startup, in kopf's
memo); create it with ``trust_env=False`` so pod IPs never go through a proxy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from llmfleet.engines import get_engine
from llmfleet.engines.base import PORT
from llmfleet.signals.load import LoadTracker, ModelKey, ReplicaKey
from llmfleet.signals.parse import RawSample, parse_sample
from llmfleet.signals.values import ModelLoad

DEFAULT_CONCURRENCY = 32
DEFAULT_TIMEOUT = 1.0
# vLLM's /metrics is ~100-300 KiB; anything far larger is not an engine's metrics page.
MAX_BODY_BYTES = 8 * 1024 * 1024
# The classic text format, which text_string_to_metric_families parses (not OpenMetrics).
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


@dataclass(frozen=True)
class ScrapeTarget:
    """One ready replica: ``url`` is its full metrics URL, ``engine_kind`` picks the names."""

    key: ReplicaKey
    url: str
    engine_kind: str

    @classmethod
    def for_pod(cls, key: ReplicaKey, ip: str, engine_kind: str, port: int = PORT) -> ScrapeTarget:
        """The target for a pod IP: the engine's metrics path on its serving port."""
        host = f"[{ip}]" if ":" in ip else ip
        return cls(key, f"http://{host}:{port}{get_engine(engine_kind).metrics_path}", engine_kind)


@dataclass(frozen=True)
class ScrapeError:
    """Why one target gave no sample.

    ``reason``: ``connect`` (refused, unreachable), ``timeout``, ``status`` (non-200),
    ``http`` (other transport errors), ``too_large``, ``parse`` (not Prometheus text),
    ``missing_metrics`` (the engine's queue/running/KV gauges are absent: wrong
    engine kind or port, or metrics disabled), ``error`` (anything else).
    """

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


ScrapeResult = RawSample | ScrapeError
# Every ScrapeError.reason, so the failure counters exist (at 0) before the first failure.
SCRAPE_ERROR_REASONS = ("connect", "timeout", "status", "http", "too_large", "parse", "missing_metrics", "error")


async def scrape(
    targets: Sequence[ScrapeTarget],
    client: httpx.AsyncClient,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[ReplicaKey, ScrapeResult]:
    """Scrape every target; a sample or the reason there is none, per target key."""
    timed = await _scrape_timed(targets, client, concurrency, timeout, time.monotonic)
    return {key: result for key, (_, result) in timed.items()}


async def _scrape_timed(
    targets: Sequence[ScrapeTarget],
    client: httpx.AsyncClient,
    concurrency: int,
    timeout: float,
    clock: Callable[[], float],
) -> dict[ReplicaKey, tuple[float, ScrapeResult]]:
    """Like :func:`scrape`, with the time each sample was taken (the request's midpoint)."""
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(target: ScrapeTarget) -> tuple[float, ScrapeResult]:
        async with semaphore:
            start = clock()
            result = await _fetch(target, client, timeout)
            return (start + clock()) / 2, result

    results = await asyncio.gather(*(one(t) for t in targets))
    return {t.key: r for t, r in zip(targets, results, strict=True)}


async def _fetch(target: ScrapeTarget, client: httpx.AsyncClient, timeout: float) -> ScrapeResult:
    try:
        # httpx's timeout bounds each phase; asyncio.timeout bounds the whole scrape,
        # so a replica trickling its body cannot hold a round up.
        async with asyncio.timeout(timeout):
            body = await _get(client, target.url, timeout)
    except TimeoutError:
        return ScrapeError("timeout", f"no answer within {timeout:g}s")
    except httpx.TimeoutException as exc:
        return ScrapeError("timeout", type(exc).__name__)
    except httpx.ConnectError as exc:
        return ScrapeError("connect", str(exc) or type(exc).__name__)
    except httpx.HTTPError as exc:
        return ScrapeError("http", str(exc) or type(exc).__name__)
    except _BadResponse as exc:
        return exc.error
    except Exception as exc:  # noqa: BLE001 - a scrape never raises
        return ScrapeError("error", f"{type(exc).__name__}: {exc}")
    try:
        sample = parse_sample(body, target.engine_kind)
    except Exception as exc:  # noqa: BLE001 - the parser raises ValueError and others
        return ScrapeError("parse", f"{type(exc).__name__}: {exc}")
    if not sample.has_load_signals:
        names = get_engine(target.engine_kind).metric_names
        missing = ", ".join(getattr(names, field) for field in sample.missing_gauges)
        return ScrapeError("missing_metrics", missing)
    return sample


class _BadResponse(Exception):
    def __init__(self, error: ScrapeError) -> None:
        super().__init__(str(error))
        self.error = error


async def _get(client: httpx.AsyncClient, url: str, timeout: float) -> str:
    async with client.stream("GET", url, headers={"Accept": ACCEPT}, timeout=timeout) as response:
        if response.status_code != 200:
            raise _BadResponse(ScrapeError("status", f"HTTP {response.status_code}"))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _BadResponse(ScrapeError("too_large", f"more than {MAX_BODY_BYTES} bytes"))
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")  # the format is UTF-8


class Scraper:
    """Scrapes ModelDeployments' replicas round by round and keeps what rates need.

    One instance per operator (its tracker holds every replica's previous sample).
    ``clock`` must be monotonic; tests pass their own.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        tracker: LoadTracker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.concurrency = concurrency
        self.timeout = timeout
        self.tracker = tracker if tracker is not None else LoadTracker()
        self.clock = clock
        self.errors: dict[ReplicaKey, ScrapeError] = {}  # the latest round's failures
        self._replicas_of: dict[ModelKey, frozenset[ReplicaKey]] = {}

    async def round(
        self,
        models: Mapping[ModelKey, Sequence[ScrapeTarget]],
        *,
        complete: bool = True,
    ) -> dict[ModelKey, ModelLoad | None]:
        """Scrape the ready replicas of each ModelDeployment once; its load, or None without any.

        A replica whose scrape failed counts in ``failed_replicas`` and nowhere else.
        With ``complete`` (the default) ``models`` is every ModelDeployment tracked, and
        state for any other is dropped; with ``complete=False`` only the given ones are
        refreshed (drop deleted ones with :meth:`forget_models`).
        """
        targets = {t.key: t for group in models.values() for t in group}
        results = await _scrape_timed(
            list(targets.values()), self.client, self.concurrency, self.timeout, self.clock
        )
        now = self.clock()
        failed: set[ReplicaKey] = set()
        self.errors = {}
        for key, (taken, result) in results.items():
            if isinstance(result, ScrapeError):
                failed.add(key)
                self.errors[key] = result
            else:
                self.tracker.observe(key, result, taken)

        if complete:
            self.forget_models(set(self._replicas_of) - set(models))
            self.tracker.forget(self.tracker.replica_keys - set(targets))
        for model, group in models.items():
            keys = frozenset(t.key for t in group)
            self.tracker.forget(self._replicas_of.get(model, frozenset()) - keys - set(targets))
            self._replicas_of[model] = keys

        return {
            model: self.tracker.model_load(
                [t.key for t in group], failed.intersection(t.key for t in group), now, model=model
            )
            if group
            else None
            for model, group in models.items()
        }

    def forget_models(self, models: Iterable[ModelKey]) -> None:
        """Drop deleted ModelDeployments and their replicas."""
        models = list(models)
        for model in models:
            self.tracker.forget(self._replicas_of.pop(model, frozenset()))
        self.tracker.forget_models(models)

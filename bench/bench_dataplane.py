"""Data-plane overhead: Envoy with llmfleet's config vs straight to a backend vs LiteLLM.

One ``llmfleet sim`` replica (``--time-scale 0``: no modelled GPU time) is the backend.
The same short non-streaming chat completions go to it over each path:

* ``direct``: straight to the sim (the baseline);
* ``envoy``: through Envoy configured by our xDS server (``BackgroundXdsServer``) with
  a one-backend route, i.e. our real config: ``json_to_metadata`` reads the body's
  ``model``, the route matches on it, the cluster's upstream Lua filter rewrites
  ``model`` to the served name, retry policy, outlier detection, JSON access log;
* ``envoy-nolog``: the same with ``DataPlaneSettings(access_log=False)`` (what the
  access log costs);
* ``envoy-nousage``: the same without usage accounting (``DataPlaneSettings(usage_accounting=False)``);
* ``envoy-auth``: our config with a Tenant and its API key: ``api_key_auth``, the model's
  RBAC, the reroute Lua; no limits;
* ``envoy-local``: the same with a request limit of scope ``local`` that is never reached:
  Envoy's own token bucket per tenant, no call to the rate-limit service;
* ``envoy-tenants``: the same with global request and token limits that are never reached:
  the rate-limit service is asked before each request and told each response's tokens
  when it ends; it runs in a process of its own (``bench/rls_process.py``: our xDS
  server's gRPC, as in the operator), on the load generator's core;
* ``envoy-bare``: the same Envoy, listener and cluster minus everything of ours on the
  request path (no ``json_to_metadata``, no model route, no Lua rewrite, no retries,
  no access log: one prefix route to the cluster), pushed by the same xDS server with
  ``set_resources``; the sim also answers to the public name for it. The gap between
  ``envoy-bare`` and ``direct`` is Envoy itself, the gap to ``envoy`` is our filters;
* ``litellm``: LiteLLM's proxy (``litellm[proxy]`` in a separate venv under /tmp,
  one worker, master key, no DB, logging at ERROR), model ``openai/<served name>``
  with ``api_base`` the sim. If it cannot be installed or started, the bench says so
  (exact error in the table and the JSON) and runs without a third-party gateway.

Phases (all on 127.0.0.1, every loop bounded by a request count and by seconds):

* ``latency``: one request in flight. ``--latency-requests`` per path, run in
  ``--latency-rounds`` interleaved blocks (direct, envoy, ..., rotated each round) so
  drifting background load hits every path alike. Added latency = the path's
  p50/p99 minus direct's.
* ``throughput``: ``--concurrency`` requests in flight (each level in turn), at most
  ``--requests`` requests or ``--seconds`` seconds per path and level. Reports
  wall-clock req/s and the CPU time the sim, the proxy and the load generator used
  (``/proc/PID/stat``), and requests per proxy CPU-second: what one dedicated core
  of that proxy would sustain, which is the fair comparison on a 2-core machine
  where the load generator and the sim need CPU too.

Pinning (``--sim-core``, ``--proxy-core``, ``--client-core``; -1 = no pinning): the
sim and the proxy share one core, the aiohttp load generator (this process) gets
the other. Processes are started from a thread pinned to their core, so every thread
they ever create inherits it; the bench reads back each process's
``Cpus_allowed_list`` and stores it.

Prints tables and writes ``bench/results/dataplane.json``.

    .venv/bin/python bench/bench_dataplane.py                    # ~1 minute
    .venv/bin/python bench/bench_dataplane.py --install-litellm  # first creates the LiteLLM venv
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from llmfleet_devcluster.envoy import EnvoyProcess, find_envoy
from llmfleet_devcluster.waiting import stop_process
from llmfleet_devcluster.xds import BackgroundXdsServer
from prometheus_client import CollectorRegistry

from bench_sim import _cpu_seconds, _percentile, _self_cpu, start_server
from llmfleet.envoy.bootstrap import bootstrap
from llmfleet.envoy.resources import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    DataPlaneSettings,
    build_config,
    stat_name,
    to_protos,
)
from llmfleet.routing.table import Cluster, Endpoint, RateLimit, Route, RouteTable, WeightedBackend
from rls_process import bench_tenant

RESULTS = Path(__file__).resolve().parent / "results" / "dataplane.json"
LOCALHOST = "127.0.0.1"
PUBLIC_MODEL = "chat"  # what clients send through a gateway
SERVED_MODEL = "sim-model"  # what the sim answers to (the gateways rewrite to it)
CLUSTER = "bench/sim"
DEFAULT_LITELLM_VENV = Path("/tmp/litellm-venv")
CHAT_PATH = "/v1/chat/completions"


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started_on(cores: set[int] | None) -> Iterator[None]:
    """Run the body (a process start) from this thread pinned to ``cores``.

    A child inherits the affinity of the thread that forks it, and its threads inherit
    from it, so the whole process tree stays on ``cores`` without racing its start-up.
    """
    if cores is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def cpus_allowed(pid: int) -> str:
    """The union of ``Cpus_allowed_list`` over a process's threads, e.g. "0"."""
    seen: set[str] = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    seen.add(line.split(":", 1)[1].strip())
    except OSError:
        return "?"
    return ",".join(sorted(seen))


def http_ok(url: str, headers: dict[str, str] | None = None, timeout: float = 1.0) -> bool:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def chat_body(model: str, max_tokens: int) -> bytes:
    return json.dumps({"model": model, "max_tokens": max_tokens, "messages": [
        {"role": "user", "content": "Say something short about load tests."}]}).encode()


# --------------------------------------------------------------------------- paths


class Path_:
    """One way to reach the sim: a URL, the body's model, headers, and a PID to watch."""

    def __init__(self, name: str, description: str, base_url: str, model: str, *,
                 pid: int | None = None, headers: dict[str, str] | None = None,
                 expect_model: str | None = None) -> None:
        self.name = name
        self.description = description
        self.url = base_url + CHAT_PATH
        self.model = model
        self.expect_model = expect_model  # the sim echoes the model it was sent
        self.pid = pid  # the proxy's PID (None for direct)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.info: dict[str, Any] = {}


def bare_config(table: RouteTable, listener_port: int) -> dict[str, list[dict[str, Any]]]:
    """Our listener and cluster with nothing of ours on the request path: HCM with only
    the router, one prefix route to the one cluster, no upstream Lua, no access log."""
    cfg = build_config(table, listener_port=listener_port, listener_address=LOCALHOST,
                       settings=DataPlaneSettings(access_log=False, usage_accounting=False))
    hcm = cfg[LISTENER_TYPE][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"]
    hcm.pop("local_reply_config", None)
    cfg[ROUTE_TYPE][0]["virtual_hosts"][0]["routes"] = [
        {"name": "all", "match": {"prefix": "/"}, "route": {"cluster": CLUSTER, "timeout": "0s"}}]
    for c in cfg[CLUSTER_TYPE]:
        c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].pop(
            "http_filters", None)
    return cfg


class EnvoyPath:
    """Our xDS server (own thread) + an Envoy it configures, pinned to the proxy core."""

    def __init__(self, workdir: Path, sim_port: int, settings: DataPlaneSettings,
                 concurrency: int, node_id: str, *, bare: bool = False, tenant_key: str | None = None,
                 limits: str | None = None, service_port: int | None = None) -> None:
        self.bare = bare
        self.listener_port = free_port()
        self.xds = BackgroundXdsServer(listener_port=self.listener_port, listener_address=LOCALHOST,
                                       settings=settings, registry=CollectorRegistry())
        self.xds_port = self.xds.start(LOCALHOST, 0)
        self.table = RouteTable(
            routes=(Route(PUBLIC_MODEL, (WeightedBackend(CLUSTER, 1),)),),
            clusters=(Cluster(CLUSTER, SERVED_MODEL, (Endpoint(LOCALHOST, sim_port),)),),
        )
        if tenant_key is not None:
            # A tenant whose limits are never reached: every request authenticated and checked
            # against the model's RBAC; with "global" limits, against the rate-limit service
            # (request and token limits, its tokens reported); with "local", against Envoy's own
            # request bucket.
            # request bucket. The service is ``service_port``'s (bench/rls_process.py), else
            # this xDS server's.
            tenant = bench_tenant(tenant_key)
            if limits == "local":
                tenant = dataclasses.replace(tenant, requests=RateLimit(10**9, 1, 10**9, local=True), tokens=None)
            elif limits != "global":
                tenant = dataclasses.replace(tenant, requests=None, tokens=None)
            self.table = dataclasses.replace(
                self.table, tenants=(tenant,), rate_limit_service=Endpoint(LOCALHOST, service_port or self.xds_port))
        self.envoy = EnvoyProcess(bootstrap(LOCALHOST, self.xds_port, node_id, free_port()),
                                  workdir, concurrency=concurrency)

    def start(self, cores: set[int] | None) -> None:
        if self.bare:
            version = self.xds.set_resources(to_protos(bare_config(self.table, self.listener_port)))
        else:
            version = self.xds.update(self.table)
        with started_on(cores):
            self.envoy.start()
        self.envoy.wait_ready()
        self.xds.wait_acked(version, timeout=20)

    def stop(self) -> None:
        try:
            self.envoy.stop()
        finally:
            self.xds.close()


class ServiceProcess:
    """The rate-limit service in a process of its own (bench/rls_process.py), as in a cluster."""

    def __init__(self, key: str, cores: set[int] | None) -> None:
        with started_on(cores):
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("rls_process.py"))],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(key + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # "port N", or nothing if it died
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"the rate-limit service process did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # it stops when its stdin closes
        stop_process(self.proc)


class LiteLLM:
    """LiteLLM's proxy from a throwaway venv; ``error`` says why it is not running."""

    def __init__(self, venv: Path, workdir: Path, sim_port: int) -> None:
        self.venv = venv
        self.workdir = workdir
        self.sim_port = sim_port
        self.port = free_port()
        self.key = "sk-" + secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "litellm.log"
        self.error: str | None = None
        self.version: str | None = None
        self.startup_s: float | None = None

    @property
    def binary(self) -> Path:
        return self.venv / "bin" / "litellm"

    def install(self, timeout: float = 1200) -> None:
        """``python -m venv`` + ``pip install 'litellm[proxy]'`` (only if not there yet)."""
        if self.binary.exists():
            return
        print(f"installing litellm[proxy] into {self.venv} (separate venv) ...", flush=True)
        steps = [[sys.executable, "-m", "venv", str(self.venv)],
                 [str(self.venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"]]
        for cmd in steps:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.error = f"{' '.join(cmd)}: {exc!r}"
                return
            if out.returncode != 0:
                tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
                self.error = f"{' '.join(cmd)} exited {out.returncode}:\n{tail}"
                return

    def start(self, cores: set[int] | None, timeout: float = 180) -> bool:
        if self.error:
            return False
        if not self.binary.exists():
            self.error = (f"{self.binary} not found: run with --install-litellm (or --litellm-venv DIR "
                          "pointing at a venv with litellm[proxy])")
            return False
        try:
            out = subprocess.run([str(self.venv / "bin" / "python"), "-c",
                                  "import importlib.metadata as m; print(m.version('litellm'))"],
                                 capture_output=True, text=True, timeout=60, check=True)
            self.version = out.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            self.error = f"cannot read the litellm version: {exc!r}"
            return False
        config = self.workdir / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {PUBLIC_MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{SERVED_MODEL}\n"
            f"      api_base: http://{LOCALHOST}:{self.sim_port}/v1\n"
            "      api_key: sk-unused\n"
            "litellm_settings:\n"
            "  set_verbose: false\n"
            "  json_logs: false\n"
            "  turn_off_message_logging: true\n"
            "  request_timeout: 30\n"
            "  num_retries: 0\n"
            "general_settings:\n"
            "  disable_spend_logs: true\n"
            "  disable_error_logs: true\n")
        blackhole = f"http://{LOCALHOST}:9"  # nothing listens on discard: no request leaves the box
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
            "LITELLM_MASTER_KEY": self.key,  # it refuses to start without one; no DB behind it
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map from GitHub
            "LITELLM_LOG": "ERROR",  # also turns uvicorn's access log off
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
            "HTTP_PROXY": blackhole, "HTTPS_PROXY": blackhole, "http_proxy": blackhole,
            "https_proxy": blackhole, "NO_PROXY": f"{LOCALHOST},localhost", "no_proxy": f"{LOCALHOST},localhost",
        }
        cmd = [str(self.binary), "--config", str(config), "--host", LOCALHOST, "--port", str(self.port),
               "--num_workers", "1"]
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log, started_on(cores):
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.workdir)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"litellm exited with {self.proc.returncode}:\n{self.log_tail()}"
                return False
            if http_ok(f"http://{LOCALHOST}:{self.port}/health/liveliness"):
                self.startup_s = round(time.monotonic() - t0, 1)
                return True
            time.sleep(0.25)
        self.error = f"litellm not ready after {timeout:g}s:\n{self.log_tail()}"
        self.stop()
        return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)


# --------------------------------------------------------------------------- load


async def one_request(session: aiohttp.ClientSession, path: Path_, body: bytes) -> tuple[float, bool]:
    t0 = time.perf_counter()
    try:
        async with session.post(path.url, data=body, headers=path.headers) as resp:
            data = await resp.read()
            ok = resp.status == 200 and b'"completion_tokens"' in data
    except (TimeoutError, aiohttp.ClientError):
        ok = False
    return time.perf_counter() - t0, ok


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=30))


async def check_path(path: Path_, max_tokens: int) -> None:
    """One request; raise with the answer if the path does not work."""
    async with _session(1) as session, session.post(
            path.url, data=chat_body(path.model, max_tokens), headers=path.headers) as resp:
        text = await resp.text()
        if resp.status != 200 or '"completion_tokens"' not in text:
            raise RuntimeError(f"{path.name}: HTTP {resp.status}: {text[:300]}")
        model = json.loads(text).get("model")
        if path.expect_model is not None and model != path.expect_model:
            raise RuntimeError(f"{path.name}: the sim saw model {model!r}, expected {path.expect_model!r}")
        path.info["sim_saw_model"] = model


async def closed_loop(session: aiohttp.ClientSession, path: Path_, body: bytes, *, concurrency: int,
                      requests: int, seconds: float) -> tuple[list[float], int, float]:
    """``concurrency`` workers, at most ``requests`` requests and ``seconds`` seconds."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued, errors
        while issued < requests and time.perf_counter() < stop_at:
            issued += 1
            dt, ok = await one_request(session, path, body)
            latencies.append(dt)
            errors += not ok

    t0 = time.perf_counter()
    async with asyncio.timeout(seconds + 60):  # a hung request cannot hang the bench
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - t0


def _ms(sorted_latencies: list[float]) -> dict[str, float]:
    return {k: round(_percentile(sorted_latencies, q) * 1000, 3)
            for k, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}


async def latency_phase(paths: list[Path_], *, requests: int, rounds: int, seconds: float,
                        max_tokens: int) -> dict[str, dict[str, Any]]:
    """Sequential requests, interleaved across paths in ``rounds`` blocks."""
    per_block = math.ceil(requests / rounds)
    lat: dict[str, list[float]] = {p.name: [] for p in paths}
    errs = dict.fromkeys(lat, 0)
    sessions = {p.name: _session(1) for p in paths}
    try:
        for r in range(rounds):
            order = paths[r % len(paths):] + paths[:r % len(paths)]
            for p in order:
                left = requests - len(lat[p.name])
                if left <= 0:
                    continue
                got, e, _ = await closed_loop(sessions[p.name], p, chat_body(p.model, max_tokens),
                                              concurrency=1, requests=min(per_block, left),
                                              seconds=seconds / rounds)
                lat[p.name] += got
                errs[p.name] += e
    finally:
        for s in sessions.values():
            await s.close()
    out = {}
    for p in paths:
        values = sorted(lat[p.name])
        out[p.name] = {"requests": len(values), "errors": errs[p.name], "latency_ms": _ms(values),
                       "mean_ms": round(sum(values) / len(values) * 1000, 3) if values else None}
    return out


async def throughput_phase(path: Path_, *, sim_pid: int, concurrency: int, requests: int,
                           seconds: float, max_tokens: int) -> dict[str, Any]:
    body = chat_body(path.model, max_tokens)
    async with _session(concurrency) as session:
        # Open the connections first so the measured run starts warm.
        await closed_loop(session, path, body, concurrency=concurrency, requests=concurrency * 4, seconds=5)
        sim0 = _cpu_seconds(sim_pid)
        proxy0 = _cpu_seconds(path.pid) if path.pid else 0.0
        self0 = _self_cpu()
        lat, errors, wall = await closed_loop(session, path, body, concurrency=concurrency,
                                              requests=requests, seconds=seconds)
        sim_cpu = _cpu_seconds(sim_pid) - sim0
        proxy_cpu = (_cpu_seconds(path.pid) - proxy0) if path.pid else None
        client_cpu = _self_cpu() - self0
    lat.sort()
    n = len(lat)
    return {
        "concurrency": concurrency, "requests": n, "errors": errors, "wall_s": round(wall, 3),
        "req_per_s": round(n / wall, 1) if wall else None,
        "latency_ms": _ms(lat),
        "sim_cpu_util": round(sim_cpu / wall, 3),
        "proxy_cpu_util": round(proxy_cpu / wall, 3) if proxy_cpu is not None else None,
        "client_cpu_util": round(client_cpu / wall, 3),
        "proxy_cpu_us_per_req": round(proxy_cpu / n * 1e6, 1) if proxy_cpu and n else None,
        "req_per_proxy_cpu_s": round(n / proxy_cpu, 1) if proxy_cpu else None,
        "sim_cpu_us_per_req": round(sim_cpu / n * 1e6, 1) if n else None,
    }


# --------------------------------------------------------------------------- report


def print_report(report: dict[str, Any]) -> None:
    la = report["loadavg_start"]
    pin = report["pinning"]
    print(f"\ndata-plane bench: max_tokens={report['config']['max_tokens']}, loadavg at start "
          f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, {report['cpus']} CPUs; pinned: sim {pin['sim']}, "
          f"proxies {pin['proxy']}, load generator {pin['client']}")
    lit = report["litellm"]
    if lit["status"] != "ok":
        print(f"LiteLLM: NOT MEASURED: {lit['error']}")
    paths = report["paths"]
    hdr = (f"{'latency (1 in flight)':<24}{'reqs':>6}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
           f"{'+p50 ms':>9}{'+p99 ms':>9}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for name, p in paths.items():
        lat = p["latency"]
        ms = lat["latency_ms"]
        add = p.get("added_ms")
        added = f"{add['p50']:>+9.3f}{add['p99']:>+9.3f}" if add else f"{'-':>9}{'-':>9}"
        print(f"{name:<24}{lat['requests']:>6}{lat['errors']:>5}{ms['p50']:>9.3f}{ms['p90']:>9.3f}"
              f"{ms['p99']:>9.3f}{added}")
    hdr = (f"{'throughput':<24}{'conc':>5}{'reqs':>7}{'err':>5}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
           f"{'sim cpu':>8}{'prx cpu':>8}{'gen cpu':>8}{'prx us/req':>11}{'req/prx-cpu-s':>14}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for name, p in paths.items():
        for t in p["throughput"]:
            prx = f"{t['proxy_cpu_util'] * 100:>7.0f}%" if t["proxy_cpu_util"] is not None else f"{'-':>8}"
            us = f"{t['proxy_cpu_us_per_req']:>11.0f}" if t["proxy_cpu_us_per_req"] else f"{'-':>11}"
            cap = f"{t['req_per_proxy_cpu_s']:>14.0f}" if t["req_per_proxy_cpu_s"] else f"{'-':>14}"
            print(f"{name:<24}{t['concurrency']:>5}{t['requests']:>7}{t['errors']:>5}{t['req_per_s']:>8.0f}"
                  f"{t['latency_ms']['p50']:>8.2f}{t['latency_ms']['p99']:>8.2f}"
                  f"{t['sim_cpu_util'] * 100:>7.0f}%{prx}{t['client_cpu_util'] * 100:>7.0f}%{us}{cap}")
    for name, st in report["envoy_stats"].items():
        print(f"{name} stats: " + ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(st.items())))
    print("\ngoals:")
    for g in report["goals"]:
        print(f"  [{g['verdict']}] {g['goal']}: {g['measured']}")
    for note in report["notes"]:
        print(f"  note: {note}")


def evaluate_goals(report: dict[str, Any]) -> list[dict[str, str]]:
    paths = report["paths"]
    goals = []
    envoy = paths.get("envoy")
    if envoy:
        add = envoy["added_ms"]["p50"]
        goals.append({"goal": "Envoy adds < 1 ms at p50", "verdict": "MET" if add < 1.0 else "NOT MET",
                      "measured": f"+{add:.3f} ms p50, +{envoy['added_ms']['p99']:.3f} ms p99"})
    for name, what in (("envoy-local", "a local request limit"), ("envoy-tenants", "global request and token limits")):
        if envoy and name in paths:
            over = paths[name]["latency"]["latency_ms"]["p50"] - envoy["latency"]["latency_ms"]["p50"]
            goals.append({"goal": f"API keys and {what} add < 0.1 ms at p50 over our config ({name} vs envoy)",
                          "verdict": "MET" if over < 0.1 else "NOT MET",
                          "measured": f"{over:+.3f} ms p50"})
    lit = paths.get("litellm")
    if envoy and lit:
        best = {n: max(paths[n]["throughput"], key=lambda t: t["req_per_s"]) for n in ("envoy", "litellm")}
        cap = {n: max(t["req_per_proxy_cpu_s"] or 0 for t in paths[n]["throughput"]) for n in ("envoy", "litellm")}
        wall_x = best["envoy"]["req_per_s"] / best["litellm"]["req_per_s"]
        cpu_x = cap["envoy"] / cap["litellm"] if cap["litellm"] else float("nan")
        goals.append({
            "goal": "Envoy sustains several times (>= 3x) LiteLLM's requests/s",
            "verdict": "MET" if wall_x >= 3 else "NOT MET",
            "measured": (f"{best['envoy']['req_per_s']:.0f} vs {best['litellm']['req_per_s']:.0f} req/s wall clock "
                         f"({wall_x:.1f}x; Envoy used {best['envoy']['proxy_cpu_util']:.0%} of a core, LiteLLM "
                         f"{best['litellm']['proxy_cpu_util']:.0%}); per proxy CPU-second {cap['envoy']:.0f} vs "
                         f"{cap['litellm']:.0f} requests ({cpu_x:.0f}x)"),
        })
    elif envoy:
        goals.append({"goal": "Envoy sustains several times LiteLLM's requests/s", "verdict": "NOT MEASURED",
                      "measured": "LiteLLM unavailable: " + (report["litellm"]["error"] or "?").splitlines()[0]})
    return goals


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-requests", type=int, default=2000, help="sequential requests per path")
    ap.add_argument("--latency-rounds", type=int, default=5, help="interleaved blocks per path")
    ap.add_argument("--requests", type=int, default=20000, help="max requests per path and concurrency level")
    ap.add_argument("--seconds", type=float, default=8.0, help="max seconds per path and concurrency level")
    ap.add_argument("--concurrency", default="32,64", help="in-flight requests, comma-separated levels")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--sim-core", type=int, default=0, help="CPU core of the sim (-1: no pinning)")
    ap.add_argument("--proxy-core", type=int, default=0, help="CPU core of Envoy / LiteLLM (-1: none)")
    ap.add_argument("--client-core", type=int, default=1, help="CPU core of the load generator (-1: none)")
    ap.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads")
    ap.add_argument("--envoy-variants", default="envoy,envoy-nolog,envoy-bare,envoy-auth,envoy-local,envoy-tenants",
                    help="Envoy paths to run (envoy = our config; the others: see above)")
    ap.add_argument("--litellm-venv", type=Path, default=DEFAULT_LITELLM_VENV)
    ap.add_argument("--install-litellm", action="store_true",
                    help="create --litellm-venv and pip install 'litellm[proxy]' into it if missing")
    ap.add_argument("--no-litellm", action="store_true", help="skip the third-party gateway")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if (args.latency_requests < 1 or args.requests < 1 or not 0 < args.seconds <= 120 or not levels
            or any(not 1 <= c <= 1024 for c in levels) or args.latency_rounds < 1):
        ap.error("bounds: requests >= 1, 0 < seconds <= 120, 1 <= concurrency <= 1024")

    loadavg_start = os.getloadavg()
    cores = os.sched_getaffinity(0)

    def core(n: int) -> set[int] | None:
        return {n} if n in cores else None

    sim_cores, proxy_cores, client_cores = core(args.sim_core), core(args.proxy_core), core(args.client_core)
    if client_cores is not None:
        os.sched_setaffinity(0, client_cores)  # before any thread exists: they all inherit it

    workdir = Path(tempfile.mkdtemp(prefix="llmfleet-bench-dataplane-"))
    sim_proc: subprocess.Popen[str] | None = None
    envoys: list[EnvoyPath] = []
    litellm: LiteLLM | None = None
    service: ServiceProcess | None = None
    notes: list[str] = []
    report: dict[str, Any] = {}
    try:
        with started_on(sim_cores):
            # It also answers to the public name, for envoy-bare (no rewrite); the others
            # check that the sim saw the served name.
            sim_proc, sim_port = start_server(None, ["--served-model-name", SERVED_MODEL, PUBLIC_MODEL])
        paths = [Path_("direct", "straight to the sim", f"http://{LOCALHOST}:{sim_port}", SERVED_MODEL,
                       expect_model=SERVED_MODEL)]

        known = {
            "envoy": ("Envoy, llmfleet xDS config (model-from-body route, Lua model rewrite, retries, "
                      "JSON access log)", DataPlaneSettings(), False, SERVED_MODEL),
            "envoy-nolog": ("the same without the access log", DataPlaneSettings(access_log=False), False,
                            SERVED_MODEL),
            "envoy-bare": ("same Envoy/listener/cluster, router only: no body routing, no Lua, no retries, "
                           "no access log", DataPlaneSettings(access_log=False), True, PUBLIC_MODEL),
            "envoy-nousage": ("our config without usage accounting (no usage Lua, no request log to the operator)",
                              DataPlaneSettings(usage_accounting=False), False, SERVED_MODEL),
            "envoy-auth": ("our config with a Tenant without limits: API key and RBAC, no rate-limit service",
                           DataPlaneSettings(), False, SERVED_MODEL),
            "envoy-local": ("our config with a Tenant with a local request limit: API key, RBAC, Envoy's own "
                            "token bucket (no call to the rate-limit service)", DataPlaneSettings(), False,
                            SERVED_MODEL),
            "envoy-tenants": ("our config with a Tenant: API key, RBAC, request and token limits (the rate-limit "
                              "service asked twice per request)", DataPlaneSettings(), False, SERVED_MODEL),
        }
        tenant_key = "sk-bench-" + secrets.token_hex(16)
        variants = [v.strip() for v in args.envoy_variants.split(",") if v.strip()]
        if "envoy-tenants" in variants:
            service = ServiceProcess(tenant_key, client_cores)
        for name in variants:
            if name not in known:
                raise SystemExit(f"unknown Envoy variant {name!r} (known: {', '.join(known)})")
            desc, settings, bare, expect = known[name]
            tenants = name in ("envoy-auth", "envoy-local", "envoy-tenants")
            ep = EnvoyPath(workdir / name, sim_port, settings, args.envoy_concurrency, f"bench-{name}", bare=bare,
                           tenant_key=tenant_key if tenants else None,
                           limits={"envoy-local": "local", "envoy-tenants": "global"}.get(name),
                           service_port=service.port if service is not None else None)
            envoys.append(ep)
            ep.start(proxy_cores)
            p = Path_(name, desc, f"http://{LOCALHOST}:{ep.listener_port}", PUBLIC_MODEL, pid=ep.envoy.pid,
                      expect_model=expect, headers={"Authorization": f"Bearer {tenant_key}"} if tenants else None)
            p.info["envoy_pid"] = ep.envoy.pid
            paths.append(p)

        litellm_info: dict[str, Any] = {"status": "skipped", "error": "--no-litellm", "venv": str(args.litellm_venv)}
        if not args.no_litellm:
            litellm = LiteLLM(args.litellm_venv, workdir, sim_port)
            if args.install_litellm:
                litellm.install()
            if litellm.start(proxy_cores):
                paths.append(Path_("litellm", f"LiteLLM {litellm.version} proxy, 1 worker",
                                   f"http://{LOCALHOST}:{litellm.port}", PUBLIC_MODEL, pid=litellm.proc.pid,
                                   headers={"Authorization": f"Bearer {litellm.key}"}))
                litellm_info = {"status": "ok", "error": None, "version": litellm.version,
                                "venv": str(args.litellm_venv), "startup_s": litellm.startup_s}
            else:
                litellm_info = {"status": "unavailable", "error": litellm.error, "venv": str(args.litellm_venv)}
                print(f"LiteLLM unavailable, running without a third-party gateway:\n{litellm.error}",
                      file=sys.stderr)

        pinning = {"sim": sorted(sim_cores) if sim_cores else None,
                   "proxy": sorted(proxy_cores) if proxy_cores else None,
                   "client": sorted(client_cores) if client_cores else None,
                   "observed_cpus_allowed": {"sim": cpus_allowed(sim_proc.pid),
                                             "load generator": cpus_allowed(os.getpid()),
                                             **{p.name: cpus_allowed(p.pid) for p in paths if p.pid}}}

        async def run_all() -> dict[str, Any]:
            for p in paths:
                await check_path(p, args.max_tokens)
                # Warm-up: first requests pay for lazy imports, pools, allocator growth.
                async with _session(8) as s:
                    await closed_loop(s, p, chat_body(p.model, args.max_tokens), concurrency=8,
                                      requests=300, seconds=10)
            print(f"latency phase: {args.latency_requests} sequential requests per path ...", flush=True)
            lat = await latency_phase(paths, requests=args.latency_requests, rounds=args.latency_rounds,
                                      seconds=max(args.seconds * 8, 60), max_tokens=args.max_tokens)
            thr: dict[str, list[dict[str, Any]]] = {p.name: [] for p in paths}
            for p in paths:
                for c in levels:
                    print(f"throughput phase: {p.name}, {c} in flight ...", flush=True)
                    thr[p.name].append(await throughput_phase(
                        p, sim_pid=sim_proc.pid, concurrency=c, requests=args.requests,
                        seconds=args.seconds, max_tokens=args.max_tokens))
            return {"latency": lat, "throughput": thr}

        measured = asyncio.run(run_all())

        envoy_stats = {}
        for ep in envoys:
            st = ep.envoy.stats(f"cluster\\.{stat_name(CLUSTER)}\\.(upstream_rq_total|upstream_cx_total"
                                "|upstream_rq_retry|upstream_rq_5xx)$|http\\.llmfleet\\.downstream_rq_total$")
            envoy_stats[ep.envoy.workdir.name] = st

        base = measured["latency"]["direct"]["latency_ms"]
        out_paths: dict[str, Any] = {}
        for p in paths:
            lat = measured["latency"][p.name]
            entry: dict[str, Any] = {"description": p.description, "model_sent": p.model, **p.info,
                                     "latency": lat, "throughput": measured["throughput"][p.name]}
            if p.name != "direct":
                entry["added_ms"] = {k: round(lat["latency_ms"][k] - base[k], 3) for k in ("p50", "p90", "p99")}
            out_paths[p.name] = entry

        n_cores = len(cores)
        notes.append(f"{n_cores} cores for sim + proxy + load generator: proxy and sim share core "
                     f"{args.proxy_core}, so at saturation req/s through a proxy is bounded by what is "
                     "left of that core after the sim (and direct/Envoy by the Python load generator on the "
                     "other core); req/prx-cpu-s is the per-core capacity of the proxy itself")
        if "litellm" in out_paths:
            notes.append("LiteLLM: one uvicorn worker (one core, like Envoy --concurrency 1); it scales by "
                         "worker processes, Envoy by worker threads")
        report = {
            "bench": "dataplane", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in loadavg_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "config": {"max_tokens": args.max_tokens, "latency_requests": args.latency_requests,
                       "latency_rounds": args.latency_rounds, "requests": args.requests,
                       "seconds": args.seconds, "concurrency": levels,
                       "envoy_concurrency": args.envoy_concurrency, "public_model": PUBLIC_MODEL,
                       "served_model": SERVED_MODEL},
            "versions": {"envoy": _envoy_version(), "litellm": litellm_info.get("version")},
            "pinning": pinning, "litellm": litellm_info, "paths": out_paths, "envoy_stats": envoy_stats,
            "notes": notes,
        }
        report["goals"] = evaluate_goals(report)
    finally:
        if litellm is not None:
            litellm.stop()
        for ep in envoys:
            ep.stop()
        if service is not None:
            service.stop()
        stop_process(sim_proc)
        if report:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)

    print_report(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    errors = sum(p["latency"]["errors"] + sum(t["errors"] for t in p["throughput"])
                 for p in report["paths"].values())
    return 0 if errors == 0 else 1


def _envoy_version() -> str:
    try:
        out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=30, check=False)
        return out.stdout.strip().rsplit("version: ", 1)[-1]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"? ({exc!r})"


if __name__ == "__main__":
    sys.exit(main())

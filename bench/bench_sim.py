"""How many short requests one ``llmfleet sim`` process serves, and what it adds.

Starts one sim replica as a subprocess (``python -m llmfleet.sim.server
--time-scale 0``, so the load model itself costs no time), pins it to one CPU core
and the load generator (aiohttp, in this process) to another, then runs bounded
phases against 127.0.0.1:

* ``latency``: one request at a time -> the latency the sim adds per request
  (there is no model time, so everything measured is HTTP + JSON + scheduler).
* ``throughput``: ``--concurrency`` requests in flight -> requests/s at saturation.
* ``stream``: the same with ``stream: true`` (one SSE chunk per token).

Each phase stops at ``--requests`` requests or ``--seconds`` seconds, whichever
comes first. Besides wall-clock requests/s the bench reads the server's CPU time
from /proc and reports requests per server CPU-second: on a shared 2-core machine
(the load generator needs a core too) that is the number that says what one
dedicated core would sustain.

Prints a table and writes ``bench/results/sim.json``.

    .venv/bin/python bench/bench_sim.py [--requests 20000] [--seconds 20] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

RESULTS = Path(__file__).resolve().parent / "results" / "sim.json"
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def start_server(server_core: int | None, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    """Start the sim subprocess on 127.0.0.1 with a free port; return it and the port."""
    cmd = [sys.executable, "-m", "llmfleet.sim.server", "--host", "127.0.0.1", "--port", "0",
           "--time-scale", "0", "--seed", "0", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if server_core is not None:
        os.sched_setaffinity(proc.pid, {server_core})
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError("sim server did not report its port")


async def run_phase(url: str, name: str, *, concurrency: int, requests: int, seconds: float,
                    payload: dict, stream: bool, server_pid: int) -> dict:
    """Drive one bounded phase; return its measurements."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    issued = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < stop_at:
                issued += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        data = await resp.read()
                        ok = resp.status == 200 and (data.endswith(b"data: [DONE]\n\n") if stream
                                                     else b'"completion_tokens"' in data)
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors += 1

        cpu0, self0, t0 = _cpu_seconds(server_pid), _self_cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        server_cpu = _cpu_seconds(server_pid) - cpu0
        client_cpu = _self_cpu() - self0
    latencies.sort()
    n = len(latencies)
    return {
        "phase": name, "stream": stream, "concurrency": concurrency, "requests": n,
        "errors": errors, "wall_s": round(wall, 3),
        "req_per_s": round(n / wall, 1) if wall else None,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_util": round(server_cpu / wall, 3) if wall else None,
        "req_per_server_cpu_s": round(n / server_cpu, 1) if server_cpu else None,
        "client_cpu_s": round(client_cpu, 3),
        "latency_ms": {k: round(_percentile(latencies, q) * 1000, 3)
                       for k, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the bench; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000, help="max requests per phase")
    ap.add_argument("--seconds", type=float, default=15.0, help="max seconds per phase")
    ap.add_argument("--concurrency", type=int, default=64, help="in-flight requests (throughput phases)")
    ap.add_argument("--latency-requests", type=int, default=5000, help="max requests, latency phase")
    ap.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each request")
    ap.add_argument("--server-core", type=int, default=0, help="CPU core for the sim (-1: no pinning)")
    ap.add_argument("--client-core", type=int, default=1, help="CPU core for the load generator (-1: none)")
    ap.add_argument("--phases", default="latency,throughput,stream")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.requests < 1 or args.seconds <= 0 or args.seconds > 600:
        ap.error("--requests must be >= 1 and --seconds within (0, 600]")

    cores = os.sched_getaffinity(0)
    server_core = args.server_core if args.server_core in cores else None
    client_core = args.client_core if args.client_core in cores else None
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    proc, port = start_server(server_core, [])
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    payload = {"model": "sim-model", "max_tokens": args.max_tokens,
               "messages": [{"role": "user", "content": "Say something short about load tests."}]}
    results = []
    try:
        async def run_all() -> None:
            # Warm-up: first requests pay for imports, allocator growth and JIT-free caches.
            await run_phase(url, "warmup", concurrency=8, requests=500, seconds=5, payload=payload,
                            stream=False, server_pid=proc.pid)
            for phase in args.phases.split(","):
                if phase == "latency":
                    results.append(await run_phase(
                        url, "latency", concurrency=1, requests=args.latency_requests,
                        seconds=args.seconds, payload=payload, stream=False, server_pid=proc.pid))
                elif phase in ("throughput", "stream"):
                    stream = phase == "stream"
                    p = dict(payload, stream=True) if stream else payload
                    results.append(await run_phase(
                        url, phase, concurrency=args.concurrency, requests=args.requests,
                        seconds=args.seconds, payload=p, stream=stream, server_pid=proc.pid))
                else:
                    raise SystemExit(f"unknown phase {phase!r}")
        asyncio.run(run_all())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    load1, load5, _ = os.getloadavg()
    report = {
        "bench": "sim", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "server_core": server_core, "client_core": client_core, "loadavg_1m_after": load1,
        "loadavg_5m_after": load5, "max_tokens": args.max_tokens, "phases": results,
    }
    hdr = (f"{'phase':<11}{'conc':>5}{'reqs':>8}{'err':>5}{'req/s':>9}{'srv cpu':>9}"
           f"{'req/cpu-s':>11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    print(f"sim bench: max_tokens={args.max_tokens}, server core {server_core}, "
          f"client core {client_core}, loadavg {load1:.2f}/{load5:.2f}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        lat = r["latency_ms"]
        print(f"{r['phase']:<11}{r['concurrency']:>5}{r['requests']:>8}{r['errors']:>5}"
              f"{r['req_per_s']:>9.0f}{r['server_cpu_util'] * 100:>8.0f}%"
              f"{r['req_per_server_cpu_s']:>11.0f}{lat['p50']:>9.2f}{lat['p90']:>9.2f}{lat['p99']:>9.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`llmfleet run` as a separate process, as it runs in a cluster (tests, benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from .cluster import free_port
from .waiting import stop_process, wait_until_serving


class OperatorProcess:
    """`llmfleet run` as a separate process, as it runs in a cluster."""

    def __init__(self, kubeconfig: Path, logdir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = logdir / "operator.log"
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.xds_port = free_port()
        self.envoy_listener_port = free_port()
        self.activator_port = free_port()
        self.autoscale_interval = 1.0
        self.extra_args: list[str] = []  # more `llmfleet run` flags
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = self._spawn(log)
        self.starts += 1
        try:
            wait_until_serving(self.proc, f"http://127.0.0.1:{self.health_port}/healthz", what="the operator",
                               log_tail=self.log_tail)
        except BaseException:
            self.stop()  # a failed start must not leave the process behind
            raise

    def _spawn(self, log) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "llmfleet.cli", "run", "--kubeconfig", str(self.kubeconfig),
             "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port), "--bind", "127.0.0.1",
             "--xds-address", "127.0.0.1", "--xds-port", str(self.xds_port),
             "--envoy-listener-address", "127.0.0.1", "--envoy-listener-port", str(self.envoy_listener_port),
             "--activator-address", "127.0.0.1", "--activator-port", str(self.activator_port),
             "--autoscale-interval", str(self.autoscale_interval), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

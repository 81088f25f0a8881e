"""Waiting for processes we started: until they serve over HTTP, or until they stop."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_until_serving(
    proc: subprocess.Popen,
    url: str,
    *,
    what: str,
    timeout: float = 30.0,
    log_tail: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> None:
    """Poll `url` until it answers 200; fail at once, with the log, if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail()}")
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return
                last = f"{response.status_code}: {response.text.strip()[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
            time.sleep(interval)
    raise TimeoutError(f"{what} not serving {url} after {timeout:g} s ({last}):\n{log_tail()}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; by PID only (the Popen we started)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)

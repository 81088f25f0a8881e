"""The bootstrap the CLI prints is one Envoy accepts."""

from __future__ import annotations

import subprocess

from llmfleet_devcluster.envoy import find_envoy

from llmfleet.envoy.bootstrap import main


def test_envoy_validates_the_printed_bootstrap(tmp_path) -> None:
    # "n" and "on" are booleans to a YAML 1.1 reader such as Envoy's.
    for fmt, node_id in (("yaml", "envoy-0"), ("json", "envoy-0"), ("yaml", "n"), ("yaml", "on")):
        path = tmp_path / f"bootstrap-{node_id}.{fmt}"
        assert main(["--xds-address", "llmfleet-xds.llmfleet-system.svc", "--node-id", node_id,
                     "--format", fmt, "-o", str(path)]) == 0
        done = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                               "--log-level", "warning"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

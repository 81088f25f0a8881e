"""A `sim` ModelDeployment's container runs the llmfleet sim server, as rendered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from openai import OpenAI

from llmfleet_devcluster.cluster import free_port
from llmfleet.render.deployment import render_deployment

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "sim-quickstart.yaml"


def test_rendered_sim_container_serves_its_model(tmp_path):
    md = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == "ModelDeployment")
    md["metadata"].update(namespace="default", uid="0", generation=1)
    container = render_deployment(md)["spec"]["template"]["spec"]["containers"][0]
    command, args = container["command"], list(container["args"])
    assert command[0] == "llmfleet" and "llmfleet/llmfleet" in container["image"]

    # The same command and arguments, on a free loopback port instead of 0.0.0.0:8000.
    port = free_port()
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent)) or command[0]
    proc = subprocess.Popen([executable, *command[1:], *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}{container['readinessProbe']['httpGet']['path']}").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "sim did not become ready"
            time.sleep(0.1)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        served = md["spec"]["model"]["servedName"]
        assert [m.id for m in client.models.list().data] == [served]
        reply = client.chat.completions.create(model=served, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert reply.usage.completion_tokens == 4
    finally:
        proc.terminate()
        proc.wait(timeout=10)

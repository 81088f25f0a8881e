"""Monitoring on the dev cluster: a real Prometheus scrapes the fleet and runs the chart's rules.

Prometheus comes from Debian's `prometheus` package (build-tools.sh). It scrapes what the
chart's ServiceMonitors, read back from the cluster, select, the way prometheus-operator
would configure it (Services by label, their endpoints by port name, `job` = the
Service's name, the monitor's honorLabels and interval), and evaluates the chart's PrometheusRule, also read back
from the cluster. Against a fleet under scripted traffic (a healthy priced model, streams,
a tenant with limits and a budget, and a model whose every answer is a 500), every
dashboard panel's query, every recording rule and every series an alert reads return
data; the 500s fire the availability burn-rate alerts and the spent budget its alert.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.chart import tool
from tests.e2e.test_routing import sim_md
from tests.helpers import kubectl_json, wait_for
from tests.integration.test_modeldeployment import apply, wait_ready

KEY = f"sk-mon-{uuid.uuid4().hex}"
BUDGET_TOKENS = 400
GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
SELECTOR = re.compile(r'(?<![\w.:"])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?')
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# What Grafana substitutes in the dashboard's queries: one operator, every model and tenant.
RATE_INTERVAL = "1m"


def selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression (metric name and matchers), functions and
    keywords left out."""
    text = re.sub(GROUPING, "", expr)
    found = []
    for m in SELECTOR.finditer(text):
        name = m.group(1)
        if name in KEYWORDS or text[m.end():].lstrip().startswith("("):
            continue
        found.append(name + (m.group(2) or ""))
    return found


def scrape_configs(monitors: list[dict], cluster, sd_dir: Path) -> list[dict]:
    """prometheus-operator's translation of ServiceMonitors, as far as the chart uses them:
    a job per endpoint, its targets the ready addresses of the selected Services' endpoint
    slices on the named port, labelled as the operator labels them. Debian's Prometheus is
    built without Kubernetes discovery, so the targets go through file discovery."""
    jobs = []
    for monitor in monitors:
        spec, meta = monitor["spec"], monitor["metadata"]
        selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
        for i, endpoint in enumerate(spec["endpoints"]):
            groups = []
            for ns in spec.get("namespaceSelector", {}).get("matchNames") or [meta["namespace"]]:
                for service in kubectl_json(cluster, "get", "services", "-n", ns, "-l", selector)["items"]:
                    name = service["metadata"]["name"]
                    slices = kubectl_json(cluster, "get", "endpointslices", "-n", ns,
                                          "-l", f"kubernetes.io/service-name={name}")["items"]
                    for slice_ in slices:
                        port = next((p["port"] for p in slice_.get("ports") or [] if p.get("name") == endpoint["port"]),
                                    None)
                        for ep in slice_.get("endpoints") or [] if port else []:
                            if not (ep.get("conditions") or {}).get("ready"):
                                continue
                            groups.append({"targets": [f"{ep['addresses'][0]}:{port}"], "labels": {
                                "namespace": ns, "service": name, "job": name, "endpoint": endpoint["port"],
                                "pod": (ep.get("targetRef") or {}).get("name", "")}})
            sd_file = sd_dir / f"{meta['name']}-{i}.json"
            sd_file.write_text(json.dumps(groups))
            interval = endpoint.get("interval", "30s")
            jobs.append({
                "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
                "honor_labels": bool(endpoint.get("honorLabels", False)),
                "scrape_interval": interval,
                "scrape_timeout": interval,  # never longer than the interval
                "metrics_path": endpoint.get("path", "/metrics"),
                "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}],
            })
    return jobs


class Prometheus:
    def __init__(self, root: Path, monitors: list[dict], rules: dict, cluster) -> None:
        self.root = root
        (root / "rules.yaml").write_text(yaml.safe_dump(rules))
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(root / "rules.yaml")],
                  "scrape_configs": scrape_configs(monitors, cluster, root)}
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [str(tool("prometheus")), f"--config.file={self.root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=30, what=f"Prometheus ready (log: {self.log})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # by its PID
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def _get(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params, timeout=10, trust_env=False)
        body = r.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self._get("/api/v1/query", query=expr)["result"]

    def targets(self) -> list[dict]:
        return self._get("/api/v1/targets")["activeTargets"]

    def alerts(self) -> list[dict]:
        return self._get("/api/v1/alerts")["alerts"]


@pytest.fixture(scope="module")
def monitored(dev_cluster, release) -> Iterator[None]:
    """The session's release with its ServiceMonitors (scraping every second), PrometheusRule
    and dashboard; put back as it was afterwards for the session's other tests."""
    dev_cluster.kubectl("apply", "--server-side", "-f", str(dev_cluster.tools.monitoring_crds))
    dev_cluster.wait_established("servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com")
    on = {"metrics.serviceMonitor.enabled": "true", "metrics.serviceMonitor.interval": "1s",
          "metrics.prometheusRule.enabled": "true", "metrics.dashboards.enabled": "true"}
    release.upgrade(on)
    yield
    release.upgrade({k: "false" for k in on if k.endswith(".enabled")})


@pytest.fixture(scope="module")
def prometheus(dev_cluster, release, monitored, tmp_path_factory) -> Iterator[Prometheus]:
    ns = release.namespace
    monitors = kubectl_json(dev_cluster, "get", "servicemonitors", "-n", ns)["items"]
    (rule,) = kubectl_json(dev_cluster, "get", "prometheusrules", "-n", ns)["items"]
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), monitors, rule["spec"], dev_cluster)
    prom.start()
    yield prom
    prom.stop()


def _secret(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"llmfleet.io/api-keys": "true"}},
            "data": {"k": base64.b64encode(KEY.encode()).decode()}}


def _drive(url: str, healthy: str, broken: str, seconds: float) -> dict[int, int]:
    """Bounded traffic for ``seconds``: answers, streams with usage, and 500s; codes counted."""
    codes: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=20, headers=headers) as client:
        for i in range(int(seconds * 20)):  # at most this many rounds, however fast they go
            if time.monotonic() > deadline:
                break
            for model, stream in ((healthy, False), (healthy, True), (broken, False)):
                body = {"model": model, "max_tokens": 4 + i % 5, "stream": stream,
                        "messages": [{"role": "user", "content": "hello " * (1 + i % 4)}]}
                if stream:
                    body["stream_options"] = {"include_usage": True}
                    with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        r.read()
                else:
                    r = client.post("/v1/chat/completions", json=body)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
            time.sleep(0.2)
    return codes


def _dashboard_queries(board: dict, job: str) -> list[tuple[str, str]]:
    """(panel title, query) for every target, with the values Grafana would substitute."""
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$job", job)
                    .replace("$model", ".*").replace("$tenant", ".*"))
            out.append((panel["title"], expr))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
            assert m, variable
            out.append((f"variable {variable['name']}", m.group(1).replace("$job", job)))
    return out


def test_prometheus_scrapes_the_fleet_every_panel_and_rule_has_data_and_breaches_fire(
        dev_cluster, release, operator, fleet, envoy, namespace, prometheus):
    ns = namespace
    healthy_md = sim_md("steady", "llama-8b")
    healthy_md["spec"]["cost"] = {"perReplicaHour": 1.0, "perMillionInputTokens": 0.5, "perMillionOutputTokens": 2.0}
    broken_md = sim_md("broken", "llama-8b")
    broken_md["spec"]["engine"]["extraArgs"] += ["--error-rate", "1", "--error-status", "500"]
    healthy, broken = f"mon-{ns}", f"mon-broken-{ns}"
    for md in (healthy_md, broken_md):
        assert apply(dev_cluster, ns, md).returncode == 0
    for name, model, backend in (("steady", healthy, "steady"), ("broken", broken, "broken")):
        apply(dev_cluster, ns, {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy",
                                "metadata": {"name": name},
                                "spec": {"model": model, "backends": [{"modelDeployment": backend}]}})
    tenant = {"apiVersion": "llmfleet.io/v1alpha1", "kind": "Tenant", "metadata": {"name": "team"},
              "spec": {"apiKeys": {"secretName": "team-keys"}, "models": ["*"],
                       "limits": {"requests": {"limit": 1000, "per": "second", "burst": 1000}},
                       "budgets": [{"period": "day", "tokens": BUDGET_TOKENS, "action": "notify"}]}}
    for obj in (_secret("team-keys"), tenant):
        assert apply(dev_cluster, ns, obj).returncode == 0
    wait_ready(dev_cluster, ns, "steady")
    wait_ready(dev_cluster, ns, "broken")
    fleet.wait_ready(2, ns)
    try:
        def served() -> bool:
            r = httpx.post(f"{envoy.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": healthy, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
                           timeout=10)
            return r.status_code == 200
        wait_for(served, timeout=60, what="the healthy model served with the tenant's key")

        # Every ServiceMonitor target found and up: both operator replicas, every Envoy.
        op_job, envoy_job = f"{release.fullname}-operator", f"{release.fullname}-ingress-metrics"

        def all_up() -> bool:
            targets = prometheus.targets()
            jobs = {t["labels"]["job"] for t in targets if t["health"] == "up"}
            return {op_job, envoy_job} <= jobs and all(t["health"] == "up" for t in targets)
        wait_for(all_up, timeout=30, what="every target up")
        ups = prometheus.query("up")
        assert sorted(u["metric"]["job"] for u in ups) == sorted(
            [op_job] * len(operator.ready_pods()) + [envoy_job] * len(release.pods("ingress"))), ups

        codes = _drive(envoy.url, healthy, broken, seconds=25)
        assert codes.get(200, 0) > 50 and codes.get(500, 0) > 25, codes
        time.sleep(3)  # the last counts scraped (1 s) and the rules evaluated (1 s)

        # The dashboard, as installed: every panel's query returns data.
        (cm,) = [c for c in kubectl_json(dev_cluster, "get", "configmaps", "-n", release.namespace)["items"]
                 if c["metadata"]["name"].endswith("-dashboard")]
        board = json.loads(cm["data"]["llmfleet.json"])
        empty = [(title, expr) for title, expr in _dashboard_queries(board, op_job) if not prometheus.query(expr)]
        assert empty == [], "dashboard queries without data:\n" + "\n".join(f"{t}: {e}" for t, e in empty)

        # Every recording rule returns data; every alert's expression evaluates and every series
        # it reads exists.
        rules = [r for g in yaml.safe_load((prometheus.root / "rules.yaml").read_text())["groups"] for r in g["rules"]]
        empty = [r["record"] for r in rules if "record" in r and not prometheus.query(r["record"])]
        assert empty == [], f"recording rules without data: {empty}"
        read = {s for r in rules if "alert" in r for s in selectors(r["expr"])}
        assert {"llmfleet_model:availability_errors:ratio_rate1h", "llmfleet_budget_used_ratio"} <= \
            {s.split("{")[0] for s in read}, read
        empty = sorted(s for s in read if not prometheus.query(s))
        assert empty == [], f"series the alerts read without data: {empty}"
        for r in rules:
            if "alert" in r:
                prometheus.query(r["expr"])  # a query error fails here

        # The scripted breach and overrun fire; the healthy model does not page.
        def firing() -> set[tuple[str, str, str]]:
            return {(a["labels"]["alertname"], a["labels"].get("model") or a["labels"].get("name", ""),
                     a["labels"]["severity"]) for a in prometheus.alerts() if a["state"] == "firing"}
        expected = {("LLMFleetAvailabilityBudgetBurn", broken, "critical"),
                    ("LLMFleetAvailabilityBudgetBurn", broken, "warning"),
                    ("LLMFleetBudgetExhausted", f"{ns}/team", "critical")}
        wait_for(lambda: expected <= firing(), timeout=30, what=f"{expected} firing")
        assert not {a for a in firing() if a[1] == healthy}, firing()
        for alert in prometheus.alerts():
            for text in alert["annotations"].values():
                assert "<no value>" not in text and "error expanding" not in text, alert
        used = prometheus.query(f'llmfleet_budget_used_ratio{{kind="Tenant",name="{ns}/team"}}')
        print(f"\nPrometheus: {len(ups)} targets up, {len(_dashboard_queries(board, op_job))} dashboard queries and "
              f"{len(rules)} rules with data; answers {codes}; budget used "
              f"{float(used[0]['value'][1]):.2f}; firing: {sorted(firing())}")
    finally:
        dev_cluster.kubectl("delete", "tenant", "--all", "-n", ns, "--wait=true")
        wait_for(lambda: httpx.get(f"{envoy.url}/v1/models", timeout=10).status_code == 200, timeout=30,
                 what="the ingress open again once no Tenant exists")

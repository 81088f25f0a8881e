"""The chart's PrometheusRule, checked and unit-tested by the pinned promtool.

Every alert has a case in tests/data/prometheus/alerts_test.yaml where it fires (and most
one where it must not); `promtool test rules` evaluates them against synthetic series. The
e2e test (tests/e2e/test_monitoring.py) runs the same rules in a real Prometheus scraping
the dev cluster's fleet.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.chart import REPO, refusal, rule_file, tool

TESTS = REPO / "tests" / "data" / "prometheus" / "alerts_test.yaml"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("promtool")), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def alerts(spec: dict) -> set[str]:
    return {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_accepts_the_rules_and_their_annotation_templates(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_file()))
    done = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 21 rules found" in done.stdout


def test_every_alert_fires_in_its_promtool_unit_test(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_file(annotations=False)))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    done = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == alerts(rule_file())


def test_a_broken_expectation_fails_the_unit_test(tmp_path):
    """The unit test above can fail: the budget alert expected for the tenant at half its budget."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_file(annotations=False)))
    text = TESTS.read_text().replace("name: ml/a, period: day", "name: ml/c, period: day")
    (tmp_path / TESTS.name).write_text(text)
    done = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert done.returncode != 0 and "LLMFleetBudgetWarning" in done.stdout + done.stderr


def test_the_objectives_and_the_release_reach_the_expressions(tmp_path):
    objectives = tmp_path / "objectives.yaml"  # a values file: --set gives 2.5 as a string
    objectives.write_text(yaml.safe_dump({"metrics": {"prometheusRule": {
        "ttftObjectiveSeconds": 2.5, "ttftObjectivePercent": 99, "availabilityObjectivePercent": 99.9}}}))
    spec = rule_file(values=[objectives], release="prod")
    rules = {r.get("record") or (r["alert"], r["labels"]["severity"]): r for g in spec["groups"] for r in g["rules"]}
    assert 'le="2.5"' in rules["llmfleet_model:ttft_slow:ratio_rate5m"]["expr"]
    assert 'job="prod-llmfleet-operator"' in rules["llmfleet_model:availability_errors:ratio_rate1h"]["expr"]
    assert "(14.4 * (1 - 99.9 / 100))" in rules[("LLMFleetAvailabilityBudgetBurn", "critical")]["expr"]
    assert "(6 * (1 - 99 / 100))" in rules[("LLMFleetTTFTBudgetBurn", "warning")]["expr"]
    assert 'le="5.0"' in rule_file("metrics.prometheusRule.ttftObjectiveSeconds=5")["groups"][0]["rules"][1]["expr"]
    # Alert labels for routing, on every alert.
    labelled = rule_file("metrics.prometheusRule.alertLabels.team=ml")
    assert all(r["labels"]["team"] == "ml" for g in labelled["groups"] for r in g["rules"] if "alert" in r)
    # Without the ingress, no Envoy alert and no Envoy job.
    bare = rule_file("ingress.enabled=false")
    assert "LLMFleetEnvoyDisconnected" not in alerts(bare) and "ingress-metrics" not in yaml.safe_dump(bare)


def test_objectives_no_burn_rate_alert_could_reach_are_refused():
    # 14.4 × a 10 % budget is more than every request failing: the page could never fire.
    assert "ttftObjectivePercent" in refusal("metrics.prometheusRule.enabled=true",
                                             "metrics.prometheusRule.ttftObjectivePercent=90")
    assert "ttftObjectiveSeconds" in refusal("metrics.prometheusRule.ttftObjectiveSeconds=0.3")

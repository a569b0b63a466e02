"""The shipped Prometheus rules: valid for `promtool`, equivalent to the monitor's default
rule set, and evaluating as meant (`promtool test rules` on synthetic series)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from llmserve.monitor.rules import default_rules_path, load_rules
from tests.deploy.schemas import ROOT
from tests.support.prom import tool

RULES = ROOT / "deploy/grafana/prometheus-rules.yml"


def promtool(*args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


def test_promtool_check_rules_passes():
    assert "SUCCESS" in promtool("check", "rules", str(RULES))


def test_alerts_match_the_monitor_default_rules():
    shipped = _alerts()
    # SplitRolledBack notifies the monitor's own rollback action: nothing Prometheus can see
    monitor = {r.name: r for r in load_rules(default_rules_path()).rules if r.name != "SplitRolledBack"}
    assert set(shipped) == set(monitor)
    for name, rule in monitor.items():
        assert shipped[name]["labels"]["severity"] == rule.severity, name
        assert _seconds(shipped[name]["for"]) == rule.for_s, name


TESTS = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'llmserve_queue_depth{{model="m",priority="0"}}'
        values: '40x20'
      - series: 'llmserve_workers{{state="live",model=""}}'
        values: '2 2 0x20'
      - series: 'llmserve_kv_blocks_used{{worker="w1"}}'
        values: '50x20'
      - series: 'llmserve_kv_blocks_free{{worker="w1"}}'
        values: '50x20'
      - series: 'llmserve_requests_active{{model="m",tenant="t1"}}'
        values: '3x20'
      - series: 'llmserve_tokens_out_total{{model="m",tenant="t1"}}'
        values: '100x20'
    promql_expr_test:
      - expr: llmserve:recommended_workers
        eval_time: 1m
        exp_samples:
          - labels: 'llmserve:recommended_workers'
            value: 5
    alert_rule_test:
      - eval_time: 2m
        alertname: WorkerDown
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations: {{summary: "No live worker is left (live workers: 0)"}}
      - eval_time: 4m
        alertname: NoTokensProduced
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations: {{summary: "0 tokens delivered in 2 minutes while requests are in flight"}}
      - eval_time: 4m
        alertname: QueueDepthHigh
        exp_alerts: []
"""


def test_rules_evaluate_as_meant(tmp_path):
    (tmp_path / "tests.yml").write_text(TESTS.format(rules=RULES))
    assert "SUCCESS" in promtool("test", "rules", "tests.yml", cwd=tmp_path)

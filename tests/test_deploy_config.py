"""config/: Prometheus scrape config and alert rules (promtool), Grafana provisioning and the
dashboard, and a real Prometheus server answering every dashboard query from a live workload.

promtool and prometheus come from Debian's `prometheus` package (.ci/run installs it). Without
them these tests skip, except under CI=true, where a missing tool is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
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
from prometheus_client import CollectorRegistry

from metrics import (
    BACKENDS,
    ENTITIES,
    SEARCH_ROLES,
    STORE_OPS,
    WRITE_OPS,
    Metrics,
    serve_metrics,
)
from proxy.models import SearchResult
from shadow import ShadowRunner

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
PROMETHEUS_YML = CONFIG / "prometheus.yml"
ALERTS_YML = CONFIG / "alerts.yml"
ALERTS_TEST_YML = CONFIG / "alerts_test.yml"
README = ROOT / "README.md"
RUNBOOK_BASE = "https://github.com/cutover/cutover/blob/main/README.md#"
FLEET_ALERTS = {"CutoverFleetPrimaryDisagreement", "CutoverFleetEpochDisagreement",
                "CutoverPrimarySourceError"}
DASHBOARD = CONFIG / "grafana" / "dashboards" / "cutover.json"
DATASOURCES = CONFIG / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = CONFIG / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

# what Grafana would put in place of its variables when the test asks Prometheus directly
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$__interval": "5s",
    "$__range": "1m",
    "$instance": ".*",  # the instance variable's "All"
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def tool(name: str) -> str:
    """The path of a tool from Debian's `prometheus` package, or skip (fail under CI=true)."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} not found: install Debian's `prometheus` package"
            " (apt-get install prometheus)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every query of every panel."""
    return [
        (p["title"], t["refId"], t["expr"])
        for p in dashboard()["panels"]
        for t in p.get("targets", [])
    ]


def substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


# -- promtool ------------------------------------------------------------------------------------


def test_promtool_check_config_passes_on_prometheus_yml() -> None:
    result = run([tool("promtool"), "check", "config", str(PROMETHEUS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules_passes_on_the_rule_files() -> None:
    result = run([tool("promtool"), "check", "rules", str(ALERTS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_for_severity_and_annotations() -> None:
    rules = [r for g in yaml.safe_load(ALERTS_YML.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    names = {r["alert"] for r in rules}
    assert {"CutoverMirrorFailures", "CutoverOutboxStale", "CutoverShadowAgreementLow",
            "CutoverStoreErrors", "CutoverShadowFailures"} | FLEET_ALERTS <= names


def _github_anchors(markdown: str) -> set[str]:
    """The fragment GitHub gives each heading of a markdown file (duplicates get -1, -2...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6} (.+)", line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_every_alert_has_a_runbook_url_into_the_readme() -> None:
    anchors = _github_anchors(README.read_text(encoding="utf-8"))
    assert "the-runbook-a-cutover-stage-by-stage" in anchors and "6-flip-to-postgresql" in anchors
    rules = [r for g in yaml.safe_load(ALERTS_YML.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        url = rule["annotations"].get("runbook_url", "")
        assert url.startswith(RUNBOOK_BASE), (rule["alert"], url)
        assert url.removeprefix(RUNBOOK_BASE) in anchors, (rule["alert"], url)


def _fleet_rule(name: str) -> dict[str, Any]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    [rule] = [r for g in groups for r in g["rules"] if r["alert"] == name]
    return rule


def test_fleet_rules_are_evaluated_often_enough_for_their_for() -> None:
    groups = {g["name"]: g for g in yaml.safe_load(ALERTS_YML.read_text())["groups"]}
    fleet = groups["cutover.fleet"]
    assert {r["alert"] for r in fleet["rules"]} == FLEET_ALERTS
    assert fleet["interval"] == "5s"
    assert _fleet_rule("CutoverFleetPrimaryDisagreement")["for"] == "10s"
    # several processes that agree sum to more than 1: the per-process rule must not add them
    assert "by (job, instance)" in _fleet_rule("CutoverPrimaryAmbiguous")["expr"]


def _expected(case: dict[str, Any], alert: str) -> list[list[dict[str, str]]]:
    return [[a["exp_labels"] for a in t["exp_alerts"]]
            for t in case["alert_rule_test"] if t["alertname"] == alert]


def _instances(case: dict[str, Any]) -> set[str]:
    return {m for s in case["input_series"]
            for m in re.findall(r'instance="([^"]+)"', s["series"])}


@pytest.mark.slow
def test_promtool_test_rules_passes_on_the_fleet_cases() -> None:
    """config/alerts_test.yml: two processes disagreeing for 10 s fire, three agreeing do not."""
    spec = yaml.safe_load(ALERTS_TEST_YML.read_text())
    assert spec["rule_files"] == ["alerts.yml"]  # relative to the test file: the real rules
    cases = spec["tests"]
    disagree = [c for c in cases if _instances(c) == {"web-1:8000", "web-2:8000"}
                and [] in _expected(c, "CutoverFleetPrimaryDisagreement")
                and [{"severity": "critical"}] in _expected(c, "CutoverFleetPrimaryDisagreement")]
    assert disagree, "no case where two instances disagree, silent then firing"
    agree = [c for c in cases if len(_instances(c)) == 3
             and _expected(c, "CutoverFleetPrimaryDisagreement")
             and all(e == [] for e in _expected(c, "CutoverFleetPrimaryDisagreement"))
             and all(e == [] for e in _expected(c, "CutoverPrimaryAmbiguous"))]
    assert agree, "no case where three instances agree and nothing fires"
    result = run([tool("promtool"), "test", "rules", str(ALERTS_TEST_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def _rules_without_annotations(tmp_path: Path) -> Path:
    doc = yaml.safe_load(ALERTS_YML.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / "alerts.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _case(series: dict[str, str], alert: str, at: str, labels: list[dict[str, str]] | None
          ) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{
            "eval_time": at, "alertname": alert,
            "exp_alerts": [{"exp_labels": lab} for lab in (labels or [])],
        }],
    }


ALERT_CASES = [
    # (name, series, alert, eval time, expected labels of the firing alerts; [] = silent)
    ("outbox age over 60 s for 2m fires",
     {'cutover_outbox_oldest_age_seconds{backend="postgres"}': "0 30 70 80 90 100",
      'cutover_outbox_oldest_age_seconds{backend="sqlite"}': "0x5"},
     "CutoverOutboxStale", "5m", [{"backend": "postgres", "severity": "warning"}]),
    ("a brief outbox spike stays silent",
     {'cutover_outbox_oldest_age_seconds{backend="postgres"}': "0 90 0 0 0 0"},
     "CutoverOutboxStale", "5m", []),
    ("dead letters fire",
     {'cutover_outbox_dead_letters{backend="sqlite"}': "0 1 1 1"},
     "CutoverOutboxDeadLetters", "3m", [{"backend": "sqlite", "severity": "critical"}]),
    ("mirror failures rising for 10m fire",
     {'cutover_mirror_failures_total{backend="postgres",entity="question"}': "0+2x30"},
     "CutoverMirrorFailures", "25m", [{"backend": "postgres", "severity": "warning"}]),
    ("no mirror failures stay silent",
     {'cutover_mirror_failures_total{backend="postgres",entity="question"}': "5x30"},
     "CutoverMirrorFailures", "25m", []),
    ("low shadow agreement fires",
     {"cutover_shadow_rank_agreement_sum": "0+30x60", "cutover_shadow_rank_agreement_count":
      "0+60x60"},
     "CutoverShadowAgreementLow", "45m", [{"severity": "warning"}]),
    ("good shadow agreement stays silent",
     {"cutover_shadow_rank_agreement_sum": "0+57x60", "cutover_shadow_rank_agreement_count":
      "0+60x60"},
     "CutoverShadowAgreementLow", "45m", []),
    ("unexplained discrepancies over 1 % fire",
     {'cutover_shadow_discrepancies_total{reason="unexplained"}': "0+2x60",
      'cutover_shadow_comparisons_total{outcome="mismatch"}': "0+10x60",
      'cutover_shadow_comparisons_total{outcome="match"}': "0+90x60",
      'cutover_shadow_comparisons_total{outcome="skipped"}': "0+1000x60"},
     "CutoverShadowUnexplained", "45m", [{"severity": "warning"}]),
    ("shadow timeouts over 1 % fire",
     {'cutover_shadow_comparisons_total{outcome="timeout"}': "0+5x60",
      'cutover_shadow_comparisons_total{outcome="match"}': "0+95x60"},
     "CutoverShadowFailures", "30m", [{"severity": "warning"}]),
    ("store errors fire per store and op",
     {'cutover_store_errors_total{backend="postgres",op="write"}': "0+3x20",
      'cutover_store_errors_total{backend="sqlite",op="write"}': "0x20"},
     "CutoverStoreErrors", "15m",
     [{"backend": "postgres", "op": "write", "severity": "warning"}]),
    ("postgres primary on a no-go fires",
     {"cutover_ready": "0x30", 'cutover_read_primary{backend="postgres"}': "1x30",
      'cutover_read_primary{backend="sqlite"}': "0x30"},
     "CutoverPostgresPrimaryWhileNoGo", "20m", [{"severity": "warning"}]),
    ("sqlite primary on a no-go is the normal pre-flip state",
     {"cutover_ready": "0x30", 'cutover_read_primary{backend="postgres"}': "0x30",
      'cutover_read_primary{backend="sqlite"}': "1x30"},
     "CutoverPostgresPrimaryWhileNoGo", "20m", []),
    ("two primaries in one process fire",
     {'cutover_read_primary{instance="a:8000",backend="postgres"}': "1x5",
      'cutover_read_primary{instance="a:8000",backend="sqlite"}': "1x5"},
     "CutoverPrimaryAmbiguous", "3m", [{"instance": "a:8000", "severity": "critical"}]),
    ("two processes agreeing on one primary stay silent",
     {'cutover_read_primary{instance="a:8000",backend="postgres"}': "1x5",
      'cutover_read_primary{instance="a:8000",backend="sqlite"}': "0x5",
      'cutover_read_primary{instance="b:8000",backend="postgres"}': "1x5",
      'cutover_read_primary{instance="b:8000",backend="sqlite"}': "0x5"},
     "CutoverPrimaryAmbiguous", "3m", []),
]


@pytest.mark.slow
def test_alert_rules_fire_when_and_only_when_intended(tmp_path: Path) -> None:
    promtool = tool("promtool")
    spec = {
        "rule_files": [str(_rules_without_annotations(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [_case(s, a, t, lab) for _, s, a, t, lab in ALERT_CASES],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec))
    result = run([promtool, "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_annotations_render(tmp_path: Path) -> None:
    """The real file, annotations included: templates expand to readable text."""
    spec = {
        "rule_files": [str(ALERTS_YML)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{
                    "series": 'cutover_outbox_oldest_age_seconds{backend="postgres"}',
                    "values": "0 30 70 80 90 100",
                }],
                "alert_rule_test": [{
                    "eval_time": "5m", "alertname": "CutoverOutboxStale",
                    "exp_alerts": [{
                        "exp_labels": {"backend": "postgres", "severity": "warning"},
                        "exp_annotations": {
                            "summary": "Mirror writes to postgres are waiting over a minute",
                            "description": (
                                "The oldest pending mirror write to postgres is 1m 40s old."
                                " Flips are refused until it drains; run `cutover reconcile`"
                                " if the replay loop is stuck."
                            ),
                            "runbook_url": RUNBOOK_BASE + "cutover-reconcile",
                        },
                    }],
                }],
            },
            {
                "interval": "1m",
                "input_series": [
                    {"series": "cutover_shadow_rank_agreement_sum", "values": "0+30x60"},
                    {"series": "cutover_shadow_rank_agreement_count", "values": "0+60x60"},
                ],
                "alert_rule_test": [{
                    "eval_time": "45m", "alertname": "CutoverShadowAgreementLow",
                    "exp_alerts": [{
                        "exp_labels": {"severity": "warning"},
                        "exp_annotations": {
                            "summary": "Shadow searches agree less than the go/no-go threshold",
                            "description": (
                                "Mean rank-biased overlap between primary and shadow is 0.500"
                                " over 15 minutes (verdict needs >= 0.9). See the"
                                " discrepancies-by-reason panel and `cutover shadow list`."
                            ),
                            "runbook_url": RUNBOOK_BASE + "5-shadow-until-the-verdict-says-go",
                        },
                    }],
                }],
            },
        ],
    }
    path = tmp_path / "annotations_test.yml"
    path.write_text(yaml.safe_dump(spec))
    result = run([tool("promtool"), "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def _exercised_metrics() -> Metrics:
    m = Metrics(CollectorRegistry())
    m.set_read_primary("sqlite")
    m.observe_write("sqlite", "question", "insert", "ok", 0.004)
    m.observe_write("postgres", "question", "insert", "timeout", 2.0)
    m.mirror_failure("postgres", "question")
    m.set_outbox("postgres", pending=1, oldest_age_s=2.5, dead=0)
    m.observe_search("sqlite", "primary", 0.01)
    m.observe_comparison("mismatch", "order_only", jaccard=1.0, rbo=0.9, top1=False)
    m.store_error("postgres", "write")
    m.set_ready(False)
    m.set_instance("web-1")
    m.set_epoch(3)
    m.set_dual_write(True)
    m.set_primary_source_error(False)
    m.fenced_write("sqlite")
    return m


def test_promtool_check_metrics_passes_on_a_real_scrape() -> None:
    promtool = tool("promtool")
    m = _exercised_metrics()
    with serve_metrics(m.registry, "127.0.0.1", 0) as server:
        scrape = httpx.get(server.url, timeout=5).text
    assert 'cutover_writes_total{backend="postgres",entity="question",op="insert",' \
        'outcome="timeout"} 1.0' in scrape
    result = run([promtool, "check", "metrics"], stdin=scrape)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


# -- Grafana -------------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert (source["type"], source["uid"], source["url"]) == (
        "prometheus", "prometheus", "http://prometheus:9090")
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_prometheus_scrapes_the_service_and_itself() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["cutover"]["metrics_path"] == "/metrics"
    assert jobs["cutover"]["static_configs"][0]["targets"] == ["service:8000"]
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["localhost:9090"]
    assert config["rule_files"] == ["alerts.yml"]  # relative: /etc/prometheus in compose


def _embedding_app_example() -> list[dict[str, Any]]:
    """The commented-out scrape job for an application that embeds the library, uncommented."""
    lines = PROMETHEUS_YML.read_text().splitlines()
    start = lines.index("  # - job_name: cutover-app")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(line.removeprefix("  #").removeprefix(" "))
    jobs: list[dict[str, Any]] = yaml.safe_load("\n".join(block))
    return jobs


def test_prometheus_yml_shows_how_to_scrape_an_embedding_app(tmp_path: Path) -> None:
    [job] = _embedding_app_example()
    assert job["job_name"] == "cutover-app" and job["metrics_path"] == "/metrics"
    targets = job["static_configs"][0]["targets"]
    assert len(targets) >= 2 and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets)
    text = PROMETHEUS_YML.read_text()
    assert "METRICS_PORT" in text and "METRICS_HOST" in text
    scrape_down = [r for g in yaml.safe_load(ALERTS_YML.read_text())["groups"]
                   for r in g["rules"] if r["alert"] == "CutoverScrapeDown"]
    assert "cutover-app" in scrape_down[0]["expr"]
    # uncommented, it is a valid job beside the service's
    config = yaml.safe_load(text)
    config["scrape_configs"].append(job)
    config["rule_files"] = [str(ALERTS_YML)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run([tool("promtool"), "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_sends_alerts_to_the_alertmanager() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    [manager] = config["alerting"]["alertmanagers"]
    assert manager["static_configs"][0]["targets"] == ["alertmanager:9093"]
    am = yaml.safe_load((CONFIG / "alertmanager.yml").read_text())
    assert am["route"]["receiver"] in {r["name"] for r in am["receivers"]}


def test_dashboard_is_grafana_10_json_on_the_datasource_variable() -> None:
    d = dashboard()
    assert d["uid"] == "cutover" and d["schemaVersion"] >= 39
    panels = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in {"timeseries", "stat", "bargauge", "state-timeline", "table"}, \
            p["title"]
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip() and t["refId"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    titles = " | ".join(p["title"].lower() for p in panels)
    for needed in ("primary", "verdict", "writes per store", "mirror failures", "outbox depth",
                   "outbox oldest age", "search latency per store and role", "agreement",
                   "discrepancies by reason", "primary and epoch per instance"):
        assert needed in titles, needed


def _variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def _datasource_refs(node: Any) -> Iterator[Any]:
    """Every "datasource" value anywhere in the dashboard JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


def test_dashboard_picks_its_datasource_through_a_variable() -> None:
    variable = _variables()["datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    refs = list(_datasource_refs(dashboard()))
    prometheus = [r for r in refs if r != {"type": "grafana", "uid": "-- Grafana --"}]
    assert len(prometheus) > len(dashboard()["panels"])
    for ref in prometheus:
        assert ref == DATASOURCE, ref  # no hard-coded uid: "prometheus" or any other


def test_dashboard_instance_variable_filters_every_query() -> None:
    variable = _variables()["instance"]
    assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
    assert re.fullmatch(r"label_values\(cutover_\w+, ?instance\)", variable["definition"])
    assert variable["query"]["query"] == variable["definition"]
    assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    exprs = [expr for _, _, expr in panel_queries()] + [a["expr"] for a in _flip_annotations()]
    for expr in exprs:
        selectors = re.findall(r"\bcutover_[a-z0-9_]+(\{[^}]*\})?", expr)
        assert selectors, expr
        for selector in selectors:
            assert 'instance=~"$instance"' in selector, expr


def _flip_annotations() -> list[dict[str, Any]]:
    return [a for a in dashboard()["annotations"]["list"]
            if "changes(cutover_primary_epoch" in a.get("expr", "")]


def test_dashboard_annotates_every_flip() -> None:
    [flips] = _flip_annotations()
    assert flips["enable"] and not flips.get("hide")
    assert flips["datasource"] == DATASOURCE
    # one epoch change is caught by a step whatever the scrape offset: the range exceeds the step
    window = re.search(r"changes\(cutover_primary_epoch\{[^}]*\}\[(\d+)s\]\)", flips["expr"])
    assert window and int(window.group(1)) > int(flips["step"].removesuffix("s"))


def test_dashboard_shows_primary_and_epoch_per_instance() -> None:
    [panel] = [p for p in dashboard()["panels"]
               if p["title"].lower() == "primary and epoch per instance"]
    exprs = " ".join(t["expr"] for t in panel["targets"])
    for metric in ("cutover_read_primary", "cutover_primary_epoch", "cutover_instance_info"):
        assert metric in exprs, metric
    for t in panel["targets"]:
        assert re.search(r"by \(instance\b", t["expr"]), t["expr"]


def test_dashboard_queries_only_name_metrics_that_exist() -> None:
    known = {mf.name for mf in Metrics(CollectorRegistry()).registry.collect()}
    used: set[str] = set()
    for _, _, expr in panel_queries():
        used |= set(re.findall(r"\bcutover_[a-z0-9_]+", expr))
    assert used
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert base in known, name
    exposed = {re.sub(r"_(total)$", "", n) for n in used}
    # the contract's metrics all appear on the dashboard
    for contract in ("cutover_read_primary", "cutover_writes", "cutover_mirror_failures",
                     "cutover_outbox_pending", "cutover_outbox_oldest_age_seconds",
                     "cutover_search_duration_seconds_bucket", "cutover_shadow_comparisons",
                     "cutover_shadow_overlap_sum", "cutover_shadow_rank_agreement_sum",
                     "cutover_shadow_discrepancies", "cutover_ready",
                     "cutover_write_duration_seconds_bucket"):
        assert contract in exposed, contract


# -- a real Prometheus server --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _prometheus(config: Path, data: Path, port: int, log: Path) -> Iterator[str]:
    binary = tool("prometheus")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _hits(*ids: uuid.UUID) -> list[SearchResult]:
    return [SearchResult(q, "q", "a", "q", 1.0, "fts") for q in ids]


async def _workload(m: Metrics, runner: ShadowRunner, stop: asyncio.Event) -> None:
    """Every Metrics method, and every shadow outcome through the real ShadowRunner."""
    a, b, c = (uuid.UUID(int=i + 1) for i in range(3))

    async def same() -> list[SearchResult]:
        return _hits(a, b, c)

    async def swapped() -> list[SearchResult]:
        return _hits(b, a, c)

    async def different() -> list[SearchResult]:
        return _hits(a, uuid.uuid4())

    async def broken() -> list[SearchResult]:
        raise ConnectionError("shadow store down")

    async def slow() -> list[SearchResult]:
        await asyncio.sleep(5)
        return []

    shadows = [same, swapped, different, broken, slow, same]
    i = 0
    while not stop.is_set():
        for backend in BACKENDS:
            for entity in ENTITIES:
                for op in WRITE_OPS:
                    outcome = "ok" if (i + len(entity)) % 6 else "timeout"
                    m.observe_write(backend, entity, op, outcome, 0.001 * (1 + i % 7))
            m.mirror_failure(backend, ENTITIES[i % len(ENTITIES)])
            m.store_error(backend, STORE_OPS[i % len(STORE_OPS)])
            m.set_outbox(backend, pending=i % 5, oldest_age_s=float(i % 40), dead=i % 2)
            for role in SEARCH_ROLES:
                m.observe_search(backend, role, 0.002 * (1 + i % 4))
        m.set_read_primary(BACKENDS[(i // 10) % 2])
        m.set_epoch(i // 10)
        m.set_dual_write(i % 50 < 40)
        m.set_primary_source_error(i % 40 == 0)
        m.fenced_write(BACKENDS[i % 2])
        m.set_ready(i % 3 == 0)
        runner.submit("json dumps", user_id=uuid.UUID(int=7), limit=3,
                      primary_backend="sqlite", primary_results=_hits(a, b, c),
                      run_shadow=shadows[i % len(shadows)])
        i += 1
        await asyncio.sleep(0.05)


async def _query(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_real_prometheus_answers_every_dashboard_query(tmp_path: Path) -> None:
    tool("prometheus")
    m = Metrics(CollectorRegistry())
    m.set_instance("live-1")
    runner = ShadowRunner(m, sample_rate=1.0, timeout_s=0.1, max_concurrency=3)
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    with serve_metrics(m.registry, "127.0.0.1", 0) as target:
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS_YML)],
            "scrape_configs": [{
                "job_name": "cutover", "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{target.port}"]}],
            }],
        }))
        stop = asyncio.Event()
        load = asyncio.create_task(_workload(m, runner, stop))
        try:
            with _prometheus(config, tmp_path / "data", port, tmp_path / "prometheus.log") as url:
                async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                    await _wait_for_scrapes(client, tmp_path / "prometheus.log")
                    queries = panel_queries() + [
                        (a["name"], "annotation", a["expr"]) for a in _flip_annotations()]
                    for title, ref, expr in queries:
                        result = await _query(client, substitute(expr))
                        assert result, f"panel {title!r} query {ref} returned nothing: {expr}"
                        values = [float(r["value"][1]) for r in result]
                        assert any(math.isfinite(v) for v in values), (title, ref, values)
                    instances = (await client.get(
                        "/api/v1/label/instance/values",
                        params={"match[]": "cutover_read_primary"})).json()["data"]
                    assert instances == [f"127.0.0.1:{target.port}"]
                    rules = (await client.get("/api/v1/rules")).json()["data"]["groups"]
                    health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
                    assert len(health) >= 8
                    assert set(health.values()) == {"ok"}, health
        finally:
            stop.set()
            await load
            await runner.aclose(timeout_s=2.0)


async def _wait_for_scrapes(client: httpx.AsyncClient, log: Path) -> None:
    """Until Prometheus is up and holds enough samples for rate() over 30s; bounded."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/-/ready")).status_code == 200:
                samples = await _query(client, "count_over_time(cutover_ready[1m])")
                shadow = await _query(
                    client, 'count_over_time(cutover_shadow_comparisons_total{outcome="match"}[1m])'
                )
                if samples and float(samples[0]["value"][1]) >= 6 and shadow:
                    return
        await asyncio.sleep(0.5)
    tail = (await asyncio.to_thread(log.read_text))[-3000:]
    pytest.fail(f"Prometheus did not scrape in time; its log:\n{tail}")


def test_a_missing_tool_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian's `prometheus` package"):
        tool("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Debian's `prometheus` package"):
        tool("promtool")

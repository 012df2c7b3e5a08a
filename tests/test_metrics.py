"""metrics/: the contract's names, types and labels, pre-initialised series, and serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import metrics
from metrics import BACKENDS, DISCREPANCY_REASONS, Metrics, make_metrics_app, serve_metrics

# name -> (type, labels) exactly as contract.md's table lists them
CONTRACT = {
    "cutover_read_primary": ("gauge", {"backend"}),
    "cutover_writes": ("counter", {"backend", "entity", "op", "outcome"}),
    "cutover_write_duration_seconds": ("histogram", {"backend", "op"}),
    "cutover_mirror_failures": ("counter", {"backend", "entity"}),
    "cutover_outbox_pending": ("gauge", {"backend"}),
    "cutover_outbox_oldest_age_seconds": ("gauge", {"backend"}),
    "cutover_search_duration_seconds": ("histogram", {"backend", "role"}),
    "cutover_shadow_comparisons": ("counter", {"outcome"}),
    "cutover_shadow_overlap": ("histogram", set()),
    "cutover_shadow_rank_agreement": ("histogram", set()),
    "cutover_shadow_discrepancies": ("counter", {"reason"}),
    "cutover_ready": ("gauge", set()),
}

# issue 23: what tells the processes of a fleet apart, and what each one believes
FLEET = {
    "cutover_instance_info": ("gauge", {"instance_id", "pid", "hostname"}),
    "cutover_primary_epoch": ("gauge", set()),
    "cutover_dual_write": ("gauge", set()),
    "cutover_primary_source_error": ("gauge", set()),
    "cutover_fenced_writes": ("counter", {"backend"}),
}

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def _labels_of(registry: CollectorRegistry, family: str) -> set[str]:
    for metric in registry.collect():
        if metric.name == family:
            names: set[str] = set()
            for sample in metric.samples:
                names |= set(sample.labels) - {"le"}
            return names
    raise AssertionError(f"{family} not registered")


def test_contract_metrics_exist_with_their_types_and_labels(registry: CollectorRegistry) -> None:
    Metrics(registry)
    families = {mf.name: mf.type for mf in registry.collect()}
    for name, (kind, labels) in CONTRACT.items():
        assert families.get(name) == kind, name
        assert _labels_of(registry, name) == labels, name


def test_fleet_metrics_exist_with_their_types_and_labels(m: Metrics) -> None:
    m.set_instance("worker-1")
    families = {mf.name: mf.type for mf in m.registry.collect()}
    for name, (kind, labels) in FLEET.items():
        assert families.get(name) == kind, name
        assert _labels_of(m.registry, name) == labels, name


def test_fleet_series_exist_at_zero_before_any_event(m: Metrics) -> None:
    r = m.registry
    for name in ("cutover_primary_epoch", "cutover_dual_write", "cutover_primary_source_error"):
        assert r.get_sample_value(name) == 0, name
    for backend in BACKENDS:
        assert r.get_sample_value("cutover_fenced_writes_total", {"backend": backend}) == 0


def test_fleet_helpers_move_the_right_series(m: Metrics) -> None:
    r = m.registry
    m.set_epoch(7)
    m.set_dual_write(True)
    m.set_primary_source_error(True)
    m.fenced_write("sqlite")
    m.fenced_write("sqlite")
    assert r.get_sample_value("cutover_primary_epoch") == 7
    assert r.get_sample_value("cutover_dual_write") == 1
    assert r.get_sample_value("cutover_primary_source_error") == 1
    assert r.get_sample_value("cutover_fenced_writes_total", {"backend": "sqlite"}) == 2
    assert r.get_sample_value("cutover_fenced_writes_total", {"backend": "postgres"}) == 0
    m.set_epoch(8)
    m.set_dual_write(False)
    m.set_primary_source_error(False)
    assert r.get_sample_value("cutover_primary_epoch") == 8
    assert r.get_sample_value("cutover_dual_write") == 0
    assert r.get_sample_value("cutover_primary_source_error") == 0


def test_instance_info_names_this_process_once(m: Metrics) -> None:
    r = m.registry
    m.set_instance("web-1")
    m.set_instance("web-2")  # a second call replaces the series: one per process
    samples = [s for f in r.collect() if f.name == "cutover_instance_info" for s in f.samples]
    assert [(s.labels, s.value) for s in samples] == [
        ({"instance_id": "web-2", "pid": str(os.getpid()), "hostname": socket.gethostname()},
         1.0)
    ]


@pytest.mark.parametrize("bad", ["", "x" * 129, "web\n1"])
def test_instance_ids_that_are_not_a_short_name_are_refused(m: Metrics, bad: str) -> None:
    with pytest.raises(ValueError, match="instance_id"):
        m.set_instance(bad)


def test_counters_end_in_total_and_durations_in_seconds(registry: CollectorRegistry) -> None:
    Metrics(registry)
    for family in registry.collect():
        assert family.name.startswith("cutover_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if "duration" in family.name or "age" in family.name:
            assert family.name.endswith("_seconds")
    # and the exposition parses back
    parsed = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert "cutover_writes" in parsed


def test_every_label_combination_exists_at_zero_before_any_event(m: Metrics) -> None:
    r = m.registry
    for backend in BACKENDS:
        assert r.get_sample_value("cutover_outbox_pending", {"backend": backend}) == 0
        assert r.get_sample_value("cutover_read_primary", {"backend": backend}) == 0
        for role in ("primary", "shadow"):
            assert r.get_sample_value(
                "cutover_search_duration_seconds_count", {"backend": backend, "role": role}
            ) == 0
        assert r.get_sample_value(
            "cutover_writes_total",
            {"backend": backend, "entity": "learning_event", "op": "delete", "outcome": "timeout"},
        ) == 0
    for outcome in ("match", "mismatch", "error", "timeout", "skipped"):
        assert r.get_sample_value("cutover_shadow_comparisons_total", {"outcome": outcome}) == 0
    for reason in DISCREPANCY_REASONS:
        assert r.get_sample_value("cutover_shadow_discrepancies_total", {"reason": reason}) == 0
    assert r.get_sample_value("cutover_ready") == 0
    assert r.get_sample_value("cutover_shadow_overlap_count") == 0


def test_helpers_move_the_right_series(m: Metrics) -> None:
    r = m.registry
    m.observe_write("postgres", "question", "update", "ok", 0.02)
    m.observe_write("postgres", "question", "update", "ok", 0.04)
    m.mirror_failure("postgres", "question")
    m.store_error("sqlite", "search")
    m.set_outbox("postgres", pending=3, oldest_age_s=12.5, dead=1)
    m.observe_search("sqlite", "primary", 0.003)
    m.set_ready(True)
    labels = {"backend": "postgres", "entity": "question", "op": "update", "outcome": "ok"}
    assert r.get_sample_value("cutover_writes_total", labels) == 2
    assert r.get_sample_value(
        "cutover_write_duration_seconds_sum", {"backend": "postgres", "op": "update"}
    ) == pytest.approx(0.06)
    assert r.get_sample_value(
        "cutover_mirror_failures_total", {"backend": "postgres", "entity": "question"}
    ) == 1
    assert r.get_sample_value(
        "cutover_store_errors_total", {"backend": "sqlite", "op": "search"}
    ) == 1
    assert r.get_sample_value("cutover_outbox_pending", {"backend": "postgres"}) == 3
    assert r.get_sample_value("cutover_outbox_oldest_age_seconds", {"backend": "postgres"}) == 12.5
    assert r.get_sample_value("cutover_outbox_dead_letters", {"backend": "postgres"}) == 1
    assert r.get_sample_value(
        "cutover_search_duration_seconds_bucket",
        {"backend": "sqlite", "role": "primary", "le": "0.005"},
    ) == 1
    assert r.get_sample_value("cutover_ready") == 1
    m.set_ready(False)
    assert r.get_sample_value("cutover_ready") == 0


def test_read_primary_is_one_for_exactly_one_backend(m: Metrics) -> None:
    r = m.registry
    m.set_read_primary("postgres")
    m.set_read_primary("sqlite")
    values = {b: r.get_sample_value("cutover_read_primary", {"backend": b}) for b in BACKENDS}
    assert values == {"sqlite": 1, "postgres": 0}


def test_observe_comparison_records_figures_reason_and_top1(m: Metrics) -> None:
    r = m.registry
    m.observe_comparison("mismatch", "order_only", jaccard=1.0, rbo=0.9, top1=False)
    m.observe_comparison("match", None, jaccard=1.0, rbo=1.0, top1=True)
    assert r.get_sample_value("cutover_shadow_comparisons_total", {"outcome": "mismatch"}) == 1
    assert r.get_sample_value("cutover_shadow_comparisons_total", {"outcome": "match"}) == 1
    assert r.get_sample_value(
        "cutover_shadow_discrepancies_total", {"reason": "order_only"}
    ) == 1
    assert r.get_sample_value("cutover_shadow_rank_agreement_sum") == pytest.approx(1.9)
    assert r.get_sample_value("cutover_shadow_rank_agreement_bucket", {"le": "0.9"}) == 1
    assert r.get_sample_value("cutover_shadow_overlap_count") == 2
    assert r.get_sample_value("cutover_shadow_top1_agreement_total") == 1


def test_shed_counts_as_skipped_and_as_shed(m: Metrics) -> None:
    r = m.registry
    m.shadow_skipped()
    m.shadow_skipped(shed=True)
    assert r.get_sample_value("cutover_shadow_comparisons_total", {"outcome": "skipped"}) == 2
    assert r.get_sample_value("cutover_shadow_shed_total") == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.observe_write("mysql", "user", "insert", "ok", 0.1),
        lambda m: m.observe_write("sqlite", "users", "insert", "ok", 0.1),
        lambda m: m.observe_write("sqlite", "user", "upsert", "ok", 0.1),
        lambda m: m.observe_write("sqlite", "user", "insert", "maybe", 0.1),
        lambda m: m.observe_search("sqlite", "secondary", 0.1),
        lambda m: m.observe_comparison("match", "json dumps"),
        lambda m: m.set_read_primary("postgresql://u:secret@h/db"),
        lambda m: m.store_error("sqlite", "select * from users"),
        lambda m: m.shadow_outcome("user-42"),
        lambda m: m.fenced_write("postgresql://u:secret@h/db"),
    ],
)
def test_unknown_label_values_are_refused(m: Metrics, call: object) -> None:
    """Free text (a query, an id, a DSN) must never become a label value."""
    with pytest.raises(ValueError, match="not a known label value"):
        call(m)  # type: ignore[operator]


def test_time_search_records_even_when_the_body_raises(m: Metrics) -> None:
    with pytest.raises(RuntimeError), m.time_search("postgres", "primary"):
        raise RuntimeError("boom")
    assert m.registry.get_sample_value(
        "cutover_search_duration_seconds_count", {"backend": "postgres", "role": "primary"}
    ) == 1


def test_two_sets_on_two_registries_are_independent() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.set_ready(True)
    assert b.registry.get_sample_value("cutover_ready") == 0


def test_a_second_set_on_the_same_registry_is_refused(registry: CollectorRegistry) -> None:
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


def test_nothing_is_registered_on_the_global_registry_at_import() -> None:
    code = (
        "import prometheus_client, metrics, shadow\n"
        "names = [m.name for m in prometheus_client.REGISTRY.collect()]\n"
        "print(sum(n.startswith('cutover') for n in names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        cwd=ROOT,
    )
    assert out.stdout.strip() == "0"
    assert REGISTRY.get_sample_value("cutover_ready") is None


def test_serve_metrics_serves_the_registry_and_close_frees_the_port(m: Metrics) -> None:
    m.set_ready(True)
    server = serve_metrics(m.registry, "127.0.0.1", 0)
    try:
        assert server.port > 0
        response = httpx.get(server.url, timeout=5)
        assert response.status_code == 200
        assert "cutover_ready 1.0" in response.text
    finally:
        server.close()
    assert server.closed
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url, timeout=2)
    server.close()  # a second close is harmless


async def test_asgi_app_serves_metrics_in_a_fastapi_service(m: Metrics) -> None:
    from fastapi import FastAPI
    from starlette.routing import Route

    m.set_read_primary("postgres")
    app = FastAPI(routes=[Route("/metrics", make_metrics_app(m.registry), methods=["GET"])])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'cutover_read_primary{backend="postgres"} 1.0' in response.text


def test_all_is_complete_and_sorted() -> None:
    public = {n for n in dir(metrics) if not n.startswith("_")} - {
        "exposition", "registry", "annotations",
    }
    assert set(metrics.__all__) == public
    assert list(metrics.__all__) == sorted(metrics.__all__, key=lambda s: (not s.isupper(), s))

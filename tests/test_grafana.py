"""The Grafana dashboard of deploy/grafana: it loads as a dashboard model, its queries work, it ships.

- The JSON loads with Grafana's own typed models (grafana-foundation-sdk `Dashboard.from_json`, with
  its panel and query plugins registered): the panels and queries expected are there, on a grid
  that does not overlap.
- Every PromQL query (panels, annotations, the variables' selectors), with Grafana's variables
  written in, is parsed and evaluated by a real Prometheus (`PrometheusSource.check_query`) that
  scrapes a real local Triton serving a model with traffic and a real `shepherd serve` /metrics;
  the queries of Triton's traffic and latency and of shepherd's own series also return data there,
  so a misspelt metric or label is caught, not only a syntax error.
- The SQL of the history table and of the rollout annotations runs on a real PostgreSQL history.
- The provisioning files, docker/compose.yaml and the prod overlay's ConfigMap carry that dashboard;
  docker/prometheus.yml passes `promtool check config`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as grafana
from grafana_foundation_sdk.models import prometheus as grafana_prometheus
from sqlalchemy import text

from builders.repository import ModelRepository
from control_plane.api import metrics
from control_plane.api.app import create_app
from control_plane.api.server import serving
from control_plane.local_triton import LocalTriton
from control_plane.report import TickReport
from control_plane.store import Store
from probes.prometheus import PrometheusSource
from tests.conftest import load_versions, publish_scale
from tests.prometheus_server import MISSING, prometheus_binary, running_prometheus
from tests.test_api import Clock, fill, runtime_over
from tests.test_deploy import render

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "shepherd.json"
COMPOSE = ROOT / "docker" / "compose.yaml"
# Grafana's variables as a person's "All" selection writes them into a query.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$instance": ".*",
    "$model": ".*",
}
EXPECTED_PANELS = {
    "Requests per second, by model and version",
    "Requests per second, by replica",
    "Failed requests per second, by version and reason",
    "Error ratio, by model and version",
    "Request latency p50 and p95, by replica and version",
    "Average request, queue and compute time, by version",
    "Pending requests, by replica",
    "Batches executed per second, by version",
    "GPU utilization, by replica",
    "GPU memory used, by replica",
    "CPU memory used by Triton, by replica",
    "Stable version, by model",
    "Rollbacks in the time range, by trigger",
    "Leaders and history",
    "Seconds since the last pass, by job",
    "Decisions, by outcome",
    "Pass duration p95, by job",
    "Errors met by the passes",
    "Passes per minute, by job",
    "State changes in the time range",
}
NO_DATA_HERE = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_inference_request_failure"}  # no GPU, no failure


def raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def substitute(query: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda item: -len(item[0])):
        query = query.replace(name, value)
    assert "$" not in query, f"a Grafana variable is not substituted in {query!r}"
    return query


def promql(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, Prometheus annotation and variable selector."""
    found = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    for annotation in data["annotations"]["list"]:
        if "expr" in annotation:
            found.append((f"annotation {annotation['name']}", annotation["expr"]))
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"])
            assert selector is not None, variable["definition"]
            found.append((f"variable {variable['name']}", selector.group(1)))
    return found


def sql(data: dict[str, Any]) -> list[tuple[str, str]]:
    found = [
        (panel["title"], target["rawSql"])
        for panel in data["panels"]
        for target in panel.get("targets", [])
        if "rawSql" in target
    ]
    found += [
        (a["name"], a["target"]["rawSql"]) for a in data["annotations"]["list"] if "rawSql" in a.get("target", {})
    ]
    return found


# -- the model ----------------------------------------------------------------------------------------
def test_the_dashboard_loads_as_a_grafana_dashboard_model_with_the_panels_and_queries_expected() -> None:
    register_default_plugins()
    data = raw()
    board = grafana.Dashboard.from_json(data)
    assert board.uid == "shepherd-rollouts" and board.title and board.schema_version >= 39
    panels = [p for p in board.panels or [] if isinstance(p, grafana.Panel)]
    rows = [p for p in board.panels or [] if isinstance(p, grafana.RowPanel)]
    assert {p.title for p in panels} == EXPECTED_PANELS
    assert [r.title for r in rows] == [
        "Triton: traffic per replica and version",
        "Triton: latency per replica and version",
        "Triton: resources per replica",
        "shepherd",
        "Rollouts (from shepherd's SQL history)",
    ]
    ids = [p.id_val for p in board.panels or []]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel.targets, panel.title
        if panel.type_val == "table":
            assert panel.datasource is not None and panel.datasource.uid == "${history}"
            continue
        assert panel.datasource is not None and panel.datasource.uid == "${datasource}"
        for target in panel.targets:
            assert isinstance(target, grafana_prometheus.Dataquery), (panel.title, type(target))
            assert target.expr and target.legend_format, panel.title
    cells: set[tuple[int, int]] = set()  # the grid: 24 columns, no two panels on one cell
    for panel in board.panels or []:
        grid = panel.grid_pos
        assert grid is not None and grid.x >= 0 and grid.x + grid.w <= 24, panel.title
        mine = {(grid.y + dy, grid.x + dx) for dy in range(grid.h) for dx in range(grid.w)}
        assert not mine & cells, f"{panel.title} overlaps another panel"
        cells |= mine
    variables = {v.name: v for v in board.templating.list_val or []}
    assert set(variables) == {"datasource", "history", "instance", "model"}
    annotations = {a.name: a for a in board.annotations.list_val or []}
    assert {"Rollouts (SQL history)", "Rollbacks (shepherd metrics)", "Promotions (shepherd metrics)"} <= set(
        annotations
    )
    assert annotations["Rollouts (SQL history)"].enable and annotations["Rollbacks (shepherd metrics)"].enable
    for where, query in promql(data):
        assert "shepherd_" in query or "nv_" in query, where
    by_metric = " ".join(q for _, q in promql(data))
    for series in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_request_summary_us",
                   "shepherd_decisions_total", "shepherd_rollbacks_total", "shepherd_stable_version"):  # fmt: skip
        assert series in by_metric, series


# -- the queries against the real thing ---------------------------------------------------------------
@pytest.fixture
def scraped(repo: ModelRepository, triton: LocalTriton, tmp_path: Path) -> Iterator[PrometheusSource]:
    """Prometheus scraping a Triton with traffic on two versions and a shepherd serve with a pass counted."""
    if prometheus_binary() is None:
        pytest.skip(MISSING)
    for factor in (2.0, 3.0):
        publish_scale(repo, tmp_path, "scale", factor)
    client = grpcclient.InferenceServerClient(triton.state.grpc_url)
    load_versions(client, repo, "scale", [1, 2])
    url = f"sqlite:///{tmp_path / 'history.db'}"
    clock = Clock()
    with Store.open(url, clock=clock) as store:
        fill(store, clock)
    rt = runtime_over(url, tmp_path)
    metrics.observe_pass(TickReport(), 0.2, job="reconcile")  # a pass and its duration, as the scheduler records
    try:
        with serving(create_app(rt), "127.0.0.1:0") as api:
            targets = [f"127.0.0.1:{triton.state.metrics_port}", api.removeprefix("http://")]
            with running_prometheus(targets) as prometheus:  # each target scraped once: the counters' start
                decided = TickReport()  # a rollback and a promotion decided now: the annotations' increase()
                decided.add("rolled_back", "scale", 2, actor="shepherd")
                decided.add("promoted", "scale", 1, actor="shepherd")
                metrics.observe_report(decided)
                x = grpcclient.InferInput("x", [2, 4], "FP32")
                x.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
                for second in range(4):  # traffic spread over several scrapes, for rate() and the summaries
                    for version in ("1", "2"):
                        for _ in range(5):
                            client.infer("scale", [x], model_version=version)
                    time.sleep(1.0 if second < 3 else 2.5)
                yield PrometheusSource(prometheus)
    finally:
        rt.close()
        client.close()


def test_every_promql_query_parses_on_a_real_prometheus_and_finds_its_series(scraped: PrometheusSource) -> None:
    empty = []
    for where, query in promql(raw()):
        expr = substitute(query)
        scraped.check_query(expr)  # MetricsMalformed (Prometheus' refusal quoted) if it does not parse
        if not any(series in expr for series in NO_DATA_HERE) and not scraped.query(expr):
            empty.append(f"{where}: {expr}")
    assert empty == []
    versions = {s.labels.get("version") for s in scraped.query(substitute(promql(raw())[0][1]))}
    assert versions == {"1", "2"}  # per version, as the panel's legend says
    stable = {s.labels["model"]: s.value for s in scraped.query("max by (model) (shepherd_stable_version)")}
    assert stable == {"intent": 1.0, "ranker": 1.0}


def test_the_history_queries_run_on_postgresql(postgres_schema_url: str) -> None:
    clock = Clock()
    with Store.open(postgres_schema_url, clock=clock) as store:
        fill(store, clock)
        window = "'2026-11-01T00:00:00Z' AND '2026-11-03T00:00:00Z'"
        with store.db.engine.connect() as connection:
            for where, query in sql(raw()):
                expanded = re.sub(r"\$__timeFilter\(([\w.]+)\)", rf"\1 BETWEEN {window}", query)
                assert "$" not in expanded, where
                rows = connection.execute(text(expanded)).mappings().all()
                assert rows, where
                assert "time" in rows[0], where  # Grafana's time column
                if where == "Rollouts (SQL history)":
                    texts = [r["text"] for r in rows]
                    assert any(t.startswith("intent v3: rejected (shepherd)") for t in texts), texts
                    assert {r["tags"] for r in rows} <= {"canary", "promoted", "rolled_back", "failed", "rejected"}
                    assert all(isinstance(r["time"], datetime) and r["time"].tzinfo is not None for r in rows)
                    assert all(r["time"] <= datetime(2026, 11, 3, tzinfo=UTC) for r in rows)


# -- how it ships -------------------------------------------------------------------------------------
def test_provisioning_and_compose_carry_the_dashboard() -> None:
    data = raw()
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "shepherd.yaml").read_text(encoding="utf-8"))
    kinds = {s["type"] for s in sources["datasources"]}
    wanted = {v["query"] for v in data["templating"]["list"] if v["type"] == "datasource"}
    assert wanted <= kinds  # each datasource variable finds a provisioned datasource
    history = next(s for s in sources["datasources"] if s["type"] == "grafana-postgresql-datasource")
    assert history["secureJsonData"]["password"].startswith("$__file{/run/secrets/")  # never the password itself
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "shepherd.yaml").read_text(encoding="utf-8"))
    (provider,) = providers["providers"]
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]["volumes"] if v.startswith("../")
    )
    assert (COMPOSE.parent / "../deploy/grafana/dashboards").resolve() == DASHBOARD.parent
    assert mounts["../deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["../deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    grafana_service = compose["services"]["grafana"]
    assert set(grafana_service["secrets"]) == {"grafana_admin_password", "postgres_password"}
    assert grafana_service["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    prometheus = compose["services"]["prometheus"]
    config = next(v for v in prometheus["volumes"] if v.startswith("./prometheus.yml:"))
    scrape = yaml.safe_load((COMPOSE.parent / config.split(":")[0]).read_text(encoding="utf-8"))
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"triton:8002", "shepherd:8080"}
    assert all(
        p.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:")
        for s in ("grafana", "prometheus")
        for p in compose["services"][s]["ports"]
    )


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(MISSING)
    done = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(ROOT / "docker" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_prod_overlay_ships_the_dashboard_as_a_configmap_for_grafanas_sidecar() -> None:
    documents = render(ROOT / "deploy" / "k8s" / "overlays" / "prod")
    maps = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "shepherd-grafana-dashboard"]
    assert len(maps) == 1
    (config_map,) = maps
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "shepherd"
    assert json.loads(config_map["data"]["shepherd.json"]) == raw()
    assert len(config_map["data"]["shepherd.json"].encode()) < 1_000_000  # a ConfigMap holds at most 1 MiB

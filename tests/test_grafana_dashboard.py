"""The Grafana dashboard (docs/grafana/robot_sac.json) queries only metrics the service serves:
a real service and a real learner process, robots' transitions and acts over loopback HTTP, one
scrape of /metrics parsed by prometheus_client, and every metric name in every panel's query
looked up in it (by sample name, so a histogram's ``_bucket`` and a counter's ``_total`` are
checked as Prometheus stores them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.servers import LearnerProcess, start_thread_service, write_task
from tests.test_learner import TASK, transitions, wait_for

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "robot_sac.json"
METRIC = re.compile(r"\brobot_sac_[A-Za-z0-9_]+")
# a success threshold, so the service reports success rates (the dashboard plots them)
SPEC = TASK.model_copy(update={"success_threshold": 0.0})


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queried(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Panel title -> the metric names its queries use."""
    return {
        p["title"]: {name for t in p["targets"] for name in METRIC.findall(t["expr"])}
        for p in dashboard["panels"]
        if p["type"] != "row"
    }


def served_names(metrics_text: str) -> set[str]:
    """Every sample name in a scrape (only series with a value: an empty family is not one)."""
    return {s.name for f in text_string_to_metric_families(metrics_text) for s in f.samples}


def test_the_dashboard_is_an_importable_grafana_10_dashboard_on_a_prometheus_input() -> None:
    d = load()
    assert d["schemaVersion"] >= 38  # Grafana 10.0 and later
    assert [(i["name"], i["type"], i["pluginId"]) for i in d["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        assert all(t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"}


def test_the_dashboard_shows_what_operators_look_at() -> None:
    used = set().union(*queried(load()).values())
    for name in (
        "robot_sac_served_version",
        "robot_sac_hold",
        "robot_sac_act_latency_seconds_bucket",
        "robot_sac_requests_total",
        "robot_sac_transitions_accepted_total",
        "robot_sac_learner_up",
        "robot_sac_learner_updates_per_second",
        "robot_sac_learner_utd_effective",
        "robot_sac_learner_data_age_seconds",
        "robot_sac_learner_data_age_updates",
        "robot_sac_learner_alpha",
        "robot_sac_learner_loss",
        "robot_sac_learner_replay_size",
        "robot_sac_episode_return",
        "robot_sac_episode_success_rate",
    ):
        assert name in used, f"no panel shows {name}"


def test_every_metric_a_panel_queries_is_served_by_a_running_service(tmp_path: Path) -> None:
    panels = queried(load())
    assert all(panels.values()), "a panel queries no robot_sac metric"
    data = tmp_path / "data"
    task = write_task(tmp_path / "task.json", SPEC)
    service = start_thread_service(data, SPEC)
    learner = LearnerProcess(data, task, ROBOT_SAC_PUBLISH_EVERY="50").start()
    try:
        store = service.state.store
        wait_for(lambda: store.learner_status() is not None, 120, "the learner to start")
        c = service.client()
        # robots send three episodes after the learner started (so its effective update-to-data
        # ratio has new data to measure): 300 transitions, 100 updates past learning_starts
        batch = [t.model_dump(mode="json") for t in transitions(0, 300, robot="r1")]
        for i in range(0, 300, 100):
            r = c.post("/v1/transitions", json={"transitions": batch[i : i + 100]})
            assert r.status_code == 200, r.text
        wait_for(
            lambda: (s := store.learner_status()) is not None and s.updates >= 100 and s.losses,
            120,
            "100 updates",
        )
        for _ in range(5):
            assert c.post("/v1/act", json={"obs": [0.0, 0.0, 0.0], "robot_id": "r1"}).is_success
        served = served_names(c.get("/metrics").text)
    finally:
        learner.kill()
        service.stop()
    missing = {title: names - served for title, names in panels.items() if names - served}
    assert not missing, f"panels query metrics the service does not serve: {missing}"

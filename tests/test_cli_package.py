"""The `robot-sac` command as a package: entry points, light imports, one-line usage errors, and
the Prometheus text reader `up` uses."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import typer
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from robot_sac.admin_schemas import StatusResponse
from robot_sac.cli.app import DEFAULT_PORT, DEFAULT_URL
from robot_sac.cli.promtext import (
    ACT_LATENCY,
    act_latency_ms,
    histogram_buckets,
    quantile_bound,
)
from robot_sac.settings import Settings


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot_sac.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_the_operator_default_url_is_where_serve_listens_by_default():
    assert Settings.model_fields["port"].default == DEFAULT_PORT
    assert f"http://{Settings.model_fields['host'].default}:{DEFAULT_PORT}" == DEFAULT_URL


def test_the_public_names_and_the_console_script_resolve():
    from robot_sac.cli import DEFAULT_ENV, app, main

    assert callable(main) and DEFAULT_ENV
    names = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    operator = {"status", "robots", "policies", "pin", "follow", "hold", "release", "pause"}
    assert operator | {"resume", "upload", "serve", "learn", "sim", "up", "plot"} <= names
    assert "train-local" in names
    # the console script pyproject.toml installs runs this `main`
    scripts = [e.value for e in entry_points(group="console_scripts") if e.name == "robot-sac"]
    assert scripts == ["robot_sac.cli:main"]


def test_operator_commands_import_no_torch_numpy_or_services():
    # What the operator commands load, in a fresh interpreter: the commands, the client, the tables.
    code = (
        "import json, sys\n"
        "import robot_sac.cli.operate, robot_sac.cli.admin_client, robot_sac.cli.views\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not {"torch", "numpy", "fastapi", "gymnasium"} & loaded
    assert not any(m.startswith(("robot_sac.services", "robot_sac.sim")) for m in loaded)
    assert "robot_sac.admin_schemas" in loaded


def test_a_usage_error_is_one_line_on_stderr_with_a_nonzero_exit():
    done = run_cli("pin", "not-a-number")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("robot-sac: ") and "'VERSION'" in lines[0]
    assert "pin --help" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_help_and_version_still_exit_zero():
    assert run_cli("--version").returncode == 0
    done = run_cli("status", "--help")
    assert done.returncode == 0 and "--token" in done.stdout and "ROBOT_SAC_TOKEN" in done.stdout


def _histogram_text() -> str:
    registry = CollectorRegistry()
    h = Histogram(
        ACT_LATENCY, "latency", ["route"], buckets=(0.001, 0.002, 0.005, 0.01), registry=registry
    )
    for seconds in [0.0005] * 60 + [0.0015] * 39 + [0.008]:  # 100 acts
        h.labels(route="/v1/act").observe(seconds)
    for _ in range(1000):  # another route's acts must not count
        h.labels(route="/v1/act/batch").observe(0.5)
    return generate_latest(registry).decode()


def test_histogram_buckets_are_read_by_label():
    buckets = histogram_buckets(_histogram_text(), ACT_LATENCY, route="/v1/act")
    assert buckets == [
        (0.001, 60.0),
        (0.002, 99.0),
        (0.005, 99.0),
        (0.01, 100.0),
        (float("inf"), 100.0),
    ]


def test_quantile_bounds_of_the_act_latency():
    p50, p99 = act_latency_ms(_histogram_text())  # type: ignore[misc]
    assert p50 == pytest.approx(1.0) and p99 == pytest.approx(2.0)
    # the slowest act lands in the 10 ms bucket: p100 is at most 10 ms
    buckets = histogram_buckets(_histogram_text(), ACT_LATENCY, route="/v1/act")
    assert quantile_bound(buckets, 1.0) == pytest.approx(0.01)


def test_no_acts_or_no_metrics_text_gives_none():
    assert act_latency_ms(_histogram_text(), route="/v1/other") is None
    assert act_latency_ms("<html>502 Bad Gateway</html>") is None
    assert quantile_bound([], 0.5) is None


# === the tables (pure functions of the typed answers) ============================================

STATUS = {
    "served_version": 3,
    "mode": "follow",
    "hold": False,
    "hold_persisted": True,
    "learner_paused": False,
    "uptime_s": 12.0,
}


def render(renderable: object) -> str:
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_status_during_a_store_outage_says_what_is_unknown():
    from robot_sac.cli.views import status_view

    outage = StatusResponse.model_validate(
        {**STATUS, "hold": True, "hold_persisted": False, "store": {"state": "down", "reason": "x"}}
    )
    text = render(status_view(outage, "http://svc"))
    assert "- (the store is unavailable)" in text
    assert "EVERY ROBOT HELD (not stored yet: this replica only)" in text
    assert "down (x)" in text


def test_status_shows_the_learner():
    from robot_sac.cli.views import status_view

    learner = {
        "state": "running",
        "phase": "running",
        "updates": 1200,
        "updates_per_s": 35.04,
        "utd": 1.0,
        "utd_effective": 0.9812,
        "alpha": 0.1234,
        "losses": {"loss_actor": -1.25, "loss_qvalue": 0.5, "loss_alpha": None},
        "replay_size": 5000,
    }
    status = StatusResponse.model_validate({**STATUS, "learner": learner, "transitions": 5001})
    rows = {
        cells[0]: cells[1]
        for cells in (
            [c.strip() for c in line.split("│")[1:-1]]
            for line in render(status_view(status, "http://svc")).splitlines()
        )
        if len(cells) == 2
    }
    assert rows["learner"] == "running"
    assert rows["updates"] == "1200 (35.0/s)"
    assert rows["UTD effective"] == "0.981 (target 1)"
    assert rows["alpha"] == "0.123"
    assert rows["losses"] == "actor -1.25 · qvalue 0.5 · alpha -"
    assert rows["replay size"] == "5000"
    assert rows["transitions"] == "5001"


def test_status_shows_the_traffic_when_the_service_reports_it():
    from robot_sac.cli.live import latency_line
    from robot_sac.cli.views import status_view

    traffic = {
        "window_s": 60.0,
        "acts_per_s": 250.0,
        "act_latency_p50_ms": 1.25,
        "act_latency_p99_ms": None,
        "transitions_per_s": 240.0,
    }
    status = StatusResponse.model_validate({**STATUS, "traffic": traffic})
    text = render(status_view(status, "http://svc"))
    assert "│ traffic        │ 250.0 acts/s · 240.0 transitions/s (last 60 s)" in text
    assert "│ act latency    │ p50 1.25 ms · p99 - ms" in text
    # `up` uses it too, and then does not read /metrics (nothing listens at this URL)
    assert (
        latency_line(status, "http://127.0.0.1:9")
        == "250 acts/s · p50 1.25 ms · p99 - ms (last 60 s)"
    )


def test_robots_table_marks_who_is_held_and_how():
    from robot_sac.admin_schemas import RobotsResponse
    from robot_sac.cli.views import robots_view

    def robot(robot_id: str, held: bool, alone: bool) -> dict[str, object]:
        return {
            "robot_id": robot_id,
            "held": held,
            "held_alone": alone,
            "last_act_at": 1.0,
            "last_act_age_s": 2.4,
            "last_version": 7,
            "acts": 10,
            "episodes": 1,
            "last_return": -3.5,
            "mean_return": None,
        }

    answer = RobotsResponse(robots=[robot("b", True, False), robot("a", True, True)])  # type: ignore[list-item]
    lines = [line for line in render(robots_view(answer)).splitlines() if "│" in line]
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines]
    assert cells[-2] == ["a", "alone", "2 s ago", "7", "10", "1", "-3.50", "-"]
    assert cells[-1][:2] == ["b", "all held"]

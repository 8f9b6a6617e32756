"""Demonstrations and interventions: simulated robots with the scripted expert standing in for a
teleoperator, against a real service over HTTP, with real physics, read back from the store."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot_sac.sim.envs import make_env, task_spec
from robot_sac.sim.experts import EE_POSITION, expert_for
from robot_sac.sim.robot import EpisodeReport, run_robot
from robot_sac.store.records import SOURCE_CODES
from tests.servers import ThreadService, start_thread_service

REACH = "PandaReachDense-v3"
POLICY, HUMAN, DEMO = (SOURCE_CODES[s] for s in ("policy", "human", "demo"))  # LogRows.source


@pytest.fixture
def service(tmp_path: Path) -> ThreadService:
    svc = start_thread_service(tmp_path / "data", task_spec(REACH))
    yield svc
    svc.stop()


def logged(svc: ThreadService):  # type: ignore[no-untyped-def]
    """Every stored row, oldest first (one robot's rows are in the order it took its steps)."""
    return svc.state.store.read_after(0, 100_000)


def episodes_of(rows, reports: list[EpisodeReport]) -> list[slice]:  # type: ignore[no-untyped-def]
    """The rows of each reported episode, for a single robot's log."""
    out, start = [], 0
    for r in reports:
        out.append(slice(start, start + r.steps))
        start += r.steps
    ends = np.flatnonzero(rows.terminated | rows.truncated) + 1
    assert [s.stop for s in out] == list(ends[: len(out)])  # the log agrees with the reports
    return out


def test_demonstrations_come_first_and_are_logged_as_demo(service: ThreadService) -> None:
    reports = run_robot(service.url, REACH, "sim-0", steps=60, seed=1, run_id="r1", demos=2)
    rows = logged(service)
    assert len(rows) == 60
    spans = episodes_of(rows, reports)
    assert [r.demo for r in reports[:3]] == [True, True, False]
    for span in spans[:2]:  # the expert's episodes: its actions, no version chose them
        assert set(rows.source[span]) == {DEMO}
        assert set(rows.policy_version[span]) == {-1}
    demo_steps = spans[1].stop
    assert set(rows.source[demo_steps:]) == {POLICY}  # then the policy, as before
    assert set(rows.policy_version[demo_steps:]) == {0}
    expert = expert_for(REACH)
    for obs, action in zip(rows.obs[:demo_steps], rows.action[:demo_steps], strict=True):
        np.testing.assert_allclose(action, expert(obs), atol=1e-6)
    # the expert solves reach: its demonstrations succeed, in a few steps
    assert all(r.success and r.steps < 10 for r in reports[:2])
    assert reports[0].policy_version is None and reports[2].policy_version == 0


def test_interventions_take_over_struggling_policy_episodes(service: ThreadService) -> None:
    reports = run_robot(service.url, REACH, "sim-0", steps=150, seed=2, run_id="r1", intervene=1.0)
    rows = logged(service)
    spans = episodes_of(rows, reports)
    expert = expert_for(REACH)
    helped = 0
    for report, span in zip(reports, spans, strict=True):
        source = rows.source[span]
        assert report.human_steps == int(np.sum(source == HUMAN)) and not report.demo
        if not report.human_steps:
            continue
        helped += 1
        # The policy drove until it had struggled for 10 steps; then the expert, for one
        # stretch of at most 20 steps; the policy's own steps stay "policy".
        first = int(np.argmax(source == HUMAN))
        assert first >= 10 and set(source[:first]) == {POLICY}
        stretch = source[first:]
        taken = int(np.sum(stretch == HUMAN))
        assert taken <= 20 and set(stretch[:taken]) == {HUMAN} and set(stretch[taken:]) <= {POLICY}
        assert set(rows.policy_version[span][source == HUMAN]) == {-1}
        for i in np.flatnonzero(source == HUMAN):
            obs, action = rows.obs[span][i], rows.action[span][i]
            np.testing.assert_allclose(action, expert(obs), atol=1e-6)
    assert helped >= 2  # an untrained policy struggles in every episode
    assert not np.any(rows.source == DEMO)


def test_no_interventions_without_asking(service: ThreadService) -> None:
    reports = run_robot(service.url, REACH, "sim-0", steps=100, seed=2, run_id="r1", intervene=0)
    rows = logged(service)
    assert len(rows) == 100 and set(rows.source) == {POLICY}
    assert all(r.human_steps == 0 and not r.demo for r in reports)


def test_a_held_robot_stays_still_whatever_the_expert_wants(
    service: ThreadService, caplog: pytest.LogCaptureFixture
) -> None:
    """A teleoperator's correction does not override the hold: neither a demonstration nor an
    intervention moves a held robot; it applies the service's safe action."""
    c = service.client()
    assert c.post("/v1/admin/hold", json={"robot_id": "sim-0"}).status_code == 200
    with caplog.at_level(logging.INFO, logger="robot_sac.sim"):
        reports = run_robot(
            service.url, REACH, "sim-0", steps=100, seed=3, run_id="r1", demos=1, intervene=1.0
        )
    # the expert did want to drive: a demonstration, then a take-over of the stuck episode
    assert reports[0].demo and not reports[1].demo
    assert "the expert takes over r1-1" in caplog.text
    rows = logged(service)
    assert len(rows) == 100 and all(r.held_steps == r.steps for r in reports)
    np.testing.assert_array_equal(rows.action, np.zeros_like(rows.action))  # the safe action
    # the expert chose no applied action, so no row says it did
    assert set(rows.source) == {POLICY} and set(rows.policy_version) == {0}
    # and the arm never moved (an env reset puts it back where it starts anyway)
    start = make_env(REACH).reset(seed=3)[0][EE_POSITION]
    for ee in rows.next_obs[:, EE_POSITION]:
        np.testing.assert_allclose(ee, start, atol=2e-3)


def test_sim_command_logs_the_demonstrations_asked_across_robots(
    service: ThreadService,
) -> None:
    """``robot-sac sim --demos 3`` with two robots: three demonstrations in all (two and one),
    then policy steps."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "robot_sac.cli",
            "sim",
            *("--url", service.url, "--env", REACH, "--robots", "2", "--steps", "80"),
            *("--demos", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "demonstrations: 3 episodes" in out.stdout
    rows = logged(service)
    assert len(rows) == 80
    ends = rows.terminated | rows.truncated
    assert int(np.sum(ends & (rows.source == DEMO))) == 3  # each demonstration ends once
    assert int(np.sum(rows.source == POLICY)) > 40 and not np.any(rows.source == HUMAN)


def test_demos_need_an_expert() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "robot_sac.cli", "sim", "--env", "Pendulum-v1", "--demos", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "no scripted expert for Pendulum-v1" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

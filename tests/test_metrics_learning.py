"""What ``/metrics`` tells operators about learning: episode return and success by version, the
learner's losses (a skipped update's null loss included), parsed with prometheus_client's own
parser rather than by splitting strings."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from robot_sac.admin_schemas import LearnerStatus
from tests.servers import ThreadService, start_thread_service, transition


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_episode_returns_by_version_and_the_learners_losses_are_exported(tmp_path: Path) -> None:
    svc = start_thread_service(tmp_path / "data")
    try:
        c = svc.client()
        # Two episodes of version 0 (returns 3 and 1), one of version 1 (return 5).
        episodes = [("a", 0, [1.0, 1.0, 1.0]), ("b", 0, [0.5, 0.5]), ("c", 1, [5.0])]
        for episode, version, rewards in episodes:
            steps = [
                transition(
                    "r",
                    episode,
                    i,
                    reward=r,
                    policy_version=version,
                    terminated=i == len(rewards) - 1,
                )
                for i, r in enumerate(rewards)
            ]
            assert c.post("/v1/transitions", json={"transitions": steps}).status_code == 200
        svc.state.store.write_learner_status(
            LearnerStatus(updates=7, losses={"loss_actor": 0.5, "loss_qvalue": None})
        )
        got = samples(c.get("/metrics").text)
        assert got[("robot_sac_episode_return", (("version", "0"),))] == 2.0
        assert got[("robot_sac_episode_return", (("version", "1"),))] == 5.0
        assert got[("robot_sac_episodes", (("version", "0"),))] == 2.0
        assert got[("robot_sac_learner_updates", ())] == 7.0
        assert got[("robot_sac_learner_loss", (("loss", "loss_actor"),))] == 0.5
        assert ("robot_sac_learner_loss", (("loss", "loss_qvalue"),)) not in got  # null: left out
    finally:
        svc.stop()


def test_the_learners_progress_gauges_come_from_its_status_row(service: ThreadService) -> None:
    losses = {"loss_actor": -1.5, "loss_qvalue": 0.25, "loss_alpha": 0.125}
    status = LearnerStatus(
        updates=500,
        env_steps=600,
        replay_size=600,
        utd=1.0,
        utd_effective=1.25,
        data_age_s=0.5,
        data_age_updates=12.5,
        alpha=0.2,
        losses=losses,
    )
    service.state.store.write_learner_status(status)
    c = service.client()
    got = samples(c.get("/metrics").text)
    learner = {name: value for (name, labels), value in got.items() if not labels}
    assert learner["robot_sac_learner_updates"] == 500.0
    assert learner["robot_sac_learner_env_steps"] == 600.0
    assert learner["robot_sac_learner_replay_size"] == 600.0
    assert learner["robot_sac_learner_utd"] == 1.0
    assert learner["robot_sac_learner_utd_effective"] == 1.25
    assert learner["robot_sac_learner_data_age_updates"] == 12.5
    assert learner["robot_sac_learner_alpha"] == 0.2
    # the learner's view of the log as of its heartbeat, aged by the heartbeat's age at the scrape
    age = learner["robot_sac_learner_heartbeat_age_seconds"]
    assert learner["robot_sac_learner_data_age_seconds"] == pytest.approx(0.5 + age, abs=1e-9)
    assert 0.5 <= learner["robot_sac_learner_data_age_seconds"] < 5.5
    for name, value in losses.items():
        assert got[("robot_sac_learner_loss", (("loss", name),))] == value

    # no transition in the window, no read of the log yet: no ratio, no age (not a made-up 0)
    service.state.store.write_learner_status(
        status.model_copy(update={"utd_effective": None, "data_age_s": None})
    )
    names = {name for name, _ in samples(c.get("/metrics").text)}
    assert "robot_sac_learner_updates" in names
    assert "robot_sac_learner_utd_effective" not in names
    assert "robot_sac_learner_data_age_seconds" not in names

"""What ``/metrics`` tells operators about learning: episode return and success by version, the
learner's losses (a skipped update's null loss included), parsed with prometheus_client's own
parser rather than by splitting strings."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.servers import start_thread_service, transition


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
            {"state": "running", "updates": 7, "losses": {"loss_actor": 0.5, "loss_qvalue": None}}
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

"""CUDA paths: the graphed update and serving on the GPU. Skipped where torch sees no GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.config import SACConfig
from robot_sac.cuda_graphs import GraphedUpdate
from robot_sac.policy import load_policy, policy_bytes
from robot_sac.replay import ReplayBuffer
from robot_sac.sac import SAC

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def filled_replay(n: int = 512) -> ReplayBuffer:
    # Every transition terminates and its reward is a function of the observation: the critic's
    # target is then fixed, so a working update must fit it.
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, 5, generator=g)
    rb = ReplayBuffer(4096, 5, 2, device="cuda")
    rb.add(obs, torch.rand(n, 2, generator=g) * 2 - 1, obs[:, 0], torch.randn(n, 5), torch.ones(n))
    return rb


@pytest.mark.parametrize("family", ["tanh_normal", "beta"])
def test_graphed_update_learns_and_keeps_the_invariants(family):
    torch.manual_seed(0)
    sac = SAC(5, 2, SACConfig(hidden=(64, 64), batch_size=128, policy_family=family), "cuda")
    rb = filled_replay()
    step = GraphedUpdate(sac, rb)
    assert sac.updates == 3  # the warm-up updates are real ones; the capture is not counted
    first = {k: v.clone() for k, v in step().items()}
    for _ in range(300):
        target_before = [p.clone() for p in sac.critic_target.parameters()]
        out = step()
    torch.cuda.synchronize()
    assert sac.updates == 304
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    # the critic fits the fixed targets: its loss falls well below where it started
    assert float(out["loss_qvalue"]) < 0.5 * float(first["loss_qvalue"])
    for old, new_c, new_t in zip(
        target_before, sac.critic.parameters(), sac.critic_target.parameters(), strict=True
    ):
        expected = old + sac.cfg.tau * (new_c.detach() - old)
        torch.testing.assert_close(new_t, expected, atol=1e-6, rtol=1e-5)
    # the graph follows the buffer as it grows: new rows are sampled once they are added
    assert int(step.last_indices.max()) < 512
    rb.add(
        torch.full((512, 5), 7.0),
        torch.zeros(512, 2),
        torch.zeros(512),
        torch.zeros(512, 5),
        torch.zeros(512),
    )
    drawn = []
    for _ in range(5):
        step()
        drawn.append(step.last_indices.clone())
    assert int(torch.cat(drawn).max()) >= 512


@pytest.mark.parametrize(
    "options",
    [
        {"critic_layer_norm": True},
        {"num_critics": 10, "critic_subset": 2},
        {"prior_share": 0.5},
        {"critic_layer_norm": True, "num_critics": 10, "critic_subset": 2, "prior_share": 0.5},
    ],
    ids=["layer_norm", "redq", "prior_share", "rlpd"],
)
def test_graphed_update_covers_the_learner_options(options: dict[str, object]):
    torch.manual_seed(0)
    cfg = SACConfig.model_validate({"hidden": (64, 64), "batch_size": 128, **options})
    sac = SAC(5, 2, cfg, "cuda")
    rb = filled_replay()
    step = GraphedUpdate(sac, rb)
    first = {k: v.clone() for k, v in step().items()}
    subsets = []
    for _ in range(300):
        out = step()
        if sac.subset_min:
            assert sac.last_subset is not None
            subsets.append(sac.last_subset.clone())
    torch.cuda.synchronize()
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    assert float(out["loss_qvalue"]) < 0.5 * float(first["loss_qvalue"])
    if subsets:  # the random pair is drawn inside the graph: a fresh one at each replay
        pairs = {tuple(sorted(s.tolist())) for s in subsets}
        assert all(len(p) == 2 and len(set(p)) == 2 for p in pairs) and len(pairs) > 20
    assert rb.drawn_rows == 304 * 128 and rb.drawn_prior_rows == 0  # no prior row yet
    k = step.prior_rows
    assert k == round(cfg.prior_share * 128)
    # prior rows arrive after the capture: the graph draws its first k rows from them
    rb.add(
        torch.full((64, 5), 7.0),
        torch.zeros(64, 2),
        torch.zeros(64),
        torch.zeros(64, 5),
        torch.ones(64),
        prior=True,
    )
    for _ in range(5):
        step()
        idx = step.last_indices
        assert int(idx.max()) < 576
        if k:
            assert int(idx[:k].min()) >= 512  # the prior rows sit at 512..575
    assert rb.drawn_prior_rows == 5 * k


def test_policy_acts_on_cuda_finite_and_inside_bounds():
    torch.manual_seed(0)
    sac = SAC(5, 2, SACConfig(hidden=(32, 32)), "cuda")
    data = policy_bytes(sac.actor, [-1.0, 0.0], [1.0, 3.0], version=1)
    pi = load_policy(data, device="cuda")
    obs = torch.randn(64, 5, device="cuda") * 1e4
    a = pi.act(obs)
    assert a.device.type == "cuda" and bool(torch.isfinite(a).all())
    assert bool((a[:, 1] >= 0).all()) and bool((a[:, 1] <= 3).all())
    single = pi.act(np.zeros(5, np.float32), deterministic=True)
    assert isinstance(single, np.ndarray) and single.shape == (2,)


def test_learner_trains_on_cuda_with_a_graphed_update(tmp_path):
    from robot_sac.config import SACConfig
    from robot_sac.schemas import TaskSpec
    from robot_sac.services.learner import Learner
    from robot_sac.settings import Settings
    from robot_sac.store import open_store
    from tests.test_learner import transitions

    spec = TaskSpec(
        name="small",
        obs_dim=3,
        action_low=(-2.0,),
        action_high=(2.0,),
        sac=SACConfig(hidden=(64, 64), batch_size=64, learning_starts=200),
    )
    settings = Settings(data_dir=tmp_path, device="cuda", publish_every=100)
    store = open_store(spec, tmp_path)
    ensure_initial_policy(store)
    store.append(transitions(0, 1000))
    learner = Learner(settings, spec, store, torch.device("cuda"))
    learner.start()
    assert learner.replay.storage.device.type == "cuda" and len(learner.replay) == 1000
    learner.run(lambda: False, max_updates=800)
    learner.close()
    assert learner.sac.updates == 800 and learner._graphed is not None
    status = store.learner_status()
    assert status is not None and status.device.startswith("cuda")
    assert all(np.isfinite(v) for v in status.losses.values())
    versions = store.list_policies()
    assert versions[-1].updates == 800 and len(versions) >= 9
    store.close()


def test_service_serves_on_cuda(tmp_path):
    from tests.servers import start_thread_service

    svc = start_thread_service(tmp_path / "data", device="cuda")
    try:
        assert svc.state.serving.served.policy.device.type == "cuda"
        c = svc.client()
        a = c.post("/v1/act", json={"obs": [0.1] * 17}).json()
        assert len(a["action"]) == 6 and all(abs(x) <= 1 for x in a["action"])
        batch = c.post("/v1/act/batch", json={"obs": [[0.1] * 17] * 64}).json()["actions"]
        assert len(batch) == 64 and np.isfinite(np.asarray(batch)).all()
    finally:
        svc.stop()

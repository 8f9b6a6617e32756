"""RLPD-style symmetric sampling: the replay's index of prior rows (demonstrations, an operator's
corrections) through overwrites, the exact share of each batch drawn from them, its cost, and the
same draw as the CUDA graph makes it (run here on the CPU)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from robot_sac.bootstrap import ensure_initial_policy
from robot_sac.config import SACConfig
from robot_sac.cuda_graphs import graphable_sample_indices
from robot_sac.replay import ReplayBuffer
from robot_sac.schemas import TaskSpec, Transition
from robot_sac.services.learner import Learner
from robot_sac.settings import Settings
from robot_sac.store import open_store
from tests.test_learner import transitions

OBS, ACT = 3, 2
REWARD_COLUMN = OBS + ACT  # the storage column of the reward: each test row's id


def rows(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Transitions whose reward is their id (so a storage row says which transition it holds)."""
    ids = ids.astype(np.float32)
    return {
        "obs": np.repeat(ids[:, None], OBS, 1),
        "action": np.zeros((len(ids), ACT), np.float32),
        "reward": ids,
        "next_obs": np.repeat(ids[:, None], OBS, 1),
        "terminated": np.zeros(len(ids), np.float32),
    }


def ids_at(rb: ReplayBuffer, storage_rows: torch.Tensor) -> list[int]:
    return [int(v) for v in rb.storage[storage_rows, REWARD_COLUMN]]


@pytest.mark.parametrize("seed", range(5))
def test_the_prior_index_follows_adds_and_overwrites(seed: int):
    # A reference model, a plain list of the newest `capacity` transitions, against the buffer
    # after each add of random size (some wrap the ring, some exceed it) and random prior flags.
    rng = np.random.default_rng(seed)
    capacity = 37
    rb = ReplayBuffer(capacity, OBS, ACT)
    held: list[tuple[int, bool]] = []
    next_id = 0
    for _ in range(60):
        n = int(rng.choice([1, 3, 10, 36, 37, 50]))
        flags = rng.random(n) < rng.choice([0.0, 0.1, 0.5, 1.0])
        ids = np.arange(next_id, next_id + n)
        next_id += n
        rb.add(**rows(ids), prior=flags)
        held = (held + list(zip(ids.tolist(), flags.tolist(), strict=True)))[-capacity:]
        want = [i for i, is_prior in held if is_prior]
        assert rb.prior_size == len(want)
        assert ids_at(rb, rb.prior_rows()) == want  # every prior row held, oldest first
        assert len(rb) == len(held)


def test_overwritten_prior_rows_are_never_drawn():
    rb = ReplayBuffer(100, OBS, ACT)
    rb.add(**rows(np.arange(100)), prior=np.arange(100) < 20)  # rows 0..19 are demonstrations
    rb.add(**rows(np.arange(100, 110)))  # the policy's steps overwrite demonstrations 0..9
    assert rb.prior_size == 10
    g = torch.Generator().manual_seed(0)
    drawn = ids_at(rb, rb.sample_indices(4096, g, prior_share=1.0))
    assert set(drawn) == set(range(10, 20))
    rb.add(**rows(np.arange(110, 200)))  # and then the rest of them
    assert rb.prior_size == 0
    drawn = ids_at(rb, rb.sample_indices(4096, g, prior_share=1.0))
    assert min(drawn) >= 100  # no prior row left: drawn from all rows, which are all new


@pytest.mark.parametrize("batch_size", [256, 255, 7, 1])
@pytest.mark.parametrize("prior_share", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_each_batch_draws_exactly_its_share_from_the_prior_rows(
    batch_size: int, prior_share: float
):
    rb = ReplayBuffer(2000, OBS, ACT)
    rb.add(**rows(np.arange(1000)), prior=np.arange(1000) % 100 == 0)  # 10 demonstrations
    prior_ids = set(range(0, 1000, 100))
    k = round(prior_share * batch_size)
    g = torch.Generator().manual_seed(1)
    rest_prior, rest_total, rest_ids, prior_seen = 0, 0, set(), set()
    for batches in range(1, 201):
        batch = rb.sample(batch_size, g, prior_share=prior_share)
        drawn = [int(r) for r in batch.reward]
        assert len(drawn) == batch_size
        assert ids_at(rb, rb.last_indices) == drawn
        assert all(i in prior_ids for i in drawn[:k])  # the share, exactly, in every batch
        prior_seen.update(drawn[:k])
        rest_prior += sum(i in prior_ids for i in drawn[k:])
        rest_total += batch_size - k
        rest_ids.update(drawn[k:])
        assert rb.drawn_prior_rows == batches * k and rb.drawn_rows == batches * batch_size
    if k:
        assert prior_seen == prior_ids  # uniform over the prior rows: each one comes up
    if rest_total >= 20_000:
        # the rest is drawn from all rows, prior ones included at their share of the buffer (1 %)
        assert 0.005 < rest_prior / rest_total < 0.015
        assert len(rest_ids) == 1000


def test_without_prior_rows_the_batch_is_the_uniform_draw_of_before():
    rb = ReplayBuffer(500, OBS, ACT)
    rb.add(**rows(np.arange(300)))
    for share in (0.0, 0.5):
        g = torch.Generator().manual_seed(3)
        idx = rb.sample_indices(256, g, prior_share=share)
        assert torch.equal(
            idx, torch.randint(300, (256,), generator=torch.Generator().manual_seed(3))
        )
    assert rb.drawn_prior_rows == 0 and rb.drawn_rows == 512


def test_a_share_outside_zero_to_one_and_a_bad_flag_array_are_refused():
    rb = ReplayBuffer(10, OBS, ACT)
    with pytest.raises(ValueError, match="prior has 2 rows"):
        rb.add(**rows(np.arange(3)), prior=np.array([True, False]))
    rb.add(**rows(np.arange(3)), prior=True)  # one flag for every row
    assert rb.prior_size == 3
    with pytest.raises(ValueError, match="prior_share"):
        rb.sample(4, prior_share=1.5)
    with pytest.raises(ValidationError):
        SACConfig(prior_share=-0.1)


def test_adding_and_sampling_with_prior_rows_stay_vectorised():
    # Against the same buffer work without prior rows, best of a few runs each: a Python loop per
    # row (a million rows) or per prior row would be orders of magnitude slower, not a few times.
    n = 1_000_000
    data = rows(np.arange(n))
    flags = np.random.default_rng(0).random(n) < 0.3

    def add_seconds(prior: np.ndarray | None) -> float:
        best = float("inf")
        for _ in range(3):
            rb = ReplayBuffer(n // 2, OBS, ACT)  # the second half of the add overwrites the first
            t0 = time.perf_counter()
            rb.add(**data, prior=prior)
            rb.add(**rows(np.arange(10_000)), prior=flags[:10_000])  # wraps, evicts prior rows
            best = min(best, time.perf_counter() - t0)
        return best

    assert add_seconds(flags) < 3 * add_seconds(None) + 0.05
    rb = ReplayBuffer(n, OBS, ACT)
    rb.add(**data, prior=flags)
    assert rb.prior_size == int(flags.sum())

    def sample_seconds(share: float) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(50):
                rb.sample(256, prior_share=share)
            best = min(best, time.perf_counter() - t0)
        return best

    assert sample_seconds(0.5) < 3 * sample_seconds(0.0) + 0.01


def graph_draw(rb: ReplayBuffer, batch_size: int, prior_rows: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return graphable_sample_indices(
        rb,
        batch_size,
        prior_rows,
        torch.tensor(float(len(rb)), dtype=torch.float64),
        torch.tensor(float(rb.prior_size), dtype=torch.float64),
        torch.tensor(rb.prior_head, dtype=torch.int64),
    )


def test_the_graphed_sampler_draws_the_same_shares_from_device_counters():
    # What GraphedUpdate captures, run eagerly on the CPU: its first rows come from the prior
    # ring through a device-side head and count, across a wrap of the ring.
    rb = ReplayBuffer(100, OBS, ACT)
    rb.add(**rows(np.arange(80)))
    idx = graph_draw(rb, 64, 32, seed=0)  # no prior row yet: all 64 from all rows
    assert idx.shape == (64,) and int(idx.max()) < 80
    assert len(set(ids_at(rb, idx[:32]))) > 16  # not one repeated row
    rb.add(**rows(np.arange(80, 130)), prior=np.arange(80, 130) >= 120)  # wraps; 10 prior rows
    assert rb.prior_head == 0 and rb.prior_size == 10
    # 95 more: they overwrite the oldest rows, demonstrations 120..124 among them
    rb.add(**rows(np.arange(130, 225)), prior=np.arange(130, 225) % 20 == 0)
    want = set(range(125, 130)) | set(range(140, 225, 20))
    assert ids_at(rb, rb.prior_rows()) == sorted(want) and rb.prior_head == 5
    for seed in range(20):
        drawn = ids_at(rb, graph_draw(rb, 64, 32, seed))
        assert all(i in want for i in drawn[:32])
        assert all(125 <= i < 225 for i in drawn)


# --- the learner: demonstrations and corrections in the log are its prior rows -----------------


def marked(start: int, n: int, source: str, reward: float) -> list[Transition]:
    """``n`` transitions of ``source`` whose reward is ``reward`` (how a replay row shows it)."""
    return [
        t.model_copy(update={"source": source, "reward": reward, "robot_id": source})
        for t in transitions(start, n)
    ]


def test_the_learners_batches_draw_their_share_from_demonstrations_and_corrections(
    tmp_path: Path,
):
    spec = TaskSpec(
        name="small",
        obs_dim=3,
        action_low=(-2.0,),
        action_high=(2.0,),
        sac=SACConfig(
            hidden=(16, 16), batch_size=32, learning_starts=100, buffer_size=400, prior_share=0.25
        ),
    )
    store = open_store(spec, tmp_path)
    ensure_initial_policy(store)
    # policy steps (their rewards are standard normal draws, below 50), demonstrations, an
    # operator's corrections, more policy steps: the log's order is the replay's
    store.append(transitions(0, 150))
    store.append(marked(0, 30, "demo", 100.0))
    store.append(marked(30, 10, "human", 200.0))
    store.append(transitions(150, 60))
    learner = Learner(
        Settings(data_dir=tmp_path, publish_every=1000),
        spec,
        store,
        torch.device("cpu"),
        tensorboard=False,
    )
    learner.start()  # the replay is rebuilt from the log, sources included
    rb = learner.replay
    reward_column = spec.obs_dim + spec.action_dim
    assert len(rb) == 250 and rb.prior_size == 40
    assert (
        sorted(int(r) for r in rb.storage[rb.prior_rows(), reward_column])
        == [100] * 30 + [200] * 10
    )
    learner.run(lambda: False, max_updates=150)  # utd 1: 250 - 100 transitions' worth
    assert learner.sac.updates == 150
    # every one of the learner's batches drew round(0.25 * 32) = 8 rows from the prior rows
    assert rb.drawn_rows == 150 * 32 and rb.drawn_prior_rows == 150 * 8
    assert rb.last_indices is not None
    assert float(rb.storage[rb.last_indices[:8], reward_column].min()) >= 100.0
    # new policy steps, read by the running learner, overwrite the oldest rows of the ring: the
    # 400 rows held are now the log's last 400 (of 580), without the first 150 policy steps and
    # the demonstrations; the corrections stay
    store.append(transitions(210, 330))
    learner.run(lambda: False, max_updates=151)
    assert len(rb) == 400 and rb.prior_size == 10
    learner.run(lambda: False, max_updates=200)
    assert float(rb.storage[rb.last_indices[:8], reward_column].min()) == 200.0
    assert rb.drawn_prior_rows == learner.sac.updates * 8
    learner.close()
    store.close()

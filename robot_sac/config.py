"""The one frozen configuration of the SAC algorithm.

Kept free of torch so that a task file can be read and validated on a robot's computer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PolicyFamily = Literal["tanh_normal", "beta"]


class SACConfig(BaseModel):
    """Hyper-parameters of SAC, with the usual defaults (Haarnoja et al. 2018, v2).

    ``target_entropy=None`` means ``-action_dim``. ``utd`` is the update-to-data ratio: SAC
    updates per environment transition.

    Options for learning from demonstrations and interventions at high ``utd`` (RLPD, Ball et al.
    2023; SERL; REDQ, Chen et al. 2021). The defaults are plain SAC with twin critics:

    - ``critic_layer_norm``: a LayerNorm (with a learnt per-unit scale and shift) after each hidden
      linear layer of every critic, before its ReLU. It bounds the critics' features, which keeps
      Q from diverging when it is updated many times per transition or trained on data far from
      the policy's (demonstrations).
    - ``num_critics`` (N) and ``critic_subset`` (M): an ensemble of N critics, all regressed on one
      soft Bellman target whose Q is the min over M of the target critics drawn at random at each
      update. With M = N (the default, 2 and 2) the target and the actor both use the min over all
      critics: SAC's clipped double Q, unchanged. With M < N (REDQ: N = 10, M = 2) the actor's Q is
      the mean over all N critics, as REDQ and RLPD do: the random-subset min already keeps the
      target pessimistic, which is where over-estimation compounds through bootstrapping, while
      the ensemble mean is the actor's lowest-variance estimate and a min over a fresh random pair
      would add noise and a second, uncontrolled pessimism to the policy gradient.
    - ``prior_share``: the share of each batch drawn from the prior rows (transitions logged with
      source ``human`` or ``demo``), ``round(prior_share * batch_size)`` rows exactly; the rest
      come from all rows. RLPD's symmetric sampling is 0.5. While the buffer holds no prior row,
      the whole batch comes from all rows.

    ``obs_normalization``: the learner keeps a running mean and variance of the observations it
    takes from the log, trains on ``clip((obs - mean) / sqrt(var + obs_norm_eps), ±obs_norm_clip)``
    and ships the frozen statistics in every version it publishes, which every serving path then
    applies (see :mod:`robot_sac.normalization`). Off by default: versions stay format 1 and
    learning is unchanged.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy_family: PolicyFamily = "tanh_normal"
    hidden: tuple[int, ...] = Field(default=(256, 256), min_length=1)
    gamma: float = Field(default=0.99, ge=0.0, le=1.0)
    tau: float = Field(default=0.005, gt=0.0, le=1.0)
    lr: float = Field(default=3e-4, gt=0.0)
    batch_size: int = Field(default=256, ge=1)
    buffer_size: int = Field(default=1_000_000, ge=1)
    learning_starts: int = Field(default=1000, ge=0)
    utd: float = Field(default=1.0, ge=0.0)
    init_alpha: float = Field(default=1.0, gt=0.0)
    target_entropy: float | None = None
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    obs_normalization: bool = False
    obs_norm_clip: float = Field(default=10.0, gt=0.0, le=1e6)  # Stable-Baselines3's VecNormalize
    obs_norm_eps: float = Field(default=1e-8, ge=0.0, le=1.0)
    critic_layer_norm: bool = False
    num_critics: int = Field(default=2, ge=1)
    critic_subset: int = Field(default=2, ge=1)
    prior_share: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_critic_subset(self) -> SACConfig:
        if self.critic_subset > self.num_critics:
            raise ValueError(
                f"critic_subset={self.critic_subset} exceeds num_critics={self.num_critics}: the "
                "target's min is over a subset of the critics"
            )
        return self

    def resolved_target_entropy(self, action_dim: int) -> float:
        return -float(action_dim) if self.target_entropy is None else self.target_entropy


# Per-task settings that differ from the defaults, as RL Zoo keeps them: SAC is sensitive to the
# discount and learning rate of a task, and a robotics engineer should not have to find them.
TUNED: dict[str, dict[str, object]] = {
    "Pendulum-v1": {"lr": 1e-3, "learning_starts": 100},
    # A short-horizon reach: a shorter discount, a faster rate, a small initial temperature,
    # learning from 250 steps (the random steps before it teach little here) and two updates per
    # step. How each was chosen: docs/benchmarks.md, "Tuning the Panda reach".
    "PandaReachDense-v3": {
        "gamma": 0.95,
        "lr": 1e-3,
        "init_alpha": 0.1,
        "learning_starts": 250,
        "utd": 2.0,
    },
    "PandaPushDense-v3": {"gamma": 0.95, "lr": 1e-3, "init_alpha": 0.1, "learning_starts": 1000},
    # Part of RL Zoo's SAC settings for the PyBullet locomotion tasks: its learning rate, buffer,
    # gamma, tau and learning starts (not its gSDE, [400, 300] networks or train_freq 8).
    "HalfCheetahBulletEnv-v0": {
        "gamma": 0.98,
        "tau": 0.02,
        "lr": 7.3e-4,
        "learning_starts": 10_000,
        "buffer_size": 300_000,
    },
    "HopperBulletEnv-v0": {
        "gamma": 0.98,
        "tau": 0.02,
        "lr": 7.3e-4,
        "learning_starts": 10_000,
        "buffer_size": 300_000,
    },
    "Walker2DBulletEnv-v0": {
        "gamma": 0.98,
        "tau": 0.02,
        "lr": 7.3e-4,
        "learning_starts": 10_000,
        "buffer_size": 300_000,
    },
    "AntBulletEnv-v0": {
        "gamma": 0.98,
        "tau": 0.02,
        "lr": 7.3e-4,
        "learning_starts": 10_000,
        "buffer_size": 300_000,
    },
    "ReacherBulletEnv-v0": {"lr": 7.3e-4, "learning_starts": 1000},
    "InvertedPendulumBulletEnv-v0": {"lr": 7.3e-4, "learning_starts": 1000},
}


def tuned_config(env_id: str | None) -> SACConfig:
    """The shipped settings for ``env_id`` (the defaults for a task not in :data:`TUNED`)."""
    return SACConfig.model_validate(TUNED.get(env_id or "", {}))

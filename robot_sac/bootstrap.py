"""Version 0: on first start, a freshly initialised actor is registered so robots can act.

It lives here, not in the store, because it builds an :class:`~robot_sac.networks.Actor`;
the store only keeps bytes.
"""

from __future__ import annotations

import time

from robot_sac.store import PolicyRecord, Store

# How long a start waits for version 0 that another process reserved to land.
FIRST_VERSION_WAIT_S = 10.0


def ensure_initial_policy(store: Store, seed: int = 0) -> PolicyRecord:
    """The newest version, registering version 0 first if the registry is empty.

    Two processes starting at once create one version 0: the one that reserves number 0
    registers it and the other waits for it; if it never lands (that start crashed), this one's
    is registered under the next number.
    """
    latest = store.latest_policy()
    if latest is not None:
        return latest
    import torch

    from robot_sac.networks import Actor
    from robot_sac.normalization import RunningMeanStd
    from robot_sac.policy import policy_bytes

    spec = store.spec
    cfg = spec.sac
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        actor = Actor(
            spec.obs_dim,
            spec.action_dim,
            cfg.hidden,
            cfg.policy_family,
            cfg.log_std_min,
            cfg.log_std_max,
        )
    # With observation normalisation, version 0 carries the statistics before any data (mean 0,
    # variance 1): robots see the clipped observations the learner's first updates will see.
    obs_norm = (
        RunningMeanStd(spec.obs_dim).frozen(cfg.obs_norm_clip, cfg.obs_norm_eps)
        if cfg.obs_normalization
        else None
    )
    data = policy_bytes(actor, spec.action_low, spec.action_high, version=0, obs_norm=obs_norm)
    record = store.register_policy(data, first=True)
    deadline = time.monotonic() + FIRST_VERSION_WAIT_S
    while record is None:  # another process reserved version 0: wait for it to land
        if time.monotonic() > deadline:
            registered = store.register_policy(data)
            assert registered is not None  # only ``first=True`` declines
            return registered
        time.sleep(0.05)
        record = store.latest_policy()
    return record

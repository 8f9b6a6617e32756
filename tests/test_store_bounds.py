"""The task's value bounds (``TaskSpec.obs_bound``, ``reward_bound``) refuse transitions at ingest.

Both body forms reach the store: vectors as lists of floats (a JSON body) and as float32 bytes (a
MessagePack body); a mixture takes the store's numpy path. On both backends, no mocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robot_sac.store import Store
from tests.store_backends import BACKENDS, open_backend
from tests.test_store import SPEC, Step, all_rows, as_bytes, step

BOUNDED = SPEC.model_copy(update={"obs_bound": 100.0, "reward_bound": 1000.0})

FORMS: dict[str, Callable[[list[Step]], list[Any]]] = {
    "lists": lambda batch: batch,
    "bytes": lambda batch: [as_bytes(t) for t in batch],
    "mixed": lambda batch: [as_bytes(t) if i % 2 else t for i, t in enumerate(batch)],
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def bounded(backend: str, tmp_path: Path) -> Iterator[Store]:
    store = open_backend(backend, BOUNDED, tmp_path / "data")
    yield store
    store.close()


BEYOND = {
    "obs": ({"obs": [0.0, -100.5, 0.0]}, "obs[1] = -100.5 is beyond the task's obs_bound (100.0)"),
    "next_obs": (
        {"next_obs": [0.0, 0.0, 3.4e38]},
        "next_obs[2] = 3.4e+38 is beyond the task's obs_bound (100.0)",
    ),
    "reward": ({"reward": 3.4e38}, "reward 3.4e+38 is beyond the task's reward_bound (1000.0)"),
    "negative_reward": (
        {"reward": -1000.5},
        "reward -1000.5 is beyond the task's reward_bound (1000.0)",
    ),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("beyond", BEYOND)
def test_a_value_beyond_its_bound_refuses_the_batch_naming_transition_field_and_bound(
    bounded: Store, beyond: str, form: str
) -> None:
    fields, message = BEYOND[beyond]
    batch = [step(i, robot="r1", episode="e1", tag=float(i)) for i in range(5)]
    batch[3] = dataclasses.replace(batch[3], **fields)
    with pytest.raises(ValueError, match="is beyond the task's") as info:
        bounded.append(FORMS[form](batch))
    assert str(info.value) == f"transition r1/e1/3: {message}"
    assert bounded.transition_count() == 0
    del batch[3]
    assert bounded.append(FORMS[form](batch)) == (4, 0)


@pytest.mark.parametrize("form", FORMS)
def test_values_at_the_bounds_are_accepted(bounded: Store, form: str) -> None:
    batch = [
        step(0, obs=[100.0, -100.0, 0.0], next_obs=[-100.0, 0.0, 100.0], reward=1000.0),
        step(1, obs=[99.5, 0.0, -99.5], reward=-1000.0),
    ]
    assert bounded.append(FORMS[form](batch)) == (2, 0)
    rows = all_rows(bounded)
    assert rows.obs[0].tolist() == [100.0, -100.0, 0.0]
    assert rows.reward.tolist() == [1000.0, -1000.0]


def test_the_first_transition_beyond_a_bound_is_named(bounded: Store) -> None:
    batch = [step(i) for i in range(6)]
    batch[4] = dataclasses.replace(batch[4], obs=[500.0, 0.0, 0.0])
    batch[2] = dataclasses.replace(batch[2], next_obs=[0.0, 0.0, -101.0])
    with pytest.raises(ValueError, match=r"^transition r0/e0/2: next_obs\[2\] = -101 "):
        bounded.append(batch)


@pytest.mark.parametrize("form", FORMS)
def test_without_bounds_any_finite_float32_is_accepted(
    backend: str, tmp_path: Path, form: str
) -> None:
    assert SPEC.obs_bound is None and SPEC.reward_bound is None
    with open_backend(backend, SPEC, tmp_path / "data") as store:
        big = step(0, obs=[3.4e38, -3.4e38, 1e30], next_obs=[0.0, 0.0, -1e30], reward=3.4e38)
        assert store.append(FORMS[form]([big, step(1)])) == (2, 0)
        assert np.isfinite(all_rows(store).obs).all()


def test_bounds_only_refuse_new_data_a_reopened_store_keeps_its_rows(
    backend: str, tmp_path: Path
) -> None:
    # Bounds are part of the task file, not of the log: a store written without them opens with
    # them, keeps what it has, and refuses new values beyond them.
    with open_backend(backend, SPEC, tmp_path / "data") as store:
        store.append([step(0, reward=5_000.0)])
    with open_backend(backend, BOUNDED, tmp_path / "data") as store:
        assert store.transition_count() == 1
        with pytest.raises(ValueError, match="reward_bound"):
            store.append([step(1, reward=5_000.0)])

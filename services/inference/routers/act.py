"""``POST /v1/act`` and ``POST /v1/act/batch``: actions from the served policy."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Depends, HTTPException

from robot_sac.schemas import ActBatchRequest, ActBatchResponse, ActRequest, ActResponse
from robot_sac.services.inference.deps import AppState, get_state, require_robot

router = APIRouter(prefix="/v1", tags=["act"], dependencies=[Depends(require_robot)])


def _obs_array(rows: list[list[float]], obs_dim: int, name: str) -> np.ndarray:
    for i, row in enumerate(rows):
        if len(row) != obs_dim:
            where = name if len(rows) == 1 and name == "obs" else f"{name}[{i}]"
            raise HTTPException(
                422, f"{where} has {len(row)} values; the task's observations have {obs_dim}"
            )
    return np.asarray(rows, dtype=np.float32)


@router.post("/act", response_model=ActResponse)
async def act(body: ActRequest, state: AppState = Depends(get_state)) -> ActResponse:
    """One action for one observation, in robot units, finite and inside the task's bounds."""
    start = time.perf_counter()
    obs = _obs_array([body.obs], state.spec.obs_dim, "obs")
    actions, version, hold = await state.batcher.act(obs, body.deterministic)
    state.metrics.act_latency.labels("/v1/act").observe(time.perf_counter() - start)
    return ActResponse(action=actions[0].tolist(), policy_version=version, hold=hold)


@router.post("/act/batch", response_model=ActBatchResponse)
async def act_batch(
    body: ActBatchRequest, state: AppState = Depends(get_state)
) -> ActBatchResponse:
    """Actions for many observations of one robot, in one forward pass."""
    start = time.perf_counter()
    obs = _obs_array(body.obs, state.spec.obs_dim, "obs")
    actions, version, hold = await state.batcher.act(obs, body.deterministic)
    state.metrics.act_latency.labels("/v1/act/batch").observe(time.perf_counter() - start)
    return ActBatchResponse(actions=actions.tolist(), policy_version=version, hold=hold)

"""Adam with the per-step Python bookkeeping done once.

``torch.optim.Adam(fused=True)`` already updates every parameter of a group in one kernel, but
each ``step()`` regroups its tensors by device and dtype and walks its state in Python; on a small
CPU that costs as much as the kernel. :class:`FusedAdam` computes those lists on its first step and
then calls the same fused kernel directly, so its arithmetic is torch's, bit for bit.

``step(found_inf=t)`` skips the step on the device, without a host sync, when the float32 scalar
tensor ``t`` holds 1.0: this is the mechanism torch's AMP ``GradScaler`` uses. The fused kernel
returns before touching parameters or moments when ``*found_inf == 1``, and the step counts are
incremented and then decremented by ``found_inf`` (as in ``torch.optim.adam._fused_adam``), so a
skipped step leaves the whole optimiser state as it was. With ``found_inf`` 0.0 the step is the
unguarded one, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` with cached tensor lists; same state dict, same results.

    Falls back to the stock step whenever the cache cannot be used (first step, a closure, a
    parameter without gradient, state replaced by :meth:`load_state_dict`).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, capturable: bool = False):
        super().__init__(params, lr=lr, fused=True, capturable=capturable)
        self._flat = [p for g in self.param_groups for p in g["params"]]
        self._plan: (
            list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]]
            | None
        ) = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._plan = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for p in self._flat:
            p.grad = None

    def _make_plan(self) -> None:
        plan = []
        for group in self.param_groups:
            params = group["params"]
            if (
                group["amsgrad"]
                or group["maximize"]
                or group["weight_decay"]
                or group["differentiable"]
            ):
                return
            if any(p not in self.state or p.dtype != params[0].dtype for p in params):
                return
            if len({p.device for p in params}) > 1:
                return
            states = [self.state[p] for p in params]
            plan.append(
                (
                    group,
                    list(params),
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [s["step"] for s in states],
                )
            )
        self._plan = plan

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], float] | None = None, found_inf: Tensor | None = None
    ) -> float | None:
        """One Adam step; skipped on the device where ``found_inf`` (float32 scalar) is 1.0."""
        plan = self._plan
        if closure is not None or plan is None or any(p.grad is None for p in self._flat):
            # torch's fused Adam reads the skip flag from this attribute (set by GradScaler)
            self.found_inf = found_inf
            try:
                loss = super().step(closure)
            finally:
                del self.found_inf
            self._make_plan()
            return loss
        for group, params, exp_avgs, exp_avg_sqs, steps in plan:
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params,
                [p.grad for p in params],  # type: ignore[misc]  # every param has a grad here
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=found_inf,
            )
            if found_inf is not None:
                torch._foreach_sub_(steps, [found_inf] * len(steps))
        return None

"""One SAC update, replay sampling included, captured as a CUDA graph.

On a GPU the update is launch-bound: a few hundred small kernels, each waiting on Python. Capturing
it once and replaying it turns that into one launch per update (LeanRL shows the same). The replay
buffer must live on the GPU; the batch is drawn inside the graph from its current size, and with a
``prior_share`` its first rows from the prior rows' ring, read through a device-side head and count
(the whole batch from all rows while there are no prior rows: a ``torch.where``, not a Python
branch, since the graph is captured once). The critic options need nothing more: the random subset
of target critics is drawn with torch ops on the device (:meth:`SAC.draw_subset`), so each replay
draws a new one.

The update's gradient guard is captured with it: the skip flags, the fused Adam kernels that read
them and the skip counters are all device tensors, with no host sync and no Python branch on a
value. Replacing the optimisers' state (``SAC.load_state_dict``, as a rollback does) leaves the
graph pointing at the old tensors: capture a new :class:`GraphedUpdate` after it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robot_sac.replay import Batch, ReplayBuffer, prior_rows_per_batch
from robot_sac.sac import SAC


def graphable_sample_indices(
    replay: ReplayBuffer,
    batch_size: int,
    prior_rows: int,
    size: Tensor,
    prior_size: Tensor,
    prior_head: Tensor,
) -> Tensor:
    """The rows of one batch, drawn with device ops only: what :meth:`ReplayBuffer.sample_indices`
    draws, from device-side copies of the buffer's counters.

    Args:
        replay: the buffer (its ``prior_ring`` is read on the device).
        batch_size: rows in the batch, ``B``.
        prior_rows: how many of them come from the prior rows (first), while there are any.
        size: float64 scalar, the buffer's size.
        prior_size: float64 scalar, the number of prior rows held.
        prior_head: int64 scalar, the ring slot of the oldest prior row.

    Returns:
        ``(B,)`` int64 storage rows.
    """
    # Index from a device-side size so the captured graph follows the buffer as it grows.
    idx = (torch.rand(batch_size, dtype=torch.float64, device=size.device) * size).long()
    if prior_rows:
        picks = (
            torch.rand(prior_rows, dtype=torch.float64, device=size.device) * prior_size
        ).long()
        slots = (picks + prior_head) % replay.capacity
        prior = replay.prior_ring.index_select(0, slots)
        # No prior row yet: the would-be prior draws come from all rows, like the rest.
        idx = torch.cat([torch.where(prior_size > 0, prior, idx[:prior_rows]), idx[prior_rows:]])
    return idx


class GraphedUpdate:
    """Replays ``sample -> SAC.update`` as one CUDA graph.

    Args:
        sac: the learner state, on a CUDA device (its optimisers are capturable there).
        replay: a buffer on the same device, already holding at least one transition.
        compile: also pass :meth:`SAC.critic_loss` and :meth:`SAC.actor_losses` through
            ``torch.compile`` before capturing, which fuses the elementwise work into fewer
            kernels.
        transform: applied to each sampled batch before the update, inside the graph (the
            learner's observation normalisation,
            :meth:`~robot_sac.normalization.LiveNormalization.batch`). It is captured too: any
            tensor it reads must stay the same tensor, its values updated in place.

    Calling the object runs one update and returns the statistics of :meth:`SAC.update` as static
    device tensors, overwritten by the next call (clone them to keep them).
    """

    def __init__(
        self,
        sac: SAC,
        replay: ReplayBuffer,
        compile: bool = False,
        warmup: int = 3,
        transform: Callable[[Batch], Batch] | None = None,
    ):
        if sac.device.type != "cuda" or replay.device != sac.device:
            raise ValueError(
                "GraphedUpdate needs the learner and its replay buffer on one CUDA device"
            )
        if len(replay) == 0:
            raise ValueError("fill the replay buffer before capturing the update")
        self.sac, self.replay, self.transform = sac, replay, transform
        self.batch_size = sac.cfg.batch_size
        self._size = torch.tensor(float(len(replay)), dtype=torch.float64, device=sac.device)
        self.prior_rows = prior_rows_per_batch(self.batch_size, sac.cfg.prior_share)
        self._prior_size = torch.zeros((), dtype=torch.float64, device=sac.device)
        self._prior_head = torch.zeros((), dtype=torch.int64, device=sac.device)
        self._read_replay()
        if compile:
            sac.critic_loss = torch.compile(sac.critic_loss)  # type: ignore[method-assign]
            sac.actor_losses = torch.compile(sac.actor_losses)  # type: ignore[method-assign]
        step: Callable[[], dict[str, Tensor]] = self._sample_and_update
        stream = torch.cuda.Stream(sac.device)
        stream.wait_stream(torch.cuda.current_stream(sac.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # creates optimiser state, cuBLAS workspaces, compiled code
                step()
        torch.cuda.current_stream(sac.device).wait_stream(stream)
        replay.drawn_rows += warmup * self.batch_size
        replay.drawn_prior_rows += warmup * self.prior_rows if replay.prior_size else 0
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = step()
        sac.updates -= 1  # capturing records the update without running it

    def _sample_and_update(self) -> dict[str, Tensor]:
        idx = graphable_sample_indices(
            self.replay,
            self.batch_size,
            self.prior_rows,
            self._size,
            self._prior_size,
            self._prior_head,
        )
        self.last_indices = idx  # a static tensor: the rows drawn by the latest replay
        rows = self.replay.storage.index_select(0, idx)
        batch = self.replay.batch_from_rows(rows)
        if self.transform is not None:
            batch = self.transform(batch)
        return self.sac.update(batch)

    def _read_replay(self) -> None:
        self._size.fill_(float(len(self.replay)))
        if self.prior_rows:
            self._prior_size.fill_(float(self.replay.prior_size))
            self._prior_head.fill_(self.replay.prior_head)

    def __call__(self) -> dict[str, Tensor]:
        self._read_replay()
        self.graph.replay()
        self.sac.updates += 1
        self.replay.drawn_rows += self.batch_size
        self.replay.drawn_prior_rows += self.prior_rows if self.replay.prior_size else 0
        return self._out

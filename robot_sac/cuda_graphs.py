"""One SAC update, replay sampling included, captured as a CUDA graph.

On a GPU the update is launch-bound: a few hundred small kernels, each waiting on Python. Capturing
it once and replaying it turns that into one launch per update (LeanRL shows the same). The replay
buffer must live on the GPU; the batch is drawn inside the graph from its current size.

The update's gradient guard is captured with it: the skip flags, the fused Adam kernels that read
them and the skip counters are all device tensors, with no host sync and no Python branch on a
value. Replacing the optimisers' state (``SAC.load_state_dict``, as a rollback does) leaves the
graph pointing at the old tensors: capture a new :class:`GraphedUpdate` after it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robot_sac.replay import Batch, ReplayBuffer
from robot_sac.sac import SAC


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
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = step()
        sac.updates -= 1  # capturing records the update without running it

    def _sample_and_update(self) -> dict[str, Tensor]:
        # Index from a device-side size so the captured graph follows the buffer as it grows.
        idx = (
            torch.rand(self.batch_size, dtype=torch.float64, device=self._size.device) * self._size
        )
        idx = idx.long()
        self.last_indices = idx  # a static tensor: the rows drawn by the latest replay
        rows = self.replay.storage.index_select(0, idx)
        batch = self.replay.batch_from_rows(rows)
        if self.transform is not None:
            batch = self.transform(batch)
        return self.sac.update(batch)

    def __call__(self) -> dict[str, Tensor]:
        self._size.fill_(float(len(self.replay)))
        self.graph.replay()
        self.sac.updates += 1
        return self._out

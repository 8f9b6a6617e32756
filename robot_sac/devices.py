"""Choosing where tensors live and how many CPU threads torch may use."""

from __future__ import annotations

import os

import torch


def resolve_device(setting: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} asked for, but torch sees no CUDA device")
    return device


def set_cpu_threads(threads: int = 0, spare: int = 0) -> int:
    """Set torch's intra-op threads; return the count.

    ``0`` means every core this process may use, less ``spare`` (at least one thread).

    Processes that share a small machine (service, learner, simulated robots) should split the
    cores between them: torch's worker threads spin while waiting, so oversubscribed cores slow
    every process down far more than the thread count suggests.
    """
    if threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (cores or 1) - spare)
    torch.set_num_threads(threads)
    return threads

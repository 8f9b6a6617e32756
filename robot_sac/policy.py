"""Policy version files: the actor's weights in safetensors, self-describing, validated on load.

A version file is what the learner publishes and the service serves. It holds only the actor
(training state stays with the learner) and, in the safetensors metadata, everything needed to
rebuild and use it alone: the policy family, the task's sizes and action bounds, the network
sizes, the version number, its creation time and how many updates produced it.

Two formats, named by the metadata's ``format``:

- ``robot_sac.policy/1``: the actor alone; it acts on raw observations.
- ``robot_sac.policy/2``: the actor and the observation normalisation it was trained with
  (:mod:`robot_sac.normalization`): tensors ``obs_norm.mean`` and ``obs_norm.std``, float32
  ``(obs_dim,)``, and metadata ``obs_norm_clip``, ``obs_norm_eps``, ``obs_norm_count``. Every
  serving path normalises with them before the actor. Written only for a normalised actor, so a
  learner without normalisation keeps writing format 1, which older services read.

Both formats load.

:func:`load_policy` checks a file before anything can act with it, and raises
:class:`PolicyFileError` naming the failed check. Nothing here unpickles.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

import numpy as np
import safetensors.torch
import torch
from safetensors.torch import load as load_safetensors
from torch import Tensor

from robot_sac.config import PolicyFamily
from robot_sac.cpu_inference import NumpyActor
from robot_sac.fileio import write_atomic
from robot_sac.networks import Actor, overflow_free_obs_bound
from robot_sac.normalization import ObsNormalization
from robot_sac.safety import SafetyEnvelope
from robot_sac.schemas import TaskSpec

FORMAT = "robot_sac.policy/1"
FORMAT_NORMALIZED = "robot_sac.policy/2"  # format 1 plus the observation normalisation
_MAX_HEADER = 16 * 1024 * 1024
# Limits on what a file's metadata may ask to be built, checked before anything is allocated: a
# hostile upload claiming hidden sizes [100000, 100000] would otherwise cost 10**10 floats.
MAX_HIDDEN_SIZE = 4096
MAX_HIDDEN_LAYERS = 8
MAX_DIM = 65_536  # obs_dim and action_dim: the wire's longest vector
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# safetensors dtype codes, named as torch names them, for messages.
_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_FIELDS = (
    "format",
    "family",
    "obs_dim",
    "action_dim",
    "action_low",
    "action_high",
    "hidden",
    "log_std_min",
    "log_std_max",
    "version",
    "created_at",
    "updates",
)
_NORM_FIELDS = ("obs_norm_clip", "obs_norm_eps", "obs_norm_count")
NORM_MEAN, NORM_STD = "obs_norm.mean", "obs_norm.std"  # the format-2 tensors


class PolicyFileError(ValueError):
    """A version file failed a check; ``check`` names which one."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"policy file refused ({check}): {message}")
        self.check = check


@dataclass(frozen=True)
class NormalizationInfo:
    """The metadata of a format-2 file's observation normalisation (its tensors aside)."""

    clip: float
    eps: float
    count: int


@dataclass(frozen=True)
class PolicyInfo:
    """What a version file says about itself (its safetensors metadata, parsed and checked).

    ``normalization`` is None for a format-1 file (the actor acts on raw observations).
    """

    family: PolicyFamily
    obs_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    hidden: tuple[int, ...]
    log_std_min: float
    log_std_max: float
    version: int
    created_at: str
    updates: int
    normalization: NormalizationInfo | None = None

    @property
    def format(self) -> str:
        return FORMAT if self.normalization is None else FORMAT_NORMALIZED

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata (string to string) that encodes this info."""
        norm = self.normalization
        extra = (
            {}
            if norm is None
            else {
                "obs_norm_clip": repr(norm.clip),
                "obs_norm_eps": repr(norm.eps),
                "obs_norm_count": str(norm.count),
            }
        )
        return {
            "format": self.format,
            "family": self.family,
            "obs_dim": str(self.obs_dim),
            "action_dim": str(self.action_dim),
            "action_low": json.dumps(list(self.action_low)),
            "action_high": json.dumps(list(self.action_high)),
            "hidden": json.dumps(list(self.hidden)),
            "log_std_min": repr(self.log_std_min),
            "log_std_max": repr(self.log_std_max),
            "version": str(self.version),
            "created_at": self.created_at,
            "updates": str(self.updates),
            **extra,
        }


def policy_bytes(
    actor: Actor,
    action_low: Sequence[float],
    action_high: Sequence[float],
    version: int,
    updates: int = 0,
    created_at: str | None = None,
    obs_norm: ObsNormalization | None = None,
) -> bytes:
    """Serialise ``actor`` and its metadata as the bytes of a version file.

    With ``obs_norm`` (the normalisation the actor was trained with) the file is format 2 and
    carries it; without, format 1.
    """
    if obs_norm is not None and obs_norm.dim != actor.obs_dim:
        raise ValueError(
            f"the normalisation is for {obs_norm.dim} observation values, the actor takes "
            f"{actor.obs_dim}"
        )
    info = PolicyInfo(
        family=actor.family,
        obs_dim=actor.obs_dim,
        action_dim=actor.action_dim,
        action_low=tuple(float(x) for x in action_low),
        action_high=tuple(float(x) for x in action_high),
        hidden=actor.hidden,
        log_std_min=actor.log_std_min,
        log_std_max=actor.log_std_max,
        version=int(version),
        created_at=created_at or dt.datetime.now(dt.timezone.utc).isoformat(),
        updates=int(updates),
        normalization=None
        if obs_norm is None
        else NormalizationInfo(obs_norm.clip, obs_norm.eps, obs_norm.count),
    )
    _check_info(info)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in actor.state_dict().items()
    }
    if obs_norm is not None:
        tensors[NORM_MEAN] = torch.tensor(obs_norm.mean, dtype=torch.float32)
        tensors[NORM_STD] = torch.tensor(obs_norm.std, dtype=torch.float32)
    return safetensors.torch.save(tensors, metadata=info.metadata())


def save_policy(
    path: str | Path,
    actor: Actor,
    action_low: Sequence[float],
    action_high: Sequence[float],
    version: int,
    updates: int = 0,
    created_at: str | None = None,
    obs_norm: ObsNormalization | None = None,
) -> str:
    """Write a version file atomically (temp file, fsync, rename, directory fsync).

    Returns:
        The file's sha256 (hex), for the registry to check on every later load.
    """
    return write_atomic(
        path, policy_bytes(actor, action_low, action_high, version, updates, created_at, obs_norm)
    )


def with_version(data: bytes, version: int) -> bytes:
    """The same version file with its metadata ``version`` rewritten (the registry numbers it).

    Every tensor (a format-2 file's normalisation too) and every other field is kept.
    """
    info = read_policy_info(data)
    try:
        tensors = load_safetensors(data)  # raw tensors from bytes; safetensors never unpickles
    except Exception as exc:
        raise PolicyFileError("format", f"the tensor data is corrupt: {exc}") from exc
    return safetensors.torch.save(tensors, metadata=replace(info, version=version).metadata())


def read_policy_info(data: bytes) -> PolicyInfo:
    """Parse and check the metadata of a version file's bytes without loading its tensors."""
    if len(data) < 8:
        raise PolicyFileError("format", f"{len(data)} bytes is too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if not 2 <= header_len <= min(_MAX_HEADER, len(data) - 8):
        raise PolicyFileError("format", "not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyFileError(
            "format", f"not a safetensors file (header is not JSON: {exc})"
        ) from exc
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise PolicyFileError("metadata", "the file carries no metadata: not a robot_sac policy")
    meta: dict[str, Any] = header["__metadata__"]
    missing = [k for k in _FIELDS if k not in meta]
    if missing:
        raise PolicyFileError("metadata", f"missing fields: {', '.join(missing)}")
    if meta["format"] not in (FORMAT, FORMAT_NORMALIZED):
        raise PolicyFileError(
            "metadata", f"format {meta['format']!r}, expected {FORMAT!r} or {FORMAT_NORMALIZED!r}"
        )
    normalized = meta["format"] == FORMAT_NORMALIZED
    missing = [k for k in _NORM_FIELDS if k not in meta] if normalized else []
    if missing:
        raise PolicyFileError("metadata", f"missing fields: {', '.join(missing)}")
    try:
        info = PolicyInfo(
            family=meta["family"],
            obs_dim=int(meta["obs_dim"]),
            action_dim=int(meta["action_dim"]),
            action_low=tuple(float(x) for x in json.loads(meta["action_low"])),
            action_high=tuple(float(x) for x in json.loads(meta["action_high"])),
            hidden=tuple(int(h) for h in json.loads(meta["hidden"])),
            log_std_min=float(meta["log_std_min"]),
            log_std_max=float(meta["log_std_max"]),
            version=int(meta["version"]),
            created_at=str(meta["created_at"]),
            updates=int(meta["updates"]),
            normalization=NormalizationInfo(
                clip=float(meta["obs_norm_clip"]),
                eps=float(meta["obs_norm_eps"]),
                count=int(meta["obs_norm_count"]),
            )
            if normalized
            else None,
        )
    except (TypeError, ValueError) as exc:
        raise PolicyFileError("metadata", f"a field does not parse: {exc}") from exc
    _check_info(info)
    return info


def _check_info(info: PolicyInfo) -> None:
    if info.family not in get_args(PolicyFamily):
        raise PolicyFileError("metadata", f"unknown policy family {info.family!r}")
    if info.obs_dim < 1 or info.action_dim < 1:
        raise PolicyFileError("metadata", f"obs_dim={info.obs_dim}, action_dim={info.action_dim}")
    if info.obs_dim > MAX_DIM or info.action_dim > MAX_DIM:
        raise PolicyFileError(
            "metadata",
            f"obs_dim={info.obs_dim}, action_dim={info.action_dim}: the limit is {MAX_DIM} each",
        )
    if not 1 <= len(info.hidden) <= MAX_HIDDEN_LAYERS:
        raise PolicyFileError(
            "metadata",
            f"{len(info.hidden)} hidden layers: from 1 to {MAX_HIDDEN_LAYERS} are accepted",
        )
    if not all(1 <= h <= MAX_HIDDEN_SIZE for h in info.hidden):
        shown = list(info.hidden)
        raise PolicyFileError(
            "metadata", f"hidden sizes {shown}: each must be from 1 to {MAX_HIDDEN_SIZE}"
        )
    if not (len(info.action_low) == len(info.action_high) == info.action_dim):
        raise PolicyFileError("metadata", "action bounds do not have action_dim entries")
    for i, (lo, hi) in enumerate(zip(info.action_low, info.action_high, strict=True)):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise PolicyFileError("metadata", f"action bound {i} is [{lo}, {hi}]")
        # Actions are float32: the bounds must be finite and distinct there too.
        if not (max(abs(lo), abs(hi)) <= _FLOAT32_MAX and np.float32(lo) < np.float32(hi)):
            raise PolicyFileError(
                "metadata", f"action bound {i} is [{lo}, {hi}], not a range in float32"
            )
    if not (math.isfinite(info.log_std_min) and math.isfinite(info.log_std_max)):
        raise PolicyFileError("metadata", "log_std bounds are not finite")
    if info.log_std_min >= info.log_std_max:
        raise PolicyFileError("metadata", "log_std_min must be below log_std_max")
    if not (0 <= info.version <= 2**62 and 0 <= info.updates <= 2**62):
        raise PolicyFileError("metadata", "version and updates must be in [0, 2**62]")
    if len(info.created_at) > 64:
        raise PolicyFileError("metadata", "created_at is longer than 64 characters")
    norm = info.normalization
    if norm is not None:
        # the clip is applied in float32: it must be a positive float32 number
        if not (math.isfinite(norm.clip) and 0 < norm.clip <= _FLOAT32_MAX):
            raise PolicyFileError("obs_norm", f"obs_norm_clip is {norm.clip}, not above 0")
        if not np.float32(norm.clip) > 0:
            raise PolicyFileError("obs_norm", f"obs_norm_clip {norm.clip} is 0 in float32")
        if not (math.isfinite(norm.eps) and norm.eps >= 0):
            raise PolicyFileError("obs_norm", f"obs_norm_eps is {norm.eps}, not finite and >= 0")
        if not 0 <= norm.count <= 2**62:
            raise PolicyFileError("obs_norm", "obs_norm_count must be in [0, 2**62]")


def check_task(info: PolicyInfo, spec: TaskSpec) -> None:
    """Refuse a version built for another task (sizes or action bounds)."""
    if info.obs_dim != spec.obs_dim or info.action_dim != spec.action_dim:
        raise PolicyFileError(
            "task",
            f"the file is for obs_dim {info.obs_dim}, action_dim {info.action_dim}; the task has "
            f"{spec.obs_dim}, {spec.action_dim}",
        )
    for name, have, want in (
        ("action_low", info.action_low, spec.action_low),
        ("action_high", info.action_high, spec.action_high),
    ):
        if any(
            not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
            for a, b in zip(have, want, strict=True)
        ):
            raise PolicyFileError(
                "task", f"{name} {list(have)} differs from the task's {list(want)}"
            )


class Policy:
    """A validated, loaded version: acts in robot units, always finite and inside the bounds.

    Attributes:
        info: the file's metadata.
        sha256: the file's hash.
        actor: the network (eval mode, on :attr:`device`).
        envelope: the :class:`~robot_sac.safety.SafetyEnvelope` every action goes through (the
            file's bounds; the safe action given, or zeros clipped into the bounds).
        obs_norm: the observation normalisation of a format-2 file, applied to every observation
            before the actor on every path; None for format 1 (raw observations).
        input_bound: the largest ``max |x_i|`` of the network's input ``x`` (the observation,
            normalised when :attr:`obs_norm` is set) the network is evaluated for. Beyond it a
            float32 sum inside the network could overflow, and whether it does depends on the
            order a matrix product sums in (numpy and torch differ, so would the answer for one
            robot between small and large batches); such rows are answered the safe action on
            every path and counted as replaced.
        obs_bound: the largest ``max |obs_i|`` of a raw observation that is evaluated; rows
            beyond it (and rows holding NaN) are answered the safe action alike. Without
            normalisation the network's input is the observation: this is :attr:`input_bound`.
            With it, the normalisation maps every finite observation into ``[-clip, clip]``
            identically in numpy and torch (an ``obs - mean`` that overflows becomes ``±inf``,
            then ``±clip``), so every finite observation is evaluated: float32's largest value.
            A normalised input beyond :attr:`input_bound` (only a network whose weights make even
            ``clip`` unsafe) is still refused by the first rule.
        replaced: how many actions so far (through :meth:`act`) were replaced by the safe action.
    """

    def __init__(
        self,
        info: PolicyInfo,
        actor: Actor,
        sha256: str,
        safe_action: Sequence[float] | None = None,
        obs_norm: ObsNormalization | None = None,
    ) -> None:
        if (obs_norm is None) != (info.normalization is None):
            raise ValueError("obs_norm must be given exactly when the info describes one")
        self.info, self.actor, self.sha256 = info, actor.eval(), sha256
        self.device = next(actor.parameters()).device
        self.envelope = SafetyEnvelope(info.action_low, info.action_high, safe_action)
        self.obs_norm = obs_norm
        self.input_bound = overflow_free_obs_bound(actor)
        self.obs_bound = self.input_bound if obs_norm is None else _FLOAT32_MAX
        self.replaced = 0
        self._numpy: NumpyActor | None = None
        self._rng = np.random.default_rng()

    def set_safe_action(self, safe_action: Sequence[float] | None) -> None:
        """Replace the envelope by one with this safe action (``None``: zeros clipped into the
        bounds); raises ``ValueError`` unless it has ``action_dim`` finite entries inside them."""
        self.envelope = self.envelope.with_safe_action(safe_action)

    @property
    def safe_action(self) -> np.ndarray:
        """What a non-finite action is replaced with, float32 ``(action_dim,)``."""
        return self.envelope.safe_action

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def obs_dim(self) -> int:
        return self.info.obs_dim

    @property
    def action_dim(self) -> int:
        return self.info.action_dim

    @torch.inference_mode()
    def act_tensor(
        self, obs: Tensor, deterministic: bool | Tensor = False
    ) -> tuple[Tensor, Tensor]:
        """Actions for a batch on the policy's device.

        Args:
            obs: ``(B, obs_dim)`` float32 on :attr:`device`, raw: the file's normalisation, if it
                has one, is applied here (as in :meth:`act_numpy`).
            deterministic: one flag for the batch, or a ``(B,)`` bool tensor, one per row (the
                service batches robots that ask for either).

        Returns:
            ``(actions, replaced)``: ``(B, action_dim)`` in robot units, finite and inside the
            bounds; ``(B,)`` bool, True where the policy's output was not finite and the safe
            action was answered instead.
        """
        x = obs if self.obs_norm is None else self.obs_norm(obs)
        dist = self.actor.dist(x)
        if isinstance(deterministic, Tensor):
            unit = torch.where(deterministic.unsqueeze(-1), dist.mode, dist.sample())
        else:
            unit = dist.mode if deterministic else dist.sample()
        # Rows beyond obs_bound or input_bound, and NaN rows (NaN fails every comparison): NaN,
        # which the envelope replaces by the safe action.
        refused = ~(obs.abs().amax(-1, keepdim=True) <= self.obs_bound)
        if self.obs_norm is not None:
            refused |= ~(x.abs().amax(-1, keepdim=True) <= self.input_bound)
        unit = torch.where(refused, torch.nan, unit)
        return self.envelope.to_robot_tensor(unit)

    def act_numpy(
        self, obs: np.ndarray, deterministic: bool | np.ndarray = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`act_tensor` for a few observations on a CPU, in numpy (several times faster).

        Args:
            obs: ``(B, obs_dim)`` float32.
            deterministic: one flag, or a ``(B,)`` bool array.

        Returns:
            ``(actions, replaced)`` as numpy arrays, with the same guarantees as
            :meth:`act_tensor`. Samples come from this policy's own numpy generator
            (:meth:`seed`), not from torch's.
        """
        if self._numpy is None:
            self._numpy = NumpyActor(self.actor)
        x = obs if self.obs_norm is None else self.obs_norm(obs)
        with np.errstate(all="ignore"):  # a non-finite output is the envelope's to replace
            unit = self._numpy.unit_actions(x, deterministic, self._rng)
        # The rules of act_tensor; one whole-batch comparison each in the usual case.
        normed = self.obs_norm is not None
        if not np.abs(obs).max() <= self.obs_bound or (
            normed and not np.abs(x).max() <= self.input_bound
        ):  # rare; NaN observations end up here too
            refused = ~(np.abs(obs).max(axis=1) <= self.obs_bound)
            if normed:
                refused |= ~(np.abs(x).max(axis=1) <= self.input_bound)
            unit[refused] = np.nan
        return self.envelope.to_robot_numpy(unit)

    def seed(self, seed: int) -> None:
        """Seed the generator of :meth:`act_numpy`'s samples."""
        self._rng = np.random.default_rng(seed)

    def act(self, obs: Any, deterministic: bool = False) -> Any:
        """Actions in robot units for one observation ``(obs_dim,)`` or a batch ``(B, obs_dim)``.

        Accepts numpy arrays, torch tensors or nested lists; answers a torch tensor (on the
        input's device) for a tensor, a float32 numpy array otherwise.
        """
        as_torch = isinstance(obs, Tensor)
        in_device = obs.device if as_torch else None
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not as_torch else obs)
        x = x.to(self.device, torch.float32)
        obs_shape = x.shape
        single = x.dim() == 1
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(
                f"observation of shape {tuple(obs_shape)} does not match the policy's "
                f"obs_dim {self.obs_dim}"
            )
        action, bad = self.act_tensor(x, deterministic)
        self.replaced += int(bad.sum())
        if single:
            action = action[0]
        return action.to(in_device) if as_torch else action.cpu().numpy()


def expected_tensor_shapes(info: PolicyInfo) -> dict[str, tuple[int, ...]]:
    """The actor's tensor names and shapes that ``info`` implies, computed without building it.

    :func:`~robot_sac.networks.mlp` has a ``Linear`` at every even index of ``net``:
    ``net.{2i}.weight`` is ``(out, in)`` and ``net.{2i}.bias`` is ``(out,)``, for the sizes
    ``obs_dim -> hidden... -> 2 * action_dim``. A format-2 file adds the normalisation's
    ``obs_norm.mean`` and ``obs_norm.std``, ``(obs_dim,)`` each.
    """
    sizes = [info.obs_dim, *info.hidden, 2 * info.action_dim]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        shapes[f"net.{2 * i}.weight"] = (fan_out, fan_in)
        shapes[f"net.{2 * i}.bias"] = (fan_out,)
    if info.normalization is not None:
        shapes[NORM_MEAN] = (info.obs_dim,)
        shapes[NORM_STD] = (info.obs_dim,)
    return shapes


def _check_header(data: bytes, info: PolicyInfo) -> None:
    """Compare the safetensors header's tensors with what ``info`` implies, before loading any."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])  # read_policy_info parsed it already
    declared = {k: v for k, v in header.items() if k != "__metadata__"}
    expected = expected_tensor_shapes(info)
    if set(declared) != set(expected):
        extra, absent = sorted(set(declared) - set(expected)), sorted(set(expected) - set(declared))
        raise PolicyFileError("tensors", f"unexpected {extra}, missing {absent}")
    payload = len(data) - 8 - header_len
    for name, shape in expected.items():
        entry = declared[name]
        if not isinstance(entry, dict):
            raise PolicyFileError("format", f"the header entry of {name} is not an object")
        got = entry.get("shape")
        if not (isinstance(got, list) and all(type(n) is int for n in got)):
            raise PolicyFileError("format", f"the header gives {name} no valid shape")
        if tuple(got) != shape:
            raise PolicyFileError("shapes", f"{name} has shape {got}, expected {list(shape)}")
        dtype = entry.get("dtype")
        if dtype != "F32":
            shown = _DTYPE_NAMES.get(dtype, repr(dtype)) if isinstance(dtype, str) else repr(dtype)
            raise PolicyFileError("dtype", f"{name} is {shown}, expected float32")
        offsets = entry.get("data_offsets")
        size = 4 * math.prod(shape)
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(n) is int for n in offsets)
            and offsets[0] >= 0
            and offsets[1] - offsets[0] == size
            and offsets[1] <= payload
        ):
            raise PolicyFileError(
                "format",
                f"the tensor data is corrupt: {name} declares bytes {offsets} for {size} bytes "
                f"of data, and the file holds {payload}",
            )


def load_policy(
    source: str | Path | bytes,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
    safe_action: Sequence[float] | None = None,
    *,
    spec: TaskSpec | None = None,
) -> Policy:
    """Load and validate a version file (a path or its bytes).

    Checks, in order, each before anything is allocated for the next: the sha256 when one is
    given; the safetensors header and the metadata (complete, parseable, consistent, within the
    size limits :data:`MAX_HIDDEN_SIZE`, :data:`MAX_HIDDEN_LAYERS` and :data:`MAX_DIM`); the task,
    when ``spec`` is given (:func:`check_task`); the tensor names, shapes, dtype and byte ranges
    the header declares against those the metadata implies (a format-2 file's normalisation
    tensors among them); then, once loaded, that every tensor is finite and, for format 2, that
    every ``obs_norm.std`` is above 0 (check ``obs_norm``). Any failure raises
    :class:`PolicyFileError`.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise PolicyFileError("sha256", f"expected {sha256}, the file hashes to {digest}")
    info = read_policy_info(data)
    if spec is not None:
        check_task(info, spec)
    _check_header(data, info)
    try:
        tensors = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error type for any corruption
        raise PolicyFileError("format", f"the tensor data is corrupt: {exc}") from exc
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise PolicyFileError("finite", f"{name} holds NaN or infinite values")
    obs_norm = None
    if info.normalization is not None:
        mean, std = tensors.pop(NORM_MEAN), tensors.pop(NORM_STD)
        if not bool((std > 0).all()):
            i = int(torch.argmin(std))
            raise PolicyFileError("obs_norm", f"{NORM_STD}[{i}] is {float(std[i])}, not above 0")
        obs_norm = ObsNormalization(
            mean=mean.numpy(),
            std=std.numpy(),
            clip=info.normalization.clip,
            eps=info.normalization.eps,
            count=info.normalization.count,
        )
    actor = Actor(
        info.obs_dim, info.action_dim, info.hidden, info.family, info.log_std_min, info.log_std_max
    )
    actor.load_state_dict(tensors)
    return Policy(info, actor.to(device), digest, safe_action, obs_norm)

"""A policy version as an ONNX graph: the deterministic actor, observations to robot actions.

The graph computes what :meth:`robot_sac.policy.Policy.act` answers with ``deterministic=True``,
every step of it, so a robot can run a version without torch or this package (onnxruntime, or
any ONNX runtime, on its own computer):

1. the file's observation normalisation, if it has one: ``clip((obs - mean) / std, -c, c)``;
2. the actor's network and its deterministic action in ``[-1, 1]``: ``tanh(loc)`` for
   ``tanh_normal``, the Beta's mode ``tanh((log softplus(r1) - log softplus(r0)) / 2)`` for
   ``beta``;
3. the policy's refusal rule: a row holding NaN, or beyond ``obs_bound`` (raw) or
   ``input_bound`` (normalised), is not evaluated (the network could overflow there);
4. the safety envelope (:mod:`robot_sac.safety`): the affine map onto ``[low, high]``, a
   non-finite (or refused) row replaced whole by the safe action, then the clip into the bounds.

Input ``obs``: float32 ``(batch, obs_dim)`` (one observation is a batch of one); output
``action``: float32 ``(batch, action_dim)``, finite and inside the bounds. The model's metadata
names the version, its sha256, the family and the bounds.

The graph is written with ``onnx.helper`` rather than ``torch.onnx.export``: a dozen standard
operators, no dependence on which exporter a torch release ships (the TorchScript one is
deprecated, the dynamo one needs ``onnxscript``), and opset 17 / IR version 8, which every
onnxruntime since 1.14 loads. ``onnx`` is imported inside the functions (the ``export`` extra).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from robot_sac.distributions import log_softplus_cut
from robot_sac.fileio import write_atomic

if TYPE_CHECKING:
    import onnx

    from robot_sac.policy import Policy

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: older runtimes refuse a model that claims a newer one
INPUT, OUTPUT = "obs", "action"


class _Graph:
    """Nodes and constants of a graph under construction, with fresh names for both."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, hint: str, dtype: Any = np.float32) -> str:
        """A constant (an initializer) holding ``value`` as ``dtype``; returns its name."""
        from onnx import numpy_helper

        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str = "", **attrs: Any) -> str:
        """One node with a single output; returns the output's name."""
        from onnx import helper

        out = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def any_row(self, mask: str, hint: str) -> str:
        """``(B, 1)`` bool: True where any entry of the ``(B, n)`` bool ``mask``'s row is."""
        from onnx import TensorProto

        as_float = self.op("Cast", mask, to=TensorProto.FLOAT)
        peak = self.op("ReduceMax", as_float, axes=[1], keepdims=1)
        return self.op("Greater", peak, self.const(0.0, "zero"), hint=hint)

    def outside(self, x: str, bound: float, hint: str) -> str:
        """``(B, 1)`` bool: rows of ``x`` with a NaN or an entry beyond ``±bound``.

        Element by element (``not |x| <= bound`` is True for NaN), then any per row: a reduction
        over raw values could drop a NaN, as some runtimes' max does.
        """
        inside = self.op("LessOrEqual", self.op("Abs", x), self.const(bound, "bound"))
        return self.any_row(self.op("Not", inside), hint)


def _log_softplus(g: _Graph, x: str) -> str:
    """:func:`robot_sac.distributions.log_softplus` in ONNX: ``x`` below the cut, else
    ``log(softplus(max(x, cut)))``."""
    cut = g.const(log_softplus_cut(torch.float32), "cut")
    below = g.op("Less", x, cut)
    above = g.op("Log", g.op("Softplus", g.op("Max", x, cut)))
    return g.op("Where", below, x, above)


def onnx_model(policy: Policy) -> onnx.ModelProto:
    """The ONNX model of ``policy``'s deterministic action (see the module's docstring).

    The safe action is ``policy``'s own (:attr:`~robot_sac.policy.Policy.safe_action`): load it
    with the task's (``load_policy(..., safe_action=spec.safe_action)``) to export what the
    service answers.
    """
    import onnx
    from onnx import TensorProto, helper

    info, envelope = policy.info, policy.envelope
    g = _Graph()
    obs = INPUT
    refused = g.outside(obs, policy.obs_bound, "obs_refused")
    x = obs
    if policy.obs_norm is not None:
        norm = policy.obs_norm
        centred = g.op("Sub", obs, g.const(norm.mean, "obs_norm_mean"))
        scaled = g.op("Div", centred, g.const(norm.std, "obs_norm_std"))
        x = g.op(
            "Clip",
            scaled,
            g.const(-norm.clip, "clip_low"),
            g.const(norm.clip, "clip_high"),
            hint="x",
        )
        refused = g.op(
            "Or", refused, g.outside(x, policy.input_bound, "input_refused"), hint="refused"
        )
    h = x
    linears = [m for m in policy.actor.net if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        w = layer.weight.detach().cpu().numpy()
        b = layer.bias.detach().cpu().numpy()
        h = g.op("Gemm", h, g.const(w, f"w{i}"), g.const(b, f"b{i}"), transB=1, hint=f"linear{i}")
        if i < len(linears) - 1:
            h = g.op("Relu", h)
    a = info.action_dim
    axes = g.const([1], "axes", np.int64)

    def half(start: int, end: int) -> str:
        return g.op(
            "Slice", h, g.const([start], "start", np.int64), g.const([end], "end", np.int64), axes
        )

    if info.family == "tanh_normal":
        unit = g.op("Tanh", half(0, a), hint="unit")
    else:  # BoundedBeta.mode from the raw outputs
        diff = g.op("Sub", _log_softplus(g, half(0, a)), _log_softplus(g, half(a, 2 * a)))
        unit = g.op("Tanh", g.op("Mul", diff, g.const(0.5, "half")), hint="unit")
    unit = g.op("Where", refused, g.const(math.nan, "nan"), unit)
    # SafetyEnvelope.to_robot_tensor: centre + unit * half_range, non-finite rows replaced, clip
    center = (envelope.high / 2 + envelope.low / 2).astype(np.float32)
    half_range = (envelope.high / 2 - envelope.low / 2).astype(np.float32)
    robot = g.op(
        "Add", g.op("Mul", unit, g.const(half_range, "half_range")), g.const(center, "center")
    )
    non_finite = g.op("Or", g.op("IsNaN", robot), g.op("IsInf", robot))
    bad = g.any_row(non_finite, "replaced")
    robot = g.op("Where", bad, g.const(envelope.safe_action, "safe_action"), robot)
    low, high = g.const(envelope.low, "low"), g.const(envelope.high, "high")
    g.nodes.append(helper.make_node("Min", [g.op("Max", robot, low), high], [OUTPUT]))

    graph = helper.make_graph(
        g.nodes,
        f"robot_sac_policy_v{info.version}",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", info.obs_dim])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", info.action_dim])],
        g.initializers,
        doc_string="robot_sac deterministic policy: observations (batch, obs_dim) to actions in "
        "robot units (batch, action_dim)",
    )
    model = helper.make_model(
        graph,
        producer_name="robot_sac",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    helper.set_model_props(model, model_metadata(policy))
    onnx.checker.check_model(model, full_check=True)
    return model


def model_metadata(policy: Policy) -> dict[str, str]:
    """What the ONNX model says about the version it was made from (its metadata_props)."""
    info = policy.info
    return {
        "robot_sac.source_format": info.format,
        "robot_sac.version": str(info.version),
        "robot_sac.sha256": policy.sha256,
        "robot_sac.family": info.family,
        "robot_sac.obs_dim": str(info.obs_dim),
        "robot_sac.action_dim": str(info.action_dim),
        "robot_sac.action_low": json.dumps(policy.envelope.low.tolist()),
        "robot_sac.action_high": json.dumps(policy.envelope.high.tolist()),
        "robot_sac.safe_action": json.dumps(policy.safe_action.tolist()),
        "robot_sac.obs_normalization": str(policy.obs_norm is not None).lower(),
        "robot_sac.created_at": info.created_at,
        "robot_sac.updates": str(info.updates),
    }


def export_onnx(policy: Policy, path: str | Path) -> int:
    """Write ``policy``'s ONNX model to ``path`` atomically; returns its size in bytes."""
    data = onnx_model(policy).SerializeToString()
    write_atomic(path, data)
    return len(data)

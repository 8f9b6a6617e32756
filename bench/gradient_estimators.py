"""Which gradient estimator should SAC's policy loss use? Score-function against pathwise.

For one small seeded policy (``robot_sac.networks.Actor``, 4 observations, 2 actions, one hidden
layer of 16) and a fixed smooth critic, the gradient w.r.t. the policy's parameters of

    J = E_s E_{a ~ pi(.|s)} [alpha * log pi(a|s) - Q(s, a)],   alpha = 0.2,

is estimated again and again from independent mini-batches of states and actions. Per family:

``tanh_normal``
    score-function (REINFORCE) against the reparameterized gradient through ``TanhNormal``.
``beta``
    score-function against the implicit-reparameterization gradient through ``BoundedBeta``.

Within a family both estimators target the same vector, so their means must agree within the
error bars; the figure to read is the ratio of their total variances (the trace of each
estimator's covariance over the mini-batches). The score-function estimator is run plain and
with a leave-one-out mean baseline, which keeps it unbiased. A short sweep then shows how the
variance ratio moves with a constant added to Q and with the action dimension (each case
with a quarter of the mini-batches, at least 50).

The critic is ``Q(s, a) = offset - |a - m(s)|^2 + h(s, a)``: a quadratic bowl around a
state-dependent target action ``m(s) = 0.8 tanh(W s)`` plus a small fixed random tanh-MLP ripple
``h``. States are standard normal. Everything runs in float32 on the CPU, one thread.

    python bench/gradient_estimators.py                 # 2000 mini-batches of 256 per estimator
    python bench/gradient_estimators.py --quick         # 300 mini-batches, smaller sweep

Writes ``bench/results/gradient_estimators.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from robot_sac.networks import Actor

OBS_DIM, ACTION_DIM, HIDDEN, ALPHA = 4, 2, (16,), 0.2
Z_LIMIT = 4.0  # per-coordinate agreement threshold, in combined standard errors


class FixedCritic(nn.Module):
    """``offset - |a - m(s)|^2 + h(s, a)``: smooth in ``a``, weights frozen, seeded."""

    def __init__(self, obs_dim: int, action_dim: int, seed: int, offset: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(10_000 + seed)
        self.w_target = torch.randn(obs_dim, action_dim, generator=g) / math.sqrt(obs_dim)
        self.w1 = torch.randn(obs_dim + action_dim, 32, generator=g) / math.sqrt(obs_dim + 1)
        self.b1 = 0.5 * torch.randn(32, generator=g)
        self.w2 = 0.3 * torch.randn(32, generator=g) / math.sqrt(32)
        self.offset = offset

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        target = 0.8 * torch.tanh(obs @ self.w_target)
        ripple = torch.tanh(torch.cat([obs, action], -1) @ self.w1 + self.b1) @ self.w2
        return self.offset - (action - target).square().sum(-1) + ripple


@dataclass
class Problem:
    family: str
    actor: Actor
    critic: FixedCritic
    states: torch.Generator

    def obs(self, batch: int) -> Tensor:
        return torch.randn(batch, self.actor.obs_dim, generator=self.states)


def make_problem(family: str, action_dim: int, seed: int, offset: float = 0.0) -> Problem:
    torch.manual_seed(seed)
    actor = Actor(OBS_DIM, action_dim, HIDDEN, family)  # type: ignore[arg-type]
    return Problem(family, actor, FixedCritic(OBS_DIM, action_dim, seed, offset), torch.Generator())


# Each estimator maps (problem, obs) to a scalar surrogate whose gradient is the estimate.


def pathwise(p: Problem, obs: Tensor) -> Tensor:
    """Reparameterized (TanhNormal) or implicit-reparameterization (BoundedBeta) gradient."""
    action, logp = p.actor.dist(obs).rsample_and_log_prob()
    return (ALPHA * logp - p.critic(obs, action)).mean()


def score_function(p: Problem, obs: Tensor, baseline: bool = False) -> Tensor:
    """REINFORCE: ``mean(f(a).detach() * log pi(a) + alpha * log pi(a))``, ``a`` not differentiated.

    ``f = alpha * log pi(a) - Q(s, a)``. With ``baseline`` each sample's ``f`` has the mean of the
    other samples' ``f`` subtracted (leave-one-out), which is independent of that sample's action
    and so leaves the estimator unbiased.
    """
    d = p.actor.dist(obs)
    with torch.no_grad():
        action, _ = d.rsample_and_log_prob()
    logp = d.log_prob(action)
    f = (ALPHA * logp - p.critic(obs, action)).detach()
    if baseline:
        n = f.numel()
        f = f - (f.sum() - f) / (n - 1)
    return (f * logp + ALPHA * logp).mean()


ESTIMATORS: dict[str, Callable[[Problem, Tensor], Tensor]] = {
    "score_function": score_function,
    "score_function_baseline": lambda p, obs: score_function(p, obs, baseline=True),
    "pathwise": pathwise,
}
PATHWISE_NAME = {"tanh_normal": "reparameterized", "beta": "implicit_reparam"}


def sample_gradients(
    p: Problem, estimator: Callable[[Problem, Tensor], Tensor], batches: int, batch: int, seed: int
) -> tuple[Tensor, float]:
    """``batches`` independent gradient estimates ``(batches, n_params)`` and ms per estimate."""
    params = list(p.actor.parameters())
    torch.manual_seed(seed)
    p.states.manual_seed(seed)
    for _ in range(5):  # warm-up, not recorded
        torch.autograd.grad(estimator(p, p.obs(batch)), params)
    grads = torch.empty(batches, sum(q.numel() for q in params), dtype=torch.float64)
    t0 = time.perf_counter()
    for r in range(batches):
        g = torch.autograd.grad(estimator(p, p.obs(batch)), params)
        grads[r] = torch.cat([x.reshape(-1) for x in g])
    ms = 1e3 * (time.perf_counter() - t0) / batches
    if not torch.isfinite(grads).all():
        raise RuntimeError(f"non-finite gradient estimate ({p.family})")
    return grads, ms


def summarise(grads: Tensor) -> dict[str, Tensor | float]:
    mean, var = grads.mean(0), grads.var(0)
    return {"mean": mean, "se": (var / grads.shape[0]).sqrt(), "total_variance": var.sum().item()}


def compare(sf: dict, pw: dict) -> dict[str, float | bool]:
    """Do two estimators' means agree? Per-coordinate z-scores and the relative L2 gap."""
    diff = sf["mean"] - pw["mean"]
    combined_se = (sf["se"].square() + pw["se"].square()).sqrt()
    z = (diff.abs() / combined_se).max().item()
    norm = pw["mean"].norm().item()
    return {
        "max_abs_z": z,
        "agree": z <= Z_LIMIT,
        "rel_l2_diff": diff.norm().item() / norm,
        "rel_l2_noise": combined_se.norm().item() / norm,  # what rel_l2_diff would be from noise
        "variance_ratio": sf["total_variance"] / pw["total_variance"],
    }


def run_family(
    family: str, action_dim: int, offset: float, batches: int, batch: int, seed: int
) -> dict[str, dict]:
    problem = make_problem(family, action_dim, seed, offset)
    stats, ms = {}, {}
    for i, (name, est) in enumerate(ESTIMATORS.items()):
        grads, ms[name] = sample_gradients(problem, est, batches, batch, seed + 1 + i)
        stats[name] = summarise(grads)
    rows = {}
    for name in ESTIMATORS:
        row = {
            "estimator": PATHWISE_NAME[family] if name == "pathwise" else name,
            "ms_per_gradient": ms[name],
            "total_variance": stats[name]["total_variance"],
            "mean_grad_norm": stats[name]["mean"].norm().item(),
            "mean_grad": stats[name]["mean"].tolist(),
            "std_err": stats[name]["se"].tolist(),
        }
        if name != "pathwise":
            row |= compare(stats[name], stats["pathwise"])
        rows[name] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="300 mini-batches, smaller sweep")
    parser.add_argument(
        "--batches", type=int, default=0, help="mini-batches per estimator (0: 2000, quick 300)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="states per mini-batch")
    parser.add_argument("--seed", type=int, default=0, help="seeds policy, critic and sampling")
    parser.add_argument("--no-sweep", action="store_true", help="skip the offset/action-dim sweep")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args()

    torch.set_num_threads(1)
    batches = args.batches or (300 if args.quick else 2000)
    sweep_batches = max(50, batches // 4)
    if batches < 2 or args.batch_size < 2:
        parser.error("--batches and --batch-size must be at least 2")
    t_start = time.perf_counter()

    print(
        f"J = E[{ALPHA} * log pi(a|s) - Q(s,a)], obs {OBS_DIM}, action {ACTION_DIM}, "
        f"hidden {list(HIDDEN)}, {batches} mini-batches of {args.batch_size}, seed {args.seed}, "
        f"torch {torch.__version__}"
    )
    header = (
        f"{'family':12s} {'estimator':24s} {'|mean grad|':>11s} {'total var':>11s} "
        f"{'var / pw':>9s} {'max |z|':>8s} {'rel L2 diff':>11s} {'(noise)':>8s} "
        f"{'agree':>6s} {'ms/grad':>8s}"
    )
    print(header)
    print("-" * len(header))
    main_results = {}
    for family in ("tanh_normal", "beta"):
        rows = run_family(family, ACTION_DIM, 0.0, batches, args.batch_size, args.seed)
        main_results[family] = rows
        for name, r in rows.items():
            if name == "pathwise":
                cmp = f"{'1':>9s} {'':>8s} {'':>11s} {'':>8s} {'':>6s}"
            else:
                cmp = (
                    f"{r['variance_ratio']:9.1f} {r['max_abs_z']:8.2f} {r['rel_l2_diff']:11.4f} "
                    f"{r['rel_l2_noise']:8.4f} {'yes' if r['agree'] else 'NO':>6s}"
                )
            print(
                f"{family:12s} {r['estimator']:24s} {r['mean_grad_norm']:11.4f} "
                f"{r['total_variance']:11.4g} {cmp} {r['ms_per_gradient']:8.2f}"
            )
    print(
        f"var / pw: total variance over the pathwise one; max |z|: largest per-coordinate "
        f"|mean difference| / combined standard error (agree: <= {Z_LIMIT:g}); rel L2 diff: "
        f"|mean_sf - mean_pw| / |mean_pw|, (noise) the same figure expected from noise alone."
    )

    sweep: list[dict] = []
    if not args.no_sweep:
        offsets = (0.0, 10.0, 100.0)
        dims = (1, 2, 6) if args.quick else (1, 2, 6, 12)
        print()
        print(
            f"sweep ({sweep_batches} mini-batches of {args.batch_size}): variance ratio "
            f"score-function / pathwise"
        )
        head = (
            f"{'family':12s} {'action dim':>10s} {'Q offset':>9s} {'sf / pw':>10s} "
            f"{'sf+baseline / pw':>17s} {'max |z|':>8s}"
        )
        print(head)
        print("-" * len(head))
        cases = [(f, ACTION_DIM, o) for f in ("tanh_normal", "beta") for o in offsets]
        cases += [(f, d, 0.0) for f in ("tanh_normal", "beta") for d in dims if d != ACTION_DIM]
        for family, dim, offset in cases:
            rows = run_family(family, dim, offset, sweep_batches, args.batch_size, args.seed)
            sf, sfb = rows["score_function"], rows["score_function_baseline"]
            z = max(sf["max_abs_z"], sfb["max_abs_z"])
            sweep.append(
                {
                    "family": family,
                    "action_dim": dim,
                    "q_offset": offset,
                    "var_ratio_score_function": sf["variance_ratio"],
                    "var_ratio_score_function_baseline": sfb["variance_ratio"],
                    "max_abs_z": z,
                }
            )
            print(
                f"{family:12s} {dim:10d} {offset:9g} {sf['variance_ratio']:10.1f} "
                f"{sfb['variance_ratio']:17.1f} {z:8.2f}"
            )
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal time {elapsed:.0f} s")

    result = {
        "benchmark": "gradient_estimators",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": "cpu",
        "device_name": platform.processor() or platform.machine(),
        "threads": 1,
        "dtype": "float32 (statistics in float64)",
        "objective": f"E_s E_a[{ALPHA} * log pi(a|s) - Q(s,a)]",
        "shapes": {"obs": OBS_DIM, "action": ACTION_DIM, "hidden": list(HIDDEN)},
        "batches": batches,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "z_limit": Z_LIMIT,
        "results": main_results,
        "sweep_batches": sweep_batches,
        "sweep": sweep,
        "elapsed_s": elapsed,
    }
    out = args.out or Path(__file__).parent / "results" / "gradient_estimators.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

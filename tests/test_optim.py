"""FusedAdam is torch's fused Adam, bit for bit, with the bookkeeping cached."""

from __future__ import annotations

import copy

import torch

from robot_sac.optim import FusedAdam


def run(opt_cls, params, grads, **kw):
    opt = opt_cls(params, lr=1e-2, **kw)
    for g in grads:
        for p, gp in zip(params, g, strict=True):
            p.grad = gp.clone()
        opt.step()
        opt.zero_grad()
    return opt


def test_fused_adam_equals_torch_adam_bitwise():
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), ()]
    init = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(20)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    run(FusedAdam, ours, grads)
    run(torch.optim.Adam, ref, grads, fused=True)
    for p, q in zip(ours, ref, strict=True):
        assert torch.equal(p, q)
    # and close to the textbook (non-fused) Adam
    plain = [torch.nn.Parameter(t.clone()) for t in init]
    run(torch.optim.Adam, plain, grads, foreach=False)
    for p, q in zip(ours, plain, strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_fused_adam_state_dict_round_trip_and_lr_change():
    torch.manual_seed(0)
    grads = [[torch.randn(4)] for _ in range(10)]
    a = [torch.nn.Parameter(torch.zeros(4))]
    opt_a = run(FusedAdam, a, grads[:5])
    b = [torch.nn.Parameter(a[0].detach().clone())]
    opt_b = FusedAdam(b, lr=1e-2)
    # a deep copy, as a checkpoint file gives: torch's optimisers keep loaded tensors as they are
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for opt in (opt_a, opt_b):
        for group in opt.param_groups:
            group["lr"] = 5e-2
    for g in grads[5:]:
        for opt, p in ((opt_a, a), (opt_b, b)):
            p[0].grad = g[0].clone()
            opt.step()
    assert torch.equal(a[0], b[0])
    assert float(opt_a.state_dict()["state"][0]["step"]) == 10.0


def test_fused_adam_skips_parameters_without_gradient_like_torch():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = FusedAdam([p, q], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(3)) and torch.equal(q.detach(), torch.ones(3))


def adam_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t.clone() for s in opt.state.values() for t in s.values()]


def test_found_inf_skips_the_step_and_keeps_the_state_both_on_first_and_cached_steps():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = FusedAdam([p], lr=0.1)
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    # first step: torch's own fused step, which reads found_inf from the optimiser
    p.grad = torch.full((5,), float("nan"))
    before = p.detach().clone()
    opt.step(found_inf=one)
    assert torch.equal(p.detach(), before)
    assert float(opt.state[p]["step"]) == 0.0 and not hasattr(opt, "found_inf")
    assert torch.equal(opt.state[p]["exp_avg"], torch.zeros(5))
    # a real step, then a skipped one on the cached path: parameter, moments and count unchanged
    p.grad = torch.randn(5)
    opt.step(found_inf=zero)
    assert float(opt.state[p]["step"]) == 1.0
    before, state = p.detach().clone(), adam_state(opt)
    p.grad = torch.full((5,), float("inf"))
    opt.step(found_inf=one)
    assert torch.equal(p.detach(), before)
    for old, new in zip(state, adam_state(opt), strict=True):
        assert torch.equal(old, new)


def test_found_inf_zero_is_the_plain_step_bit_for_bit():
    torch.manual_seed(0)
    init = torch.randn(6)
    grads = [torch.randn(6) for _ in range(5)]
    plain, flagged = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt_plain, opt_flagged = FusedAdam([plain], lr=1e-2), FusedAdam([flagged], lr=1e-2)
    for g in grads:
        plain.grad, flagged.grad = g.clone(), g.clone()
        opt_plain.step()
        opt_flagged.step(found_inf=torch.tensor(0.0))
    assert torch.equal(plain, flagged)
    for a, b in zip(adam_state(opt_plain), adam_state(opt_flagged), strict=True):
        assert torch.equal(a, b)

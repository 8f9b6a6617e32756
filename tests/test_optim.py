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

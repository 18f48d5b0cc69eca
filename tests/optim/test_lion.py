"""Lion: the update rule by hand on a tiny tensor, convergence, argument checks."""

from __future__ import annotations

import pytest
import torch

from raylm.optim import Lion, ScheduleConfig, apply_lr, lr_multiplier


def test_matches_a_hand_computed_update():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)

    # Step 1, m = 0: c = 0.1 * g, so the update is sign(g) (0 where g is 0);
    # p = p * (1 - 0.1 * 0.5) - 0.1 * sign(g); m = 0.01 * g.
    p.grad = torch.tensor([1.0, -1.0, 0.0, 2.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.85, -1.8, 0.475, 2.75]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.01, -0.01, 0.0, 0.02]))

    # Step 2: c = 0.9 * m + 0.1 * g = [0.004, -0.109, 0.1, -0.012]. In the first coordinate
    # the momentum outweighs a negative gradient: the update's sign is +1, not sign(g).
    p.grad = torch.tensor([-0.05, -1.0, 1.0, -0.3])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.7075, -1.61, 0.35125, 2.7125]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.0094, -0.0199, 0.01, 0.0168]))


def test_minimises_a_quadratic():
    target = torch.tensor([1.0, -2.0, 3.0])
    x = torch.nn.Parameter(torch.zeros(3))
    opt = Lion([x], lr=0.05)
    schedule = ScheduleConfig(name="cosine", warmup_steps=0, total_steps=600, min_lr_ratio=0.0)
    for step in range(600):
        apply_lr(opt, 0.05, lr_multiplier(schedule, step))  # every coordinate moves by lr
        opt.zero_grad()
        (x - target).square().sum().backward()
        opt.step()
    torch.testing.assert_close(x.detach(), target, atol=1e-3, rtol=0)


def test_parameters_without_grad_are_untouched():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Lion([a, b], lr=0.1, weight_decay=1.0)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.8))  # 1 * (1 - 0.1) - 0.1


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"lr": -1.0}, "lr"), ({"betas": (0.9, 1.0)}, r"betas\[1\]"), ({"weight_decay": -0.1}, "weight_decay")],
)
def test_rejects_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        Lion([torch.nn.Parameter(torch.ones(1))], **kw)

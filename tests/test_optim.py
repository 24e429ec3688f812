"""Optimizers and schedules: the lr each schedule gives at known steps, against the formulas."""
from __future__ import annotations

import math

import pytest
import torch

from ablate.errors import AblateError
from ablate.optim import SCHEDULES, make_optimizer, make_schedule


def _lrs(name: str, total: int, lr: float = 0.1) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, name="sgd", lr=lr, weight_decay=0.0)
    sched = make_schedule(opt, name, total_steps=total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_none_is_constant():
    assert _lrs("none", 5) == [0.1] * 5


def test_cosine_follows_half_a_cosine_to_zero():
    lrs = _lrs("cosine", 10)
    for t, lr in enumerate(lrs):
        assert lr == pytest.approx(0.05 * (1 + math.cos(math.pi * t / 10)))


def test_poly_is_power_point_nine():
    lrs = _lrs("poly", 10)
    for t, lr in enumerate(lrs):
        assert lr == pytest.approx(0.1 * (1 - t / 10) ** 0.9)


def test_onecycle_warms_up_for_thirty_percent_then_anneals():
    lrs = _lrs("onecycle", 100)
    assert lrs[0] == pytest.approx(0.1 / 25)
    peak = max(range(100), key=lrs.__getitem__)
    assert peak == 29 and lrs[peak] == pytest.approx(0.1, rel=1e-3)
    assert lrs[-1] < 0.1 / 25 / 100  # ends near lr / (25 · 10^4)
    assert all(a <= b for a, b in zip(lrs[:29], lrs[1:30])) and all(a >= b for a, b in zip(lrs[29:], lrs[30:]))


def test_sgd_uses_momentum_point_nine_and_nesterov_on_request():
    model = torch.nn.Linear(2, 2)
    sgd = make_optimizer(model, name="sgd", lr=0.01, weight_decay=1e-4, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 1e-4)
    adamw = make_optimizer(model, lr=0.01, weight_decay=0.1)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["fused"]


def test_frozen_parameters_are_left_out():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    opt = make_optimizer(model, name="sgd", lr=0.1, weight_decay=0.0)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 6


@pytest.mark.parametrize("call, match", [
    (lambda m: make_optimizer(m, name="adam", lr=0.1, weight_decay=0.0), "unknown optimizer 'adam'; choose from: adamw, sgd"),
    (lambda m: make_optimizer(m, name="adamw", lr=0.1, weight_decay=0.0, nesterov=True), "nesterov applies to sgd only"),
    (lambda m: make_schedule(make_optimizer(m, lr=0.1, weight_decay=0.0), "step", total_steps=3),
     f"unknown schedule 'step'; choose from: {', '.join(SCHEDULES)}"),
])
def test_bad_names_are_one_line_errors(call, match):
    with pytest.raises(AblateError, match=match):
        call(torch.nn.Linear(2, 2))


def test_config_names_the_same_optimizers_schedules_and_losses_as_the_library():
    # config.py keeps torch-free copies of these names; a level added to one side only would
    # be accepted by the config and then fail inside training (or never be reachable)
    import ablate.config as config
    import ablate.losses as losses
    import ablate.optim as optim

    assert config.OPTIMIZERS == optim.OPTIMIZERS
    assert config.SCHEDULES == optim.SCHEDULES
    assert config.LOSSES == losses.LOSSES

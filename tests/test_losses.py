"""Losses: each against a value computed by hand on a 2×2 example with one void pixel."""
from __future__ import annotations

import math

import pytest
import torch

from ablate.errors import AblateError
from ablate.losses import LOSSES, make_loss

L2, L3 = math.log(2), math.log(3)


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, pixels a b / c void:
    a: target 1, p = (1/4, 3/4);  b: target 0, p = (1/4, 3/4);  c: target 1, p = (2/3, 1/3)."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, :, 0, 0] = torch.tensor([0.0, L3])
    logits[0, :, 0, 1] = torch.tensor([0.0, L3])
    logits[0, :, 1, 0] = torch.tensor([L2, 0.0])
    logits[0, :, 1, 1] = torch.tensor([5.0, -5.0])  # void: must not count
    target = torch.tensor([[[1, 0], [1, 255]]])
    return logits, target


# Hand computations (non-void pixels a, b, c):
CE = (math.log(4 / 3) + math.log(4) + math.log(3)) / 3
# Dice: class 0: Σp = 1/4+1/4+2/3 = 7/6, Σy = 1, I = 1/4 -> 2I/(Σp+Σy) = 3/13;
#       class 1: Σp = 11/6, Σy = 2, I = 3/4+1/3 = 13/12 -> 13/23.
DICE = 1 - (3 / 13 + 13 / 23) / 2
FOCAL = ((1 / 4) ** 2 * math.log(4 / 3) + (3 / 4) ** 2 * math.log(4) + (2 / 3) ** 2 * math.log(3)) / 3
# Lovász: class 0 errors sorted b 3/4 (fg), c 2/3, a 1/4 -> Jaccard gradient (1, 0, 0) -> 3/4;
#         class 1 errors sorted b 3/4 (bg), c 2/3 (fg), a 1/4 (fg), |fg| = 2:
#         J = 1/3, 2/3, 1 -> gradient (1/3, 1/3, 1/3) -> (3/4 + 2/3 + 1/4)/3 = 5/9.
LOVASZ = (3 / 4 + 5 / 9) / 2

EXPECTED = {"ce": CE, "dice": DICE, "focal": FOCAL, "lovasz": LOVASZ, "ce+dice": CE + DICE}


@pytest.mark.parametrize("name", LOSSES)
def test_hand_computed_value(name):
    logits, target = _example()
    assert make_loss(name)(logits, target).item() == pytest.approx(EXPECTED[name], rel=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_void_pixel_never_counts_and_gradient_flows(name):
    logits, target = _example()
    other = logits.clone()
    other[0, :, 1, 1] = torch.tensor([-7.0, 3.0])
    other.requires_grad_(True)
    loss = make_loss(name)(other, target)
    assert loss.item() == pytest.approx(EXPECTED[name], rel=1e-6)
    loss.backward()
    assert torch.isfinite(other.grad).all()
    assert other.grad[0, :, 1, 1].abs().max() == 0  # no gradient through the void pixel
    assert other.grad[0, :, 0, 0].abs().max() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_perfect_prediction_is_near_zero_and_beats_a_wrong_one(name):
    target = torch.tensor([[[0, 1], [1, 0]]])
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 20
    assert make_loss(name)(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert make_loss(name)(-perfect, target).item() > 0.5


def test_class_weights_weight_ce_and_focal_like_torch():
    logits, target = _example()
    w = torch.tensor([2.0, 0.5])
    # weighted mean over pixels a (w 0.5), b (w 2), c (w 0.5)
    ce = (0.5 * math.log(4 / 3) + 2 * math.log(4) + 0.5 * math.log(3)) / 3.0
    focal = (0.5 * (1 / 4) ** 2 * math.log(4 / 3) + 2 * (3 / 4) ** 2 * math.log(4) + 0.5 * (2 / 3) ** 2 * math.log(3)) / 3.0
    assert make_loss("ce", weight=w)(logits, target).item() == pytest.approx(ce, rel=1e-6)
    assert make_loss("focal", weight=w)(logits, target).item() == pytest.approx(focal, rel=1e-6)
    assert make_loss("ce+dice", weight=w)(logits, target).item() == pytest.approx(ce + DICE, rel=1e-6)


@pytest.mark.parametrize("name", ("dice", "lovasz"))
def test_weights_refused_where_they_would_be_ignored(name):
    with pytest.raises(AblateError, match="takes no class weights"):
        make_loss(name, weight=torch.ones(2))


def test_unknown_loss_names_the_choices():
    with pytest.raises(AblateError, match="unknown loss 'bce'.*ce, dice, focal, lovasz, ce\\+dice"):
        make_loss("bce")


@pytest.mark.parametrize("name", ("dice", "focal", "lovasz"))
def test_all_void_batch_is_zero_with_a_gradient(name):
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = make_loss(name)(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("name", ("dice", "lovasz"))
def test_classes_absent_from_the_target_are_skipped(name):
    logits, target = _example()
    three = torch.cat([logits, torch.full((1, 1, 2, 2), -40.0)], 1)  # class 2: never true, p ≈ 0
    assert make_loss(name)(three, target).item() == pytest.approx(EXPECTED[name], rel=1e-6)

"""Loss stage: the segmentation losses a run can train with, by name.

Every loss takes logits [N, K, H, W] (any float dtype; computed in fp32) and a target
[N, H, W] of class indices with void pixels set to `ignore_index`; void pixels never
contribute. Cross-entropy is torch's own; the others are written here because no well-kept
library in our dependencies offers them for multi-class input with an ignore label
(torchvision's focal loss is the binary, sigmoid one; segmentation-models-pytorch is an
optional extra). Their definitions follow the papers and smp's multi-class conventions:

- `dice`  (Milletari et al. 2016, soft Dice): 1 − mean over the classes present in the
  batch's target of (2 Σ p_c y_c) / (Σ p_c + Σ y_c), p = softmax, sums over non-void pixels.
- `focal` (Lin et al. 2017): mean over non-void pixels of −w_y (1 − p_y)^γ log p_y, γ = 2;
  with class weights the mean is weighted like cross-entropy's (Σ w_y · fl / Σ w_y).
- `lovasz` (Berman et al. 2018, Lovász-Softmax, classes="present", over the whole batch):
  mean over present classes of ⟨sorted errors |y_c − p_c|, Lovász gradient of the Jaccard loss⟩.
- `ce+dice`: cross-entropy + Dice, equal weights.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ablate.errors import AblateError

LOSSES = ("ce", "dice", "focal", "lovasz", "ce+dice")
FOCAL_GAMMA = 2.0
VOID = 255

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(name: str, *, weight: torch.Tensor | None = None, ignore_index: int = VOID) -> Loss:
    """The loss `name` as a function of (logits, target). `weight` (per-class, e.g. from the
    weighted-loss toggle) applies to ce, focal and the ce part of ce+dice; Dice and Lovász
    are already insensitive to class frequency and refuse it rather than ignore it."""
    if name not in LOSSES:
        raise AblateError(f"unknown loss {name!r}; choose from: {', '.join(LOSSES)}")
    if weight is not None and name in ("dice", "lovasz"):
        raise AblateError(f"loss {name!r} takes no class weights (it is computed per class already); "
                          "turn weighted_loss off or use ce, focal or ce+dice")

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target.long(), weight=weight, ignore_index=ignore_index)

    def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(logits, target, ignore_index=ignore_index)

    def focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, weight=weight, ignore_index=ignore_index)

    def lovasz(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_softmax(logits, target, ignore_index=ignore_index)

    def ce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ce(logits, target) + dice(logits, target)

    return {"ce": ce, "dice": dice, "focal": focal, "lovasz": lovasz, "ce+dice": ce_dice}[name]


def _flat(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities [P, K] and labels [P] of the non-void pixels."""
    k = logits.shape[1]
    probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, k)
    labels = target.reshape(-1).long()
    keep = labels != ignore_index
    return probs[keep], labels[keep]


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().sum() * 0.0  # keeps the graph: an all-void batch gives a zero gradient


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = VOID) -> torch.Tensor:
    probs, labels = _flat(logits, target, ignore_index)
    if labels.numel() == 0:
        return _zero(logits)
    onehot = F.one_hot(labels, probs.shape[1]).float()
    present = onehot.sum(0) > 0
    intersection = (probs * onehot).sum(0)
    cardinality = probs.sum(0) + onehot.sum(0)
    score = 2 * intersection[present] / cardinality[present]
    return 1 - score.mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, weight: torch.Tensor | None = None,
               gamma: float = FOCAL_GAMMA, ignore_index: int = VOID) -> torch.Tensor:
    k = logits.shape[1]
    log_probs = F.log_softmax(logits.float(), 1).permute(0, 2, 3, 1).reshape(-1, k)
    labels = target.reshape(-1).long()
    keep = labels != ignore_index
    log_probs, labels = log_probs[keep], labels[keep]
    if labels.numel() == 0:
        return _zero(logits)
    log_pt = log_probs.gather(1, labels[:, None])[:, 0]
    per_pixel = -((1 - log_pt.exp()) ** gamma) * log_pt
    if weight is None:
        return per_pixel.mean()
    w = weight.to(per_pixel)[labels]
    return (w * per_pixel).sum() / w.sum().clamp(min=1e-12)


def lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in
    decreasing order (Berman et al. 2018, Alg. 1): g_i = J(i) − J(i−1), with J(i) the
    Jaccard loss when the i largest errors are counted wrong."""
    gts = sorted_truth.sum()
    intersection = gts - sorted_truth.cumsum(0)
    union = gts + (1 - sorted_truth).cumsum(0)
    jaccard = 1 - intersection / union
    if len(jaccard) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = VOID) -> torch.Tensor:
    probs, labels = _flat(logits, target, ignore_index)
    if labels.numel() == 0:
        return _zero(logits)
    losses = []
    for c in range(probs.shape[1]):
        truth = (labels == c).float()
        if truth.sum() == 0:
            continue  # classes="present"
        errors = (truth - probs[:, c]).abs()
        errors_sorted, order = errors.sort(descending=True)
        losses.append(errors_sorted @ lovasz_grad(truth[order]))
    return torch.stack(losses).mean()

"""Metrics stage: a confusion matrix accumulated with one `torch.bincount`, and pure
derivations of every score from it (definitions in shared/guides/METRICS.md)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["confusion_matrix", "ConfusionMatrix", "scores"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """K×K int64 counts, rows = ground truth, columns = prediction, on the inputs' device.

    Pixels whose target is `ignore_index` or outside 0..K-1 are dropped before counting,
    so a prediction on a void pixel never counts. A kept pixel predicted outside 0..K-1 is
    a bug upstream and raises ValueError rather than landing silently in a wrong cell.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    k = num_classes
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    keep = (target != ignore_index) & (target >= 0) & (target < k)
    pred, target = pred[keep], target[keep]
    if pred.numel() and bool(((pred < 0) | (pred >= k)).any()):
        bad = pred[(pred < 0) | (pred >= k)][0].item()
        raise ValueError(f"predicted label {bad} outside 0..{k - 1}")
    return torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)


class ConfusionMatrix:
    """Accumulates `confusion_matrix` over batches; `.mat` lives on the CPU."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.mat += confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def reset(self) -> None:
        self.mat.zero_()

    def compute(self) -> dict:
        return scores(self.mat)


def _nanmean(values: np.ndarray) -> float:
    # np.nanmean warns on all-NaN input; an all-absent split is a legitimate NaN here.
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores(mat: Tensor | np.ndarray) -> dict:
    """Every score of METRICS.md from a K×K matrix, as plain Python floats in [0, 1].

    Classes with an empty denominator get NaN and are skipped by the means.
    """
    c = mat.detach().cpu().numpy() if isinstance(mat, Tensor) else np.asarray(mat)
    c = c.astype(np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {c.shape}")
    diag = np.diag(c)
    rows, cols, total = c.sum(axis=1), c.sum(axis=0), c.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        class_iou = diag / (rows + cols - diag)
        class_acc = diag / rows
        class_dice = 2 * diag / (rows + cols)
    return {
        "pixel_acc": float(diag.sum() / total) if total > 0 else math.nan,
        "class_iou": [float(v) for v in class_iou],
        "miou": _nanmean(class_iou),
        "class_acc": [float(v) for v in class_acc],
        "mean_acc": _nanmean(class_acc),
        "mdice": _nanmean(class_dice),
    }

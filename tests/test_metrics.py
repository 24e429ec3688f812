"""Metrics: hand-computed confusion matrices and an independent numpy reference."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from ablate._io import _json_safe
from ablate.metrics import ConfusionMatrix, confusion_matrix, scores


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def _assert_list(actual, expected) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if math.isnan(e):
            assert math.isnan(a), (actual, expected)
        else:
            assert a == pytest.approx(e), (actual, expected)


def test_hand_computed_with_void_pixels():
    target = _t([[0, 0, 1], [1, 2, 255]])
    pred = _t([[0, 1, 1], [2, 2, 0]])  # the void pixel's prediction (0) must not count
    mat = confusion_matrix(pred, target, 3)
    assert mat.dtype == torch.int64
    assert mat.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]

    s = scores(mat)
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    _assert_list(s["class_iou"], [1 / 2, 1 / 3, 1 / 2])
    assert s["miou"] == pytest.approx(4 / 9)
    _assert_list(s["class_acc"], [1 / 2, 1 / 2, 1.0])
    assert s["mean_acc"] == pytest.approx(2 / 3)
    assert s["mdice"] == pytest.approx(11 / 18)


def test_absent_class_is_nan_and_skipped_by_means():
    target = _t([0, 0, 1, 1])
    pred = _t([0, 1, 1, 1])
    s = scores(confusion_matrix(pred, target, 3))
    _assert_list(s["class_iou"], [1 / 2, 2 / 3, math.nan])
    assert s["miou"] == pytest.approx(7 / 12)
    _assert_list(s["class_acc"], [1 / 2, 1.0, math.nan])
    assert s["mean_acc"] == pytest.approx(3 / 4)
    assert s["mdice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert s["pixel_acc"] == pytest.approx(3 / 4)


def test_class_predicted_but_absent_from_ground_truth_scores_zero_iou():
    # Non-empty union, so IoU is 0 (not NaN) and drags miou down; its accuracy row is empty.
    s = scores(confusion_matrix(_t([0, 2]), _t([0, 0]), 3))
    _assert_list(s["class_iou"], [1 / 2, math.nan, 0.0])
    assert s["miou"] == pytest.approx(1 / 4)
    _assert_list(s["class_acc"], [1 / 2, math.nan, math.nan])


def test_perfect_prediction_scores_one():
    target = torch.arange(4).repeat(3, 2)
    s = scores(confusion_matrix(target.clone(), target, 4))
    for key in ("pixel_acc", "miou", "mean_acc", "mdice"):
        assert s[key] == 1.0
    assert s["class_iou"] == [1.0] * 4


def test_all_wrong_prediction_scores_zero():
    s = scores(confusion_matrix(_t([1, 2, 0]), _t([0, 1, 2]), 3))
    for key in ("pixel_acc", "miou", "mean_acc", "mdice"):
        assert s[key] == 0.0
    assert s["class_iou"] == [0.0, 0.0, 0.0]


def test_camvid_ignore_index_11_drops_void():
    target = _t([0, 11, 11, 1])
    pred = _t([0, 1, 0, 1])
    assert confusion_matrix(pred, target, 11, ignore_index=11).sum() == 2
    assert scores(confusion_matrix(pred, target, 11, ignore_index=11))["pixel_acc"] == 1.0
    # With the default ignore label, 11 is a real class of a 12-class problem and counts...
    assert confusion_matrix(pred, target, 12).sum() == 4
    # ...unless it is named as the ignore label, even though it lies inside 0..K-1.
    assert confusion_matrix(pred, target, 12, ignore_index=11).sum() == 2


def test_target_labels_outside_range_are_dropped():
    target = _t([0, 1, 3, 7, -1, 255])
    pred = _t([0, 1, 0, 1, 0, 1])
    mat = confusion_matrix(pred, target, 3)
    assert mat.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_prediction_outside_range_on_kept_pixel_raises():
    with pytest.raises(ValueError, match="predicted label 3"):
        confusion_matrix(_t([0, 3]), _t([0, 1]), 3)
    # ...but anything goes on void pixels, which never count.
    assert confusion_matrix(_t([0, 3]), _t([0, 255]), 3).sum() == 1


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(_t([0, 1]), _t([0, 1, 2]), 3)


def _reference(pred: np.ndarray, gt: np.ndarray, k: int, ignore: int) -> dict:
    """Per-class set logic on boolean masks; no confusion matrix involved."""
    valid = (gt != ignore) & (gt >= 0) & (gt < k)
    iou, acc, dice = [], [], []
    for c in range(k):
        p, g = (pred == c) & valid, (gt == c) & valid
        inter, union = (p & g).sum(), (p | g).sum()
        iou.append(inter / union if union else math.nan)
        acc.append(inter / g.sum() if g.sum() else math.nan)
        dice.append(2 * inter / (p.sum() + g.sum()) if p.sum() + g.sum() else math.nan)
    return {
        "pixel_acc": ((pred == gt) & valid).sum() / valid.sum(),
        "class_iou": iou,
        "miou": np.nanmean(iou),
        "class_acc": acc,
        "mean_acc": np.nanmean(acc),
        "mdice": np.nanmean(dice),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_reference_on_random_data(seed):
    k, ignore = 6, 255
    gen = torch.Generator().manual_seed(seed)
    # Class 5 appears nowhere (NaN, skipped); class 4 is predicted but never true (IoU 0,
    # accuracy NaN); some pixels are void or outside 0..K-1.
    pred = torch.randint(0, k - 1, (3, 19, 23), generator=gen)
    target = torch.randint(0, k - 2, (3, 19, 23), generator=gen)
    agree = (torch.rand(target.shape, generator=gen) < 0.3) & (pred < k - 2)
    target = torch.where(agree, pred, target)
    noise = torch.rand(target.shape, generator=gen)
    target[noise < 0.1] = ignore
    target[(noise >= 0.1) & (noise < 0.15)] = k + 2
    pred_np, target_np = pred.numpy(), target.numpy()

    # Accumulate in two batches to exercise ConfusionMatrix.update.
    cm = ConfusionMatrix(k, ignore_index=ignore)
    cm.update(pred[:1], target[:1])
    cm.update(pred[1:], target[1:])
    got = cm.compute()
    want = _reference(pred_np, target_np, k, ignore)
    assert math.isnan(want["class_iou"][5]) and want["class_iou"][4] == 0 and math.isnan(want["class_acc"][4])
    for key in ("pixel_acc", "miou", "mean_acc", "mdice"):
        assert got[key] == pytest.approx(float(want[key])), key
    _assert_list(got["class_iou"], want["class_iou"])
    _assert_list(got["class_acc"], want["class_acc"])

    # torchvision references/segmentation formula on a matrix counted pixel by pixel.
    h = np.zeros((k, k), dtype=np.int64)
    for g, p in zip(target_np.ravel(), pred_np.ravel()):
        if 0 <= g < k:
            h[g, p] += 1
    assert cm.mat.tolist() == h.tolist()
    acc_global = np.diag(h).sum() / h.sum()
    with np.errstate(invalid="ignore"):
        iu = np.diag(h) / (h.sum(1) + h.sum(0) - np.diag(h))
    assert got["pixel_acc"] == pytest.approx(acc_global)
    _assert_list(got["class_iou"], list(iu))


def test_scores_accepts_numpy_and_returns_plain_json_floats():
    mat = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    from_np, from_torch = scores(mat), scores(torch.from_numpy(mat))
    assert json.dumps(_json_safe(from_np)) == json.dumps(_json_safe(from_torch))
    assert all(type(from_np[key]) is float for key in ("pixel_acc", "miou", "mean_acc", "mdice"))
    assert all(type(v) is float for v in from_np["class_iou"] + from_np["class_acc"])
    assert json.loads(json.dumps(_json_safe(from_np)))["class_iou"][2] is None


def test_empty_matrix_is_all_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = scores(torch.zeros(3, 3, dtype=torch.int64))
    assert all(math.isnan(s[key]) for key in ("pixel_acc", "miou", "mean_acc", "mdice"))


def test_confusion_matrix_object_reset():
    cm = ConfusionMatrix(2)
    cm.update(_t([0, 1]), _t([0, 0]))
    assert cm.mat.tolist() == [[1, 1], [0, 0]]
    cm.reset()
    assert cm.mat.sum() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_stay_on_device_and_match_cpu():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (2, 8, 8), generator=gen)
    target = torch.randint(0, 5, (2, 8, 8), generator=gen)
    target[0, 0] = 255
    mat = confusion_matrix(pred.cuda(), target.cuda(), 4)
    assert mat.device.type == "cuda"
    assert torch.equal(mat.cpu(), confusion_matrix(pred, target, 4))
    cm = ConfusionMatrix(4)
    cm.update(pred.cuda(), target.cuda())
    assert torch.equal(cm.mat, mat.cpu())

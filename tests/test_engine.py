"""Engine: toggles do what they claim, early stopping, best checkpoint, determinism, failures."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablate import engine
from ablate.config import TrainConfig
from ablate.data import VOID, load_dataset
from ablate.engine import EarlyStopping, Pruned, class_weights, evaluate, fit
from ablate.models import register_model
from ablate.predict import load_run

TINY = dict(model="baseline", data="synthetic", image_size=(32, 32), batch_size=32, epochs=2, patience=0, precision="fp32")


@pytest.fixture(scope="module")
def synthetic32(cache_dir):
    return load_dataset("synthetic", image_size=(32, 32), cache_dir=cache_dir)


def _fit(dataset, **overrides):
    return fit(TrainConfig(**{**TINY, **overrides}), dataset, quiet=True)


# --------------------------------------------------------------------------- scheduler
def test_cosine_schedule_follows_cosine_per_step(synthetic32):
    record = _fit(synthetic32, scheduler=True, epochs=3, lr=2e-3)
    steps = math.ceil(len(synthetic32.splits["train"]) / 32)
    total = 3 * steps
    for row in record["curves"]:
        expected = 2e-3 * 0.5 * (1 + math.cos(math.pi * (row["epoch"] - 1) * steps / total))
        assert row["lr"] == pytest.approx(expected, rel=1e-12)
    assert record["curves"][1]["lr"] < record["curves"][0]["lr"]


def test_no_scheduler_keeps_lr_constant(synthetic32):
    record = _fit(synthetic32, scheduler=False, lr=2e-3)
    assert [row["lr"] for row in record["curves"]] == [2e-3, 2e-3]


def cosine_lr(step: int, total_steps: int) -> float:
    """The engine's former closed-form cosine (multiplier of the peak lr), kept here as the
    yardstick: the default schedule (ablate.optim's) must reproduce it step for step."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_default_cosine_is_the_former_closed_form_at_every_step(synthetic32, seen):
    lrs = seen["lrs"]
    _fit(synthetic32, scheduler=True, epochs=3, lr=2e-3)
    total = 3 * math.ceil(len(synthetic32.splits["train"]) / 32)
    assert len(lrs) == total
    assert lrs == pytest.approx([2e-3 * cosine_lr(t, total) for t in range(total)], rel=1e-12)


# --------------------------------------------------------------------------- optimizer
def test_optimizer_is_fused_adamw_with_the_reference_update():
    def net():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Conv2d(4, 2, 1))
        model[2].bias.requires_grad_(False)  # frozen parameters stay out of the optimizer
        return model

    model, reference = net(), net()
    fused = engine.make_optimizer(model, lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1,
                              foreach=False)
    assert fused.defaults["fused"] and len(fused.param_groups[0]["params"]) == 3
    start = model[0].weight.detach().clone()
    x, target = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 6, 6)
    for _ in range(3):
        for m, opt in ((model, fused), (reference, plain)):
            opt.zero_grad()
            (m(x) - target).square().mean().backward()
            opt.step()
    assert (model[0].weight - start).abs().mean() > 1e-2  # three real steps were taken
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- weighted loss
def test_class_weights_are_inverse_frequency_with_mean_one():
    w = class_weights([0.5, 0.25, 0.25, 0.0])
    assert w[3] == 0  # absent class gets no weight
    assert w[:3].mean().item() == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(2.0)
    assert w[1] == pytest.approx(w[2])


FREQ = [0.5, 0.25, 0.2, 0.05, 0.0]  # the last class is absent from the training split


@pytest.mark.parametrize("scheme, expected", [
    # 1/f = 2, 4, 5, 20 (mean 7.75), scaled to mean 1
    ("inverse", [2 / 7.75, 4 / 7.75, 5 / 7.75, 20 / 7.75, 0.0]),
    # median of the present shares (0.05, 0.2, 0.25, 0.5) = 0.225; 0.225 / f, not rescaled
    ("median", [0.45, 0.9, 1.125, 4.5, 0.0]),
    # 1 / ln(1.02 + f): ln 1.52 = 0.41871, ln 1.27 = 0.23902, ln 1.22 = 0.19885, ln 1.07 = 0.06766
    ("enet", [2.388286, 4.183805, 5.028895, 14.780076, 0.0]),
])
def test_class_weight_schemes_match_hand_computed_values(scheme, expected):
    assert class_weights(FREQ, scheme=scheme).tolist() == pytest.approx(expected, rel=1e-6)


def test_median_weights_with_an_odd_number_of_present_classes():
    assert class_weights([0.6, 0.0, 0.3, 0.1], scheme="median").tolist() == pytest.approx([0.5, 0.0, 1.0, 3.0])


def test_the_configured_scheme_is_the_weight_the_loss_gets(synthetic32, monkeypatch):
    seen = []
    real = engine.make_loss

    def spy(*args, **kwargs):
        seen.append(kwargs["weight"])
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "make_loss", spy)
    for scheme in ("median", "enet"):
        _fit(synthetic32, epochs=1, weighted_loss=True, class_weights=scheme)
        assert seen[-1].tolist() == pytest.approx(class_weights(synthetic32.class_frequency, scheme=scheme).tolist())
    _fit(synthetic32, epochs=1, weighted_loss=False, class_weights="enet")
    assert seen[-1] is None  # the scheme only matters with the toggle on


def test_weighted_loss_changes_training_loss_not_reported_val_loss_definition(synthetic32, tmp_path):
    plain = _fit(synthetic32, epochs=1)
    weighted = fit(TrainConfig(**{**TINY, "epochs": 1, "weighted_loss": True}), synthetic32, out_dir=tmp_path, quiet=True)
    assert plain["curves"][0]["train_loss"] != pytest.approx(weighted["curves"][0]["train_loss"], rel=1e-3)
    # val loss is always the unweighted CE: recompute it by hand from the checkpoint, at the
    # working size for the curve and at the masks' native size (128 px) for the final metrics.
    model, _ = load_run(tmp_path)
    val = synthetic32.splits["val"]
    with torch.no_grad():
        logits = model(val.images.float() / 255)
    working = F.cross_entropy(logits, val.masks.long(), ignore_index=VOID)
    native_masks = torch.stack(val.native_masks).long()
    up = F.interpolate(logits, size=native_masks.shape[-2:], mode="bilinear", align_corners=False)
    native = F.cross_entropy(up, native_masks, ignore_index=VOID)
    assert weighted["curves"][0]["val_loss"] == pytest.approx(working.item(), rel=1e-5)
    assert weighted["metrics"]["val"]["loss"] == pytest.approx(native.item(), rel=1e-5)
    assert weighted["metrics_resolution"] == "native" and weighted["curves_resolution"] == "working size 32x32"


# --------------------------------------------------------------------------- early stopping, checkpoint
def test_early_stopping_on_scripted_val_losses():
    stopper = EarlyStopping(3, mode="min", monitor="val_loss")
    losses = [1.0, 0.9, 0.95, 0.91, 0.85, 0.9, 0.9, 0.9, 0.1]
    stops = [stopper.step(x) for x in losses]
    assert stops.index(True) == 7  # epoch 8: third epoch in a row without beating 0.85
    never = EarlyStopping(0, mode="min")
    assert not any(never.step(x) for x in [1, 2, 3, 4, 5, 6])


def test_early_stopping_on_scripted_val_miou_never_counts_nan_as_improvement():
    stopper = EarlyStopping(2)  # default: mode max (val mIoU)
    stops = [stopper.step(x) for x in [0.1, math.nan, 0.2, math.nan, math.nan]]
    assert stops == [False, False, False, False, True]  # two NaNs in a row after 0.2: stop
    assert stopper.best == 0.2
    assert not stopper.step(0.9) and stopper.best == 0.9  # a real gain resets the count
    # A falling loss is no improvement for a max monitor; a rising mIoU keeps it going.
    rising = EarlyStopping(2)
    assert not any(rising.step(x) for x in [0.1, 0.2, 0.3, 0.4, 0.5])


def test_min_delta_is_the_margin_an_improvement_must_beat():
    stopper = EarlyStopping(2, min_delta=0.05)
    # 0.34 and 0.40 gain less than 0.05 on the best (0.30, then 0.36): stale; 0.36 gains 0.06
    assert [stopper.step(x) for x in [0.30, 0.34, 0.36, 0.40, 0.405]] == [False, False, False, False, True]
    assert stopper.best == 0.36
    plain = EarlyStopping(2)  # min_delta 0: any gain counts
    assert not any(plain.step(x) for x in [0.30, 0.34, 0.36, 0.40, 0.405])
    low = EarlyStopping(1, mode="min", min_delta=0.1)
    assert [low.step(x) for x in [1.0, 0.95, 0.85]] == [False, True, False]


def test_fit_stops_early_and_keeps_best_miou_checkpoint(synthetic32, tmp_path):
    record = fit(TrainConfig(**{**TINY, "epochs": 4, "lr": 3e-3}), synthetic32, out_dir=tmp_path, quiet=True)
    curves = record["curves"]
    mious = [row["val_miou"] for row in curves]
    assert record["best_epoch"] == mious.index(max(mious)) + 1
    # The saved checkpoint really is the best epoch's weights (scored at the working size, as
    # the curves are) and the final metrics are that checkpoint's at the native mask size.
    model, ckpt = load_run(tmp_path)
    kwargs = dict(num_classes=synthetic32.num_classes, batch_size=32, precision="fp32")
    rescored = evaluate(model, synthetic32.splits["val"], **kwargs)
    assert rescored["miou"] == pytest.approx(max(mious), abs=1e-6)
    native = evaluate(model, synthetic32.splits["val"], native=True, **kwargs)
    assert record["metrics"]["val"]["miou"] == pytest.approx(native["miou"], abs=1e-9)
    assert record["metrics"]["test"]["miou"] == pytest.approx(
        evaluate(model, synthetic32.splits["test"], native=True, **kwargs)["miou"], abs=1e-9)
    assert native["miou"] != pytest.approx(max(mious), abs=1e-6)  # 128 px masks score differently


def _scripted(monkeypatch, key, values):
    """Replace one key of every per-epoch val result (the final metrics are left alone)."""
    scripted = iter(values)
    real_evaluate = engine.evaluate

    def fake_evaluate(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        return result if kwargs.get("native") else {**result, key: next(scripted)}

    monkeypatch.setattr(engine, "evaluate", fake_evaluate)


def test_patience_on_loss_stops_at_the_right_epoch(synthetic32, monkeypatch):
    _scripted(monkeypatch, "loss", [1.0, 0.8, 0.9, 0.95, 0.7, 0.6])
    record = _fit(synthetic32, epochs=6, patience=2, early_stop_on="loss")
    assert record["stopped_epoch"] == 4  # epochs 3 and 4 did not beat 0.8
    assert record["early_stopping"]["monitor"] == "val_loss" and record["early_stopping"]["stopped_early"]


def test_patience_on_miou_stops_at_the_right_epoch(synthetic32, monkeypatch):
    _scripted(monkeypatch, "miou", [0.1, 0.3, 0.2, 0.3, 0.5, 0.6])
    record = _fit(synthetic32, epochs=6, patience=2)
    assert record["stopped_epoch"] == 4  # epochs 3 and 4 did not beat 0.3 (equal is no gain)
    assert record["best_epoch"] == 2
    stop = record["early_stopping"]
    assert stop == {**stop, "monitor": "val_miou", "patience": 2, "min_delta": 0.0, "stopped_early": True,
                    "stopped_epoch": 4, "best_is_last": False}


def test_a_stop_in_the_last_epoch_is_not_an_early_stop(synthetic32, monkeypatch):
    _scripted(monkeypatch, "miou", [0.3, 0.2])
    record = _fit(synthetic32, epochs=2, patience=1)
    assert record["stopped_epoch"] == 2 and record["best_epoch"] == 1
    assert record["early_stopping"]["stopped_early"] is False and record["early_stopping"]["best_is_last"] is False


def test_cosine_horizon_is_the_epoch_budget_and_lr_at_stop_is_the_last_step(synthetic32, monkeypatch):
    _scripted(monkeypatch, "miou", [0.5, 0.1, 0.1, 0.1])
    record = _fit(synthetic32, epochs=4, patience=1, scheduler=True, lr=2e-3)
    steps = math.ceil(len(synthetic32.splits["train"]) / 32)
    assert record["stopped_epoch"] == 2 and record["early_stopping"]["stopped_early"]
    # the schedule runs over 4 epochs' steps although the run stopped after 2
    assert record["curves"][1]["lr"] == pytest.approx(2e-3 * cosine_lr(steps, 4 * steps), rel=1e-9)
    assert record["early_stopping"]["lr_at_stop"] == pytest.approx(2e-3 * cosine_lr(2 * steps - 1, 4 * steps), rel=1e-9)
    assert record["early_stopping"]["lr_at_stop"] > 0.4 * 2e-3  # halfway down a cosine, not at 0
    flat = _fit(synthetic32, epochs=1, lr=2e-3)
    assert flat["early_stopping"]["lr_at_stop"] == 2e-3


def _scripted_pair(monkeypatch, losses, mious):
    scripted = iter(zip(losses, mious))
    real_evaluate = engine.evaluate

    def fake_evaluate(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        if kwargs.get("native"):
            return result
        loss, miou = next(scripted)
        return {**result, "loss": loss, "miou": miou}

    monkeypatch.setattr(engine, "evaluate", fake_evaluate)


# An augmented, class-weighted cell whose unweighted val loss rises from epoch 1 on while its
# val mIoU keeps improving (a class weight trades calibration for recall). The two monitored
# values are scripted so the case is exact on any machine; the training is real.
RISING_LOSS = [1.20, 1.25, 1.31, 1.38, 1.40, 1.45]
IMPROVING_MIOU = [0.10, 0.12, 0.15, 0.16, 0.19, 0.20]
RISING_LOSS_CELL = dict(TINY, augment=True, weighted_loss=True, epochs=6, patience=3)


def test_rising_val_loss_with_improving_miou_is_not_stopped_on_miou(synthetic32, monkeypatch):
    _scripted_pair(monkeypatch, RISING_LOSS, IMPROVING_MIOU)
    record = fit(TrainConfig(**RISING_LOSS_CELL), synthetic32, quiet=True)
    assert [r["val_loss"] for r in record["curves"]] == RISING_LOSS  # the recorded curve shows it
    assert [r["val_miou"] for r in record["curves"]] == IMPROVING_MIOU
    assert record["status"] == "completed" and record["stopped_epoch"] == 6 and record["best_epoch"] == 6
    assert record["early_stopping"] == {**record["early_stopping"], "monitor": "val_miou", "stopped_early": False,
                                        "best_is_last": True}


def test_the_same_cell_stopping_on_loss_stops_at_patience(synthetic32, monkeypatch):
    _scripted_pair(monkeypatch, RISING_LOSS, IMPROVING_MIOU)
    record = fit(TrainConfig(**RISING_LOSS_CELL, early_stop_on="loss"), synthetic32, quiet=True)
    assert record["stopped_epoch"] == 4  # epochs 2, 3 and 4 made no new low after 1.20
    assert record["best_epoch"] == 4  # the checkpoint is still the best val mIoU
    assert record["early_stopping"] == {**record["early_stopping"], "monitor": "val_loss", "stopped_early": True,
                                        "best_is_last": True}


# --------------------------------------------------------------------------- determinism and failures
def test_same_config_and_seed_give_same_metrics(synthetic32):
    a = _fit(synthetic32, augment=True, seed=7)
    b = _fit(synthetic32, augment=True, seed=7)
    c = _fit(synthetic32, augment=True, seed=8)
    assert [r["train_loss"] for r in a["curves"]] == [r["train_loss"] for r in b["curves"]]
    assert a["metrics"] == b["metrics"]
    assert [r["train_loss"] for r in a["curves"]] != [r["train_loss"] for r in c["curves"]]


class _NaNNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return self.conv(x) * float("nan")


def _test_nan_model(num_classes: int) -> nn.Module:
    return _NaNNet(num_classes)


@pytest.fixture
def nan_model(monkeypatch):
    """Register a model whose logits are NaN for one test only (the registry is global)."""
    from ablate.models import _registry

    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    monkeypatch.setattr(_registry, "_PARAMS", dict(_registry._PARAMS))
    register_model(_test_nan_model)
    return "_test_nan_model"


def test_non_finite_loss_fails_run_with_reason_and_writes_record(synthetic32, tmp_path, nan_model):
    record = fit(TrainConfig(**{**TINY, "model": nan_model}), synthetic32, out_dir=tmp_path, quiet=True)
    assert record["status"] == "failed"
    assert record["failure_reason"] == "non-finite loss at epoch 1 step 1"
    assert (tmp_path / "run.json").is_file()


def test_prune_signal_ends_run_as_pruned(synthetic32):
    def on_epoch(epoch, metrics):
        assert 0.0 <= metrics["miou"] <= 1.0
        if epoch == 2:
            raise Pruned("pruned at epoch 2")

    record = fit(TrainConfig(**{**TINY, "epochs": 4}), synthetic32, on_epoch=on_epoch, quiet=True)
    assert record["status"] == "pruned"
    assert record["failure_reason"] == "pruned at epoch 2"
    assert record["stopped_epoch"] == 2
    assert "test" not in record["metrics"]


def test_record_has_every_documented_field(synthetic32, tmp_path):
    record = fit(TrainConfig(**TINY), synthetic32, out_dir=tmp_path, quiet=True)
    for key in ("run_id", "config", "dataset", "metrics", "curves", "best_epoch", "stopped_epoch", "timing",
                "environment", "status", "failure_reason"):
        assert key in record
    assert record["run_id"] == TrainConfig(**TINY).run_id
    assert set(record["metrics"]) == {"val", "test"}
    for split in ("val", "test"):
        assert set(record["metrics"][split]) == {"loss", "pixel_acc", "miou", "mean_acc", "mdice", "class_iou", "class_acc"}
    assert set(record["curves"][0]) >= {"train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr"}
    assert record["environment"]["precision"] == "fp32"
    assert record["timing"]["images_per_second"] > 0


@pytest.mark.slow
def test_training_learns_well_above_all_background(cache_dir):
    dataset = load_dataset("synthetic", image_size=(64, 64), cache_dir=cache_dir)
    val_masks = dataset.splits["val"].masks
    background_share = (val_masks == 0).sum().item() / (val_masks != VOID).sum().item()
    all_background_miou = background_share / dataset.num_classes  # IoU of background, 0 elsewhere
    record = fit(TrainConfig(model="unet", model_args={"base_channels": 8}, data="synthetic", image_size=(64, 64),
                             epochs=6, batch_size=16, lr=3e-3, patience=0), dataset, quiet=True)
    assert record["metrics"]["val"]["miou"] > 2 * all_background_miou


# --------------------------------------------------------------------------- the did-not-learn bar
class _Majority(nn.Module):
    """Predicts class 0 (the synthetic set's majority, background) everywhere."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:]) + self.anchor
        logits[:, 0] = 1.0
        return logits


def test_a_model_predicting_only_the_majority_class_is_at_the_bar_of_the_masks_it_is_scored_on(synthetic32):
    """Final val metrics are scored on the native 128 px masks, whose background share (0.670)
    is not the 32 px masks' (0.669): the bar must come from the same masks, or an all-background
    model passes it (it did: every 1-epoch custom cell of the default grid escaped the flag)."""
    from ablate import stats

    val = synthetic32.splits["val"]
    metrics = evaluate(_Majority(synthetic32.num_classes), val, num_classes=synthetic32.num_classes, batch_size=16,
                       precision="fp32", native=True)
    bar = stats.majority_bar(synthetic32.summary())
    assert metrics["pixel_acc"] == pytest.approx(bar["pixel_acc"], abs=1e-9)
    assert metrics["miou"] == pytest.approx(bar["miou"], abs=1e-9)
    assert stats.did_not_learn(metrics["pixel_acc"], metrics["miou"], bar) is True
    working = evaluate(_Majority(synthetic32.num_classes), val, num_classes=synthetic32.num_classes, batch_size=16,
                       precision="fp32", native=False)
    assert abs(working["pixel_acc"] - metrics["pixel_acc"]) > 1e-4  # the two resolutions do differ here

"""Engine: toggles do what they claim, early stopping, best checkpoint, determinism, failures."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ablate import engine
from ablate.config import TrainConfig
from ablate.data import VOID, load_dataset
from ablate.engine import EarlyStopping, Pruned, class_weights, cosine_lr, evaluate, fit
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
        assert row["lr"] == pytest.approx(expected, rel=1e-9)
    assert record["curves"][1]["lr"] < record["curves"][0]["lr"]


def test_no_scheduler_keeps_lr_constant(synthetic32):
    record = _fit(synthetic32, scheduler=False, lr=2e-3)
    assert [row["lr"] for row in record["curves"]] == [2e-3, 2e-3]


def test_cosine_lr_endpoints():
    assert cosine_lr(0, 100) == 1.0
    assert cosine_lr(50, 100) == pytest.approx(0.5)
    assert cosine_lr(100, 100) == pytest.approx(0.0)


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


def test_weighted_loss_changes_training_loss_not_reported_val_loss_definition(synthetic32):
    plain = _fit(synthetic32, epochs=1)
    weighted = _fit(synthetic32, epochs=1, weighted_loss=True)
    assert plain["curves"][0]["train_loss"] != pytest.approx(weighted["curves"][0]["train_loss"], rel=1e-3)
    # val loss is always the unweighted CE; recompute it for the weighted run's checkpoint.
    assert weighted["metrics"]["val"]["loss"] == pytest.approx(weighted["curves"][0]["val_loss"])


# --------------------------------------------------------------------------- early stopping, checkpoint
def test_early_stopping_on_scripted_val_losses():
    stopper = EarlyStopping(3)
    losses = [1.0, 0.9, 0.95, 0.91, 0.85, 0.9, 0.9, 0.9, 0.1]
    stops = [stopper.step(x) for x in losses]
    assert stops.index(True) == 7  # epoch 8: third epoch in a row without beating 0.85
    never = EarlyStopping(0)
    assert not any(never.step(x) for x in [1, 2, 3, 4, 5, 6])


def test_fit_stops_early_and_keeps_best_miou_checkpoint(synthetic32, tmp_path):
    record = fit(TrainConfig(**{**TINY, "epochs": 4, "lr": 3e-3}), synthetic32, out_dir=tmp_path, quiet=True)
    curves = record["curves"]
    mious = [row["val_miou"] for row in curves]
    assert record["best_epoch"] == mious.index(max(mious)) + 1
    assert record["metrics"]["val"]["miou"] == pytest.approx(max(mious))
    # The saved checkpoint really is the best epoch's weights.
    model, ckpt = load_run(tmp_path)
    rescored = evaluate(model, synthetic32.splits["val"], num_classes=synthetic32.num_classes, batch_size=32, precision="fp32")
    assert rescored["miou"] == pytest.approx(max(mious), abs=1e-6)


def test_patience_stops_at_the_right_epoch(synthetic32, monkeypatch):
    scripted = iter([1.0, 0.8, 0.9, 0.95, 0.7, 0.6])
    real_evaluate = engine.evaluate

    def fake_evaluate(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        return {**result, "loss": next(scripted)}

    monkeypatch.setattr(engine, "evaluate", fake_evaluate)
    record = _fit(synthetic32, epochs=6, patience=2)
    assert record["stopped_epoch"] == 4  # epochs 3 and 4 did not beat 0.8


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

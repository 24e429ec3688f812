"""The training choices of TrainConfig reach the engine: loss, optimizer (momentum, nesterov)
and lr schedule, through `fit` and through `ablate train`'s flags. Tiny runs: baseline, 32 px,
one epoch, synthetic data."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from ablate import engine
from ablate.cli import main
from ablate.config import TrainConfig
from ablate.data import load_dataset
from ablate.errors import AblateError
from ablate.losses import LOSSES, make_loss

TINY = dict(model="baseline", data="synthetic", image_size=(32, 32), batch_size=16, epochs=1, patience=0,
            precision="fp32")
BATCH = 16
pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")  # the lr spy
LR = 2e-3


@pytest.fixture(scope="module")
def synthetic32(cache_dir):
    return load_dataset("synthetic", image_size=(32, 32), cache_dir=cache_dir)


def _fit(dataset, **overrides):
    return engine.fit(TrainConfig(**{**TINY, **overrides}), dataset, quiet=True)


def _example():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4, 4)
    target = torch.randint(0, 6, (2, 4, 4))
    target[0, 0, 0] = 255  # one void pixel
    return logits, target


def _steps(dataset) -> int:
    return math.ceil(len(dataset.splits["train"]) / BATCH)


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("name", LOSSES)
def test_the_configured_loss_is_what_trains(synthetic32, seen, name):
    record = _fit(synthetic32, loss=name)
    assert record["config"]["loss"] == name and record["status"] == "completed"
    logits, target = _example()
    used = seen["loss_fn"](logits, target)
    assert used.item() == pytest.approx(make_loss(name)(logits, target).item(), rel=1e-6)
    others = {other: make_loss(other)(logits, target).item() for other in LOSSES if other != name}
    assert all(used.item() != pytest.approx(value, rel=1e-3) for value in others.values()), others


def test_class_weights_reach_focal(synthetic32, seen):
    _fit(synthetic32, loss="focal", weighted_loss=True, class_weights="median")
    weight = engine.class_weights(synthetic32.class_frequency, scheme="median")
    logits, target = _example()
    assert seen["loss_fn"](logits, target).item() == pytest.approx(
        make_loss("focal", weight=weight)(logits, target).item(), rel=1e-6)
    assert seen["loss_fn"](logits, target).item() != pytest.approx(make_loss("focal")(logits, target).item(), rel=1e-3)


@pytest.mark.parametrize("loss", ["dice", "lovasz"])
def test_weighted_dice_and_lovasz_are_refused_before_training(synthetic32, seen, loss):
    config = TrainConfig(**{**TINY, "loss": loss, "weighted_loss": True})
    with pytest.raises(AblateError, match=f"loss '{loss}' takes no class weights"):
        engine.check_training(config)
    with pytest.raises(AblateError, match="turn weighted_loss off or use ce, focal or ce\\+dice"):
        engine.fit(config, synthetic32, quiet=True)
    assert seen["lrs"] == []  # not one step taken


def test_val_loss_is_unweighted_ce_whatever_the_training_loss(synthetic32, monkeypatch):
    evaluated = []
    real = engine.evaluate

    def spy(model, split, **kwargs):
        result = real(model, split, **kwargs)
        if not kwargs.get("native"):
            with torch.no_grad():
                logits = model((split.images.float() / 255).contiguous(memory_format=torch.channels_last))
            evaluated.append((result["loss"], torch.nn.functional.cross_entropy(
                logits, split.masks.long(), ignore_index=255).item()))
        return result

    monkeypatch.setattr(engine, "evaluate", spy)
    record = _fit(synthetic32, loss="dice")
    (reported, by_hand), = evaluated
    assert record["curves"][0]["val_loss"] == reported == pytest.approx(by_hand, rel=1e-5)


def test_a_grid_of_dice_with_the_weighted_loss_toggle_is_refused_before_it_runs(tmp_path):
    from ablate import grid as grids

    study = tmp_path / "dice.toml"
    study.write_text('models = ["baseline"]\ntoggles = ["weighted_loss"]\n[train]\nloss = "dice"\nimage_size = 32\n')
    with pytest.raises(AblateError, match="^model baseline: loss 'dice' takes no class weights"):
        grids.check_models(grids.read_grid_study(study))
    study.write_text('models = ["baseline"]\ntoggles = ["augment"]\n[train]\nloss = "dice"\nimage_size = 32\n')
    grids.check_models(grids.read_grid_study(study))  # without the toggle, dice is fine


# --------------------------------------------------------------------------- optimizer
def test_sgd_with_its_momentum_and_nesterov_is_what_trains(synthetic32, seen):
    _fit(synthetic32, optimizer="sgd", momentum=0.8, nesterov=True, weight_decay=1e-3)
    opt = seen["optimizer"]
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"], group["lr"]) == (0.8, True, 1e-3, 1e-3)
    assert all("momentum_buffer" in opt.state[p] for p in group["params"])  # steps were taken with momentum


def test_adamw_is_the_default(synthetic32, seen):
    _fit(synthetic32)
    assert type(seen["optimizer"]) is torch.optim.AdamW


def test_nesterov_without_sgd_is_refused():
    with pytest.raises(AblateError, match="nesterov applies to sgd only, not 'adamw'"):
        engine.check_training(TrainConfig(**{**TINY, "nesterov": True}))


# --------------------------------------------------------------------------- schedule
def test_poly_follows_one_minus_t_over_T_to_the_point_nine(synthetic32, seen):
    record = _fit(synthetic32, scheduler=True, schedule="poly", lr=LR, epochs=2)
    total = 2 * _steps(synthetic32)
    assert len(seen["lrs"]) == total
    for t in (0, 1, total // 2, total - 1):
        assert seen["lrs"][t] == pytest.approx(LR * (1 - t / total) ** 0.9, rel=1e-9)
    assert record["early_stopping"]["lr_at_stop"] == pytest.approx(LR * (1 / total) ** 0.9, rel=1e-9)


def test_onecycle_peaks_at_lr(synthetic32, seen):
    _fit(synthetic32, scheduler=True, schedule="onecycle", lr=LR, epochs=2)
    lrs = seen["lrs"]
    assert len(lrs) == 2 * _steps(synthetic32)
    assert lrs[0] == pytest.approx(LR / 25)
    assert max(lrs) == pytest.approx(LR, rel=0.02) and max(lrs) <= LR * (1 + 1e-9)
    assert lrs[-1] < LR / 25


@pytest.mark.parametrize("overrides", [dict(scheduler=True, schedule="none"), dict(scheduler=False, schedule="poly")])
def test_constant_lr_without_a_schedule_or_without_the_toggle(synthetic32, seen, overrides):
    _fit(synthetic32, lr=LR, **overrides)
    assert seen["lrs"] == [LR] * _steps(synthetic32)


# --------------------------------------------------------------------------- CLI
CLI_TINY = ["train", "--data", "synthetic", "--epochs", "1", "--image-size", "32", "--batch-size", str(BATCH),
            "--precision", "fp32", "--quiet"]


def test_train_flags_reach_the_engine(tmp_path, cache_dir, synthetic32):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [*CLI_TINY, "--loss", "focal", "--optimizer", "sgd", "--momentum", "0.5",
                                       "--nesterov", "--scheduler", "--schedule", "poly", "--lr", str(LR),
                                       "--out", str(out), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    config = record["config"]
    assert (config["loss"], config["optimizer"], config["momentum"], config["nesterov"], config["schedule"]) == (
        "focal", "sgd", 0.5, True, "poly")
    total = _steps(synthetic32)
    assert record["curves"][0]["last_lr"] == pytest.approx(LR * (1 / total) ** 0.9, rel=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--loss", "hinge"], "--loss: expected one of ce, dice, focal, lovasz, ce+dice, got 'hinge'"),
    (["--optimizer", "adam"], "--optimizer: expected one of adamw, sgd, got 'adam'"),
    (["--schedule", "step"], "--schedule: expected one of none, cosine, poly, onecycle, got 'step'"),
    (["--momentum", "1.5"], "--momentum: expected a number in [0, 1), got 1.5"),
    (["--nesterov"], "nesterov applies to sgd only, not 'adamw'"),
    (["--loss", "dice", "--weighted-loss"], "loss 'dice' takes no class weights"),
])
def test_bad_training_choices_exit_2_in_one_line_and_write_nothing(tmp_path, cache_dir, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [*CLI_TINY, *args, "--out", str(out), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists()

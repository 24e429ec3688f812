"""`ablate train` and `ablate predict` through the real CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ablate.cli import main

TINY = ["--data", "synthetic", "--epochs", "1", "--image-size", "32", "--batch-size", "32", "--precision", "fp32"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(main, ["train", "--model", "unet", "--model-arg", "base_channels=4", *TINY,
                                       "--seed", "3", "--weighted-loss", "--out", str(out), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_writes_complete_record_and_checkpoint(trained_run):
    out, output = trained_run
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["model"] == "unet"
    assert record["config"]["model_args"] == {"base_channels": 4}
    assert record["config"]["weighted_loss"] is True and record["config"]["seed"] == 3
    assert record["dataset"]["class_names"][0] == "background"
    assert 0.0 <= record["metrics"]["test"]["miou"] <= 1.0
    assert len(record["curves"]) == 1
    assert (out / "best.pt").is_file()
    assert f"run {record['run_id']}: completed" in output  # the summary is printed


def test_predict_writes_side_by_side_and_names_classes(trained_run, tmp_path):
    out, _ = trained_run
    image = tmp_path / "in.png"
    Image.new("RGB", (80, 48), (120, 60, 30)).save(image)  # any size: logits are upsampled to it
    png = tmp_path / "pred.png"
    result = CliRunner().invoke(main, ["predict", "--run", str(out), "--image", str(image), "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("predicted classes: ")
    names = result.output.splitlines()[0].removeprefix("predicted classes: ").split(", ")
    synthetic = ["background", "disc", "square", "stripe", "blob", "speck"]
    assert names and set(names) <= set(synthetic)
    with Image.open(png) as im:
        assert im.width == 3 * 80 + 16 and im.height > 48  # three panels and a legend


def test_train_via_subprocess_module_entry(tmp_path, cache_dir):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ablate", "train", "--model", "baseline", *TINY, "--quiet",
                           "--out", str(out), "--cache-dir", str(cache_dir)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" not in proc.stdout  # --quiet: only the summary
    assert json.loads((out / "run.json").read_text())["config"]["model"] == "baseline"


def test_stopping_and_weighting_flags_reach_the_record(tmp_path, cache_dir):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--model", "baseline", *TINY, "--weighted-loss", "--class-weights", "enet",
                                       "--early-stop-on", "loss", "--min-delta", "0.01", "--patience", "2", "--quiet",
                                       "--out", str(out), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["class_weights"] == "enet" and record["config"]["early_stop_on"] == "loss"
    assert record["early_stopping"] == {**record["early_stopping"], "monitor": "val_loss", "patience": 2,
                                        "min_delta": 0.01, "stopped_early": False, "stopped_epoch": 1}
    assert record["metrics_resolution"] == "native" and record["curves_resolution"] == "working size 32x32"


def _bad_weights(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, path)
    return path


@pytest.mark.parametrize("args, needle", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "unet", "--model-arg", "width=3"], "--model-arg: unknown key 'width'; accepted: base_channels"),
    (["--model", "unet", "--model-arg", "base_channels=abc"], "--model-arg base_channels: expected an integer, got 'abc'"),
    (["--model", "unet", "--model-arg", "base_channels"], "--model-arg: expected [MODEL.]KEY=VALUE"),
    (["--model", "resnet18", "--model-arg", "weights=/nonexistent/r18.pth"], "/nonexistent/r18.pth"),
    (["--model", "resnet18", "--model-arg", "weights={bad}"], "ResNet-18"),
    (["--lr", "0"], "--lr: expected a number > 0, got 0.0"),
    (["--lr", "-1"], "--lr: expected a number > 0, got -1.0"),
    (["--lr", "abc"], "--lr: expected a number > 0, got 'abc'"),
    (["--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["--image-size", "48"], "--image-size: expected an integer or HEIGHTxWIDTH, each positive and divisible by 32 "
                             "(64 or 64x96), got 48; try 64"),
    (["--data", "/nonexistent/data"], "/nonexistent/data"),
    (["--min-delta", "-0.5"], "--min-delta: expected a number >= 0, got -0.5"),
    (["--early-stop-on", "acc"], "--early-stop-on: expected one of miou, loss, got 'acc'"),
    (["--class-weights", "log"], "--class-weights: expected one of inverse, median, enet, got 'log'"),
])
def test_bad_train_input_exits_2_with_one_line_and_writes_nothing(args, needle, tmp_path, cache_dir):
    args = [a.format(bad=_bad_weights(tmp_path)) for a in args]
    out = tmp_path / "out"
    base = ["train", "--data", "synthetic", "--epochs", "1", "--image-size", "32", "--out", str(out),
            "--cache-dir", str(cache_dir)]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


SIZE_COMMANDS = {
    "train": ["train", "--data", "synthetic", "--epochs", "1", "--device", "cpu", "--out", "run"],
    "data info": ["data", "info", "--data", "synthetic"],
    "grid": ["grid", "--models", "unet", "--toggles", "none", "--seeds", "1", "--epochs", "1", "--workers", "1",
             "--results-dir", "results", "--dry-run"],
}


@pytest.mark.parametrize("command", list(SIZE_COMMANDS))
@pytest.mark.parametrize("size", ["7x", "64x", "7x9x3"])
def test_a_malformed_image_size_is_one_line_naming_the_option_and_the_forms(command, size, tmp_path, cache_dir,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative run, results and cache folders: nothing may appear there
    result = CliRunner().invoke(main, [*SIZE_COMMANDS[command], "--image-size", size, "--cache-dir", str(cache_dir)])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: --image-size: expected an integer or HEIGHTxWIDTH, each positive and divisible by 32 (64 or 64x96), "
        f"got '{size}'"]
    assert "Traceback" not in result.output and not any(tmp_path.iterdir())

"""`ablate evaluate` run for real on PNG folders written in tmp_path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ablate.cli import main

REPO = Path(__file__).resolve().parents[1]


def _save(path: Path, rows, mode: str = "L") -> Path:
    img = Image.fromarray(np.asarray(rows, dtype=np.uint8))
    if mode == "P":
        # A palette whose colours differ from the indices: the command must read indices.
        img.putpalette([255 - i % 256 for i in range(768)])
    assert img.mode == mode
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _save(gt / "a.png", [[0, 1], [1, 255]], mode="P")
    _save(pred / "a.png", [[0, 1], [0, 1]], mode="P")
    _save(gt / "b.png", [[1, 1], [0, 0]])
    _save(pred / "b.png", [[1, 1], [0, 1]])
    (pred / "notes.txt").write_text("not a mask")  # non-PNG files are ignored
    return pred, gt


def _run(*args: str):
    return CliRunner().invoke(main, ["evaluate", *args])


def _args(pred: Path, gt: Path, k: int = 3, *extra: str) -> list[str]:
    return ["--pred", str(pred), "--gt", str(gt), "--num-classes", str(k), *extra]


# Whole-folder confusion matrix [[2, 1], [1, 3]] (class 2 absent); per-image averaging
# would give miou (0.5 + 7/12) / 2 instead of 0.55.
EXPECTED = {
    "pixel_acc": 5 / 7,
    "miou": 0.55,
    "mean_acc": 17 / 24,
    "mdice": 17 / 24,
    "class_iou": [0.5, 0.6, None],
    "class_acc": [2 / 3, 3 / 4, None],
    "num_images": 2,
}


def _assert_expected(record: dict) -> None:
    assert set(record) == set(EXPECTED)
    for key, want in EXPECTED.items():
        got = record[key]
        if isinstance(want, list):
            assert got[:2] == pytest.approx(want[:2]) and got[2] is None, key
        else:
            assert got == pytest.approx(want), key


def test_scores_whole_folder(folders):
    result = _run(*_args(*folders))
    assert result.exit_code == 0, result.output
    _assert_expected(json.loads(result.stdout))


def test_ignore_index_option(tmp_path):
    # CamVid-style void label 11 with K=11: the void pixel is dropped, not an error.
    _save(tmp_path / "gt" / "x.png", [[0, 11], [3, 3]])
    _save(tmp_path / "pred" / "x.png", [[0, 5], [3, 4]])
    result = _run(*_args(tmp_path / "pred", tmp_path / "gt", 11, "--ignore-index", "11"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pixel_acc"] == pytest.approx(2 / 3)


def test_subprocess_prints_one_json_object(folders):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "ablate", "evaluate", *_args(*folders)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    _assert_expected(json.loads(proc.stdout))


def _assert_user_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not result.stdout.strip()  # no partial JSON
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def test_missing_directory(tmp_path, folders):
    pred, _ = folders
    _assert_user_error(_run(*_args(pred, tmp_path / "nope")), str(tmp_path / "nope"))


def test_empty_folder(tmp_path, folders):
    pred, _ = folders
    (tmp_path / "empty").mkdir()
    _assert_user_error(_run(*_args(pred, tmp_path / "empty")), str(tmp_path / "empty"), "no .png")


def test_prediction_without_ground_truth(folders):
    pred, gt = folders
    _save(pred / "extra.png", [[0]])
    _assert_user_error(_run(*_args(pred, gt)), "extra.png", "no ground truth")


def test_ground_truth_without_prediction(folders):
    pred, gt = folders
    _save(gt / "lonely.png", [[0]])
    _assert_user_error(_run(*_args(pred, gt)), "lonely.png", "no prediction")


def test_size_mismatch(folders):
    pred, gt = folders
    _save(pred / "b.png", np.zeros((2, 3)))
    _assert_user_error(_run(*_args(pred, gt)), str(pred / "b.png"), "3x2", "2x2")


def test_predicted_label_out_of_range(folders):
    pred, gt = folders
    _save(pred / "b.png", [[1, 7], [0, 1]])
    _assert_user_error(_run(*_args(pred, gt)), str(pred / "b.png"), "label 7")


def test_ground_truth_label_out_of_range(folders):
    pred, gt = folders
    _save(gt / "b.png", [[1, 1], [9, 0]], mode="P")
    _assert_user_error(_run(*_args(pred, gt)), str(gt / "b.png"), "label 9")


@pytest.mark.parametrize("content", [b"definitely not a png", "truncated"])
def test_corrupt_png(folders, content):
    pred, gt = folders
    if content == "truncated":
        content = (pred / "a.png").read_bytes()[:40]
    (pred / "a.png").write_bytes(content)
    _assert_user_error(_run(*_args(pred, gt)), str(pred / "a.png"))


def test_colour_mask_rejected(folders):
    pred, gt = folders
    Image.new("RGB", (2, 2)).save(pred / "a.png")
    _assert_user_error(_run(*_args(pred, gt)), str(pred / "a.png"), "mode RGB")


def test_non_positive_num_classes(folders):
    _assert_user_error(_run(*_args(*folders, 0)), "--num-classes")

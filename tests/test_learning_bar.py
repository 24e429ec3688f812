"""benchmarks/learning_bar.py: the 'did every cell learn' bar, by hand values and on a tiny
real grid."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import learning_bar  # noqa: E402  (a script beside the package, not part of it)


def test_the_bar_comes_from_the_val_class_frequencies():
    bar = learning_bar.learning_bar([0.6, 0.3, 0.1, 0.0])  # 3 classes present
    assert bar.majority_share == 0.6
    assert bar.majority_miou == pytest.approx(0.2) and bar.miou_floor == pytest.approx(0.4)
    with pytest.raises(ValueError):
        learning_bar.learning_bar([0.0, 0.0])


@pytest.mark.parametrize("miou, acc, verdict", [
    (0.40, 0.61, True),  # mIoU exactly at the floor counts
    (0.39, 0.95, False),  # below twice the all-majority mIoU
    (0.90, 0.60, False),  # pixel accuracy must be above the majority share, not at it
    (0.90, 0.59, False),
    (None, 0.90, False),
    (float("nan"), 0.90, False),
])
def test_a_cell_passes_only_above_both_floors(miou, acc, verdict):
    bar = learning_bar.learning_bar([0.6, 0.3, 0.1, 0.0])
    assert learning_bar.passes(bar, val_miou=miou, val_pixel_acc=acc) is verdict


def test_the_table_of_a_tiny_real_grid(tmp_path, cache_dir):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "learning_bar.py"), "--results-dir", str(results),
                           "--study-name", "bar", "--", "--study-name", "bar", "--models", "unet", "--model-arg",
                           "base_channels=4", "--image-size", "32", "--epochs", "1", "--toggles", "weighted_loss", "--seeds", "1",
                           "--cache-dir", str(cache_dir), "--no-report"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "ablate grid: exit 0" in proc.stdout, proc.stdout + proc.stderr
    rows = learning_bar.cell_table(results, "bar")
    assert [(r["model"], r["toggles"]) for r in rows] == [("unet", "none"), ("unet", "weighted_loss")]
    for row in rows:
        record = json.loads(next(p for p in (results / "bar" / "runs").rglob("run.json")
                                 if json.loads(p.read_text())["config"]["weighted_loss"] == (row["toggles"] != "none"))
                            .read_text())
        frequency = record["dataset"]["split_class_frequency"]["val"]
        present = [f for f in frequency if f > 0]
        assert row["miou_floor"] == pytest.approx(2 * max(present) / len(present))
        assert row["acc_floor"] == pytest.approx(max(present)) and row["image_size"] == "32x32"
        assert row["val_miou"] == pytest.approx(record["metrics"]["val"]["miou"])
        expected = record["metrics"]["val"]["miou"] >= row["miou_floor"] and record["metrics"]["val"]["pixel_acc"] > row["acc_floor"]
        assert row["passes"] is expected
    # The printed verdicts and the exit status agree with the rows.
    assert proc.stdout.count(" pass\n") + proc.stdout.count(" FAIL\n") == 2
    assert f"{sum(r['passes'] for r in rows)}/2 cells pass" in proc.stdout
    assert proc.returncode == (0 if all(r["passes"] for r in rows) else 1)

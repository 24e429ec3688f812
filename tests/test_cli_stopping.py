"""Early-stopping and class-weight options of a grid: study-file keys and `ablate grid` flags."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from ablate import data as data_stage
from ablate import grid as grids
from ablate.cli import main
from ablate.errors import AblateError

STUDY = """name = "stops"
models = ["baseline"]
toggles = ["weighted_loss"]
[train]
data = "synthetic"
image_size = 32
epochs = 2
early_stop_on = "loss"
class_weights = "median"
min_delta = 0.01
"""


def test_study_file_keys_set_the_train_config(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(STUDY)
    study = grids.read_grid_study(path)
    assert (study.train.early_stop_on, study.train.class_weights, study.train.min_delta) == ("loss", "median", 0.01)
    default = grids.read_grid_study(path, {"early_stop_on": "miou"})
    assert default.train.early_stop_on == "miou" and default.train.class_weights == "median"


@pytest.mark.parametrize("line, message", [
    ('early_stop_on = "acc"', "s.toml: line 8, column 1: train.early_stop_on: expected one of miou, loss, got 'acc'"),
    ('class_weights = "log"', "s.toml: line 9, column 1: train.class_weights: expected one of inverse, median, enet, "
                              "got 'log'"),
    ("min_delta = -1", "s.toml: line 10, column 1: train.min_delta: expected a number >= 0, got -1.0"),
    ('min_delta = "small"', "s.toml: line 10, column 1: train.min_delta: expected a number >= 0, got 'small'"),
])
def test_bad_study_values_name_the_key(tmp_path, line, message):
    path = tmp_path / "s.toml"
    key = line.split()[0]
    path.write_text(re.sub(rf"^{key} = .*$", line, STUDY, flags=re.M))
    with pytest.raises(AblateError, match=re.escape(message)):
        grids.read_grid_study(path)


def test_grid_flags_override_the_study_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(STUDY)
    flags = ["--early-stop-on", "miou", "--class-weights", "enet", "--min-delta", "0.02"]
    result = CliRunner().invoke(main, ["grid", "--study", str(path), *flags, "--dry-run",
                                       "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    printed = re.findall(r"^([0-9a-f]{12})\s", result.output, flags=re.M)
    study = grids.read_grid_study(path, {"early_stop_on": "miou", "class_weights": "enet", "min_delta": 0.02})
    assert study.train.class_weights == "enet"
    expected = [c.cell_id for c in grids.expand(study, data_stage.fingerprint("synthetic"))]
    unchanged = [c.cell_id for c in grids.expand(grids.read_grid_study(path), data_stage.fingerprint("synthetic"))]
    assert printed == expected and printed != unchanged

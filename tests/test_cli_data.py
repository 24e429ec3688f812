"""`ablate data` and the data errors of `ablate train`, through the real CLI (CliRunner on
`ablate.cli.main`, and once as `python -m ablate` in a subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ablate.cli import main
from ablate.synthetic import SPLIT_SIZES, SYNTH_CLASSES
from test_data import BAD_INPUTS, MASK_A, write_voc  # same cases as the load_dataset tests

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Any default path (results/...) a command falls back to lands in tmp, not the repo."""
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def cli_options(options: dict) -> list[str]:
    """load_dataset keywords -> command-line flags."""
    flags = []
    for key, value in options.items():
        if key == "image_size":
            h, w = value
            flags += ["--image-size", str(h) if h == w else f"{h}x{w}"]
        else:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def assert_user_error(result, needles: list[str]) -> None:
    # exit 2, not 1: CliRunner swallows a stray exception into exit code 1 without printing it
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ") or result.output.startswith("Usage: "), result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


# --------------------------------------------------------------------------- help
def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:", 1)[1]
    names = {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.split()}
    assert {"train", "evaluate", "grid", "tune", "report", "predict", "data"} <= names


# --------------------------------------------------------------------------- synth + info
@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "voc"
    result = invoke("data", "synth", "--out", out, "--size", 64)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    return out


def test_synth_writes_a_voc_layout(synth_dir):
    year = synth_dir / "VOC2007"
    ids = {}
    for split, n in SPLIT_SIZES.items():
        ids[split] = (year / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids[split]) == n
    all_ids = [i for split_ids in ids.values() for i in split_ids]
    assert sorted(p.stem for p in (year / "JPEGImages").glob("*.jpg")) == sorted(all_ids)
    assert sorted(p.stem for p in (year / "SegmentationClass").glob("*.png")) == sorted(all_ids)
    with Image.open(year / "JPEGImages" / f"{ids['train'][0]}.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))
    void_seen = 0
    for id_ in ids["train"][:20]:
        with Image.open(year / "SegmentationClass" / f"{id_}.png") as im:
            assert im.mode == "P" and im.size == (64, 64)
            labels = np.asarray(im)
        assert set(np.unique(labels).tolist()) <= set(range(len(SYNTH_CLASSES))) | {255}
        void_seen += int((labels == 255).any())
    assert void_seen == 20  # every mask has VOC's void borders


def test_info_loads_the_synth_folder(synth_dir, tmp_path):
    cache = tmp_path / "cache"
    first = invoke("data", "info", "--data", synth_dir, "--cache-dir", cache, "--image-size", 64)
    assert first.exit_code == 0, first.output
    assert "[voc]" in first.output
    sizes = ", ".join(f"{split} {n}" for split, n in SPLIT_SIZES.items())
    assert sizes in first.output  # "train 160, val 48, test 48"
    assert "64x64 px; 6 classes; decoded in" in first.output
    assert f"classes: {', '.join(SYNTH_CLASSES)}" in first.output
    assert "background" in first.output.split("class pixel frequency (train):", 1)[1]

    second = invoke("data", "info", "--data", synth_dir, "--cache-dir", cache, "--image-size", 64)
    assert second.exit_code == 0, second.output
    assert "6 classes; cache in" in second.output
    assert len(list(cache.glob("*.pt"))) == 1


def test_info_says_when_there_is_no_test_split(tmp_path):
    write_voc(tmp_path / "VOC2007", {"train": [MASK_A], "val": [MASK_A]})
    result = invoke("data", "info", "--data", tmp_path / "VOC2007", "--cache-dir", tmp_path / "c", "--image-size", 32)
    assert result.exit_code == 0, result.output
    assert "train 1, val 1 (no test split: test metrics will be absent)" in result.output


def test_synth_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("data", "synth", "--out", out, "--size", 32)
    assert_user_error(result, [str(out), "not empty"])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temp folder left behind


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_info_bad_input(tmp_path, case):
    bad = BAD_INPUTS[case]
    data, needles = bad.build(tmp_path)
    options = {"image_size": (64, 64), **bad.options}
    result = invoke("data", "info", "--data", data, "--cache-dir", tmp_path / "cache", *cli_options(options))
    assert_user_error(result, needles)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_train_bad_input_writes_nothing(tmp_path, case):
    bad = BAD_INPUTS[case]
    data, needles = bad.build(tmp_path)
    options = {"image_size": (64, 64), **bad.options}
    out, cache = tmp_path / "run", tmp_path / "cache"
    result = invoke(
        "train", "--data", data, "--epochs", 1, "--device", "cpu", "--out", out, "--cache-dir", cache,
        *cli_options(options),
    )
    assert_user_error(result, needles)
    assert not out.exists()
    assert not cache.exists()
    assert not (tmp_path / "results").exists()


def test_bad_input_in_a_subprocess(tmp_path):
    data, needles = BAD_INPUTS["truncated image"].build(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "ablate", "data", "info", "--data", str(data), "--cache-dir", str(tmp_path / "c"),
         "--image-size", "32"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]


# --------------------------------------------------------------------------- a stray mask label
STRAY_COMMANDS = {
    "data info": ["data", "info"],
    "train": ["train", "--epochs", "1", "--device", "cpu", "--out", "run"],
    "grid": ["grid", "--models", "unet", "--model-arg", "base_channels=4", "--toggles", "none", "--seeds", "1",
             "--epochs", "1", "--workers", "1", "--no-report", "--results-dir", "results"],
}


@pytest.mark.parametrize("command", list(STRAY_COMMANDS))
def test_a_stray_label_stops_every_command_with_one_line_and_writes_nothing(tmp_path, command):
    from test_data import _stray_label

    root, _ = _stray_label(tmp_path / "in")
    result = invoke(*STRAY_COMMANDS[command], "--data", root, "--image-size", 32, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.output == result.stderr and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"error: {root}: 1 of 5 masks holds label 200 outside labels 0..2, the classes the training masks use from 0 "
        "without a gap (none holds 3..199): ann_dir/train/train_1.png; if 200 is void pass --ignore-index 200, "
        "if it is a class pass --num-classes 201, else fix the mask"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no cache, run folder, results or study


def test_a_grid_study_pointed_at_another_dataset_names_both(tmp_path):
    from ablate import data as data_stage
    from ablate import grid as grids
    from ablate import store

    flags = {"name": "rocks", "models": "unet", "toggles": "none", "epochs": 1, "image_size": 32}
    study = grids.read_grid_study(overrides=flags)
    fp = data_stage.fingerprint("synthetic")
    gs = grids.GridStorage(store.default_storage(tmp_path / "results", "rocks"), "rocks")
    gs.prepare(study, grids.expand(study, fp), grids.definition(study, fp),
               dataset={"name": "synthetic", "fingerprint": fp, "sizes": {"train": 160, "val": 48, "test": 48}})
    other = write_voc(tmp_path / "other" / "VOC2007", {"train": [MASK_A], "val": [MASK_A]})
    result = invoke("grid", "--study-name", "rocks", "--models", "unet", "--toggles", "none", "--epochs", 1,
                    "--image-size", 32, "--data", other, "--results-dir", tmp_path / "results", "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: study 'rocks' in {store.default_storage(tmp_path / 'results', 'rocks')} holds a different grid "
        f"(differs in: data); study rocks was created on synthetic (256 images, fingerprint {fp[:8]}), this command "
        f"points at {other} (fingerprint {data_stage.fingerprint(str(other))[:8]}); choose a new --study-name, "
        "e.g. rocks-2, or repeat the original settings"]
    assert not gs.trials()

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

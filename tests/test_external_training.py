"""Models from elsewhere trained for real: a user's module by import path in an `ablate grid`
(its file's content is part of the cell identity) and smp's U-Net through `ablate train`.
Tiny: 32 px, one epoch, synthetic data."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ablate.cli import main
from ablate.models import _registry
from ablate.predict import load_run

REPO = Path(__file__).resolve().parents[1]
MODULE = "abl_usernets"
USER_NET = textwrap.dedent("""
    from torch import nn

    def build(num_classes, *, width: int = 8):
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, num_classes, 1))
""")
STUDY = textwrap.dedent(f"""
    name = "ext"
    models = ["{MODULE}:build"]
    toggles = ["augment"]
    [train]
    data = "synthetic"
    image_size = 32
    epochs = 1
    batch_size = 32
    precision = "fp32"
    device = "cpu"
    [model_args."{MODULE}:build"]
    width = 3
""")
CELL_IDS = textwrap.dedent("""
    import sys
    from ablate import data, grid
    study = grid.read_grid_study(sys.argv[1])
    cells = grid.expand(study, data.fingerprint(study.train.data), grid.resolve_execution(study.train))
    print(" ".join(sorted(f"{c.cell_id}/{c.config.run_id}" for c in cells)))
""")


def _env(module_dir: Path) -> dict[str, str]:
    path = [str(module_dir), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_user_model_by_import_path_trains_in_a_grid_and_its_file_is_its_identity(tmp_path, cache_dir):
    modules, work = tmp_path / "modules", tmp_path / "work"
    modules.mkdir(), work.mkdir()  # the module is found through PYTHONPATH, not the working directory
    source = modules / f"{MODULE}.py"
    source.write_text(USER_NET)
    study = tmp_path / "ext.toml"
    study.write_text(STUDY)
    env, results = _env(modules), tmp_path / "results"
    grid = ["-m", "ablate", "grid", "--study", str(study), "--results-dir", str(results), "--cache-dir", str(cache_dir),
            "--no-report"]

    done = _run(grid, env, work)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = pd.read_csv(results / "ext" / "runs.csv")
    assert len(runs) == 2 and set(runs["status"]) == {"completed"} and set(runs["model"]) == {f"{MODULE}:build"}
    sha = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    for run_dir in runs["run_dir"]:
        record = json.loads((results / "ext" / run_dir / "run.json").read_text())
        assert record["model_identity"] == {"import_path": f"{MODULE}:build", "module_sha256": sha, "width": 3}
        assert record["config"]["model_args"] == {"width": 3}
    # the checkpoint lives in the artifact store; the report draws the predictions the trial
    # stored, and `checkpoint_dir` (what `ablate predict --run` is given) fetches it
    shown = _run(["-m", "ablate", "report", "--results-dir", str(results), "--study-name", "ext"], env, work)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    from ablate import analysis
    from ablate.report import gallery_for
    from ablate.results import open_study

    stored = open_study(results, "ext")
    [(_, key)] = analysis.best_runs(stored, analysis.finished_runs(stored))  # --keep-checkpoints best: its best cell
    assert not list((results / "ext" / "checkpoints").glob("*/best.pt"))  # the report downloaded none
    fetched = [stored.checkpoint_dir(key) / "best.pt"]
    assert fetched[0].is_file()
    sys.path.insert(0, str(modules))  # load_run rebuilds the model by its import path
    try:
        # without its predictions.png the gallery would need the model: a report runs none, it says so in a note
        stored.files[key].pop("predictions.png")
        (stored.run_dirs[key] / "predictions.png").unlink()  # the copy in its run folder too
        shown = gallery_for(stored, analysis.finished_runs(stored), cache_dir=cache_dir)
        assert not shown.predictions and MODULE not in sys.modules
        assert any("stored no predictions for these images" in n and "runs no model" in n for n in shown.notes)
        model, _ = load_run(fetched[0].parent, named_model=f"{MODULE}:build")  # as `ablate predict --model`
    finally:
        sys.path.remove(str(modules))
        sys.modules.pop(MODULE, None)
        _registry._RESOLVED.pop(f"{MODULE}:build", None)
    assert model[0].out_channels == 3  # the study's model_args reached the user's build

    before = _run(["-c", CELL_IDS, str(study)], env, work)
    assert before.returncode == 0, before.stderr
    assert before.stdout.split() == sorted(f"{c}/{r}" for c, r in zip(runs["cell_id"], runs["run_id"]))

    source.write_text(USER_NET + "# an edit that changes no behaviour still makes new cells\n")
    after = _run(["-c", CELL_IDS, str(study)], env, work)
    assert after.returncode == 0, after.stderr
    cells_before = {p.split("/")[0] for p in before.stdout.split()}
    runs_before = {p.split("/")[1] for p in before.stdout.split()}
    cells_after = {p.split("/")[0] for p in after.stdout.split()}
    runs_after = {p.split("/")[1] for p in after.stdout.split()}
    assert len(cells_after) == 2 and not cells_after & cells_before and not runs_after & runs_before

    again = _run(grid, env, work)  # the same study name now means another grid: refused, as for any change
    assert again.returncode == 2, again.stdout + again.stderr
    assert f"holds a different grid (differs in: model_args.{MODULE}:build)" in again.stderr
    assert "Traceback" not in again.stderr


def test_a_user_model_by_file_path_trains_in_spawned_grid_workers(tmp_path, cache_dir):
    """The console script (sys.path[0] its own folder, not the working directory), a module
    in the working directory named by its file, relative: the parent and both workers load it."""
    script = Path(sys.executable).with_name("ablate")
    if not script.is_file():
        pytest.skip("no ablate console script beside this interpreter")
    (tmp_path / "abl_filenet.py").write_text(USER_NET)
    study = tmp_path / "ext.toml"
    study.write_text(STUDY.replace(f"{MODULE}:build", "abl_filenet.py:build").replace("[train]", "workers = 2\n[train]"))
    results = tmp_path / "results"
    done = subprocess.run([str(script), "grid", "--study", str(study), "--results-dir", str(results), "--cache-dir",
                           str(cache_dir), "--no-report"], env=_env(REPO), cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = pd.read_csv(results / "ext" / "runs.csv")
    assert len(runs) == 2 and set(runs["status"]) == {"completed"} and set(runs["model"]) == {"abl_filenet.py:build"}


def test_an_unimportable_model_in_a_study_is_one_line_before_anything_runs(tmp_path):
    study = tmp_path / "bad.toml"
    study.write_text(STUDY.replace(f'models = ["{MODULE}:build"]', 'models = ["no_such_pkg_abl.nets:build"]'))
    results = tmp_path / "results"
    done = _run(["-m", "ablate", "grid", "--study", str(study), "--results-dir", str(results), "--no-report"],
                _env(tmp_path), tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(rf"error: {re.escape(str(study))}: line \d+, column \d+: models: model "
                                        r"no_such_pkg_abl\.nets:build: cannot import no_such_pkg_abl\.nets "
                                        r"\(ModuleNotFoundError", lines[0]), lines
    assert not results.exists()


# --------------------------------------------------------------------------- smp
def test_smp_unet_trains_one_epoch_through_ablate_train(tmp_path, cache_dir):
    pytest.importorskip("segmentation_models_pytorch")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--model", "smp:Unet/resnet18", "--data", "synthetic", "--epochs", "1",
                                       "--image-size", "32", "--batch-size", "32", "--precision", "fp32", "--quiet",
                                       "--out", str(out), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and len(record["curves"]) == 1
    import segmentation_models_pytorch as smp

    assert record["model_identity"] == {"architecture": "Unet", "encoder": "resnet18", "smp": smp.__version__,
                                        "weights": "none"}
    assert record["weights"] == "smp Unet/resnet18 encoder weights none"
    model, ckpt = load_run(out)  # the checkpoint is the smp model's: it loads back and predicts at input size
    assert any(k.startswith("net.encoder.layer4.") for k in ckpt["model_state"])
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, record["dataset"]["num_classes"], 32, 32)


def test_without_the_smp_extra_train_says_which_pip_command_adds_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # its import now raises ImportError
    monkeypatch.setattr(_registry, "_RESOLVED", {})
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--model", "smp:Unet/resnet18", "--data", "synthetic", "--epochs", "1",
                                       "--image-size", "32", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("error: model smp:Unet/resnet18: segmentation-models-pytorch is not installed; "
                                     "pip install 'ablate[smp]' adds it")
    assert not out.exists()


# --------------------------------------------------------------------------- tune
def test_tune_takes_an_import_path_model(tmp_path, monkeypatch):
    (tmp_path / "abl_tunenet.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_registry, "_RESOLVED", {})
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["tune", "--model", "abl_tunenet:build", "--model-arg", "width=3", "--dry-run",
                                       "--results-dir", str(results)])
    sys.modules.pop("abl_tunenet", None)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("study tune-abl_tunenet-build: abl_tunenet:build,")  # a folder-safe default name
    space = lines[lines.index("search space:") + 1:][:3]
    assert [line.split()[0] for line in space] == ["lr", "batch_size", "weight_decay"]  # what every model shares
    assert "model_args={'width': 3}" in result.output
    bad = CliRunner().invoke(main, ["tune", "--model", "abl_tunenet:nothing", "--dry-run", "--results-dir", str(results)])
    assert bad.exit_code == 2 and "has no attribute 'nothing'" in bad.output
    assert not results.exists()

"""The storage is the record: a grid's trials carry their run records (user attrs) and files
(an Optuna artifact store), so `ablate report --storage URL --study-name NAME` works on a
machine that ran nothing; --keep-checkpoints decides which checkpoints stay; a damaged record
or a missing artifact is named, never skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from ablate import analysis, store
from ablate import grid as grids
from ablate import record as records
from ablate.cli import main
from ablate.errors import AblateError
from ablate.record import CHECKPOINT_FILE, RECORD_FILE
from ablate.report import gallery_for
from ablate.results import NoCheckpoint, best_grid_runs, open_study

REPO = Path(__file__).resolve().parents[1]
FREQ = {"train": [0.6, 0.3, 0.1], "val": [0.6, 0.3, 0.1]}
DATASET = {"name": "synthetic", "class_names": ["background", "disc", "square"], "num_classes": 3,
           "image_size": [32, 32], "split_class_frequency": FREQ}


# --------------------------------------------------------------------------- records in user attrs
def _record(config: dict, miou: float, *, classes: int = 3) -> dict:
    curves = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_miou": miou * e / 2, "val_pixel_acc": 0.7,
               "lr": 1e-3 / e} for e in (1, 2)]
    split = {"loss": 0.5, "pixel_acc": 0.7, "miou": miou, "mean_acc": 0.5, "mdice": 0.5,
             "class_iou": [miou] * (classes - 1) + [float("nan")], "class_acc": [0.5] * classes}
    return {"run_id": "r", "config": config, "dataset": DATASET, "metrics": {"val": split, "test": dict(split)},
            "curves": curves, "best_epoch": 2, "stopped_epoch": 2, "early_stopping": None, "status": "completed",
            "timing": {"seconds": 3.0, "images_per_second": 10.0}, "environment": {"device": "cpu", "threads": 1},
            "weights": None, "failure_reason": None, "traceback": None}


def test_a_small_record_is_one_attr_and_a_large_one_is_split_under_mysqls_text_limit():
    config = grids.expand(grids.build_study(grids.QUICK_STUDY, where="t", overrides={"models": "baseline",
                                                                                     "toggles": "none"}), "fp")[0].config
    small = records.to_attrs(_record(config.to_dict(), 0.4))
    assert list(small) == ["record"] and small["record"]["metrics"]["val"]["class_iou"][-1] is None  # NaN -> null
    big = _record(config.to_dict(), 0.4, classes=9000)
    big["traceback"] = 'line "with" quotes \\ and backslashes\n' * 2000
    attrs = records.to_attrs(big)
    n = attrs["record_parts"]
    assert n >= 3 and set(attrs) == {"record_parts", *(f"record_{i}" for i in range(n))}
    assert max(len(json.dumps(attrs[f"record_{i}"]).encode()) for i in range(n)) < 65535  # MySQL TEXT
    back = records.from_attrs(attrs, "trial 7")
    assert back["traceback"] == big["traceback"] and len(back["metrics"]["test"]["class_acc"]) == 9000
    del attrs[f"record_{n - 1}"]
    with pytest.raises(AblateError, match=rf"^trial 7: run record incomplete in the storage \(missing record_{n - 1}\)"):
        records.from_attrs(attrs, "trial 7")
    with pytest.raises(AblateError, match="^trial 7: corrupted run record in the storage"):
        records.from_attrs({"record_parts": 1, "record_0": '{"config": '}, "trial 7")


# --------------------------------------------------------------------------- a grid told by hand
def _fake_grid(tmp_path: Path, keep: str, *, name: str = "rec", dataset=None) -> tuple[Path, grids.GridStorage, list, dict]:
    """2 models x scheduler x 2 seeds told through `grid._tell` with real (untrained) model
    weights and chosen val mIoUs: baseline's best cell is 'scheduler' (seed 1 best), unet's
    is 'none' (seed 0 best). Returns (results, storage, cells, {cell_id: val mIoU})."""
    from ablate.models import create_model
    from ablate.predict import gallery_predictions

    study = grids.build_study(grids.QUICK_STUDY, where="t", overrides={
        "models": "baseline,unet", "toggles": "scheduler", "seeds": 2, "image_size": 32, "epochs": 2, "name": name})
    results = tmp_path / "results"
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cells = grids.expand(study, "fp")
    gs = grids.GridStorage(url, study.name)
    gs.prepare(study, cells, grids.definition(study, "fp"), dataset=DATASET, command=["grid", "--study-name", name])
    files = store.artifacts(tmp_path / "shared-artifacts")
    miou = {}
    while (claimed := gs.claim(cells, max_retries=0)) is not None:
        cell, trial_id = claimed
        c = cell.config
        value = {("baseline", False): 0.20, ("baseline", True): 0.30, ("unet", False): 0.50, ("unet", True): 0.40}[
            (c.model, c.scheduler)] + 0.01 * c.seed * (1 if c.model == "baseline" else -1)
        miou[cell.cell_id] = value
        run_dir = results / name / "runs" / cell.cell_id / str(trial_id)
        torch.manual_seed(c.seed + 10 * c.scheduler)  # the same weights for the same cell in every fake grid
        model = create_model(c.model, 3, **c.model_args)
        run_dir.mkdir(parents=True, exist_ok=True)
        if dataset is not None:  # what the engine's on_model does for a completed run
            gallery_predictions(model.eval(), dataset, run_dir)
        record = _record({**c.to_dict(), "data": "synthetic"}, value)
        writes = keep != "none"  # as run_cell asks the engine
        records.write(run_dir, record, model.state_dict() if writes else None)
        gs.storage.set_trial_user_attr(trial_id, "run_dir", str(run_dir.relative_to(results / name)))
        grids._tell(gs.storage, cell, trial_id, record, 1.0, run_dir=run_dir, artifacts=files)
        assert not (run_dir / CHECKPOINT_FILE).exists()  # the artifact store holds the one copy
        assert (run_dir / RECORD_FILE).is_file()  # the local record stays, as a cache
    grids.prune_checkpoints(gs, files, keep)
    return results, gs, cells, miou


def _best_ids(cells, miou) -> set[str]:
    by = {}
    for cell in cells:
        by.setdefault(cell.config.model, {}).setdefault(cell.config.scheduler, []).append(cell.cell_id)
    best = set()
    for settings in by.values():
        top = max(settings.values(), key=lambda ids: sum(miou[i] for i in ids))
        best.add(max(top, key=miou.get))
    return best


@pytest.mark.parametrize("keep", ["best", "all", "none"])
def test_keep_checkpoints_leaves_exactly_the_expected_checkpoint_artifacts(tmp_path, keep):
    results, gs, cells, miou = _fake_grid(tmp_path, keep)
    folder = tmp_path / "shared-artifacts"
    trials = {t.user_attrs["cell_id"]: t for t in gs.trials()}
    assert all(t.state == TrialState.COMPLETE for t in trials.values()) and len(trials) == 8
    ids = {cid: store.artifact_ids(t.system_attrs) for cid, t in trials.items()}
    assert all(RECORD_FILE in v and (folder / v[RECORD_FILE]).is_file() for v in ids.values())  # every run.json
    on_disk = {cid for cid, v in ids.items() if CHECKPOINT_FILE in v and (folder / v[CHECKPOINT_FILE]).is_file()}
    expected = {"all": set(trials), "none": set(), "best": _best_ids(cells, miou)}[keep]
    assert on_disk == expected
    assert len(expected) == {"all": 8, "none": 0, "best": 2}[keep]
    assert len(list(folder.iterdir())) == 8 + len(expected)  # nothing else left behind
    written = {cid for cid, v in ids.items() if CHECKPOINT_FILE in v}
    assert written == {"none": set()}.get(keep, set(trials))  # every completed run wrote one, then best pruned
    pruned = store.pruned_ids(gs.study_attrs() or {})
    assert pruned == {ids[c][CHECKPOINT_FILE] for c in written - expected}
    # The report's gallery picks exactly the kept ones: each loads from the artifact store.
    study = open_study(tmp_path / "elsewhere", "rec", storage=gs.url)
    runs = analysis.finished_runs(study)
    assert {key for _, key in analysis.best_runs(study, runs)} == _best_ids(cells, miou)
    if keep != "none":
        from ablate.predict import load_run

        for key in _best_ids(cells, miou):
            _, ckpt = load_run(study.checkpoint_dir(key))
            assert ckpt["config"]["model"] == study.records[key]["config"]["model"]
    other = next(iter(set(trials) - _best_ids(cells, miou)))
    if keep != "all":
        # pruned once the grid was done
        with pytest.raises(NoCheckpoint, match="pruned by --keep-checkpoints best"
                           if keep == "best" else "--keep-checkpoints none"):
            study.checkpoint_dir(other)


def test_the_gallery_breaks_ties_by_what_ran_first():
    """Equal means (cells that predict only the majority class score exactly the same): the
    cell whose first run has the lowest trial number, then the seed with the lowest."""
    rows = [("a", 0, 0.1, 4), ("a", 1, 0.3, 2), ("b", 0, 0.2, 1), ("b", 1, 0.2, 3), ("c", 0, 0.1, 0), ("c", 1, 0.3, 5)]
    runs = pd.DataFrame({"arch": "m", "cell": [r[0] for r in rows], "seed": [r[1] for r in rows],
                         "val_miou": [r[2] for r in rows], "trial_number": [r[3] for r in rows],
                         "key": [f"{r[0]}{r[1]}" for r in rows]})
    assert analysis.grid_best_runs(runs) == [("c (seed 1)", "c1")]  # a, b, c tie at 0.2; c ran first (trial 0)
    runs.loc[runs["key"] == "c0", "trial_number"] = 9
    assert analysis.grid_best_runs(runs) == [("b (seed 0)", "b0")]  # now b ran first; its seeds tie: trial 1


def test_without_checkpoints_the_gallery_draws_each_trials_stored_predictions(tmp_path, cache_dir):
    """--keep-checkpoints none: each completed trial still attached predictions.png (its masks
    for the gallery's val images), and the gallery shows exactly what the checkpoints would."""
    from ablate.data import load_dataset

    data = load_dataset("synthetic", image_size=(32, 32), num_classes=None, ignore_index=255, val_fraction=None,
                        cache_dir=cache_dir)
    from ablate.predict import load_run, predict_masks

    kept = _fake_grid(tmp_path / "all", "all", dataset=data)
    none = _fake_grid(tmp_path / "none", "none", dataset=data)
    for (_, gs, _, _), where in ((kept, "all"), (none, "none")):
        assert all(sorted(store.artifact_ids(t.system_attrs)) == sorted(
            ["run.json", "predictions.png", *(["best.pt"] if where == "all" else [])]) for t in gs.trials())
    kept_study = open_study(tmp_path / "all" / "report", "rec", storage=kept[1].url)
    study = open_study(tmp_path / "none" / "report", "rec", storage=none[1].url)
    runs = analysis.finished_runs(study)
    shown = gallery_for(study, runs, cache_dir=cache_dir)
    assert len(shown.predictions) == 2 and not shown.notes
    # What each checkpoint predicts for the same images (the same cells, the same weights).
    val = data.splits["val"]
    idx = [val.ids.index(i) for i in shown.image_ids]
    for (label, masks), (best_label, key) in zip(shown.predictions, analysis.best_runs(study, runs)):
        model, ckpt = load_run(kept_study.checkpoint_dir(key))
        expected = predict_masks(model, val.images[idx], tuple(ckpt["image_size"]))
        assert label == best_label and all((m == e.numpy()).all() for m, e in zip(masks, expected))


def test_a_study_read_from_its_storage_has_every_record_and_curve(tmp_path):
    results, gs, cells, miou = _fake_grid(tmp_path, "best")
    study = open_study(tmp_path / "empty" / "results", "rec", storage=gs.url,
                                artifacts=str(tmp_path / "shared-artifacts"))
    assert study.source == "storage" and study.meta["dataset"] == DATASET
    assert study.meta["command"] == ["grid", "--study-name", "rec"] and study.meta["models"] == ["baseline", "unet"]
    assert set(study.records) == set(miou)
    runs = analysis.finished_runs(study)
    assert dict(zip(runs["key"], runs["val_miou"])) == pytest.approx(miou)
    curves = analysis.learning_curves(study, runs)
    assert set(curves["key"]) == set(miou) and len(curves) == 16
    assert curves.loc[curves["epoch"] == 2, "lr"].tolist() == [5e-4] * 8
    iou = analysis.class_iou_table(study, runs)
    assert iou.shape == (4, 3) and iou["square"].isna().all()


def test_missing_artifacts_and_damaged_records_are_named_with_exit_2(tmp_path, cache_dir):
    from ablate.data import load_dataset

    data = load_dataset("synthetic", image_size=(32, 32), num_classes=None, ignore_index=255, val_fraction=None,
                        cache_dir=cache_dir)
    results, gs, cells, miou = _fake_grid(tmp_path, "best", dataset=data)
    shared = tmp_path / "shared-artifacts"
    report = ["report", "--storage", gs.url, "--study-name", "rec", "--results-dir", str(tmp_path / "r")]
    ok = CliRunner().invoke(main, report)
    assert ok.exit_code == 0, ok.output
    for name in ("runs.csv", "summary.csv", "effects.csv", "comparisons.csv", "report.html"):
        assert (tmp_path / "r" / "rec" / name).is_file()
    # The predictions the gallery draws for the best unet run are gone from the store: named,
    # exit 2, one line (the report reads no checkpoint).
    best_unet = next(k for k in _best_ids(cells, miou) if any(c.cell_id == k and c.config.model == "unet" for c in cells))
    trial = next(t for t in gs.trials() if t.user_attrs["cell_id"] == best_unet)
    aid = store.artifact_ids(trial.system_attrs)[store.PREDICTIONS_FILE]
    (shared / aid).unlink()
    gone = CliRunner().invoke(main, [*report[:-1], str(tmp_path / "r2")])
    assert gone.exit_code == 2, gone.output
    lines = gone.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: trial {trial.number} (unet · no toggles · s0): "
                                                   f"predictions.png: artifact {aid} is missing from the artifact store")
    # A wrong --artifacts folder is named too.
    wrong = CliRunner().invoke(main, [*report[:-1], str(tmp_path / "r3"), "--artifacts", str(tmp_path / "nowhere")])
    assert wrong.exit_code == 2 and "--artifacts" in wrong.output and "nowhere" in wrong.output, wrong.output
    # A COMPLETE trial whose stored record is damaged (its second part lost): named, exit 2.
    study = grids.build_study(grids.QUICK_STUDY, where="t", overrides={
        "models": "baseline,unet", "toggles": "scheduler", "seeds": 2, "image_size": 32, "epochs": 2, "name": "rec"})
    fresh = grids.GridStorage(f"sqlite:///{tmp_path / 'damaged.db'}", "rec")
    fresh.prepare(study, cells, grids.definition(study, "fp"), dataset=DATASET)
    damaged = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.1, params={}, distributions={},
                                        user_attrs={"cell_id": cells[0].cell_id, "label": "damaged",
                                                    "record_parts": 2, "record_0": "{}"})
    fresh.storage.create_new_trial(fresh.study_id(), template_trial=damaged)
    bad = CliRunner().invoke(main, ["report", "--storage", fresh.url, "--study-name", "rec",
                                    "--results-dir", str(tmp_path / "r4")])
    assert bad.exit_code == 2, bad.output
    assert bad.output.strip().splitlines() == [
        "error: trial 0 (damaged): run record incomplete in the storage (missing record_1); rerun the cell"]


def test_s3_artifacts_without_boto3_is_one_line_naming_the_install(tmp_path):
    pytest.importorskip("optuna")
    try:
        import boto3  # noqa: F401
        pytest.skip("boto3 is installed here")
    except ImportError:
        pass
    with pytest.raises(AblateError, match=r"^--artifacts s3://lab-bucket/ablate: an S3 artifact store needs boto3; "
                                          r"pip install boto3$"):
        store.artifacts("s3://lab-bucket/ablate")


# --------------------------------------------------------------------------- acceptance, PostgreSQL
GRID = ["--models", "baseline", "--toggles", "scheduler,augment,weighted_loss", "--seeds", "2", "--image-size", "32",
        "--epochs", "1", "--data", "synthetic", "--no-report"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [*env.get("PYTHONPATH", "").split(os.pathsep),
                                                                str(REPO)])), **extra}


def _ablate(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablate", *args], cwd=cwd, env=_env(**env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name in ("runs", "summary", "effects", "comparisons"):
        t = pd.read_csv(folder / f"{name}.csv")
        if name == "runs":  # where and how fast a run went, not what it found
            t = t.drop(columns=["run_dir", "trial_number", "seconds", "images_per_second", "attempts"])
            t = t.sort_values("cell_id", ignore_index=True)
        out[name] = t
    return out


def test_two_machines_on_postgresql_and_a_report_from_a_third(tmp_path, cache_dir, postgres_url):
    """Two `ablate grid --workers 2` processes with their own results folders (two machines)
    and one shared artifact folder complete a baseline 8-setting x 2-seed grid on PostgreSQL;
    `ablate report` in an empty folder, given only the storage, the study name and the
    artifacts, writes the same tables as a single-process run of the same cells, and its
    curves and gallery draw on all 16 runs. Torch gets one thread everywhere (spawned workers
    get one each), so the runs are bit-identical between the layouts."""
    shared = tmp_path / "shared"
    machines = [tmp_path / "a", tmp_path / "b"]
    for m in machines:
        m.mkdir()
    procs = [_ablate(["grid", *GRID, "--study-name", "two", "--storage", postgres_url, "--workers", "2",
                      "--results-dir", str(m / "results"), "--cache-dir", str(cache_dir), "--artifacts", str(shared)],
                     m, OMP_NUM_THREADS="1") for m in machines]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = grids.GridStorage(postgres_url, "two").trials()
    assert len(trials) == 16 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert len({t.user_attrs["cell_id"] for t in trials}) == 16
    ran_on = {m: len(list((m / "results" / "two" / "runs").glob("*/*/run.json"))) for m in machines}
    assert sum(ran_on.values()) == 16 and all(ran_on.values()), ran_on  # both machines ran cells
    # The default --keep-checkpoints best: one architecture, one checkpoint left in the shared store.
    checkpoints = [a for t in trials if (a := store.artifact_ids(t.system_attrs).get(CHECKPOINT_FILE))]
    assert sum((shared / a).is_file() for a in checkpoints) == 1
    assert len(checkpoints) == 16  # every completed run wrote one; best pruned all but one
    assert not list(tmp_path.glob("*/results/two/runs/*/*/best.pt"))

    third = tmp_path / "third"
    third.mkdir()
    done = subprocess.run([sys.executable, "-m", "ablate", "report", "--storage", postgres_url, "--study-name", "two",
                           "--artifacts", str(shared)], cwd=third, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (third / "results" / "two" / "report.html").is_file()

    single = tmp_path / "single"
    single.mkdir()
    one = subprocess.run([sys.executable, "-m", "ablate", "grid", *GRID, "--study-name", "two", "--workers", "1",
                          "--results-dir", str(single / "results"), "--cache-dir", str(cache_dir)],
                         cwd=single, env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stdout + one.stderr
    report = subprocess.run([sys.executable, "-m", "ablate", "report", "--study-name", "two"], cwd=single, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stdout + report.stderr
    there, here = _tables(third / "results" / "two"), _tables(single / "results" / "two")
    for name in there:
        pd.testing.assert_frame_equal(there[name], here[name], check_exact=True, obj=name)
    assert len(there["runs"]) == 16 and set(there["runs"]["status"]) == {"completed"}

    study = open_study(third / "results", "two", storage=postgres_url, artifacts=str(shared))
    runs = analysis.finished_runs(study)
    curves = analysis.learning_curves(study, runs)
    assert len(set(curves["key"])) == 16 and len(curves) == 16  # one epoch each, every run
    [(label, key)] = analysis.best_runs(study, runs)
    means = runs.groupby("cell")["val_miou"].mean()
    assert label.startswith(means.idxmax())  # the best cell over all 16 runs, from both machines
    g = gallery_for(study, runs, n_images=2, cache_dir=cache_dir)
    assert [p[0] for p in g.predictions] == [label] and not g.notes

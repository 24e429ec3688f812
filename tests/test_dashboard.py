"""What optuna-dashboard shows for a grid study, read through its own WSGI app in-process:
the objective's name, trial labels and flags, the seed as an attribute (not a parameter
importance can rank), per-epoch curves, and the study and trial notes the report writes."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from conftest import wsgi_json_getter
from optuna_dashboard import wsgi

from ablate import analysis, dashboard, store
from ablate import grid as grids
from ablate import record as records
from ablate.results import Study, open_study

FREQ = {"train": [0.6, 0.3, 0.1], "val": [0.659, 0.241, 0.1]}  # bar: acc 0.659, mIoU 0.659 / 3
DATASET = {"name": "synthetic", "class_names": ["bg", "rock", "sand"], "num_classes": 3, "image_size": [32, 32],
           "split_class_frequency": FREQ}


def _record(cell: grids.Cell, *, acc: float, miou: float, best: int, stopped: int) -> dict:
    curves = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_miou": miou * e / stopped,
               "val_pixel_acc": acc, "lr": 1e-3} for e in range(1, stopped + 1)]
    metrics = {"val": {"loss": 0.5, "pixel_acc": acc, "miou": miou, "mean_acc": 0.5, "mdice": 0.5,
                       "class_iou": [0.5, 0.5, 0.5], "class_acc": [0.5, 0.5, 0.5]}}
    return {"run_id": cell.config.run_id, "config": cell.config.to_dict(), "dataset": DATASET, "metrics": metrics,
            "curves": curves, "best_epoch": best, "stopped_epoch": stopped, "status": "completed",
            "timing": {"seconds": 12.0, "images_per_second": 50.0}, "environment": None, "failure_reason": None}


@pytest.fixture
def grid_study(tmp_path):
    """A finished 2-model × scheduler × 1-seed grid in a journal storage: the unet cells
    learned (one still improving at its last epoch), the baseline cells sit at the bar."""
    study = grids.build_study(grids.QUICK_STUDY, where="test", overrides={
        "models": "baseline,unet", "toggles": "scheduler", "seeds": 1, "image_size": 32, "epochs": 3, "name": "dash"})
    results = tmp_path / "results"
    url = store.default_storage(results, study.name)
    cells = grids.expand(study, "fp")
    gs = grids.GridStorage(url, study.name)
    attrs = gs.prepare(study, cells, grids.definition(study, "fp"))
    grids.write_study_json(results, study, url, attrs, DATASET, command=["grid", "--study-name", "dash"])
    while (claimed := gs.claim(cells, max_retries=0)) is not None:
        cell, trial_id = claimed
        learned = cell.config.model == "unet"
        rec = _record(cell, acc=0.8 if learned else 0.659, miou=0.4 if learned else 0.2197,
                      best=3 if cell.config.scheduler else 2, stopped=3)
        run_dir = results / study.name / "runs" / cell.cell_id
        records.write(run_dir, rec, {"w": torch.full((2,), float(trial_id))})  # a stand-in checkpoint
        grids._tell(gs.storage, cell, trial_id, rec, 1.0, run_dir=run_dir,
                    artifacts=store.artifacts(results / study.name / dashboard.ARTIFACT_DIR))
    grids.write_tables(gs, results)
    return results, gs, cells


def _raw_get(app, path: str) -> bytes:
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:300])
    return body


def _api(storage):
    from optuna_dashboard import wsgi

    app = wsgi(storage)

    return wsgi_json_getter(app)


def test_dashboard_shows_names_labels_flags_and_notes(grid_study):
    results, gs, cells = grid_study
    study = open_study(results, "dash")
    runs = analysis.finished_runs(study)
    found = analysis.findings(study, runs)
    assert dashboard.write_notes(study, runs, found, results / "dash" / "report.html") == ""

    get = _api(gs.storage)
    sid = get("/api/studies")["study_summaries"][0]["study_id"]
    detail = get(f"/api/studies/{sid}")
    assert detail["objective_names"] == ["val mIoU"]
    trials = {next(a["value"] for a in t["user_attrs"] if a["key"] == "label"): t for t in detail["trials"]}
    assert set(trials) == {"baseline · no toggles · s0", "unet · no toggles · s0", "baseline · scheduler · s0",
                           "unet · scheduler · s0"}
    attrs = {k: {a["key"]: a["value"] for a in t["user_attrs"]} for k, t in trials.items()}
    assert attrs["baseline · no toggles · s0"]["did_not_learn"] == "True"  # at the bar: 0.659
    assert attrs["unet · no toggles · s0"]["did_not_learn"] == "False"
    assert attrs["unet · scheduler · s0"]["flags"] == "still improving: budget-limited"
    assert json.loads(attrs["unet · no toggles · s0"]["curve_train_loss"]) == pytest.approx([1.0, 0.5, 1 / 3], abs=1e-4)
    assert attrs["unet · no toggles · s0"]["seed"] == "0"
    for t in detail["trials"]:
        assert {p["name"] for p in t["params"]} == {"model", "scheduler", "augment", "weighted_loss"}
    # The study note: the findings in words and the report's path; trial notes: the curves.
    note = detail["note"]["body"]
    assert "### Findings" in note and str((results / "dash" / "report.html").resolve()) in note
    # seeds 0..0: sequential seeds continue them (--seeds auto), 2 new seeds × 4 cells in the first stage
    assert "One seed per cell" in note and "`ablate grid --study-name dash --seeds auto` adds 8 runs" in note
    assert "baseline · no toggles: did not learn" in note
    # each architecture's decisions as a table; one seed: no interval, no verdict
    assert "| effect | verdict | estimate [95% CI] | seeds |" in note
    assert "| cosine scheduler | no verdict (a cell did not learn) | 0.000 | 1 |" in note  # baseline: both at the bar
    assert "| cosine scheduler | not enough seeds | 0.000 | 1 |" in note  # unet: val mIoU 0.4 in both cells
    findings_part = note.split("Rules: ")[0]
    assert not any(word in findings_part for word in ("helps", "hurts", "inconclusive", "no effect larger"))
    # Each finished trial lists its run record and checkpoint as artifacts, in <study>/artifacts.
    assert sorted(a["filename"] for a in trials["unet · scheduler · s0"]["artifacts"]) == ["best.pt", "run.json"]
    unet = trials["unet · scheduler · s0"]["note"]["body"]
    assert "### unet · scheduler · s0" in unet and "| 3 | 0.3333 | 0.3667 | 0.4 |" in unet
    # Writing again changes nothing (no new note versions).
    version = detail["note"]["version"]
    dashboard.write_notes(study, runs, found, results / "dash" / "report.html")
    again = get(f"/api/studies/{sid}")
    assert again["note"]["version"] == version
    assert all(len(t["artifacts"]) == 2 for t in again["trials"])
    files = {a["filename"]: a["artifact_id"] for a in trials["unet · scheduler · s0"]["artifacts"]}
    stored = json.loads((results / "dash" / dashboard.ARTIFACT_DIR / files["run.json"]).read_text())
    assert stored["metrics"]["val"]["miou"] == 0.4
    unet_id = trials["unet · scheduler · s0"]["trial_id"]
    state = torch.load(results / "dash" / dashboard.ARTIFACT_DIR / files["best.pt"], weights_only=True)["model_state"]
    assert state["w"].tolist() == [float(unet_id)] * 2  # this trial's own checkpoint
    # The dashboard serves the artifact's bytes too (what its download link fetches).
    app = wsgi(gs.storage, artifact_store=store.open_artifacts(results / "dash" / dashboard.ARTIFACT_DIR))
    body = _raw_get(app, f"/artifacts/{sid}/{unet_id}/{files['run.json']}")
    assert json.loads(body)["metrics"]["val"]["miou"] == 0.4


def test_importance_over_stored_params_excludes_the_seed(grid_study):
    _, gs, _ = grid_study
    ostudy = optuna.load_study(study_name="dash", storage=gs.storage)
    imp = analysis.param_importances(ostudy)
    assert set(imp["param"]) == {"model", "scheduler", "augment", "weighted_loss"}  # no seed
    api = _api(gs.storage)(f"/api/studies/{ostudy._study_id}/param_importances")
    names = {p["name"] for p in api["param_importances"][0]}
    assert names and "seed" not in names


def test_old_study_with_a_seed_param_still_loads_and_extends(tmp_path):
    # Studies made before the seed left the params hold an IntDistribution "seed" on every
    # trial; cells are matched by cell_id, so they still count and new trials join them.
    study = grids.build_study(grids.QUICK_STUDY, where="test", overrides={
        "models": "unet", "toggles": "none", "seeds": 2, "image_size": 32, "epochs": 1, "name": "old"})
    cells = grids.expand(study, "fp")
    url = str(tmp_path / "optuna.journal")
    gs = grids.GridStorage(url, study.name)
    gs.prepare(study, cells, grids.definition(study, "fp"))
    sid = gs.study_id()
    old = optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, value=0.3, params={"model": "unet", "seed": 0},
        distributions={"model": optuna.distributions.CategoricalDistribution(["unet"]),
                       "seed": optuna.distributions.IntDistribution(0, 2**31 - 1)},
        user_attrs={"cell_id": cells[0].cell_id})
    gs.storage.create_new_trial(sid, template_trial=old)
    claimed = gs.claim(cells, max_retries=0)
    assert claimed is not None and claimed[0].cell_id == cells[1].cell_id  # seed 0 is done already
    states = grids.cell_states([c.brief() for c in cells], gs.trials())
    assert [states[c.cell_id].status for c in cells] == ["completed", "running"]


def test_the_study_note_names_each_level_of_a_multi_level_factor_once(tmp_path):
    # a factor's main-effect rows share `factors` ("loss"): the note must name each by its own row
    base = {"kind": "main", "n": 5, "min_effect": 0.01, "decided_at": 5.0, "seeds_to_decide": np.nan}
    rows = [{**base, "factors": "loss", "label": "loss = dice vs ce", "estimate": -0.05, "ci_low": -0.06,
             "ci_high": -0.04, "verdict": "hurts", "decided_at": 3.0},
            {**base, "factors": "loss", "label": "loss = focal vs ce", "estimate": 0.01, "ci_low": -0.0004,
             "ci_high": 0.0204, "verdict": "inconclusive", "seeds_to_decide": 12.0},
            {**base, "factors": "augment", "estimate": 0.002, "ci_low": -0.003, "ci_high": 0.007,  # no label: words
             "verdict": "no effect larger than δ"},
            {**base, "factors": "scheduler", "estimate": 0.03, "ci_low": 0.03, "ci_high": 0.03,
             "verdict": "seeds do not vary"}]
    arch = analysis.ArchFindings("unet", "test_miou", rows, pd.DataFrame(columns=["cell", "flags"]), 5)
    assert [r["label"] if "label" in r else r["factors"] for r in arch.verdicts] == [
        "loss = dice vs ce", "augment"]  # decisions that carry a verdict word
    found = analysis.Findings("test_miou", None, None, 5, [arch])
    study = Study(name="f", folder=tmp_path, kind="grid", meta={}, table=pd.DataFrame(), records={},
                           run_dirs={})
    note = dashboard.study_note(study, found, tmp_path / "report.html")
    lines = note.splitlines()
    assert "| loss = dice vs ce | hurts | -0.050 [95% CI -0.060, -0.040] | 5 (decided at 3) |" in lines
    assert "| loss = focal vs ce | inconclusive | +0.010 [95% CI -0.0004, +0.020] | 5 (≈12 would decide) |" in lines
    assert not any(line.startswith("| loss |") for line in lines)
    # toggles keep their words; δ is printed with its value
    assert (f"| {analysis.TOGGLE_LABELS['augment']} | no effect larger than δ = 0.01 | +0.002 [95% CI -0.003, +0.007] "
            "| 5 |") in lines
    assert (f"| {analysis.TOGGLE_LABELS['scheduler']} | no verdict (every seed gave the same result) | "
            "+0.030 [95% CI +0.030, +0.030] | 5 |") in lines

"""The report on a real, small results folder: runs trained by the engine, tables written in
the grid's and tuner's formats, rendered to HTML, checked as text, through the CLI and in
headless Chromium."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ablate import record as records
from ablate import tune as tuning
from ablate.cli import main
from ablate.config import TrainConfig
from ablate.data import load_dataset
from ablate.engine import Pruned, fit
from ablate.predict import gallery_predictions
from ablate.report import write_report

EVIL = "<script>alert(1)</script>"
# 2 models × weighted_loss off/on × 2 seeds; tiny, so the module builds in well under a minute.
BASE = dict(data="synthetic", image_size=(32, 32), epochs=2, batch_size=32, precision="fp32", device="cpu", patience=1)
MODELS = {"baseline": {}, "unet": {"base_channels": 8}}


def _write_study(folder: Path, kind: str, dataset: dict, **extra) -> dict:
    summary = {**dataset, "class_names": [dataset["class_names"][0], EVIL, *dataset["class_names"][2:]]}
    meta = {"kind": kind, "study_name": folder.name, "dataset": summary, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps(meta))
    return meta


def _data(cache_dir: Path):
    return load_dataset(BASE["data"], image_size=BASE["image_size"], num_classes=None, ignore_index=255,
                        val_fraction=None, cache_dir=cache_dir)


def _fit(config: TrainConfig, out_dir: Path, data, **kwargs) -> dict:
    """A run as the grid and the tuner train it: with its predictions of the gallery's val
    images (predictions.png), which the report draws."""
    return fit(config, dataset=data, out_dir=out_dir, quiet=True,
               on_model=lambda model: gallery_predictions(model, data, out_dir), **kwargs)


def _build_grid(folder: Path, cache_dir: Path) -> dict:
    rows, dataset, data = [], None, _data(cache_dir)
    for model, args in MODELS.items():
        for weighted in (False, True):
            for seed in (0, 1):
                config = TrainConfig(model=model, model_args=args, weighted_loss=weighted, seed=seed, **BASE)
                rec = _fit(config, folder / "runs" / config.run_id, data)
                dataset = rec["dataset"]
                rows.append({"cell_id": config.run_id, **records.summary(rec), "model_args": json.dumps(args)})
    # One crashed run, as the grid records it.
    bad = TrainConfig(model="unet", model_args=MODELS["unet"], lr=1e3, seed=2, **BASE)
    rec = records.failed(bad, reason="non-finite loss at epoch 1 step 1",
                         tb="Traceback (most recent call last):\n  File \"engine.py\", line 1\nFloatingPointError: " + EVIL)
    records.write(folder / "runs" / bad.run_id, rec, None)
    rows.append({"cell_id": bad.run_id, **records.summary(rec), "model_args": json.dumps(MODELS["unet"])})
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)
    _write_study(folder, "grid", dataset, storage=f"sqlite:///{folder / 'optuna.db'}",
                 definition={"models": list(MODELS), "toggles": ["weighted_loss"], "seeds": [0, 1]})
    return dataset


def _build_tune(folder: Path, cache_dir: Path, dataset: dict) -> None:
    storage = f"sqlite:///{folder / 'optuna.db'}"
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=folder.name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    rows, data = [], _data(cache_dir)
    for _ in range(4):
        trial = study.ask()
        lr, batch = trial.suggest_float("lr", 1e-3, 3e-2, log=True), trial.suggest_categorical("batch_size", [16, 32])
        config = TrainConfig(model="unet", model_args=MODELS["unet"], lr=lr, seed=0, **{**BASE, "batch_size": batch})

        def report(epoch, m, trial=trial):
            trial.report(m["miou"], epoch)
            if trial.number == 3:  # one pruned trial, as the tuner's pruner would leave it
                raise Pruned(f"pruned at epoch {epoch}")

        rec = _fit(config, folder / "runs" / str(trial.number), data, on_epoch=report)
        val = rec["metrics"]["val"]["miou"]
        state = optuna.trial.TrialState.PRUNED if rec["status"] == "pruned" else optuna.trial.TrialState.COMPLETE
        # what `ablate tune` stores with each trial: its record and the trials-table attrs
        attrs = {"val_miou": val, "test_miou": (rec["metrics"].get("test") or {}).get("miou"),
                 "epochs_run": rec["stopped_epoch"], "seconds": rec["timing"]["seconds"],
                 "run_dir": str(folder / "runs" / str(trial.number)), **records.to_attrs(rec)}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, val if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        rows.append({"number": trial.number, "state": state.name, "params_lr": lr, "params_batch_size": batch,
                     "val_miou": val, "test_miou": (rec["metrics"].get("test") or {}).get("miou"),
                     "epochs": rec["stopped_epoch"], "seconds": rec["timing"]["seconds"]})
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    meta = _write_study(folder, "tune", dataset, storage=storage, space={"lr": [1e-3, 3e-2], "batch_size": [16, 32]})
    # what `ablate tune` keeps in the storage: the study's identity and its study.json facts
    study.set_user_attr(tuning.ATTR, {"kind": "tune", "model": "unet"})
    study.set_user_attr(tuning.META_ATTR, {k: v for k, v in meta.items() if k != "storage"})


@pytest.fixture(scope="module")
def results(tmp_path_factory, cache_dir) -> Path:
    root = tmp_path_factory.mktemp("results")
    (root / ".cache").symlink_to(cache_dir)  # the report's gallery decodes the dataset once per session
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core box: one thread is the fastest for these tiny nets
    try:
        dataset = _build_grid(root / "grid", cache_dir)
        _build_tune(root / "tune", cache_dir, dataset)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def report_html(results) -> Path:
    return write_report(results_dir=results, study_names=["grid", "tune"], out=results / "report.html")


def _figure_count(text: str) -> int:
    return len(re.findall(r'class="plotly-graph-div"', text))


def test_report_is_self_contained_and_escaped(report_html):
    text = report_html.read_text()
    from plotly.offline import get_plotlyjs

    assert text.count(get_plotlyjs()[:200]) == 1  # plotly.js inline, exactly once
    assert not re.search(r'<script[^>]+src=|<link[^>]+href=["\']?http', text)  # nothing fetched
    assert EVIL not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    for heading in ("Findings", "Overview", "Grid table", "Toggle effects", "Learning curves", "Per-class IoU", "Prediction gallery",
                    "Quality vs cost", "Failures", "Best trials", "Optimization history", "Expected best vs budget",
                    "Parameter importances",
                    "Intermediate values", "Parallel coordinates", "Learning rate × batch size"):
        assert f"{heading}</h" in text, heading
    assert "weighted loss" in text and "PED-ANOVA" in text
    # the overview states each architecture's training once: budget, stopping rule, weights
    assert "<b>baseline</b>: 2 epochs; early stopping on val mIoU, patience 1;" in text
    assert "val/test metrics at native resolution" in text
    # Findings first: above the overview and every table, with the seeds banner and its command.
    findings = text.index('-findings"><h3>Findings</h3>')
    assert findings < text.index("<table") and findings < text.index("1. Overview</h3>")
    panel = text[findings:text.index("1. Overview</h3>")]
    assert "Not enough seeds for a verdict: the smallest cell has n=2" in panel
    assert "<code>ablate grid --study-name grid --seeds auto</code> adds 4 runs, about" in panel
    assert "one family per architecture" in panel and "<h4>baseline</h4>" in panel and "<h4>unet</h4>" in panel
    assert "did-not-learn bar unknown" not in panel and "majority class" in panel
    prose = text.replace(get_plotlyjs(), "")
    assert "no interval" not in prose and "bootstrap" not in prose
    # counts the seeds, then names them (seed 2: unet's failed run); both architectures completed 2 each
    assert "<dd>3 seeds (0, 1, 2)</dd>" in text
    # Gallery: 4 val images × (2 architectures' best cells + the best trial).
    assert text.count('alt="prediction"') == 4 * 3
    assert "non-finite loss at epoch 1 step 1" in text and "Figures skipped" not in text
    # grid: ranking, effects, curves, class IoU, Pareto; tune: history, expected best, importances,
    # intermediate values, parallel coordinates, contour.
    assert _figure_count(text) == 11


def test_tables_written_beside_runs(results, report_html):
    effects = pd.read_csv(results / "grid" / "effects.csv")
    main_effects = effects[(effects["kind"] == "main") & (effects["metric"] == "test_miou")]
    assert sorted(main_effects["arch"]) == ["baseline", "unet"]
    assert set(main_effects["effect"]) == {"weighted_loss"} and (main_effects["n_seeds"] == 2).all()
    comps = pd.read_csv(results / "grid" / "comparisons.csv")
    assert set(comps["baseline"]) == {"baseline · no toggles", "unet · no toggles"}
    for table in (effects, comps):
        assert {"n", "ci_method", "p_value", "p_improve", "verdict"} <= set(table.columns)
        assert (table["n"] == 2).all() and (table["ci_method"] == "Student t over seeds (n-1 df)").all()
    # 2 seeds never give a verdict; comparisons with the reference are described, never judged
    assert set(effects.loc[effects["kind"] == "main", "verdict"]) <= {"not enough seeds", "did not learn"}
    assert set(comps["verdict"]) <= {"estimate only", "seeds do not vary"}
    for table in (effects, comps):
        assert table["p_improve"].isin([0.0, 0.25, 0.5, 0.75, 1.0]).all()


def test_cli_default_study_prints_path_and_size(results):
    # Without --study-name the most recently updated study is reported, into its own folder.
    os.utime(results / "grid" / "runs.csv", (2e9, 2e9))
    result = CliRunner().invoke(main, ["report", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    out = results / "grid" / "report.html"
    assert result.stdout.strip() == f"report: {out} ({out.stat().st_size / 1e6:.1f} MB)"
    assert "no dashboard note for grid" in result.stderr  # this hand-built study has no Optuna storage
    assert out.stat().st_size > 1_000_000


@pytest.mark.parametrize("table", ["nothing finished", "missing study", "empty results", "corrupted record"])
def test_cli_errors_are_one_line(tmp_path, table):
    folder = tmp_path / "s"
    if table == "corrupted record":
        (folder / "runs" / "a").mkdir(parents=True)
        (folder / "runs" / "a" / "run.json").write_text('{"run_id": "a", "metr')
    if table != "empty results":
        folder.mkdir(exist_ok=True)
        pd.DataFrame([{"cell_id": "a", "model": "unet", "seed": 0, "status": "failed", "val_miou": None}]).to_csv(
            folder / "runs.csv", index=False)
        (folder / "study.json").write_text(json.dumps({"kind": "grid", "study_name": "s"}))
    args = ["report", "--results-dir", str(tmp_path)] + (["--study-name", "nope"] if table == "missing study" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    want = {"nothing finished": "no finished cells", "missing study": "nope", "empty results": "no study",
            "corrupted record": f"{folder / 'runs' / 'a' / 'run.json'}: corrupted run record"}[table]
    assert want in result.output


def _chromium(binary: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=15000", *args],
        capture_output=True, text=True, timeout=180)


def test_report_renders_in_chromium(chromium, report_html, tmp_path):
    url = report_html.resolve().as_uri()
    dom = _chromium(chromium, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The report logs nothing: any console line is an error or a warning (e.g. an uncaught exception).
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    expected = _figure_count(report_html.read_text())
    # plotly adds js-plotly-plot to a figure's div once it is drawn (the inline plotly.js source
    # also contains the name, hence the element pattern).
    rendered = re.findall(r'<div id="fig-\d+" class="[^"]*\bjs-plotly-plot\b', dom.stdout)
    assert len(rendered) == expected, (len(rendered), expected)
    assert len(re.findall(r'<svg class="main-svg"', dom.stdout)) >= expected
    # The rendered page too: the Findings panel comes before the first table.
    assert 0 < dom.stdout.index('class="findings"') < dom.stdout.index("<table")

    png = tmp_path / "report.png"
    shot = _chromium(chromium, tmp_path, f"--screenshot={png}", "--window-size=1400,3000", "--hide-scrollbars", url)
    assert png.is_file(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape == (3000, 1400)
    assert pixels.std() > 10  # not a blank page

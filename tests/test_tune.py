"""`ablate tune` for real: tiny searches (custom net narrowed to small kernels, 32 px, two
epochs) that must finish exactly --n-trials trials, resume without adding any, keep every
param in its space, store what optuna-dashboard and `ablate grid` read; plus the pruner,
every kernel combination of the custom space, failure handling and bad input."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from ablate import record as records
from ablate import store
from ablate import tune as tuning
from ablate import workers
from ablate.cli import main
from ablate.config import TrainConfig
from ablate.errors import AblateError
from ablate.models import create_model
from ablate.results import NoCheckpoint, open_study

REPO = Path(__file__).resolve().parents[1]
# The custom net's cost is in its parameters (up to 70 M with 7x7 kernels), not its pixels:
# the CLI tests narrow it to small kernels and one batch size so a trial takes seconds.
SMALL_CUSTOM = """
[tune]
batch_size = [32]
first_kernel = [3, 5]
encoder_kernel = [3]
decoder_kernel = [3]
"""
TINY_UNET = """
[tune]
model = "unet"
base_channels = 4
batch_size = [32]
"""


def _tune(*args: str):
    return CliRunner().invoke(main, ["tune", *[str(a) for a in args]])


def _load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _states(study: optuna.Study) -> dict[str, int]:
    return tuning.counts(study)


# --------------------------------------------------------------------------- a real short tune
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """`ablate tune` on synthetic data, 4 trials of at most 2 epochs, with --export."""
    root = tmp_path_factory.mktemp("tune")
    (root / "small.toml").write_text(SMALL_CUSTOM)
    url = f"sqlite:///{root}/optuna.db"
    args = ["--model", "custom", "--study", root / "small.toml", "--n-trials", "4", "--epochs", "2",
            "--data", "synthetic", "--image-size", "32", "--study-name", "t", "--storage", url,
            "--results-dir", root / "results", "--export", root / "best.toml"]
    result = _tune(*args)
    assert result.exit_code == 0, result.output + (str(result.exception) if result.exception else "")
    return {"root": root, "url": url, "args": args, "output": result.output, "results": root / "results"}


def test_tune_finishes_exactly_n_trials_inside_the_space(tuned):
    study = _load(tuned["url"], "t")
    c = _states(study)
    assert c["finished"] == 4 and c["RUNNING"] == 0
    narrowed, _ = tuning.apply_overrides("custom", tuning.default_space("custom"),
                                         {"batch_size": [32], "first_kernel": [3, 5], "encoder_kernel": [3],
                                          "decoder_kernel": [3]})
    for t in study.trials:
        assert set(t.params) == {"lr", "batch_size", "first_kernel", "encoder_kernel", "decoder_kernel"}
        for name, value in t.params.items():
            assert narrowed[name].contains(value), (name, value)
            assert tuning.PARAMS[name].contains(value), (name, value)  # and the declared default space
        assert (tuned["results"] / "t" / "runs" / str(t.number) / "run.json").is_file()
    table = pd.read_csv(tuned["results"] / "t" / "trials.csv")
    assert list(table["number"]) == [t.number for t in study.trials]
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}
    assert {"params_lr", "params_batch_size", "params_first_kernel", "val_miou", "test_miou", "epochs",
            "seconds"} <= set(table.columns)
    assert (table["epochs"] >= 1).all() and (table["epochs"] <= 2).all()
    meta = json.loads((tuned["results"] / "t" / "study.json").read_text())
    assert meta["kind"] == "tune" and meta["model"] == "custom" and meta["trial_counts"]["complete"] >= 1
    assert meta["space"]["first_kernel"] == {"type": "choice", "choices": [3, 5]}


def test_rerun_adds_no_trial_and_a_larger_budget_adds_the_difference(tuned):
    before = len(_load(tuned["url"], "t").trials)
    again = _tune(*tuned["args"])
    assert again.exit_code == 0, again.output
    assert "nothing to run" in again.output
    assert len(_load(tuned["url"], "t").trials) == before
    more = _tune(*[a if a != "4" else "5" for a in tuned["args"]])
    assert more.exit_code == 0, more.output
    assert _states(_load(tuned["url"], "t"))["finished"] == 5


def test_best_trial_record_holds_the_best_value_and_is_printed(tuned):
    study = _load(tuned["url"], "t")
    best = study.best_trial
    run_dir = Path(best.user_attrs["run_dir"])
    record = records.read(run_dir)
    assert record["status"] == "completed"
    assert record["metrics"]["val"]["miou"] == pytest.approx(study.best_value, abs=1e-12)
    assert record["config"]["lr"] == best.params["lr"]
    assert record["config"]["model_args"]["first_kernel"] == best.params["first_kernel"]
    # The storage is the record: the trial's user attrs hold the same record, and its run.json
    # is an artifact in <study>/artifacts.
    assert records.from_attrs(best.user_attrs, "best") == json.loads(json.dumps(record))
    artifact = store.artifact_ids(best.system_attrs)["run.json"]
    assert json.loads((Path(best.user_attrs["artifact_store"]) / artifact).read_text()) == record
    # --keep-checkpoints best: the best trial's best.pt is in the artifact store (and no
    # trial keeps a local copy); each other complete trial's is gone and marked pruned.
    folder = Path(best.user_attrs["artifact_store"])
    kept = store.artifact_ids(best.system_attrs)
    assert {"run.json", "predictions.png", "best.pt"} <= set(kept) and (folder / kept["best.pt"]).is_file()
    assert not any((Path(t.user_attrs["run_dir"]) / "best.pt").exists() for t in study.trials)
    pruned = store.pruned_ids(study.user_attrs)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        aid = store.artifact_ids(t.system_attrs).get("best.pt")
        if t.number != best.number and aid is not None:
            assert aid in pruned and not (folder / aid).exists()
    checkpoints = [store.artifact_ids(t.system_attrs).get("best.pt") for t in study.trials]
    assert [aid for aid in checkpoints if aid and (folder / aid).is_file()] == [kept["best.pt"]]
    out = tuned["output"]
    printed = next(line for line in out.splitlines() if line.startswith("best checkpoint: "))
    ckpt = torch.load(Path(printed.split()[2]) / "best.pt", weights_only=True)
    assert ckpt["config"]["model_args"]["first_kernel"] == best.params["first_kernel"]
    assert f"best val mIoU: {study.best_value:.4f}" in out
    assert "best params: lr=" in out and "first_kernel=" in out
    assert str(run_dir / "run.json") in out
    assert f"dashboard: optuna-dashboard {tuned['url']}" in out


def test_storage_opens_in_optuna_visualization_and_dashboard(tuned):
    study = _load(tuned["url"], "t")
    figures = [
        optuna.visualization.plot_optimization_history(study),
        optuna.visualization.plot_intermediate_values(study),
        optuna.visualization.plot_parallel_coordinate(study),
        optuna.visualization.plot_slice(study),
    ]
    assert all(len(f.data) > 0 for f in figures)
    history = figures[0].data[0]
    assert max(v for v in history.y if v is not None) == pytest.approx(study.best_value)

    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    app = optuna_dashboard.wsgi(tuned["url"])
    studies = _wsgi_get(app, "/api/studies")["study_summaries"]
    entry = next(s for s in studies if s["study_name"] == "t")
    detail = _wsgi_get(app, f"/api/studies/{entry['study_id']}")
    assert len(detail["trials"]) == len(study.trials)
    attrs = {a["key"] for a in detail["trials"][0]["user_attrs"]}
    assert {"val_miou", "test_miou", "seconds", "images_per_second"} <= attrs


def _wsgi_get(app, path: str) -> dict:
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


@pytest.mark.parametrize("keep", ["best", "none"])
def test_a_tune_reports_from_an_empty_folder_with_only_its_storage_and_artifacts(tmp_path, keep):
    """The storage is the record for a tune too: with the machine's results folder gone,
    `ablate report --storage --study-name --artifacts` rebuilds trials.csv exactly and draws the
    best trial's predictions (from its checkpoint, or with --keep-checkpoints none from the
    predictions image it stored)."""
    import shutil

    from ablate import store

    (tmp_path / "tiny.toml").write_text(TINY_UNET)
    url, shared = f"sqlite:///{tmp_path}/optuna.db", tmp_path / "shared-artifacts"
    ran = _tune("--study", tmp_path / "tiny.toml", "--n-trials", "3", "--epochs", "1", "--image-size", "32",
                "--pruner", "none", "--storage", url, "--study-name", "u", "--results-dir", tmp_path / "ran",
                "--artifacts", shared, "--keep-checkpoints", keep)
    assert ran.exit_code == 0, ran.output + (str(ran.exception) if ran.exception else "")
    local = pd.read_csv(tmp_path / "ran" / "u" / "trials.csv")
    shutil.rmtree(tmp_path / "ran")  # nothing of the machine that ran it is left
    best = _load(url, "u").best_trial

    empty = tmp_path / "empty"
    done = CliRunner().invoke(main, ["report", "--storage", url, "--study-name", "u", "--artifacts", str(shared),
                                     "--results-dir", str(empty)])
    assert done.exit_code == 0, done.output + (str(done.exception) if done.exception else "")
    pd.testing.assert_frame_equal(pd.read_csv(empty / "u" / "trials.csv"), local, check_exact=True)
    html = (empty / "u" / "report.html").read_text()
    assert f"best trial {best.number}" in html and "no run record" not in html
    assert "no checkpoint stored" not in html  # the gallery drew the predictions the trial stored
    assert not list((empty / "u" / "checkpoints").rglob("best.pt"))  # so it downloaded no checkpoint
    study = open_study(empty, "u", storage=url, artifacts=str(shared))
    if keep == "best":  # the best trial's checkpoint is in the store, for `ablate predict`
        aid = store.artifact_ids(best.system_attrs)["best.pt"]
        assert study.checkpoint_dir(str(best.number)) == empty / "u" / "checkpoints" / aid
        assert torch.load(empty / "u" / "checkpoints" / aid / "best.pt", weights_only=True)["config"]["lr"] == best.params["lr"]
    else:
        assert not any("best.pt" in store.artifact_ids(t.system_attrs) for t in _load(url, "u").trials)
        with pytest.raises(NoCheckpoint, match="--keep-checkpoints none"):
            study.checkpoint_dir(str(best.number))


def test_export_runs_through_grid_dry_run_with_the_best_params(tuned):
    from ablate import grid as grids

    exported = tuned["root"] / "best.toml"
    best = _load(tuned["url"], "t").best_trial
    dry = CliRunner().invoke(main, ["grid", "--study", str(exported), "--dry-run",
                                    "--results-dir", str(tuned["root"] / "grid")])
    assert dry.exit_code == 0, dry.output
    assert "3 cells" in dry.output and dry.output.count("custom") >= 3
    cells = grids.expand(grids.read_grid_study(exported), "fingerprint")
    assert sorted(c.config.seed for c in cells) == [0, 1, 2]
    for cell in cells:
        c = cell.config
        assert (c.model, c.lr, c.batch_size, c.epochs, c.image_size) == ("custom", best.params["lr"],
                                                                         best.params["batch_size"], 2, (32, 32))
        assert c.model_args == {k: best.params[k] for k in ("first_kernel", "encoder_kernel", "decoder_kernel")}
        assert not (c.scheduler or c.augment or c.weighted_loss)


def test_the_exported_study_file_reads_back_as_the_tuned_configuration(tmp_path):
    """--export's file (written with tomli_w): read back it is exactly the document meant, and
    the grid's reader makes each seed's all-toggles-on cell the tuned configuration (execution,
    precision and device, is the grid's to resolve: not exported)."""
    import tomllib

    from ablate import grid as grids

    config = TrainConfig(model="custom", data="synthetic", image_size=(32, 64), lr=0.00123456789, batch_size=8,
                         weight_decay=0.0, epochs=2, num_classes=5, val_fraction=0.25, ignore_index=0,
                         model_args={"first_kernel": 5, "encoder_kernel": 3, "decoder_kernel": 7}, scheduler=True)
    about = "best trial 3 of tune study 't' (val mIoU 0.5000)"
    text = tuning.grid_toml(config, name="t-best", seeds=2, about=about)
    assert text.startswith(f"# Written by `ablate tune --export`: {about}.\n")
    assert "# tuned on: scheduler" in text
    assert tomllib.loads(text) == {
        "name": "t-best", "description": f"Reruns {about} with 2 seeds.", "models": ["custom"],
        "toggles": ["scheduler"], "seeds": 2,
        "train": {"data": "synthetic", "image_size": [32, 64], "num_classes": 5, "val_fraction": 0.25,
                  "ignore_index": 0, "epochs": 2, "batch_size": 8, "lr": 0.00123456789, "weight_decay": 0.0,
                  "patience": 3},
        "model_args": {"custom": {"decoder_kernel": 7, "encoder_kernel": 3, "first_kernel": 5}},
    }
    (tmp_path / "best.toml").write_text(text)
    cells = grids.expand(grids.read_grid_study(tmp_path / "best.toml"), "fingerprint")
    tuned = [c.config for c in cells if c.config.scheduler]
    assert sorted(c.seed for c in tuned) == [0, 1]
    execution = ("precision", "device")
    for c in tuned:
        assert ({k: v for k, v in c.replace(seed=config.seed).to_dict().items() if k not in execution}
                == {k: v for k, v in config.to_dict().items() if k not in execution})


def test_existing_study_with_another_space_or_model_is_refused(tuned):
    before = (tuned["results"] / "t" / "trials.csv").read_text()
    other = tuned["root"] / "other.toml"
    other.write_text(SMALL_CUSTOM.replace("first_kernel = [3, 5]", "first_kernel = [3, 7]"))
    common = ["--n-trials", "4", "--epochs", "2", "--image-size", "32", "--study-name", "t",
              "--storage", tuned["url"], "--results-dir", tuned["results"]]
    for args, what in ((["--study", other], "a different search space (first_kernel)"),
                       (["--model", "baseline"], "model 'custom', not 'baseline'")):
        result = _tune(*args, *common)
        assert result.exit_code == 2, result.output
        message = result.stderr.strip()
        assert message.startswith("error: study 't'") and what in message, message
        assert "--study-name" in message and "\n" not in message
    result = _tune(*tuned["args"][:-2], "--epochs", "3")  # same space, another fixed setting
    assert result.exit_code == 2 and "epochs: 2 -> 3" in result.stderr
    assert (tuned["results"] / "t" / "trials.csv").read_text() == before


# --------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("pruner", ["hyperband", "median"])
def test_pruner_prunes_a_trial_far_below_the_others(pruner):
    """The pruner factory the tuner uses, on a crafted objective: trials report a rising
    mIoU curve per epoch; the one whose curve is far below the rest is pruned early."""
    epochs = 9
    # A fixed name: Hyperband assigns trials to brackets by a hash of study name and number.
    study = optuna.create_study(direction="maximize", pruner=tuning.make_pruner(pruner, epochs=epochs),
                                sampler=optuna.samplers.RandomSampler(seed=0), study_name=f"crafted-{pruner}")
    bad = 12

    def objective(trial: optuna.Trial) -> float:
        level = 0.05 if trial.number == bad else 0.6 + 0.01 * (trial.number % 5)
        for epoch in range(1, epochs + 1):
            trial.report(level * (1 - 0.5 ** epoch), epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        return level

    study.optimize(objective, n_trials=bad + 1)
    crafted = study.trials[bad]
    assert crafted.state == TrialState.PRUNED
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 3


def test_hyperband_resource_is_the_epoch():
    pruner = tuning.make_pruner("hyperband", epochs=6)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    # the first rung at the warm-up (a third of the epochs, at least 3: tests/test_tune_budget.py)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (3, 6, 3)
    assert isinstance(tuning.make_pruner("none", epochs=6), optuna.pruners.NopPruner)


# --------------------------------------------------------------------------- the custom space
_SPACE = tuning.default_space("custom")
_KERNELS = list(itertools.product(_SPACE["first_kernel"].choices, _SPACE["encoder_kernel"].choices,
                                  _SPACE["decoder_kernel"].choices))


@pytest.mark.parametrize("first,encoder,decoder", _KERNELS)
def test_custom_gives_input_sized_logits_for_every_kernel_combination(first, encoder, decoder):
    # Shapes only: on the meta device no weights are allocated, so all 45 combinations
    # (up to 70 M parameters each) take a second; one real forward below checks the extremes.
    with torch.device("meta"):
        model = create_model("custom", 6, first_kernel=first, encoder_kernel=encoder, decoder_kernel=decoder).eval()
        logits = model(torch.empty(1, 3, 64, 64))
    assert logits.shape == (1, 6, 64, 64)


@pytest.mark.parametrize("kernels", [min(_KERNELS), max(_KERNELS)])
def test_custom_extreme_kernels_run_for_real(kernels):
    first, encoder, decoder = kernels
    model = create_model("custom", 6, first_kernel=first, encoder_kernel=encoder, decoder_kernel=decoder).eval()
    with torch.inference_mode():
        logits = model(torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 6, 64, 64) and torch.isfinite(logits).all()


def test_every_declared_space_applies_to_its_model():
    from ablate.models import list_models, model_params

    assert set(tuning.DEFAULT_SPACE) == set(list_models())
    for model in list_models():
        space = tuning.default_space(model)
        assert {"lr", "batch_size"} <= set(space)
        for name in space:
            assert name in ("lr", "weight_decay", "batch_size") or name in model_params(model)
    assert {"base_channels"} <= set(tuning.default_space("unet"))
    assert {"freeze_encoder", "weight_decay"} <= set(tuning.default_space("resnet18"))
    assert {"scheduler", "augment", "weighted_loss"} <= set(tuning.default_space("baseline", tune_toggles=True))


@pytest.mark.parametrize("model", ["baseline", "custom", "resnet18", "unet"])
def test_spec_pickles_into_worker_processes(tmp_path, model):
    import pickle

    spec = _spec(tmp_path, space=tuning.default_space(model, tune_toggles=True), base=TrainConfig(model=model))
    clone = pickle.loads(pickle.dumps(spec))
    assert clone.identity() == spec.identity()
    assert all(clone.space[name].valid(value) for name, value in [("lr", 1e-3), ("scheduler", True)])


def test_overrides_narrow_widen_add_and_fix():
    space, fixed = tuning.apply_overrides("custom", tuning.default_space("custom"), {
        "lr": [1e-5, 3e-3], "batch_size": [8, 16, 64], "weight_decay": [1e-6, 1e-3], "encoder_kernel": 3,
        "scheduler": [False, True]})
    assert (space["lr"].low, space["lr"].high) == (1e-5, 3e-3)
    assert space["batch_size"].choices == (8, 16, 64)
    assert "weight_decay" in space and "scheduler" in space and "encoder_kernel" not in space
    assert fixed == {"encoder_kernel": 3}
    space, fixed = tuning.apply_overrides("unet", tuning.default_space("unet"), {"weight_decay": 0})
    assert "weight_decay" not in space and fixed == {"weight_decay": 0.0}


@pytest.mark.parametrize("overrides,message", [
    ({"lr": [1e-2, 1e-4]}, "inverted"),
    ({"lr": [1e-3, 1e-3]}, "empty range"),
    ({"lr": []}, "empty"),
    ({"batch_size": []}, "empty"),
    ({"lr": [0, 1e-3]}, "not a number > 0"),
    ({"first_kernel": [3, 4]}, "odd integer"),
    ({"base_channels": [8]}, "unknown parameter 'base_channels' for model 'custom'"),
    ({"dropout": [0.1, 0.5]}, "unknown parameter 'dropout'"),
])
def test_bad_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(AblateError, match=message):
        tuning.apply_overrides("custom", tuning.default_space("custom"), overrides)


# --------------------------------------------------------------------------- failures (fake engine)
def _fake_record(config: TrainConfig, *, status="completed", miou=0.5, epochs=2, reason=None) -> dict:
    metrics = {"miou": miou, "loss": 1.0, "pixel_acc": 0.9, "mean_acc": 0.5, "mdice": 0.5}
    return {"run_id": config.run_id, "config": config.to_dict(), "dataset": None,
            "metrics": {"val": metrics, "test": metrics} if status == "completed" else {},
            "curves": [{"epoch": e} for e in range(1, epochs + 1)], "best_epoch": epochs, "stopped_epoch": epochs,
            "timing": {"seconds": 0.1, "images_per_second": 100.0}, "environment": None, "status": status,
            "failure_reason": reason}


def _as_fit(fake):
    """`fake` as the engine's fit: a completed run also leaves its checkpoint, as the engine's
    does (the tuner stores it and draws the gallery's predictions from it)."""
    def fit(config, dataset, *, out_dir, **kwargs):
        record = fake(config, dataset, out_dir=out_dir, **kwargs)
        if record["status"] == "completed":
            summary = dataset.summary()
            state = create_model(config.model, summary["num_classes"], **config.model_args).state_dict()
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            torch.save({"model_state": state, "config": config.to_dict(), "num_classes": summary["num_classes"],
                        "class_names": summary["class_names"], "image_size": list(config.image_size)},
                       Path(out_dir) / records.CHECKPOINT_FILE)
        return record
    return fit


def _spec(tmp_path: Path, **kw) -> tuning.TuneSpec:
    base = TrainConfig(model="unet", model_args={"base_channels": 4}, image_size=(32, 32), epochs=2)
    space = {k: v for k, v in tuning.default_space("unet").items() if k != "base_channels"}
    defaults = dict(study_name="f", storage=f"sqlite:///{tmp_path}/f.db", results_dir=tmp_path,
                    space=space, base=base, n_trials=3, cache_dir=tmp_path.parent / "cache")
    return tuning.TuneSpec(**{**defaults, **kw})


def test_nan_loss_fails_and_oom_prunes_the_trial_but_the_study_goes_on(tmp_path, monkeypatch, cache_dir):
    calls = []

    def fake_fit(config, dataset, **kwargs):
        calls.append(config)
        if len(calls) == 1:
            return _fake_record(config, status="failed", reason="non-finite loss at epoch 1 step 3", epochs=1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return _fake_record(config, miou=0.1 * len(calls))

    monkeypatch.setattr("ablate.engine.fit", _as_fit(fake_fit))
    spec = _spec(tmp_path, cache_dir=cache_dir)
    lines: list[str] = []
    study = tuning.tune(spec, echo=lines.append)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["failure_reason"] == "non-finite loss at epoch 1 step 3"
    batch = study.trials[1].params["batch_size"]
    assert study.trials[1].user_attrs["failure_reason"] == f"oom at batch size {batch}"
    assert study.best_value == pytest.approx(0.4)
    table = pd.read_csv(tmp_path / "f" / "trials.csv")
    assert list(table["state"]) == ["FAIL", "PRUNED", "COMPLETE", "COMPLETE"]
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert "non-finite loss" in trial_lines[0] and "oom at batch size" in trial_lines[1]


def test_a_worker_gives_up_after_repeated_failures(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setattr("ablate.engine.fit", _as_fit(lambda config, dataset, **kw: _fake_record(
        config, status="failed", reason="non-finite loss at epoch 1 step 1", epochs=1)))
    with pytest.raises(AblateError, match="5 trials in a row failed .*non-finite loss"):
        tuning.tune(_spec(tmp_path, cache_dir=cache_dir), echo=lambda line: None)


def test_ctrl_c_fails_the_running_trial_and_a_rerun_resumes(tmp_path, monkeypatch, cache_dir):
    def interrupted(config, dataset, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ablate.engine.fit", _as_fit(interrupted))
    spec = _spec(tmp_path, cache_dir=cache_dir)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(spec, echo=lambda line: None)
    study = _load(spec.storage, "f")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert study.trials[0].user_attrs["failure_reason"] == "interrupted"
    monkeypatch.setattr("ablate.engine.fit", _as_fit(lambda config, dataset, **kw: _fake_record(config)))
    study = tuning.tune(spec, echo=lambda line: None)
    assert _states(study)["finished"] == 3 and len(study.trials) == 4


def test_a_live_trial_of_a_worker_in_another_pid_namespace_is_left_alone(tmp_path, monkeypatch, cache_dir):
    """Worker B runs in a container with this host's name and boot but its own PID namespace;
    its PID names a dead process here. This worker must judge B by its heartbeat only, so B's
    live trial survives this worker's run and B can still complete it."""
    spec = _spec(tmp_path, cache_dir=cache_dir, n_trials=3)
    study = tuning.open_study(spec)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = workers.identity()
    other = {**me, "pidns": me["pidns"] + 1, "pid": dead.pid, "node": f"{me['host']}/{me['boot']}/{me['pidns'] + 1}"}
    real_identity = workers.identity
    monkeypatch.setattr(workers, "identity", lambda: other)
    foreign = study.ask()
    workers.take_ownership(study._storage, foreign._trial_id)
    monkeypatch.setattr(workers, "identity", real_identity)
    calls = []

    def fake_fit(config, dataset, **kwargs):
        calls.append(config)
        if len(calls) == 2:  # meanwhile B finishes its trial (refused if this worker had failed it)
            study._storage.set_trial_state_values(foreign._trial_id, TrialState.COMPLETE, [0.9])
        return _fake_record(config, miou=0.1 * len(calls))

    monkeypatch.setattr("ablate.engine.fit", _as_fit(fake_fit))
    done = tuning.tune(spec, echo=lambda line: None)
    assert [t.state for t in done.trials] == [TrialState.COMPLETE] * 3 and len(calls) == 2
    assert done.trials[0].value == 0.9 and done.trials[0].user_attrs["worker"]["pidns"] == me["pidns"] + 1
    assert done.trials[1].user_attrs["worker"] == me


def test_a_trial_reclaimed_while_it_runs_does_not_crash_its_worker(tmp_path, monkeypatch, cache_dir):
    spec = _spec(tmp_path, cache_dir=cache_dir, n_trials=2)
    calls = []

    def fake_fit(config, dataset, **kwargs):
        calls.append(config)
        if len(calls) == 1:  # another worker saw this trial's heartbeat stall and failed it
            storage = _load(spec.storage, "f")._storage
            [running] = _load(spec.storage, "f").get_trials(states=(TrialState.RUNNING,))
            workers.fail_trial(storage, running._trial_id, "worker lost: no heartbeat for 2 s")
        return _fake_record(config, miou=0.1 * len(calls))

    monkeypatch.setattr("ablate.engine.fit", _as_fit(fake_fit))
    lines: list[str] = []
    study = tuning.tune(spec, echo=lines.append)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["failure_reason"] == "worker lost: no heartbeat for 2 s"
    assert "val_miou" not in study.trials[0].user_attrs  # the late result was refused, not mixed in
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert "worker lost: no heartbeat" in trial_lines[0] and study.best_value == pytest.approx(0.3)


def test_tune_workers_are_planned_on_the_configured_device(tmp_path, monkeypatch):
    """--device cuda --workers 2: the tune hands its device to the shared supervisor, whose
    plan (tests/test_workers.py runs it for real) puts worker i on GPU i mod n."""
    seen = {}
    monkeypatch.setattr(workers, "supervise", lambda target, args, **kw: seen.update(kw) or [])
    spec = _spec(tmp_path, base=TrainConfig(model="custom", image_size=(32, 32), epochs=2, device="cuda"), workers=2)
    tuning._run_processes(spec, echo=lambda line: None)
    assert (seen["device"], seen["workers"]) == ("cuda", 2)
    plan = workers.worker_plan(seen["workers"], device=seen["device"], gpu_ids=["0", "1"], cores=16)
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in plan] == ["0", "1"]


# --------------------------------------------------------------------------- several workers
def test_workers_share_one_postgresql_study_and_end_with_exactly_n_trials(tmp_path, postgres_url):
    (tmp_path / "tiny.toml").write_text(TINY_UNET)
    cmd = [sys.executable, "-m", "ablate", "tune", "--study", str(tmp_path / "tiny.toml"), "--n-trials", "4",
           "--epochs", "1", "--image-size", "32", "--workers", "3", "--storage", postgres_url,
           "--study-name", "pg", "--results-dir", str(tmp_path / "results")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    study = _load(postgres_url, "pg")
    c = _states(study)
    assert c["finished"] == 4 and c["RUNNING"] == 0
    real = [t for t in study.trials if not (t.user_attrs.get("failure_reason") or "").startswith("surplus")]
    assert all(t.state in tuning.FINISHED for t in real)
    assert "[worker " in done.stdout and "postgresql://" in done.stdout
    table = pd.read_csv(tmp_path / "results" / "pg" / "trials.csv")
    assert len(table) == len(study.trials)
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert len(_load(postgres_url, "pg").trials) == len(study.trials)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,message", [
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--n-trials", "0"], "--n-trials must be >= 1"),
    (["--pruner", "bogus"], "'bogus' is not one of"),
    (["--sampler", "grid"], "'grid' is not one of"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--image-size", "50"], "divisible by 32"),
    (["--study", "{dir}/inverted.toml"], "lr = [0.01, 0.0001] is inverted"),
    (["--study", "{dir}/empty.toml"], "batch_size = [] is empty"),
    (["--study", "{dir}/unknown.toml"], "unknown parameter 'momentum'"),
    (["--study", "{dir}/syntax.toml"], "syntax.toml: line 2, column"),
    (["--study", "{dir}/missing.toml"], "no such file"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "inverted.toml").write_text("[tune]\nlr = [1e-2, 1e-4]\n")
    (tmp_path / "empty.toml").write_text("[tune]\nbatch_size = []\n")
    (tmp_path / "unknown.toml").write_text("[tune]\nmomentum = [0.8, 0.99]\n")
    (tmp_path / "syntax.toml").write_text("[tune]\nlr = [1e-4,, 1e-2]\n")
    results = tmp_path / "results"
    result = _tune(*[a.format(dir=tmp_path) for a in args], "--results-dir", results)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output
    if not args[0].startswith("--pruner") and not args[0].startswith("--sampler"):
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not results.exists()


def test_bad_input_in_a_subprocess_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ablate", "tune", "--model", "nope", "--results-dir",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown model 'nope'") and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_example_study_file_resolves_and_dry_run_writes_nothing(tmp_path):
    results = tmp_path / "results"
    result = _tune("--study", REPO / "studies" / "tune-custom.toml", "--dry-run", "--results-dir", results)
    assert result.exit_code == 0, result.output
    assert "study tune-custom-narrow: custom, 12 trials of at most 4 epochs" in result.output
    assert "first_kernel    one of [5, 7, 9, 11]" in result.output
    assert "weight_decay    log-uniform [1e-06, 0.001]" in result.output
    assert "scheduler=True" in result.output
    flags_win = _tune("--study", REPO / "studies" / "tune-custom.toml", "--dry-run", "--n-trials", "3",
                      "--epochs", "2", "--results-dir", results)
    assert "3 trials of at most 2 epochs" in flags_win.output
    assert not results.exists()


def test_a_tie_keeps_the_checkpoint_of_the_lower_trial_number():
    """Two workers: trial 3 finishes after trial 4 with the same val mIoU. The best trial is
    3 (the lower number), so 3 writes its checkpoint and a later equal 5 does not."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize")
    for number, value in enumerate([0.1, 0.2, 0.3, None, 0.5]):  # trial 3 still running
        if value is None:
            study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING))
        else:
            study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=value))
    from ablate import record as records
    from ablate.config import TrainConfig

    record = {**records.failed(TrainConfig(model="custom"), reason=None, tb=None), "status": "completed",
              "metrics": {"val": {"miou": 0.5}}}
    assert tuning._keeps_checkpoint("best", study, record, 3)  # ties trial 4, ran first
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5))  # trial 5
    assert not tuning._keeps_checkpoint("best", study, record, 6)
    assert tuning.best_trial(study).number == 4
    assert not tuning._keeps_checkpoint("none", study, record, 3)
    assert not tuning._keeps_checkpoint("best", study, {**record, "status": "pruned"}, 3)

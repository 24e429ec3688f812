"""The tuner never does worse than not tuning: its first trial is the default configuration
(queued once, whatever the number of workers or reruns), and no trial is judged, by the pruner
or by early stopping, before it could show its curve (a third of its epoch budget)."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from test_tune import _as_fit, _fake_record

from ablate import store
from ablate import tune as tuning
from ablate.cli import main
from ablate.config import TrainConfig
from ablate.errors import AblateError


def _spec(tmp_path: Path, cache_dir: Path, **kw) -> tuning.TuneSpec:
    """unet's default space, its width included, around TrainConfig's defaults."""
    base = TrainConfig(model="unet", image_size=(32, 32), epochs=2)
    defaults = dict(study_name="d", storage=f"sqlite:///{tmp_path}/d.db", results_dir=tmp_path,
                    space=tuning.default_space("unet"), base=base, n_trials=3, cache_dir=cache_dir, sampler="random")
    return tuning.TuneSpec(**{**defaults, **kw})


# --------------------------------------------------------------------------- the default trial
def test_the_first_trial_is_the_default_configuration_clipped_into_the_space(tmp_path, monkeypatch, cache_dir):
    """TrainConfig's lr 1e-3, batch 16 and weight decay 1e-4, and unet's width 64 clipped to the
    space's widest (32), said in one line; the engine trains exactly that first."""
    seen = []
    monkeypatch.setattr("ablate.engine.fit", _as_fit(lambda config, dataset, **kw: seen.append(config)
                                                     or _fake_record(config, miou=0.5 - 0.01 * len(seen))))
    lines: list[str] = []
    study = tuning.tune(_spec(tmp_path, cache_dir), echo=lines.append)
    first = study.trials[0]
    assert first.params == {"lr": 1e-3, "batch_size": 16, "weight_decay": 1e-4, "base_channels": 32}
    assert first.user_attrs[tuning.DEFAULT_ATTR] is True
    assert (seen[0].lr, seen[0].batch_size, seen[0].weight_decay, seen[0].model_args) == (
        1e-3, 16, 1e-4, {"base_channels": 32})
    assert "first trial: the default configuration, lr=0.001  batch_size=16  weight_decay=0.0001  base_channels=32" in lines
    assert ("note: default base_channels=64 is outside the search space (one of [8, 16, 32]); "
            "the default trial uses 32") in lines
    assert sum(bool(t.user_attrs.get(tuning.DEFAULT_ATTR)) for t in study.trials) == 1
    # A rerun with a larger budget continues the study: no second default trial.
    more = tuning.tune(_spec(tmp_path, cache_dir, n_trials=5), echo=lines.append)
    assert len(more.trials) == 5 and sum(bool(t.user_attrs.get(tuning.DEFAULT_ATTR)) for t in more.trials) == 1
    assert tuning.best_trial(more).number == 0  # the fake engine scores the default best: the tuner keeps it


def test_the_default_is_queued_once_and_again_only_after_an_interruption(tmp_path, cache_dir):
    spec = _spec(tmp_path, cache_dir)
    storage = store.open_storage(spec.storage)
    study = tuning.open_study(spec, storage=storage)
    assert tuning.enqueue_default(spec, study, storage) is not None
    assert tuning.enqueue_default(spec, study, storage) is None  # already queued
    assert [t.state for t in study.trials] == [TrialState.WAITING]
    trial = study.ask()  # the default, interrupted (Ctrl-C): a rerun queues it again
    storage.set_trial_user_attr(trial._trial_id, "failure_reason", "interrupted")
    study.tell(trial, state=TrialState.FAIL)
    assert tuning.enqueue_default(spec, study, storage) is not None
    trial = study.ask()  # that one fails for a reason of its own: it is not queued a third time
    storage.set_trial_user_attr(trial._trial_id, "failure_reason", "non-finite loss at epoch 1 step 3")
    study.tell(trial, state=TrialState.FAIL)
    assert tuning.enqueue_default(spec, study, storage) is None
    assert sum(bool(t.user_attrs.get(tuning.DEFAULT_ATTR)) for t in study.trials) == 2


def _open_and_queue(spec: tuning.TuneSpec, barrier) -> None:
    storage = store.open_storage(spec.storage)
    study = tuning.open_study(spec, storage=storage)
    barrier.wait()
    tuning.enqueue_default(spec, study, storage)


def test_several_commands_starting_together_queue_one_default(tmp_path, cache_dir):
    """Four processes (as `--workers` or several machines on one storage) open the study and
    queue the default at the same moment: the tune's lock lets one of them do it."""
    spec = _spec(tmp_path, cache_dir)
    tuning.open_study(spec)  # the study exists (as the parent command makes it), still without a trial
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_and_queue, args=(spec, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    study = optuna.load_study(study_name="d", storage=spec.storage)
    assert [t.state for t in study.trials] == [TrialState.WAITING]


def test_a_study_files_values_are_the_default_trial(tmp_path):
    """A grid study's [train] and [model_args.MODEL] (the plain configuration a user runs) give
    the first trial its values; values of parameters not searched are not read."""
    (tmp_path / "plain.toml").write_text("[train]\nlr = 3e-3\nbatch_size = 8\nweight_decay = 0.0\n"
                                         "[model_args.unet]\nbase_channels = 16\n[tune]\nmodel = \"unet\"\n"
                                         "weight_decay = 0\n")
    flags = {"precision": "auto", "device": "auto", "compile": False, "data": "synthetic", "ignore_index": 255,
             "scheduler": False, "augment": False, "weighted_loss": False}
    spec = tuning.resolve_spec(flags, given=set(), study_file=tmp_path / "plain.toml", workers=1, storage=None,
                               results_dir=tmp_path / "r")
    assert spec.start == {"lr": 3e-3, "batch_size": 8, "base_channels": 16}
    params, notes = tuning.default_trial(spec.space, spec.base, spec.start)
    assert params == {"lr": 3e-3, "batch_size": 8, "base_channels": 16} and notes == []
    (tmp_path / "bad.toml").write_text("[train]\nbatch_size = 0\n[tune]\nmodel = \"unet\"\n")
    with pytest.raises(AblateError, match=r"bad.toml: \[train\] batch_size = 0 is not a positive integer"):
        tuning.resolve_spec(flags, given=set(), study_file=tmp_path / "bad.toml", workers=1, storage=None,
                            results_dir=tmp_path / "r")


@pytest.mark.parametrize("param,value,clipped", [
    (tuning.Param(low=1e-4, high=1e-2), 3e-2, 1e-2),
    (tuning.Param(low=1e-4, high=1e-2), 1e-5, 1e-4),
    (tuning.Param(low=1e-4, high=1e-2), 1e-3, 1e-3),
    (tuning.Param(choices=(8, 16, 32)), 64, 32),
    (tuning.Param(choices=(8, 16, 32)), 12, 8),  # as close to 8 as to 16: the lower
    (tuning.Param(choices=(8, 16, 32)), 4, 8),
    (tuning.Param(choices=(True,)), False, True),
])
def test_a_default_outside_the_space_is_clipped_to_the_nearest_value(param, value, clipped):
    assert param.clip(value) == clipped and type(param.clip(value)) is type(clipped)


def test_dry_run_shows_the_first_trial(tmp_path):
    result = CliRunner().invoke(main, ["tune", "--model", "unet", "--dry-run", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert ("first trial (the default configuration): lr=0.001  batch_size=16  weight_decay=0.0001  base_channels=32"
            in result.output)
    assert ("note: default base_channels=64 is outside the search space (one of [8, 16, 32]); "
            "the default trial uses 32") in result.output


# --------------------------------------------------------------------------- judged only after a warm-up
@pytest.mark.parametrize("epochs,warmup,patience", [(1, 1, 0), (2, 2, 0), (4, 3, 0), (6, 3, 3), (12, 4, 4),
                                                     (30, 10, 10)])
def test_warmup_and_patience_scale_with_the_epoch_budget(epochs, warmup, patience):
    assert tuning.warmup_epochs(epochs) == warmup
    assert tuning.default_patience(epochs) == patience
    flags = {"precision": "auto", "device": "auto", "compile": False, "data": "synthetic", "ignore_index": 255,
             "scheduler": False, "augment": False, "weighted_loss": False, "epochs": epochs}
    spec = tuning.resolve_spec(flags, given={"epochs"}, study_file=None, workers=1, storage=None, results_dir=Path("r"))
    assert spec.base.patience == patience  # was 3 whatever the budget
    given = tuning.resolve_spec({**flags, "patience": 2}, given={"epochs", "patience"}, study_file=None, workers=1,
                                storage=None, results_dir=Path("r"))
    assert given.base.patience == 2  # --patience still wins


@pytest.mark.parametrize("pruner", ["hyperband", "asha", "median"])
def test_no_trial_is_pruned_before_a_third_of_its_epochs(pruner):
    """30 epochs: good trials climb slowly; poor ones climb slower still. The old pruners
    (min resource or warm-up of 1 epoch) judged them at epochs 1-3; now no decision comes before
    epoch 10, and the poor trials are still pruned after it."""
    epochs = 30
    study = optuna.create_study(direction="maximize", pruner=tuning.make_pruner(pruner, epochs=epochs),
                                sampler=optuna.samplers.RandomSampler(seed=0), study_name=f"warmup-{pruner}")

    def objective(trial: optuna.Trial) -> float:
        level = 0.2 if trial.number % 3 == 2 else 0.6 + 0.01 * (trial.number % 5)
        for epoch in range(1, epochs + 1):
            trial.report(level * epoch / epochs, epoch)
            if epoch < epochs and trial.should_prune():
                trial.set_user_attr("pruned_at", epoch)
                raise optuna.TrialPruned()
        return level

    study.optimize(objective, n_trials=18)
    pruned = [t.user_attrs["pruned_at"] for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and min(pruned) >= 10, pruned


def test_hyperband_rungs_start_at_the_warmup():
    pruner = tuning.make_pruner("hyperband", epochs=30)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (10, 30, 3)
    assert tuning.make_pruner("median", epochs=30)._n_warmup_steps == 10

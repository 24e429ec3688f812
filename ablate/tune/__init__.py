"""Tuner stage: an Optuna search over one model's hyperparameters. It only builds `TrainConfig`s
and hands them to the engine (`fit_safely`), reporting val mIoU per epoch to a pruner.

space    every searchable parameter and each model's default space; `[tune]` overrides
spec     `TuneSpec`: one tune resolved from flags and a study file; samplers and pruners
study    the Optuna study, bound to its model, space and fixed settings (counts and the
         best trial are the read side's: ablate.results.trials)
search   the objective, the worker loop, `tune`
confirm  `--confirm K`: the best K configurations rerun over seeds until the winner is decided
outputs  trial lines, trials.csv, study.json, checkpoint thinning, the `--export` study file
"""
from ablate.results.trials import META_ATTR, best_trial, counts, trials_frame
from ablate.results.trials import TUNE_ATTR as ATTR  # the study attr that binds a tune (tests know it as ATTR)
from ablate.tune.confirm import LOOKS, MAX_SEEDS, Candidate, candidates, confirm_winner, sentences, take_look
from ablate.tune.outputs import (describe_params, describe_trial, export_grid_study, grid_toml, prune_checkpoints,
                                 static_meta, write_study_json, write_trials_csv)
from ablate.tune.search import (MAX_CONSECUTIVE_FAILURES, POLL_SECONDS, TrialFailed, load_dataset_for, run_trial,
                                run_worker, tune)
from ablate.tune.search import _keeps_checkpoint, _run_processes  # noqa: F401  (tests drive them directly)
from ablate.tune.space import (DEFAULT_SPACE, EXTERNAL_SPACE, PARAMS, Param, applicable_params, apply_overrides,
                               config_for, default_space, default_trial, describe_space)
from ablate.tune.spec import (DEFAULT_EPOCHS, DEFAULT_IMAGE_SIZE, DEFAULT_MIN_EFFECT, DEFAULT_N_TRIALS, PRUNERS,
                              SAMPLERS, TRAIN_KEYS, TUNE_SETTINGS, TuneSpec, default_patience, make_pruner,
                              make_sampler, read_start, read_study_file, resolve_spec, validate, warmup_epochs)
from ablate.tune.study import DEFAULT_ATTR, FINISHED, enqueue_default, open_study

__all__ = [
    "ATTR", "Candidate", "DEFAULT_ATTR", "DEFAULT_EPOCHS", "DEFAULT_IMAGE_SIZE", "DEFAULT_MIN_EFFECT",
    "DEFAULT_N_TRIALS", "DEFAULT_SPACE", "EXTERNAL_SPACE", "FINISHED", "LOOKS", "MAX_CONSECUTIVE_FAILURES",
    "MAX_SEEDS", "META_ATTR", "PARAMS", "POLL_SECONDS", "PRUNERS", "Param", "SAMPLERS", "TRAIN_KEYS",
    "TUNE_SETTINGS", "TrialFailed", "TuneSpec", "applicable_params", "apply_overrides", "best_trial", "candidates",
    "config_for", "confirm_winner", "counts", "default_patience", "default_space", "default_trial", "describe_space",
    "describe_params", "describe_trial", "enqueue_default", "export_grid_study", "grid_toml", "load_dataset_for",
    "make_pruner", "make_sampler", "open_study", "prune_checkpoints", "read_start", "read_study_file", "resolve_spec",
    "run_trial", "run_worker", "sentences", "static_meta", "take_look", "trials_frame", "tune", "validate",
    "warmup_epochs", "write_study_json", "write_trials_csv",
]

"""Tuner, its Optuna study: created or resumed only for the model, space and fixed settings it
was made for (bound in the study attr `results.TUNE_ATTR`). Its counts and best trial are the
read side's (`ablate.results.trials`)."""
from __future__ import annotations

import contextlib
import warnings

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ablate import store, workers
from ablate.config import stable_hash
from ablate.errors import AblateError
from ablate.results.trials import TUNE_ATTR
from ablate.tune.space import default_trial
from ablate.tune.spec import TuneSpec, make_pruner

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --n-trials
DEFAULT_ATTR = "default"  # user attr (True) of the trial that runs the default configuration


def open_study(spec: TuneSpec, *, sampler: optuna.samplers.BaseSampler | None = None, create: bool = True,
               storage: BaseStorage | None = None) -> optuna.Study:
    """Create or load the study (in `storage` when the caller keeps one: a Study does not
    expose its storage); refuse one made for another model, space or settings."""
    storage = store.open_storage(spec.storage) if storage is None else storage
    pruner = make_pruner(spec.pruner, epochs=spec.base.epochs)
    if create:
        study = optuna.create_study(storage=storage, study_name=spec.study_name, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    else:
        study = optuna.load_study(storage=storage, study_name=spec.study_name, sampler=sampler, pruner=pruner)
    identity = spec.identity()
    bound = study.user_attrs.get(TUNE_ATTR)
    if bound is None:
        if study.trials:
            raise AblateError(f"study {spec.study_name!r} in {store.mask_url(spec.storage)} was not made by "
                              f"`ablate tune`; pass a new --study-name")
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise AblateError(f"study {spec.study_name!r} minimizes; pass a new --study-name")
        study.set_user_attr(TUNE_ATTR, {"kind": "tune", "hash": stable_hash(identity), **identity})
    elif bound.get("hash") != stable_hash(identity):
        raise AblateError(_mismatch(spec, bound, identity))
    if study.metric_names != ["val mIoU"]:  # the dashboard's name for the objective
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val mIoU"])
    return study


def study_lock(spec: TuneSpec, storage: BaseStorage) -> contextlib.AbstractContextManager:
    """The lock of this tune in its storage, across processes (and machines, for a server)."""
    return store.study_lock(spec.storage, storage, f"tune:{spec.study_name}")


def enqueue_default(spec: TuneSpec, study: optuna.Study, storage: BaseStorage) -> tuple[dict, list[str]] | None:
    """Queue the default configuration (`space.default_trial`) as the next trial, once per
    study: under the tune's lock, and only while the study has no trial yet, or only default
    trials that were interrupted or lost their worker (a rerun queues it again). Returns its
    params and the notes on values clipped into the space, or None when nothing was queued."""
    with study_lock(spec, storage):
        trials = study.get_trials(deepcopy=False)
        defaults = [t for t in trials if t.user_attrs.get(DEFAULT_ATTR)]
        lost = [t for t in defaults
                if t.state == TrialState.FAIL and not workers.is_charged(t.user_attrs.get("failure_reason"))]
        if trials and (not defaults or len(lost) < len(defaults)):
            return None
        params, notes = default_trial(spec.space, spec.base, spec.start)
        study.enqueue_trial(params, user_attrs={DEFAULT_ATTR: True})
        return params, notes


def _mismatch(spec: TuneSpec, bound: dict, identity: dict) -> str:
    new_name = f"{spec.study_name}-2"
    if bound.get("kind") != "tune":
        return f"study {spec.study_name!r} is a {bound.get('kind')!r} study, not a tune; pass a new --study-name (e.g. {new_name})"
    if bound.get("model") != identity["model"]:
        what = f"model {bound.get('model')!r}, not {identity['model']!r}"
    elif bound.get("space") != identity["space"]:
        keys = sorted(set(bound.get("space", {})) ^ set(identity["space"])
                      | {k for k in identity["space"] if bound.get("space", {}).get(k) != identity["space"][k]})
        what = f"a different search space ({', '.join(keys)})"
    else:
        old = bound.get("fixed", {})
        new = identity["fixed"]
        changes = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        what = f"different fixed settings ({', '.join(changes)})"
    return (f"study {spec.study_name!r} in {store.mask_url(spec.storage)} was made for {what}; "
            f"rerun with its original settings, or pass a new --study-name (e.g. {new_name})")


def storage_trial_id(storage: BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study`, through the storage's public calls
    (Optuna's Trial and FrozenTrial keep theirs private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)

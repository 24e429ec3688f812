"""Tuner: an Optuna search over one model's hyperparameters. It only builds `TrainConfig`s
and hands them to the engine (`fit_safely`), reporting val mIoU per epoch to a pruner.

Search spaces are declared once, here (`PARAMS`, `DEFAULT_SPACE`); a study file's `[tune]`
table narrows, widens or fixes them (`apply_overrides`). A study remembers its model,
space and fixed settings in its user attributes and refuses to continue with others.
"""
from __future__ import annotations

import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ablate import _io, store, workers
from ablate.config import TOGGLES, TrainConfig, parse_image_size, stable_hash
from ablate.errors import AblateError
from ablate.studyfile import read_toml

DEFAULT_N_TRIALS = 12  # with DEFAULT_EPOCHS and Hyperband: about 10 min on a quiet 2-core CPU (estimate)
DEFAULT_EPOCHS = 4  # max epochs per trial = Hyperband's max_resource
DEFAULT_IMAGE_SIZE = 64
PRUNERS = ("hyperband", "asha", "median", "none")
SAMPLERS = ("tpe", "random")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --n-trials
MAX_CONSECUTIVE_FAILURES = 5  # a worker gives up when this many trials in a row fail
POLL_SECONDS = 5.0  # how often a worker re-checks while other workers' trials fill the budget


# --------------------------------------------------------------------------- search spaces
def _anything(v: Any) -> bool:
    return True


@dataclass(frozen=True)
class Param:
    """One searchable hyperparameter: a log-uniform float range or a set of choices."""

    low: float | None = None  # log-uniform range [low, high] when choices is empty
    high: float | None = None
    choices: tuple = ()
    rule: str = ""  # what a valid value is, for error messages
    # module-level functions only: a spec is pickled into worker processes
    valid: Callable[[Any], bool] = field(default=_anything, compare=False, repr=False)

    @property
    def is_range(self) -> bool:
        return not self.choices

    def contains(self, value: Any) -> bool:
        if self.is_range:
            return isinstance(value, (int, float)) and self.low <= value <= self.high
        return value in self.choices and type(value) is type(self.choices[self.choices.index(value)])

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.is_range:
            return trial.suggest_float(name, self.low, self.high, log=True)
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> dict:
        if self.is_range:
            return {"type": "log-uniform", "low": self.low, "high": self.high}
        return {"type": "choice", "choices": list(self.choices)}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _odd_kernel(v: Any) -> bool:
    return _is_int(v) and v >= 1 and v % 2 == 1


def _positive_float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _non_negative(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _choice(*values: Any, rule: str, valid: Callable[[Any], bool]) -> Param:
    return Param(choices=tuple(values), rule=rule, valid=valid)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _bool_choice() -> Param:
    return _choice(False, True, rule="true or false", valid=_is_bool)


def _log_range(low: float, high: float) -> Param:
    return Param(low=low, high=high, rule="a number > 0", valid=_positive_float)


_KERNEL = dict(rule="an odd integer >= 1", valid=_odd_kernel)

# Every parameter the tuner knows, with its default range, declared once. Names are
# TrainConfig fields or model arguments (`model_params(model)`); a model's arguments only
# apply to that model.
PARAMS: dict[str, Param] = {
    "lr": _log_range(1e-4, 1e-2),
    "weight_decay": _log_range(1e-6, 1e-2),
    "batch_size": _choice(4, 8, 16, 32, rule="a positive integer", valid=_positive_int),
    # custom: one kernel size per layer group — the first conv; the other five encoder convs;
    # the six decoder deconvs.
    "first_kernel": _choice(3, 5, 7, 9, 11, **_KERNEL),
    "encoder_kernel": _choice(3, 5, 7, **_KERNEL),
    "decoder_kernel": _choice(3, 5, 7, **_KERNEL),
    "base_channels": _choice(8, 16, 32, rule="a positive integer", valid=_positive_int),  # unet width
    "freeze_encoder": _bool_choice(),  # resnet18
    **{toggle: _bool_choice() for toggle in TOGGLES},  # searched with --tune-toggles
}

# What `ablate tune --model M` searches unless the study file says otherwise.
DEFAULT_SPACE: dict[str, tuple[str, ...]] = {
    "custom": ("lr", "batch_size", "first_kernel", "encoder_kernel", "decoder_kernel"),
    "baseline": ("lr", "batch_size", "weight_decay"),
    "resnet18": ("lr", "batch_size", "weight_decay", "freeze_encoder"),
    "unet": ("lr", "batch_size", "weight_decay", "base_channels"),
}

EXTERNAL_SPACE = ("lr", "batch_size", "weight_decay")  # `--model pkg.mod:build` or smp:ARCH/ENCODER
_CONFIG_FIELDS = ("lr", "weight_decay", "batch_size", *TOGGLES)


def applicable_params(model: str) -> list[str]:
    """The parameters a study of `model` may search: config fields plus its own arguments."""
    from ablate.models import model_params

    own = model_params(model)  # raises for an unknown model
    return [name for name in PARAMS if name in _CONFIG_FIELDS or name in own]


def default_space(model: str, *, tune_toggles: bool = False) -> dict[str, Param]:
    from ablate.models import external_names

    applicable_params(model)  # unknown model -> AblateError
    if model not in DEFAULT_SPACE and not external_names([model]):
        raise AblateError(f"model {model!r} has no declared search space; add it to ablate.tune.DEFAULT_SPACE")
    # a model from elsewhere: the training settings every model shares (its own arguments via [tune])
    names = list(DEFAULT_SPACE.get(model, EXTERNAL_SPACE)) + (list(TOGGLES) if tune_toggles else [])
    return {name: PARAMS[name] for name in names}


def apply_overrides(model: str, space: dict[str, Param], overrides: dict[str, Any],
                    *, where: str = "[tune]") -> tuple[dict[str, Param], dict[str, Any]]:
    """Narrow, widen or fix parameters: `lr = [1e-4, 3e-3]` (a range), `batch_size = [8, 16]`
    (the choices), `encoder_kernel = 3` (fixed, no longer searched). A parameter the
    model's default space lacks (e.g. weight_decay for custom) is added.
    Returns the new space and the fixed values."""
    known = applicable_params(model)
    space, fixed = dict(space), {}
    for name, value in overrides.items():
        if name not in known:
            raise AblateError(f"{where}: unknown parameter {name!r} for model {model!r}; known: {', '.join(known)}")
        param = PARAMS[name]
        if isinstance(value, list):
            space[name] = _narrowed(name, param, value, where)
        elif isinstance(value, dict):
            raise AblateError(f"{where}: {name} must be a list (a range or choices) or one value, not a table")
        else:
            # A fixed value may sit where a log range cannot reach (weight_decay = 0);
            # TrainConfig has the last word on it.
            ok = _non_negative(value) if param.is_range else param.valid(value)
            if not ok:
                raise AblateError(f"{where}: {name} = {value!r} is not {'a number >= 0' if param.is_range else param.rule}")
            space.pop(name, None)
            fixed[name] = float(value) if param.is_range else value
    return space, fixed


def _narrowed(name: str, param: Param, values: list, where: str) -> Param:
    if not values:
        raise AblateError(f"{where}: {name} = [] is empty; give [low, high] or a list of choices")
    for v in values:
        if not param.valid(v):
            raise AblateError(f"{where}: {name} = {values!r}: {v!r} is not {param.rule}")
    if param.is_range:
        if len(values) != 2:
            raise AblateError(f"{where}: {name} = {values!r} must be [low, high] (a log-uniform range)")
        low, high = float(values[0]), float(values[1])
        if low > high:
            raise AblateError(f"{where}: {name} = {values!r} is inverted (low > high); write [{values[1]}, {values[0]}]")
        if low == high:
            raise AblateError(f"{where}: {name} = {values!r} is an empty range; write {name} = {values[0]} to fix it")
        return Param(low=low, high=high, rule=param.rule, valid=param.valid)
    return Param(choices=tuple(dict.fromkeys(values)), rule=param.rule, valid=param.valid)


def describe_space(space: dict[str, Param]) -> dict[str, dict]:
    return {name: p.describe() for name, p in space.items()}


def config_for(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The run configuration of one trial: `base` with the sampled values put in place."""
    config_values = {k: v for k, v in params.items() if k in _CONFIG_FIELDS}
    model_args = {**base.model_args, **{k: v for k, v in params.items() if k not in _CONFIG_FIELDS}}
    return base.replace(**config_values, model_args=model_args)


# --------------------------------------------------------------------------- study files
TUNE_SETTINGS = ("model", "study_name", "n_trials", "timeout", "epochs", "patience", "pruner", "sampler",
                 "seed", "tune_toggles")
TRAIN_KEYS = ("data", "image_size", "num_classes", "ignore_index", "val_fraction", "epochs", "patience")


def read_study_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a study TOML for the tuner: (settings, space overrides).

    Settings come from the grid's `[train]` table (data, image_size, num_classes,
    ignore_index, val_fraction, epochs, patience; its other keys and the grid's top-level
    keys are ignored) and then from `[tune]` (model, study_name, n_trials, timeout, epochs,
    patience, pruner, sampler, seed, tune_toggles), which wins. Every other key of `[tune]`
    is a search-space parameter (see `apply_overrides`)."""
    path = Path(path)
    doc = read_toml(path)
    tune, train = doc.get("tune"), doc.get("train", {})
    if not isinstance(tune, dict):
        raise AblateError(f"--study {path}: no [tune] table; add one (see studies/tune-custom.toml)")
    if not isinstance(train, dict):
        raise AblateError(f"{path}: train must be a table")
    settings = {k: train[k] for k in TRAIN_KEYS if k in train}
    settings.update({k: v for k, v in tune.items() if k in TUNE_SETTINGS})
    overrides = {k: v for k, v in tune.items() if k not in TUNE_SETTINGS}
    return settings, overrides


# --------------------------------------------------------------------------- pruner, sampler
def make_pruner(name: str, *, epochs: int) -> optuna.pruners.BasePruner:
    """Pruning on per-epoch val mIoU; Hyperband's resource is the epoch."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "asha":  # successive halving alone: Hyperband's most aggressive bracket
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise AblateError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def make_sampler(name: str, *, seed: int, n_trials: int, workers: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # A quarter of the budget (5..10 trials) explores at random before TPE models it;
        # constant_liar keeps parallel workers from all sampling the same promising point.
        startup = max(5, min(10, n_trials // 4))
        return optuna.samplers.TPESampler(multivariate=True, seed=seed, n_startup_trials=startup,
                                          constant_liar=workers > 1)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise AblateError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


# --------------------------------------------------------------------------- the tune spec
@dataclass(frozen=True)
class TuneSpec:
    """Everything one tune needs, resolved and validated; picklable for worker processes."""

    study_name: str
    storage: str  # URL or journal path (store.open_storage)
    results_dir: Path
    space: dict[str, Param]
    base: TrainConfig  # fixed settings; sampled params are put in per trial
    n_trials: int  # COMPLETE + PRUNED trials the study ends with
    timeout: float | None = None  # seconds after which a worker starts no new trial
    pruner: str = "hyperband"
    sampler: str = "tpe"
    workers: int = 1
    cache_dir: Path | None = None
    keep_checkpoints: str = "best"  # best: the best complete trial's best.pt stays in the store; all; none
    artifacts: str | None = None  # artifact store for each trial's files [default: <study folder>/artifacts]

    @property
    def folder(self) -> Path:
        return store.study_dir(self.results_dir, self.study_name)

    def identity(self) -> dict:
        """What a study is bound to: changing any of it needs a new study name."""
        return {"model": self.base.model, "space": describe_space(self.space), "fixed": self.base.identity()}


def validate(spec: TuneSpec) -> None:
    if isinstance(spec.n_trials, bool) or not isinstance(spec.n_trials, int) or spec.n_trials < 1:
        raise AblateError(f"--n-trials must be an integer >= 1, got {spec.n_trials!r}")
    if spec.workers < 1:
        raise AblateError(f"--workers must be >= 1, got {spec.workers}")
    if spec.timeout is not None and not spec.timeout > 0:
        raise AblateError(f"--timeout must be > 0 seconds, got {spec.timeout}")
    if spec.keep_checkpoints not in store.KEEP_CHECKPOINTS:
        raise AblateError(f"--keep-checkpoints must be one of {', '.join(store.KEEP_CHECKPOINTS)}, got {spec.keep_checkpoints!r}")
    make_pruner(spec.pruner, epochs=spec.base.epochs)
    make_sampler(spec.sampler, seed=0, n_trials=1, workers=1)
    if not spec.space:
        raise AblateError("the search space is empty: every parameter is fixed; search at least one")
    from ablate.models import model_params

    own = model_params(spec.base.model)
    for name in spec.space:
        if name not in _CONFIG_FIELDS and name not in own:
            raise AblateError(f"parameter {name!r} does not apply to model {spec.base.model!r}")


# --------------------------------------------------------------------------- resolving flags
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEFAULTS = {"model": "custom", "n_trials": DEFAULT_N_TRIALS, "epochs": DEFAULT_EPOCHS, "image_size": DEFAULT_IMAGE_SIZE,
             "pruner": "hyperband", "sampler": "tpe", "patience": 3, "seed": 0, "tune_toggles": False}
_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false"}


def resolve_spec(flags: dict[str, Any], *, given: set[str], study_file: Path | None, workers: int,
                 storage: str | None, results_dir: Path, keep_checkpoints: str = "best") -> TuneSpec:
    """The tune asked for: each setting from its flag when given on the command line (`given`),
    else from the study file, else the flag's default, else ours; validated."""
    from ablate.models import check_model_name

    settings, overrides = read_study_file(study_file) if study_file else ({}, {})

    def value(key: str) -> Any:
        if key in flags and key in given:
            return flags[key]
        if key in settings:
            return settings[key]
        return flags[key] if flags.get(key) is not None else _DEFAULTS.get(key)

    model = _typed(value("model"), str, "model")
    check_model_name(model)  # registered, an importable MODULE:CALLABLE or smp:ARCH/ENCODER
    n_trials = _typed(value("n_trials"), int, "n-trials")
    if n_trials < 1:
        raise AblateError(f"--n-trials must be >= 1, got {n_trials}")
    default_name = "tune-" + re.sub(r"[^A-Za-z0-9._-]+", "-", model)  # pkg.mod:build, smp:Unet/resnet18
    study_name = _typed(value("study_name") or default_name, str, "study-name")
    if not _NAME_RE.match(study_name):
        raise AblateError(f"--study-name must be letters, digits, '.', '_' or '-' (it names a folder), got {study_name!r}")
    timeout = value("timeout")
    if timeout is not None:
        timeout = float(_typed(timeout, (int, float), "timeout"))
    where = f"{study_file}: [tune]" if study_file else "[tune]"
    space, base = _space_and_base(model, flags, given, value, overrides, where)
    if workers < 1:
        raise AblateError(f"--workers must be >= 1, got {workers}")
    spec = TuneSpec(
        study_name=study_name, storage=storage or store.default_storage(results_dir, study_name, workers),
        results_dir=Path(results_dir), space=space, base=base, n_trials=n_trials, timeout=timeout,
        pruner=value("pruner"), sampler=value("sampler"), workers=workers, cache_dir=Path(results_dir) / ".cache",
        keep_checkpoints=keep_checkpoints,
    )
    validate(spec)
    return spec


def _space_and_base(model: str, flags: dict[str, Any], given: set[str], value: Callable[[str], Any],
                    overrides: dict[str, Any], where: str) -> tuple[dict[str, Param], TrainConfig]:
    """The search space after the study file's bounds, and the fixed configuration; a
    --model-arg or toggle flag given on the command line wins over the study file."""
    from ablate.models import parse_model_args

    model_args = parse_model_args(model, list(flags.get("model_arg") or ()))
    space = default_space(model, tune_toggles=_typed(value("tune_toggles"), bool, "tune-toggles"))
    space, fixed = apply_overrides(model, space, overrides, where=where)
    toggles = {t: flags[t] for t in TOGGLES if t not in space and (t in given or t not in fixed)}
    for key in (*model_args, *toggles):
        space.pop(key, None)
        fixed.pop(key, None)
    optional = {key: value(key) for key in ("num_classes", "val_fraction")}
    for key, v in optional.items():
        if v is not None:
            _typed(v, (int, float) if key == "val_fraction" else int, key.replace("_", "-"))
    base = TrainConfig(
        model=model, model_args=model_args, data=_typed(value("data"), str, "data"),
        image_size=parse_image_size(value("image_size")), **optional,
        ignore_index=_typed(value("ignore_index"), int, "ignore-index"), epochs=_typed(value("epochs"), int, "epochs"),
        patience=_typed(value("patience"), int, "patience"), seed=_typed(value("seed"), int, "seed"),
        precision=flags["precision"], device=flags["device"], compile=flags["compile"], **toggles,
    )
    return space, config_for(base, fixed)


def _typed(v: Any, types: type | tuple, option: str) -> Any:
    """Type-check a setting that may come from the study file (flags are typed by click)."""
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        raise AblateError(f"--{option} (or its study-file key): expected {_TYPE_WORDS.get(types, 'a number')}, got {v!r}")
    return v


# --------------------------------------------------------------------------- study
ATTR = "ablate"  # study user attribute holding TuneSpec.identity() and its hash


def open_study(spec: TuneSpec, *, sampler: optuna.samplers.BaseSampler | None = None,
               create: bool = True) -> optuna.Study:
    """Create or load the study; refuse one made for another model, space or settings."""
    storage = store.open_storage(spec.storage)
    pruner = make_pruner(spec.pruner, epochs=spec.base.epochs)
    if create:
        study = optuna.create_study(storage=storage, study_name=spec.study_name, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    else:
        study = optuna.load_study(storage=storage, study_name=spec.study_name, sampler=sampler, pruner=pruner)
    identity = spec.identity()
    bound = study.user_attrs.get(ATTR)
    if bound is None:
        if study.trials:
            raise AblateError(f"study {spec.study_name!r} in {store.mask_url(spec.storage)} was not made by "
                              f"`ablate tune`; pass a new --study-name")
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise AblateError(f"study {spec.study_name!r} minimizes; pass a new --study-name")
        study.set_user_attr(ATTR, {"kind": "tune", "hash": stable_hash(identity), **identity})
    elif bound.get("hash") != stable_hash(identity):
        raise AblateError(_mismatch(spec, bound, identity))
    if study.metric_names != ["val mIoU"]:  # the dashboard's name for the objective
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val mIoU"])
    return study


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


def counts(study: optuna.Study) -> dict[str, int]:
    out = {state.name: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    out["finished"] = out["COMPLETE"] + out["PRUNED"]
    return out


# --------------------------------------------------------------------------- objective
class TrialFailed(Exception):
    """The trial failed in an expected way (non-finite loss, a crash in the engine): FAIL
    it with this reason and go on with the study."""


class _Surplus(TrialFailed):
    """Another worker reserved the last trial of the budget first."""


def _objective(spec: TuneSpec, dataset, study: optuna.Study, files: store.Artifacts) -> Callable[[optuna.Trial], float]:
    from ablate import record as records
    from ablate.engine import Pruned, fit_safely
    from ablate.predict import gallery_predictions
    from ablate.record import summary

    def objective(trial: optuna.Trial) -> float:
        ahead = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
                 if t.number < trial.number]
        if len(ahead) >= spec.n_trials:
            trial.set_user_attr("failure_reason", "surplus: other workers had already started the last trials")
            raise _Surplus("surplus")
        params = {name: param.suggest(trial, name) for name, param in spec.space.items()}
        config = config_for(spec.base, params)
        out_dir = spec.folder / "runs" / str(trial.number)
        trial.set_user_attr("run_dir", str(out_dir))

        def on_epoch(epoch: int, metrics: dict) -> None:
            if metrics["miou"] == metrics["miou"]:  # NaN (no class present) is not reported
                trial.report(metrics["miou"], epoch)
            # After the last epoch there is nothing left to save: the trial completes.
            if epoch < config.epochs and trial.should_prune():
                raise Pruned(f"pruned at epoch {epoch}")

        try:
            record = fit_safely(config, dataset, out_dir=out_dir, on_epoch=on_epoch, quiet=True,
                                progress=False, cache_dir=spec.cache_dir,
                                on_model=lambda model: gallery_predictions(model, dataset, out_dir),
                                checkpoint=lambda record: _keeps_checkpoint(spec.keep_checkpoints, study, record,
                                                                            trial.number))
        except AblateError as exc:  # e.g. a batch larger than the split: this trial's problem only
            trial.set_user_attr("failure_reason", str(exc))
            raise TrialFailed(str(exc)) from None
        row = summary(record)
        pruned_at = len(record["curves"]) if record["status"] == "pruned" else None
        attrs = {
            "status": row["status"], "failure_reason": row["failure_reason"], "val_miou": row["val_miou"],
            "test_miou": row["test_miou"], "val_pixel_acc": row["val_pixel_acc"], "epochs_run": row["stopped_epoch"],
            "best_epoch": row["best_epoch"], "pruned_at_epoch": pruned_at, "seconds": round(row["seconds"], 2),
            "images_per_second": round(row["images_per_second"], 1), "run_id": row["run_id"],
        }
        for key, value in {**attrs, **records.to_attrs(record)}.items():  # the storage is the record
            trial.set_user_attr(key, _attr(value))
        value = records.completed_miou(record)
        ok = value is not None
        try:
            store.attach_run(study._storage, trial._trial_id, record, out_dir, files, completed=ok,
                             with_checkpoint=ok and (out_dir / records.CHECKPOINT_FILE).is_file())
        except AblateError as exc:  # the store is the record: a trial whose files are not there failed
            trial.set_user_attr("failure_reason", str(exc))
            raise TrialFailed(str(exc)) from None
        finally:  # the artifact store holds the one copy (a rerun never finds a stale one here)
            (out_dir / records.CHECKPOINT_FILE).unlink(missing_ok=True)
        reason = row["failure_reason"]
        if row["status"] == "pruned":
            raise optuna.TrialPruned(reason)
        if row["status"] == "failed":
            if reason and reason.startswith("oom"):
                raise optuna.TrialPruned(reason)  # too big a batch for this device: not a crash
            raise TrialFailed(reason)
        if not ok:
            trial.set_user_attr("failure_reason", "val mIoU is not a number")
            raise TrialFailed("val mIoU is not a number")
        return value

    return objective


def _keeps_checkpoint(keep: str, study: optuna.Study, record: dict, number: int) -> bool:
    """Whether a finished trial (number `number`) writes (and uploads) its best.pt: a completed
    one always (all), never (none), or when it beats every complete trial so far, a tie going
    to the lower trial number, as `best_trial` decides (best; `prune_checkpoints` then
    removes the ones it beat)."""
    from ablate.record import completed_miou

    value = completed_miou(record)
    if keep == "none" or value is None:
        return False
    best = best_trial(study)
    return keep == "all" or best is None or value > best.value or (value == best.value and number < best.number)


def _attr(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- workers
def run_worker(spec: TuneSpec, *, index: int = 0, dataset=None, echo: Callable[[str], None] = print) -> None:
    """Run trials until the study holds `n_trials` COMPLETE+PRUNED trials (counting every
    worker's), or `timeout` passes. RUNNING trials whose worker is lost (`workers.Reclaimer`:
    its process gone on this node, or its heartbeat silent for the grace it recorded) are
    failed on the way, for every storage kind."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours to print
    if dataset is None:
        dataset = load_dataset_for(spec)
    study = open_study(spec, create=False)
    # Derive the sampler seed from the history too: a resumed run must not replay the
    # random start-up trials of the first run, nor parallel workers replay each other's.
    seed = int(stable_hash([spec.base.seed, index, len(study.trials)], 8), 16)
    study.sampler = make_sampler(spec.sampler, seed=seed, n_trials=spec.n_trials, workers=spec.workers)
    files = store.artifacts(spec.artifacts or store.default_artifacts(spec.results_dir, spec.study_name))
    objective = _objective(spec, dataset, study, files)
    reclaimer = workers.Reclaimer()
    prefix = f"[worker {index}] " if spec.workers > 1 else ""
    start, failures, waited = time.monotonic(), 0, False

    def after_trial(trial: FrozenTrial) -> None:
        nonlocal failures
        reason = trial.user_attrs.get("failure_reason") or ""
        if reason.startswith("surplus"):
            return
        if not workers.is_crash(reason):  # reclaimed from us: not this configuration's failure
            failures = failures + 1 if trial.state == TrialState.FAIL else 0
        echo(prefix + describe_trial(trial))
        write_trials_csv(study, spec.folder / "trials.csv")
        if spec.keep_checkpoints == "best":
            prune_checkpoints(study, files)

    while True:
        reclaimer.reclaim(study._storage, study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        c = counts(study)
        if c["finished"] >= spec.n_trials:
            break
        if spec.timeout is not None and time.monotonic() - start > spec.timeout:
            echo(prefix + f"--timeout {spec.timeout:g}s reached; rerun to continue")
            break
        if failures >= MAX_CONSECUTIVE_FAILURES:
            last = study.trials[-1].user_attrs.get("failure_reason") if study.trials else None
            raise AblateError(f"{failures} trials in a row failed (last: {last}); fix the cause and rerun to resume")
        if c["finished"] + c["RUNNING"] >= spec.n_trials:
            if not waited:
                echo(prefix + f"waiting for {c['RUNNING']} running trial(s) of other workers to finish")
                waited = True
            time.sleep(POLL_SECONDS)
            continue
        after_trial(run_trial(study, objective))


def run_trial(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Ask for a trial, stamp it with this worker (`workers.take_ownership`), run `objective`
    under its heartbeat and tell the outcome. A trial another worker reclaimed meanwhile stays
    as the reclaimer left it (FAIL, worker lost) and this worker moves on."""
    trial = study.ask()
    storage, trial_id = study._storage, trial._trial_id
    workers.take_ownership(storage, trial_id)
    value, state = None, TrialState.FAIL
    try:
        with workers.Heartbeat(storage, trial_id):
            value, state = objective(trial), TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except (TrialFailed, UpdateFinishedTrialError):
        pass  # the reason is on the trial already (ours, or the reclaimer's)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug: FAIL the trial, then let it propagate
        workers.fail_trial(storage, trial_id, workers.INTERRUPTED if isinstance(exc, KeyboardInterrupt)
                           else f"{type(exc).__name__}: {exc}")
        raise
    return study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)


def load_dataset_for(spec: TuneSpec):
    from ablate.data import load_dataset

    b = spec.base
    return load_dataset(b.data, image_size=b.image_size, num_classes=b.num_classes, ignore_index=b.ignore_index,
                        val_fraction=b.val_fraction, cache_dir=spec.cache_dir)


def _worker(index: int, events, spec: TuneSpec) -> None:
    """A spawned tune worker (`workers.supervise`): its lines go to the parent to print."""
    try:
        run_worker(spec, index=index, echo=events.put)
    except AblateError as exc:
        print(f"error: [worker {index}] {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def tune(spec: TuneSpec, *, echo: Callable[[str], None] = print) -> optuna.Study:
    """Validate, create/resume the study, run `spec.workers` workers, write the tables.
    Ctrl-C or SIGTERM marks the running trial FAIL and raises KeyboardInterrupt: rerun to resume."""
    with workers.sigterm_interrupts():
        return _tune(spec, echo)


def _tune(spec: TuneSpec, echo: Callable[[str], None]) -> optuna.Study:
    validate(spec)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial instead
    dataset = load_dataset_for(spec)  # in the parent: bad data fails before any storage is made
    study = open_study(spec)
    before = counts(study)
    write_study_json(spec, study, dataset)
    if before["finished"] >= spec.n_trials:
        echo(f"study {spec.study_name!r} already has {before['finished']} finished trials "
             f"(--n-trials {spec.n_trials}); nothing to run")
    elif spec.workers == 1:
        echo(f"tuning {spec.base.model}: {before['finished']}/{spec.n_trials} trials finished; "
             f"space: {', '.join(spec.space)}")
        run_worker(spec, dataset=dataset, echo=echo)
    else:
        echo(f"tuning {spec.base.model} with {spec.workers} workers: {before['finished']}/{spec.n_trials} "
             f"trials finished; space: {', '.join(spec.space)}")
        _run_processes(spec, echo)
    study = open_study(spec, create=False)
    write_trials_csv(study, spec.folder / "trials.csv")
    write_study_json(spec, study, dataset)
    return study


def _run_processes(spec: TuneSpec, echo: Callable[[str], None]) -> None:
    codes = workers.supervise(_worker, (spec,), workers=spec.workers, device=spec.base.device, on_event=echo,
                              respawns=spec.n_trials)
    bad = [f"a worker exited with code {code}" for code in codes]
    if bad and counts(open_study(spec, create=False))["finished"] < spec.n_trials:
        raise AblateError("; ".join(bad) + "; rerun the same command to resume")
    if bad:  # the others finished its share
        echo("warning: " + "; ".join(bad))


# --------------------------------------------------------------------------- outputs
def describe_trial(t: optuna.trial.FrozenTrial) -> str:
    a = t.user_attrs
    params = "  ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    line = f"trial {t.number:>3} {t.state.name.lower():<8}"
    if a.get("val_miou") is not None:
        line += f" val mIoU {a['val_miou']:.4f}"
    if a.get("epochs_run") is not None:
        line += f"  epochs {a['epochs_run']}"
    if a.get("seconds") is not None:
        line += f"  {a['seconds']:.0f}s"
    line += f"  {params}"
    if t.state != TrialState.COMPLETE and a.get("failure_reason"):
        line += f"  ({a['failure_reason']})"
    return line


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# trials.csv column -> trial user attribute
TRIAL_COLUMNS = {"val_miou": "val_miou", "test_miou": "test_miou", "epochs": "epochs_run",
                 "pruned_at_epoch": "pruned_at_epoch", "seconds": "seconds", "images_per_second": "images_per_second",
                 "failure_reason": "failure_reason", "run_dir": "run_dir"}


def trials_frame(study: optuna.Study):
    """One row per trial: number, state, params_<name>..., val/test mIoU, epochs run, seconds, ..."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    param_names = list(dict.fromkeys(k for t in trials for k in t.params))
    rows = []
    for t in trials:
        row = {"number": t.number, "state": t.state.name}
        row.update({f"params_{name}": t.params.get(name) for name in param_names})
        row.update({col: t.user_attrs.get(attr) for col, attr in TRIAL_COLUMNS.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["number", "state", *(f"params_{n}" for n in param_names), *TRIAL_COLUMNS])
    for col in ("epochs", "pruned_at_epoch"):
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")  # blanks stay blank, not 1.0
    return frame


def write_trials_csv(study: optuna.Study, path: Path) -> Path:
    return _io.write_csv(path, trials_frame(study))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The COMPLETE trial with the highest val mIoU, a tie going to the lower trial number
    (Optuna's own choice among ties depends on the storage); None before any."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def prune_checkpoints(study: optuna.Study, artifacts: store.Artifacts) -> list[str]:
    """--keep-checkpoints best: remove from `artifacts` the best.pt of every complete trial but
    the best one (a custom net's can be 250 MB). Each removal is marked in a study attr of
    its own (`store.prune_trial_checkpoints`), so workers prune concurrently without a lock.
    Returns the ids removed now."""
    best = best_trial(study)
    if best is None:
        return []
    return store.prune_trial_checkpoints(study._storage, study._study_id, study.get_trials(deepcopy=False),
                                         artifacts, keep={best.number})


META_ATTR = "meta"  # study user attr: what study.json says of the tune, less its trial counts and best


def static_meta(spec: TuneSpec, dataset) -> dict:
    """What a tune is, as study.json and the storage keep it: model, space, fixed settings,
    dataset summary, budget, pruner, sampler (`stored_meta` adds what the trials say)."""
    return {"kind": "tune", "study_name": spec.study_name, "model": spec.base.model, "direction": "maximize",
            "objective": "val_miou", "space": describe_space(spec.space), "fixed_config": spec.base.to_dict(),
            "dataset": dataset.summary(), "n_trials": spec.n_trials, "pruner": spec.pruner, "sampler": spec.sampler,
            "keep_checkpoints": spec.keep_checkpoints}


def stored_meta(study: optuna.Study, storage_url: str) -> dict:
    """study.json rebuilt from the storage alone: the study attr `meta`, the storage, the
    trial counts and the best trial."""
    best = best_trial(study)
    c = counts(study)
    return {
        **(study.user_attrs.get(META_ATTR) or {"kind": "tune", "study_name": study.study_name}),
        "storage": store.mask_url(storage_url),
        "trial_counts": {"complete": c["COMPLETE"], "pruned": c["PRUNED"], "fail": c["FAIL"], "running": c["RUNNING"]},
        "trials_csv": "trials.csv",
        "best": None if best is None else {
            "number": best.number, "value": best.value, "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"), "test_miou": best.user_attrs.get("test_miou"),
        },
    }


def write_study_json(spec: TuneSpec, study: optuna.Study, dataset) -> Path:
    """results/<study>/study.json: what the report needs to find and describe this tune (the
    same document `stored_meta` rebuilds from the storage on any machine)."""
    study.set_user_attr(META_ATTR, static_meta(spec, dataset))
    return _io.write_json(spec.folder / "study.json", stored_meta(study, spec.storage))


def export_grid_study(spec: TuneSpec, study: optuna.Study, path: str | Path, *, seeds: int = 3) -> Path:
    """A grid study file (`ablate grid --study PATH`) that reruns the best trial's
    configuration with `seeds` seeds, so it gets confidence intervals like any grid cell."""
    best = best_trial(study)
    if best is None:
        raise AblateError(f"--export: study {spec.study_name!r} has no completed trial yet")
    config = config_for(spec.base, best.params)
    about = f"best trial {best.number} of tune study {spec.study_name!r} (val mIoU {best.value:.4f})"
    return _io.write_text(path, grid_toml(config, name=f"{spec.study_name}-best", seeds=seeds, about=about))


def grid_toml(config: TrainConfig, *, name: str, seeds: int, about: str) -> str:
    """One configuration in the grid's study format (ablate/grid/definition.py, studies/quick.toml)."""
    on = [t for t in TOGGLES if getattr(config, t)]
    lines = [f"# Written by `ablate tune --export`: {about}.",
             "# Run it with: ablate grid --study THIS_FILE",
             f"name = {_toml(name)}",
             f"description = {_toml('Reruns ' + about + f' with {seeds} seeds.')}",
             f"models = [{_toml(config.model)}]"]
    if on:
        # The grid keeps toggles it does not vary off, so a toggle tuned on is varied on/off:
        # the tuned setting is the cell with all of them on.
        lines.append(f"# tuned on: {', '.join(on)} (varied on/off here; the tuned setting is all on)")
    lines += [f"toggles = {_toml(on)}", f"seeds = {seeds}", "", "[train]",
              f"data = {_toml(config.data)}", f"image_size = {_toml(list(config.image_size))}"]
    for key in ("num_classes", "val_fraction"):
        if getattr(config, key) is not None:
            lines.append(f"{key} = {_toml(getattr(config, key))}")
    if config.ignore_index != 255:
        lines.append(f"ignore_index = {config.ignore_index}")
    lines += [f"{key} = {_toml(getattr(config, key))}" for key in ("epochs", "batch_size", "lr", "weight_decay", "patience")]
    if config.model_args:
        lines += ["", f"[model_args.{config.model}]"]
        lines += [f"{k} = {_toml(v)}" for k, v in sorted(config.model_args.items())]
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v) if isinstance(v, float) else str(v)

"""Tuner, what one tune is: `TuneSpec` (model, space, fixed settings, budget, sampler, pruner),
resolved from the flags and a study file's `[train]` and `[tune]` tables, and validated."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from ablate import stats, store
from ablate.config import TOGGLES, TrainConfig, parse_image_size
from ablate.errors import AblateError
from ablate.studyfile import read_toml
from ablate.tune.space import CONFIG_FIELDS, Param, apply_overrides, config_for, default_space, describe_space

DEFAULT_N_TRIALS = 12  # with DEFAULT_EPOCHS and Hyperband: about 10 min on a quiet 2-core CPU (estimate)
DEFAULT_EPOCHS = 4  # max epochs per trial = Hyperband's max_resource
DEFAULT_IMAGE_SIZE = 64
DEFAULT_MIN_EFFECT = stats.DEFAULT_MIN_EFFECT  # δ in val mIoU, the grid's default (docs/statistics.md)
PRUNERS = ("hyperband", "asha", "median", "none")
SAMPLERS = ("tpe", "random")


# --------------------------------------------------------------------------- pruner, sampler
def warmup_epochs(epochs: int) -> int:
    """Epochs every trial trains before it can be judged: a third of its budget, at least 3 (at
    most the budget). A segmentation net's val mIoU climbs for most of its budget and curves
    cross: in issue 24's search (30 epochs) trials pruned or stopped at epochs 3-9 were still
    climbing, and the search ended below the untuned default. With Hyperband's reduction
    factor 3 the rungs sit at w and 3w, so a poor trial still stops after a third of its epochs."""
    return min(epochs, max(3, -(-epochs // 3)))


def default_patience(epochs: int) -> int:
    """The tuner's early stopping unless --patience says otherwise: as long as the warm-up
    (`warmup_epochs`), off (0) when that could save no epoch (a budget of 4 or fewer)."""
    patience = warmup_epochs(epochs)
    return patience if patience < epochs - 1 else 0


def make_pruner(name: str, *, epochs: int) -> optuna.pruners.BasePruner:
    """Pruning on per-epoch val mIoU, never before `warmup_epochs`; Hyperband's resource is the epoch."""
    warmup = warmup_epochs(epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup, max_resource=epochs, reduction_factor=3)
    if name == "asha":  # successive halving alone: Hyperband's most aggressive bracket
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=warmup)
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


START_KEYS = ("lr", "batch_size", "weight_decay")  # [train] keys that give the default trial its values


def read_start(path: str | Path, model: str, space: dict[str, Param]) -> dict[str, Any]:
    """A study file's values of the searched parameters for the default trial (trial 0): [train]
    lr, batch_size, weight_decay and [model_args.MODEL], as a grid study writes them; each
    checked against its parameter's rule (it may lie outside the space: `default_trial` clips)."""
    path = Path(path)
    doc = read_toml(path)
    args = (doc.get("model_args") or {}).get(model, {})
    if not isinstance(args, dict):
        raise AblateError(f"{path}: model_args.{model} must be a table")
    found = {(f"[train] {k}", k): v for k, v in doc.get("train", {}).items() if k in START_KEYS}
    found.update({(f"[model_args.{model}] {k}", k): v for k, v in args.items()})
    start = {}
    for (where, name), value in found.items():
        if name not in space:
            continue
        if not space[name].valid(value):
            raise AblateError(f"{path}: {where} = {value!r} is not {space[name].rule}")
        start[name] = value
    return start



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
    start: dict[str, Any] = field(default_factory=dict)  # the study file's values for trial 0 (`read_start`)
    confirm: int = 0  # --confirm K: rerun the best K configurations over seeds (0: no confirmation)
    min_effect: float = DEFAULT_MIN_EFFECT  # δ of the confirmation's equivalence verdict, in val mIoU

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
    if isinstance(spec.confirm, bool) or not isinstance(spec.confirm, int) or spec.confirm == 1 or spec.confirm < 0:
        raise AblateError(f"--confirm must be an integer >= 2 (the best K configurations to compare), "
                          f"got {spec.confirm!r}")
    if not (isinstance(spec.min_effect, (int, float)) and 0 < spec.min_effect < 1):
        raise AblateError(f"--min-effect must be a number of val mIoU in (0, 1), got {spec.min_effect!r}")
    if spec.keep_checkpoints not in store.KEEP_CHECKPOINTS:
        raise AblateError(f"--keep-checkpoints must be one of {', '.join(store.KEEP_CHECKPOINTS)}, got {spec.keep_checkpoints!r}")
    make_pruner(spec.pruner, epochs=spec.base.epochs)
    make_sampler(spec.sampler, seed=0, n_trials=1, workers=1)
    if not spec.space:
        raise AblateError("the search space is empty: every parameter is fixed; search at least one")
    from ablate.models import model_params  # torch: kept out of `ablate tune --help`

    own = model_params(spec.base.model)
    for name in spec.space:
        if name not in CONFIG_FIELDS and name not in own:
            raise AblateError(f"parameter {name!r} does not apply to model {spec.base.model!r}")


# --------------------------------------------------------------------------- resolving flags
_DEFAULTS = {"model": "custom", "n_trials": DEFAULT_N_TRIALS, "epochs": DEFAULT_EPOCHS, "image_size": DEFAULT_IMAGE_SIZE,
             "pruner": "hyperband", "sampler": "tpe", "seed": 0, "tune_toggles": False}  # patience: default_patience
_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false"}


def resolve_spec(flags: dict[str, Any], *, given: set[str], study_file: Path | None, workers: int,
                 storage: str | None, results_dir: Path, keep_checkpoints: str = "best", confirm: int = 0,
                 min_effect: float = DEFAULT_MIN_EFFECT) -> TuneSpec:
    """The tune asked for: each setting from its flag when given on the command line (`given`),
    else from the study file, else the flag's default, else ours; validated."""
    from ablate.models import check_model_name  # torch: kept out of `ablate tune --help`

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
    study_name = store.check_study_name(_typed(value("study_name") or default_name, str, "study-name"))
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
        keep_checkpoints=keep_checkpoints, start=read_start(study_file, model, space) if study_file else {},
        confirm=confirm, min_effect=min_effect,
    )
    validate(spec)
    return spec


def _space_and_base(model: str, flags: dict[str, Any], given: set[str], value: Callable[[str], Any],
                    overrides: dict[str, Any], where: str) -> tuple[dict[str, Param], TrainConfig]:
    """The search space after the study file's bounds, and the fixed configuration; a
    --model-arg or toggle flag given on the command line wins over the study file."""
    from ablate.models import parse_model_args  # torch, as above

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
    epochs = _typed(value("epochs"), int, "epochs")
    patience = value("patience")
    base = TrainConfig(
        model=model, model_args=model_args, data=_typed(value("data"), str, "data"),
        image_size=parse_image_size(value("image_size")), **optional,
        ignore_index=_typed(value("ignore_index"), int, "ignore-index"), epochs=epochs,
        patience=default_patience(epochs) if patience is None else _typed(patience, int, "patience"),
        seed=_typed(value("seed"), int, "seed"),
        precision=flags["precision"], device=flags["device"], compile=flags["compile"], **toggles,
    )
    return space, config_for(base, fixed)


def _typed(v: Any, types: type | tuple, option: str) -> Any:
    """Type-check a setting that may come from the study file (flags are typed by click)."""
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        raise AblateError(f"--{option} (or its study-file key): expected {_TYPE_WORDS.get(types, 'a number')}, got {v!r}")
    return v

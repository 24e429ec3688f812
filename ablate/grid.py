"""Grid stage: the ablation grid as an Optuna study.

A typed study definition (a TOML file, overridden by flags) expands into cells, model x
toggle setting x seed, each identified by a hash of its full training configuration. Workers
on one or many machines claim cells through the Optuna storage under a study-wide lock, so
every cell runs exactly once; runs.csv and summary.csv are rebuilt from the storage.

Per-model training options ([model_train.MODEL] in the study file: image size, epochs, lr,
...) override [train] for that model's cells; a flag overrides both. The data is loaded once
per distinct image size.

Execution is part of a cell's identity: `precision = "auto"` is bf16 on one CPU and fp32 on
another, so a study records the precision and device kind its creator resolved ("fp32 on
cpu"), cell ids hash the resolved precision and device kind, and a worker that resolves
differently refuses to claim cells (exit 2, naming both and the flag that matches).

Exactly once: a trial is only ever created inside `GridStorage.claim`, while holding a lock
that every process sharing the storage respects (an flock beside a SQLite/journal file, a
PostgreSQL advisory lock, a MySQL named lock), and only for a cell whose fresh read shows no
RUNNING or COMPLETE trial. So a cell has at most one live trial at any time and none after it
completed. A RUNNING trial leaves that state only through its owner or through a reclaim
(also under the lock) once its worker is provably dead or silent for the grace period.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import re
import signal
import sys
import time
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ablate import _io, store, workers
from ablate.config import TOGGLES, TrainConfig, parse_image_size, stable_hash
from ablate.errors import AblateError
from ablate.studyfile import read_toml
from ablate.workers import INTERRUPTED, WORKER_LOST  # failure reasons, shared with the tuner

KIND = "grid"
DEFAULT_STUDY_FILE = Path("studies") / "quick.toml"
CELL_FIELDS = ("model", "model_args", "seed", *TOGGLES)  # set per cell, never in [train]
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in CELL_FIELDS)
# [train] keys a model may not override: one dataset and one execution set-up per study.
SHARED_KEYS = ("data", "num_classes", "ignore_index", "val_fraction", "precision", "device", "compile")
MODEL_TRAIN_KEYS = tuple(k for k in TRAIN_KEYS if k not in SHARED_KEYS)
STUDY_KEYS = ("name", "description", "models", "model_args", "model_train", "toggles", "factors", "design", "seeds",
              "train", "max_retries", "workers", "storage")
# Training options that cannot be a factor: the architecture is `models` / `model_args`, the seed
# is the replicate, and one dataset and one execution set-up serve the whole study.
NOT_FACTORS = ("model", "model_args", "seed", "data", "num_classes", "ignore_index", "val_fraction", "precision",
               "device", "compile")
FACTOR_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_FACTORS)
DESIGNS = ("full", "fractional", "one-at-a-time")
_OFF_ON = {False: False, True: True, "off": False, "on": True, "false": False, "true": True}
RUNS = "runs"  # attempt folders: <study>/runs/<cell_id>/<trial number>/
POLL_SECONDS = 1.0  # how often an idle worker looks again while other workers' cells run
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# The built-in quick study: what studies/quick.toml says, for when that file is not around.
QUICK_STUDY: dict[str, Any] = {
    "name": "quick",
    "description": ('All four architectures x all 8 toggle settings on the embedded synthetic dataset, in about 4 minutes'
                    ' on 2 CPU cores (resnet18 from random weights, encoder trained: offline, no download). unet and the '
                    'unweighted baseline cells learn; custom and resnet18 get a 1-epoch smoke budget (they need 13 and 19'
                    " epochs) and are flagged 'did not learn'."),
    "models": ["baseline", "custom", "resnet18", "unet"],
    "toggles": list(TOGGLES),
    "seeds": 1,
    "max_retries": 1,
    "model_args": {"unet": {"base_channels": 8}, "resnet18": {"weights": "none", "freeze_encoder": False}},
    "train": {"data": "synthetic", "image_size": 64, "epochs": 6, "batch_size": 16, "lr": 1e-3, "patience": 0},
    "model_train": {"unet": {"batch_size": 8, "lr": 2e-3}, "custom": {"epochs": 1}, "resnet18": {"epochs": 1}},
}


# --------------------------------------------------------------------------- definition
@dataclass(frozen=True)
class GridStudy:
    """One ablation study: its cells (models x toggle settings x seeds, every other training
    option fixed) and how to run them."""
    name: str = "quick"  # Optuna study name; results go to <results-dir>/<name>/
    models: tuple[str, ...] = ("baseline", "custom", "resnet18", "unet")  # architectures compared
    model_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-model constructor options
    model_train: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-model [train] overrides
    toggles: tuple[str, ...] = TOGGLES  # toggles switched on/off (2^k settings); the others stay off
    # other factors ([factors], --factor): option -> its levels, the first the reference; a factor
    # of one level is fixed for every cell (a toggle fixed on is one)
    factors: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    design: str = "full"  # full | fractional (two-level factors, 2^(k-p)) | one-at-a-time
    seeds: tuple[int, ...] = (0,)  # every setting runs once per seed
    train: TrainConfig = field(default_factory=TrainConfig)  # options shared by every cell
    max_retries: int = 1  # a failed cell runs again up to this many times (this run or a later one)
    workers: int | str = "auto"  # worker processes on this machine; "auto": `resolve_workers`
    storage: str | None = None  # Optuna storage URL; None: a file under <results-dir>/<name>/
    description: str = ""  # free text for the report


@dataclass(frozen=True)
class Cell:
    cell_id: str  # hash of the canonical config, data path replaced by the dataset fingerprint
    config: TrainConfig
    factors: tuple[str, ...] = ()  # the study's varying factors other than the toggles
    design: dict[str, Any] | None = field(default=None, compare=False)  # `design_brief`, with factors or a design

    @property
    def toggles(self) -> str:
        return toggle_label(self.config.to_dict())

    @property
    def levels(self) -> dict[str, str]:
        """This cell's level of each factor, as text: {"loss": "dice", "optimizer": "sgd"}."""
        return {name: level_text(getattr(self.config, name)) for name in self.factors}

    @property
    def label(self) -> str:
        factors = "".join(f" {k}={v}" for k, v in self.levels.items())
        return f"{self.config.model} {self.toggles}{factors} seed {self.config.seed}"

    def brief(self) -> dict[str, Any]:
        """What the storage keeps about a cell (enough for tables and status); `factors` and
        `design` only in a study with factors beyond the toggles or a design other than full."""
        c = self.config
        out = {"cell_id": self.cell_id, "run_id": c.run_id, "model": c.model, "model_args": dict(c.model_args),
               "toggles": self.toggles, **{t: getattr(c, t) for t in TOGGLES}, "seed": c.seed}
        if self.design is not None:
            out.update(factors=self.levels, design=self.design)
        return out


def trial_label(model: str, toggles: str, seed: int, factors: dict[str, str] | None = None) -> str:
    """What the dashboard shows for a trial: 'unet · weighted_loss · s0', 'unet · loss=dice
    optimizer=sgd · s0' (toggles left out when none is on and other factors vary)."""
    setting = "no toggles" if toggles == "none" else toggles
    if factors:
        words = " ".join(f"{k}={v}" for k, v in factors.items())
        setting = words if toggles == "none" else f"{setting} {words}"
    return f"{model} · {setting} · s{seed}"


def level_text(value: Any) -> str:
    """A factor level as the tables, labels and dashboard write it: 'dice', '0.001', 'on',
    '64' (a square image size), '64x96'."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


def toggle_label(row: dict[str, Any]) -> str:
    """'scheduler+augment', or 'none' when every toggle is off."""
    return "+".join(t for t in TOGGLES if row.get(t)) or "none"


def default_study_file() -> Path | None:
    """studies/quick.toml under the working directory, else beside the package."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / DEFAULT_STUDY_FILE).is_file():
            return root / DEFAULT_STUDY_FILE
    return None


def load_study(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> GridStudy:
    """The study in `path` (default: studies/quick.toml, else the built-in quick study), with
    `overrides` (flags: study key or [train] key -> value) on top. Everything is validated."""
    if path is None:
        found = default_study_file()
        raw, where = (read_toml(found), str(found)) if found else (QUICK_STUDY, "built-in quick study")
    else:
        raw, where = read_toml(Path(path)), str(path)
    return build_study(raw, where=where, overrides=overrides or {},
                       default_name=Path(path).stem if path is not None else "quick")


def build_study(raw: dict[str, Any], *, where: str, overrides: dict[str, Any], default_name: str = "quick") -> GridStudy:
    from ablate.models import external_names, list_models

    _reject_unknown(raw, STUDY_KEYS, where, prefix="")
    train_raw = _table(raw.get("train", {}), f"{where}: train")
    _reject_unknown(train_raw, TRAIN_KEYS, where, prefix="train.",
                    hint="; model, model args, toggles and seeds are set at the top level")
    args_raw = _table(raw.get("model_args", {}), f"{where}: model_args")

    def pick(key: str, flag: str, source: dict = raw, prefix: str = "") -> tuple[Any, str]:
        if overrides.get(key) is not None:
            return overrides[key], f"--{flag}"
        return source.get(key), f"{where}: {prefix}{key}"

    value, label = pick("name", "study-name")
    name = _string(value if value is not None else default_name, label)
    if not _NAME_RE.match(name):
        raise AblateError(f"{label} must be letters, digits, '.', '_' or '-' (it names a folder), got {name!r}")
    value, label = pick("models", "models")
    named = value if value is not None else list_models()
    models = _choices(named, label, list_models() + external_names(named), "model")
    for model in models:  # models from elsewhere: imported (or smp found) now, one line if not
        _known_model(model, label, list_models())
    factors_raw = _factor_tables(raw, where, overrides.get("factor") or ())
    value, label = pick("toggles", "toggles")
    if value is None:  # the three toggles, unless the study declares its own factors
        value = [] if factors_raw else list(TOGGLES)
    toggles = _choices(value, label, TOGGLES, "toggle", allow_none=True)
    toggles = tuple(t for t in TOGGLES if t in toggles)  # canonical order: flag order never matters
    value, label = pick("seeds", "seeds")
    seeds = parse_seeds(value if value is not None else 1, label)
    value, label = pick("max_retries", "max-retries")
    max_retries = _integer(value if value is not None else 1, label, minimum=0)
    value, label = pick("workers", "workers")
    workers = _workers(value if value is not None else "auto", label)
    value, label = pick("storage", "storage")
    storage = _string(value, label) if value is not None else None
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise AblateError(f"{where}: description must be a string, got {description!r}")

    model_args = {m: _model_args(m, _table(args_raw.get(m, {}), f"{where}: model_args.{m}"), f"{where}: model_args.{m}")
                  for m in args_raw if _known_model(m, f"{where}: model_args", list_models())}
    for text in overrides.get("model_arg") or ():
        _apply_model_arg(model_args, text, models)
    model_args = {m: a for m, a in model_args.items() if m in models and a}

    train_values = {}
    for key in TRAIN_KEYS:
        value, label = pick(key, key.replace("_", "-"), train_raw, "train.")
        if value is not None:
            train_values[key] = _train_value(key, value, label)
    train = _train_config(train_values, where, "train.", overrides)
    factors, on = _factors(factors_raw, train_values, toggles, overrides)
    toggles = tuple(t for t in TOGGLES if t in toggles or t in on)
    value, label = pick("design", "design")
    design = _design(value if value is not None else "full", label, toggles, factors)

    # [model_train.MODEL]: that model's cells train with these instead; a flag wins over both.
    per_model_raw = _table(raw.get("model_train", {}), f"{where}: model_train")
    model_train = {}
    for model in per_model_raw:
        _known_model(model, f"{where}: model_train", list_models())
        prefix = f"model_train.{model}."
        table = _table(per_model_raw[model], f"{where}: model_train.{model}")
        _reject_unknown(table, MODEL_TRAIN_KEYS, where, prefix=prefix,
                        hint=f"; {', '.join(SHARED_KEYS)} are shared by every model ([train])")
        values = {k: _train_value(k, v, f"{where}: {prefix}{k}") for k, v in table.items()
                  if overrides.get(k) is None and k not in factors}  # a factor sets its option in every cell
        _train_config({**train_values, **values}, where, prefix, overrides)  # validated now, not per cell
        if model in models and values:
            model_train[model] = values
    return GridStudy(name=name, models=models, model_args=model_args, model_train=model_train, toggles=toggles,
                     factors=factors, design=design, seeds=seeds, train=train, max_retries=max_retries,
                     workers=workers, storage=storage, description=description)


# --------------------------------------------------------------------------- factors
def _factor_tables(raw: dict[str, Any], where: str, flags: typing.Sequence[str]) -> dict[str, tuple[list, str]]:
    """[factors] and --factor KEY=A,B,... (a flag replaces the file's entry): key -> (raw levels,
    the label errors name). Unknown keys, empty lists and a key given twice are refused here."""
    table = _table(raw.get("factors", {}), f"{where}: factors")
    out = {}
    for key, value in table.items():
        label = f"{where}: factors.{key}"
        _factor_key(key, label)
        if not isinstance(value, list):
            raise AblateError(f"{label} must be a list of levels, e.g. {key} = [{_example(key)}], got {value!r}")
        out[key] = (value, label, False)
    seen = set()
    for text in flags:
        key, eq, levels = (part.strip() for part in str(text).partition("="))
        label = f"--factor {key}"
        if not eq or not key:
            raise AblateError(f"--factor {text!r}: write KEY=LEVEL,LEVEL,... e.g. --factor loss=ce,dice")
        _factor_key(key, label)
        if key in seen:
            raise AblateError(f"{label} is given twice; list every level in one --factor {key}=A,B")
        seen.add(key)
        out[key] = ([v.strip() for v in levels.split(",") if v.strip()], label, True)
    return out


def _factor_key(key: str, label: str) -> None:
    if key in FACTOR_KEYS:
        return
    why = ("it is not a factor: models, model_args and seeds are set at the top level, and data, "
           "num_classes, ignore_index, val_fraction, precision, device and compile are one per study"
           if key in NOT_FACTORS else "unknown factor")
    raise AblateError(f"{label}: {why}; factors: {', '.join(FACTOR_KEYS)}")


def _example(key: str) -> str:
    return {"loss": '"ce", "dice"', "optimizer": '"adamw", "sgd"', "image_size": "64, 128"}.get(key, "A, B")


def _factors(raw: dict[str, tuple[list, str, bool]], train_values: dict[str, Any], toggles: tuple[str, ...],
             overrides: dict[str, Any]) -> tuple[dict[str, tuple], set[str]]:
    """Typed, validated levels per factor; a toggle given as [off, on] joins `toggles` (the
    second value returned), one given a single level stays a fixed factor."""
    factors, on = {}, set()
    for key, (values, label, text) in raw.items():
        if not values:
            raise AblateError(f"{label}: give at least one level, e.g. {key} = [{_example(key)}]")
        if overrides.get(key) is not None:
            raise AblateError(f"{label}: --{key.replace('_', '-')} also sets {key}; drop one of them")
        if key in TOGGLES:
            levels = tuple(_toggle_level(v, label) for v in values)
            if key in toggles:
                raise AblateError(f"{label}: {key} is also in toggles (switched off and on); list it once")
        else:
            levels = tuple(_factor_level(key, v, label, text) for v in values)
        if len(set(levels)) != len(levels):
            raise AblateError(f"{label}: levels repeat in {values}")
        if key in TOGGLES and len(levels) == 2:
            if levels != (False, True):
                raise AblateError(f"{label}: a toggle's levels are off and on, off first (the reference); got {values}")
            on.add(key)
            continue
        for level in levels:  # a level TrainConfig refuses (unknown loss, lr <= 0, ...) names the factor
            try:
                TrainConfig(**{**train_values, key: level})
            except AblateError as exc:
                why = re.sub(r"^--[a-z-]+ ", "", str(exc))
                raise AblateError(f"{label}: level {level_text(level)!r}: {why}") from None
        factors[key] = levels
    return factors, on


def _toggle_level(value: Any, label: str) -> bool:
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, (bool, str)) and key in _OFF_ON:
        return _OFF_ON[key]
    raise AblateError(f"{label}: a toggle's levels are off and on (or false and true), got {value!r}")


def _factor_level(key: str, value: Any, label: str, text: bool) -> Any:
    """One level typed against the option's TrainConfig annotation; flag levels arrive as text."""
    if text and key != "image_size":
        value = _from_text(key, value, label)
    elif isinstance(value, str) and typing.get_type_hints(TrainConfig)[key] is bool and value.lower() in _OFF_ON:
        value = _OFF_ON[value.lower()]  # nesterov = ["off", "on"], as the toggles are written
    if key == "image_size" and isinstance(value, list) and not all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in value):
        raise AblateError(f"{label}: an image size is an integer or [height, width], got {value!r}")
    if key == "image_size" and isinstance(value, (bool, float)):
        raise AblateError(f"{label}: an image size is an integer or [height, width], got {value!r}")
    if isinstance(value, (dict, list)) and key != "image_size":
        raise AblateError(f"{label}: a level is a single value, got {value!r}")
    try:
        return _train_value(key, value, label)
    except AblateError as exc:
        raise AblateError(str(exc).replace(f"{label} must be", f"{label}: each level must be", 1)) from None


def _from_text(key: str, text: str, label: str) -> Any:
    """A --factor level ('1e-3', '8', 'on', 'none', 'dice') as the option's type."""
    hint = typing.get_type_hints(TrainConfig)[key]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    t = text.strip()
    if bool in allowed:
        if t.lower() in _OFF_ON:
            return _OFF_ON[t.lower()]
        raise AblateError(f"{label}: each level must be true or false (on/off), got {text!r}")
    if type(None) in allowed and t.lower() == "none":
        return None
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(t)
            except ValueError:
                raise AblateError(f"{label}: each level must be {_type_words(allowed)}, got {text!r}") from None
    return t


def _design(value: Any, label: str, toggles: tuple[str, ...], factors: dict[str, tuple]) -> str:
    if value not in DESIGNS:
        raise AblateError(f"{label} must be one of {', '.join(DESIGNS)}, got {value!r}")
    if value == "fractional":
        from ablate.design import fractional_factorial

        varying = varying_factors_of(toggles, factors)
        wide = [k for k, v in varying.items() if len(v) != 2]
        if wide:
            raise AblateError(f"{label}: a fractional design needs two-level factors; "
                              f"{', '.join(f'{k} has {len(varying[k])} levels' for k in wide)}")
        try:
            fractional_factorial(list(varying))
        except AblateError as exc:
            raise AblateError(f"{label}: {exc}") from None
    if value == "one-at-a-time" and not varying_factors_of(toggles, factors):
        raise AblateError(f"{label}: one-at-a-time needs at least one factor with two or more levels")
    return value


def varying_factors_of(toggles: tuple[str, ...], factors: dict[str, tuple]) -> dict[str, tuple]:
    """Every factor with more than one level, in the design's order: the toggles (off, on),
    then the other factors as declared."""
    return {**{t: (False, True) for t in toggles}, **{k: v for k, v in factors.items() if len(v) > 1}}


def _train_config(values: dict[str, Any], where: str, prefix: str, overrides: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except AblateError as exc:  # TrainConfig names the flag; say so when the value came from the file
        flag = re.match(r"--([a-z-]+) (.*)", str(exc))
        if not flag or flag[1].replace("-", "_") in overrides:
            raise
        raise AblateError(f"{where}: {prefix}{flag[1].replace('-', '_')} {flag[2]}") from None


def parse_seeds(value: Any, label: str) -> tuple[int, ...]:
    """3 -> (0, 1, 2); [0, 5, 7] or '0,5,7' -> (0, 5, 7)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise AblateError(f"{label} expects a count or a comma-separated list of integers, got {value!r}") from None
        value = numbers[0] if len(numbers) == 1 and "," not in value else numbers
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise AblateError(f"{label}: a seed count must be >= 1, got {value}")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if any(s < 0 for s in value):
            raise AblateError(f"{label}: seeds must be >= 0, got {value}")
        if len(set(value)) != len(value):
            raise AblateError(f"{label}: seeds repeat in {value}")
        return tuple(value)
    raise AblateError(f"{label} expects a count or a list of integers, got {value!r}")


def _reject_unknown(table: dict, accepted: tuple[str, ...], where: str, *, prefix: str, hint: str = "") -> None:
    for key in table:
        if key not in accepted:
            raise AblateError(f"{where}: unknown key '{prefix}{key}'; accepted: {', '.join(accepted)}{hint}")


def _table(value: Any, label: str) -> dict:
    if not isinstance(value, dict):
        raise AblateError(f"{label} must be a table, got {value!r}")
    return value


def _string(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value:
        raise AblateError(f"{label} must be a non-empty string, got {value!r}")
    return value


def _integer(value: Any, label: str, *, minimum: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise AblateError(f"{label} must be an integer >= {minimum}, got {value!r}")
    return value


def _workers(value: Any, label: str) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and not value.strip().isdigit():
        raise AblateError(f"{label} must be 'auto' or an integer >= 1, got {value!r}")
    return _integer(value, label, minimum=1)


def resolve_workers(study: GridStudy, cells: list[Cell], execution: dict[str, str]) -> GridStudy:
    """`workers = "auto"` made a number for these cells on this machine (`workers.auto_workers`)."""
    if study.workers != "auto":
        return study
    n = workers.auto_workers(len(cells), device=execution["device"], gpus=len(workers.visible_gpus()),
                             cores=workers.cores())
    return dataclasses.replace(study, workers=n)


def _choices(value: Any, label: str, known: typing.Sequence[str], what: str, allow_none: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [] if allow_none and value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AblateError(f"{label} must be a list of names, got {value!r}")
    if not value and not allow_none:
        raise AblateError(f"{label}: give at least one {what}; choose from: {', '.join(known)}")
    for v in value:
        if v not in known:
            raise AblateError(f"{label}: unknown {what} {v!r}; choose from: {', '.join(known)}")
    if len(set(value)) != len(value):
        raise AblateError(f"{label}: {what}s repeat in {value}")
    return tuple(value)


def _known_model(name: str, label: str, known: list[str]) -> bool:
    """A registered name (in `known`), an importable `pkg.mod:build` or an smp model."""
    from ablate.models import check_model_name

    if name not in known:
        check_model_name(name, label)
    return True


def _model_args(model: str, table: dict, label: str) -> dict[str, Any]:
    from ablate.models import parse_model_args

    def text(v: Any) -> str:
        if isinstance(v, (dict, list)):
            raise AblateError(f"{label}: expected a number, string or boolean, got {v!r}")
        return str(v).lower() if isinstance(v, bool) else str(v)
    try:
        return parse_model_args(model, [f"{k}={text(v)}" for k, v in table.items()])
    except AblateError as exc:
        raise AblateError(f"{label}: {exc}") from None


def _apply_model_arg(model_args: dict[str, dict], text: str, models: tuple[str, ...]) -> None:
    """--model-arg unet.base_channels=8 (one model) or base_channels=8 (every model that has it)."""
    from ablate.models import list_models, model_params, parse_model_args

    key = text.partition("=")[0].strip()
    head, dot, rest = key.partition(".")
    if dot and head in list_models():
        targets, pair = [head], text.strip()[len(head) + 1:]
    else:
        targets = [m for m in models if key in model_params(m)]
        pair = text
        if not targets:
            raise AblateError(f"--model-arg {text!r}: no model in the grid ({', '.join(models)}) has an argument "
                              f"{key!r}; write MODEL.KEY=VALUE")
    for model in targets:
        model_args.setdefault(model, {}).update(parse_model_args(model, [pair]))


def _train_value(key: str, value: Any, label: str) -> Any:
    """Type-check one [train] value against TrainConfig's annotation."""
    hint = typing.get_type_hints(TrainConfig)[key]
    if key == "image_size":
        return parse_image_size(value)
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, bool) and bool not in allowed:
        raise AblateError(f"{label} must be {_type_words(allowed)}, got {value!r}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tuple(t for t in allowed if t is not type(None))):
        raise AblateError(f"{label} must be {_type_words(allowed)}, got {value!r}")
    return value


def _type_words(types_: tuple) -> str:
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(words[t] for t in types_ if t in words)


# --------------------------------------------------------------------------- cells
def resolve_execution(train: TrainConfig) -> dict[str, str]:
    """{"device": "cpu" | "cuda", "precision": "fp32" | "bf16"}: what this process would run
    `train` on, by the engine's own resolution (`--precision auto` depends on the hardware)."""
    from ablate.engine import resolve_device, resolve_precision

    device = resolve_device(train.device)
    return {"device": device.type, "precision": resolve_precision(train.precision, device)}


def cell_id(config: TrainConfig, fingerprint: str) -> str:
    """Hash of what the cell computes: its identity (precision included), the device kind
    and the dataset's fingerprint. Precision and device must be resolved (see `expand`)."""
    if "auto" in (config.precision, config.device):
        raise ValueError(f"cell_id needs a resolved precision and device, got {config.precision}/{config.device}")
    return stable_hash({**config.identity(), "device": config.device, "data": fingerprint})


def model_config(study: GridStudy, model: str) -> TrainConfig:
    """[train] with the model's own overrides and the fixed (one-level) factors: every setting
    its cells share."""
    fixed = {k: v[0] for k, v in study.factors.items() if len(v) == 1}
    return study.train.replace(model=model, model_args=dict(study.model_args.get(model, {})),
                               **study.model_train.get(model, {}), **fixed)


def varying_factors(study: GridStudy) -> dict[str, tuple]:
    return varying_factors_of(study.toggles, study.factors)


def settings(study: GridStudy) -> list[dict[str, Any]]:
    """The factor settings the design runs (each {factor: level}), in run order: the full
    factorial (first factor slowest), the fractional factorial's runs (first level = code −1),
    or one at a time (the reference, then each factor moved to each other level)."""
    from ablate import design

    levels = {k: list(v) for k, v in varying_factors(study).items()}
    if study.design == "fractional":
        return [{k: levels[k][int(on)] for k, on in run.items()}
                for run in design.fractional_factorial(list(levels)).settings()]
    if study.design == "one-at-a-time":
        return design.one_at_a_time(levels)
    return design.full_factorial(levels)


def design_brief(study: GridStudy) -> dict[str, Any] | None:
    """What a cell's brief says about the design (None for a full design of toggles only, as
    before factors): its kind and every varying factor's levels as text, reference first."""
    if study.design == "full" and not any(len(v) > 1 for v in study.factors.values()):
        return None
    return {"kind": study.design, "levels": {k: [level_text(x) for x in v] for k, v in varying_factors(study).items()}}


def design_lines(study: GridStudy) -> list[str]:
    """The design in words, for --dry-run and study.json: the fractional design's generators
    and alias structure; one-at-a-time's blind spot."""
    from ablate import design

    varying = varying_factors(study)
    shape = " x ".join(f"{k} ({len(v)} levels: {', '.join(map(level_text, v))})" for k, v in varying.items())
    n = len(settings(study))
    if study.design == "fractional":
        return [f"design: fractional, {n} of {2 ** len(varying)} settings of {shape}",
                *design.fractional_factorial(list(varying)).describe()]
    if study.design == "one-at-a-time":
        return [f"design: one-at-a-time, {n} settings: the reference (each factor's first level), then each factor "
                f"moved to each other level; {shape}",
                "one-at-a-time: it cannot see interactions (each effect is measured with every other factor at its "
                "reference level)"]
    return [f"design: full factorial, {n} setting{'s' if n != 1 else ''}" + (f" of {shape}" if varying else "")]


def expand(study: GridStudy, fingerprint: str, execution: dict[str, str] | None = None) -> list[Cell]:
    """Every cell of the grid, seed-major, then factor setting (`settings`), then model. Each
    cell's config carries the resolved precision and device kind (`execution`, default: this
    process's), so the cell runs what its id says."""
    execution = execution or resolve_execution(study.train)
    names = tuple(k for k in varying_factors(study) if k not in TOGGLES)
    brief = design_brief(study)
    cells = []
    for seed in study.seeds:
        for setting in settings(study):
            toggles = {t: bool(setting.get(t, study.factors.get(t, (False,))[0])) for t in TOGGLES}
            others = {k: v for k, v in setting.items() if k not in TOGGLES}
            for model in study.models:
                config = model_config(study, model).replace(seed=seed, **toggles, **others, **execution)
                cells.append(Cell(cell_id(config, fingerprint), config, names, brief))
    return cells


def definition(study: GridStudy, fingerprint: str, execution: dict[str, str] | None = None) -> dict[str, Any]:
    """What makes two grids the same grid. Seeds are replicates, not part of it (asking for
    more seeds extends a study), and neither are operational settings such as the device
    index; the precision and device kind as resolved are (`execution`)."""
    execution = execution or resolve_execution(study.train)
    shared = {k: v for k, v in study.train.identity().items()
              if k not in CELL_FIELDS and k != "precision" and k not in study.factors}  # a factor's [train] value is unused
    shared["data"] = fingerprint
    per_model = {}
    for model in sorted(study.models):
        identity = model_config(study, model).identity()
        per_model[model] = {"args": identity["model_args"],
                            "train": {k: identity[k] for k in sorted(study.model_train.get(model, {}))}}
    out = {"models": per_model, "toggles": list(study.toggles), "train": shared, "execution": dict(execution)}
    if study.factors:  # only then: a study without factors keeps the definition (and hash) it had
        out["factors"] = {k: [level_text(x) for x in v] for k, v in study.factors.items()}
    if study.design != "full":
        out["design"] = {"kind": study.design, "lines": design_lines(study)}
    return out


def check_execution(name: str, grid: dict[str, Any], execution: dict[str, str], train: TrainConfig) -> None:
    """Refuse a worker whose precision or device kind differs from the study's."""
    created = grid.get("execution")
    if not created or created == execution:
        return
    asked = " ".join(f"--{k} {getattr(train, k)}" for k in ("device", "precision") if created.get(k) != execution[k])
    fix = " ".join(f"--{k} {created[k]}" for k in ("device", "precision") if created.get(k) != execution[k])
    raise AblateError(f"study {name} was created for {created.get('precision')} on {created.get('device')}; this "
                      f"worker resolves {asked} to {execution['precision']} on {execution['device']}; pass {fix} "
                      "or use another --study-name")


def check_models(study: GridStudy) -> None:
    """Build each model once so bad model arguments (e.g. a missing weights file, or weights
    that would have to be downloaded offline) are input errors now rather than failed cells;
    likewise training choices the engine cannot combine (dice with the weighted-loss toggle)."""
    from ablate.engine import check_training
    from ablate.models import check_model

    for model in study.models:
        config = model_config(study, model)
        if "weighted_loss" in study.toggles:
            config = config.replace(weighted_loss=True)  # its "on" cells
        try:
            check_model(model, study.model_args.get(model, {}))
            check_training(config)
        except AblateError as exc:
            raise AblateError(f"model {model}: {exc}") from None


def check_cells(cells: list[Cell]) -> None:
    """Every cell's training choices, combined by its factors (e.g. `loss = dice` with the
    weighted-loss toggle on), refused before anything is written rather than cell by cell."""
    from ablate.engine import check_training

    seen = set()
    for cell in cells:
        key = (cell.config.loss, cell.config.weighted_loss, cell.config.optimizer, cell.config.nesterov)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_training(cell.config)
        except AblateError as exc:
            raise AblateError(f"cell {cell.label}: {exc}") from None


class Datasets:
    """The grid's dataset at each image size its cells use, loaded on first use (from the
    decode cache when another process decoded it already)."""

    def __init__(self, train: TrainConfig, cache_dir: Path | None, loaded: Any = None):
        self._train, self._cache_dir = train, cache_dir
        self._by_size: dict[tuple[int, int], Any] = {}
        if loaded is not None:
            self._by_size[tuple(loaded.image_size)] = loaded

    def __call__(self, image_size: tuple[int, int]) -> Any:
        size = tuple(image_size)
        if size not in self._by_size:
            from ablate.data import load_dataset

            t = self._train
            self._by_size[size] = load_dataset(t.data, image_size=size, num_classes=t.num_classes,
                                               ignore_index=t.ignore_index, val_fraction=t.val_fraction,
                                               cache_dir=self._cache_dir)
        return self._by_size[size]


# --------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class CellState:
    status: str  # completed | running | failed | retry | pending
    trial: FrozenTrial | None  # the trial that speaks for the cell (complete, running or latest)
    attempts: int  # trials so far
    failures: int  # failures charged to --max-retries (see charged_failures)


def cell_states(cells: list[dict], trials: list[FrozenTrial], max_retries: int | None = None) -> dict[str, CellState]:
    """Status of every cell from its trials; max_retries None: any genuine failure is 'failed'."""
    by_cell: dict[str, list[FrozenTrial]] = {c["cell_id"]: [] for c in cells}
    for t in trials:
        if t.user_attrs.get("cell_id") in by_cell:
            by_cell[t.user_attrs["cell_id"]].append(t)
    states = {}
    for cid, ts in by_cell.items():
        failures = charged_failures(ts)
        complete = [t for t in ts if t.state == TrialState.COMPLETE]
        running = [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if complete:
            status, trial = "completed", complete[0]
        elif running:
            status, trial = "running", running[0]
        elif failures:
            retry = max_retries is not None and len(failures) <= max_retries
            status, trial = ("retry" if retry else "failed"), ts[-1]
        else:
            status, trial = "pending", ts[-1] if ts else None
        states[cid] = CellState(status, trial, len(ts), len(failures))
    return states


def failure_reason(trial: FrozenTrial) -> str | None:
    if trial.state != TrialState.FAIL:
        return None
    return trial.user_attrs.get("failure_reason") or f"{WORKER_LOST} (trial failed by the storage)"


def charged_failures(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The failed trials of one cell (in creation order) that count against --max-retries:
    genuine failures, and every crash (worker lost: killed, OOM killer, segfault, silent)
    after the cell's first, which is free since the machine may simply have gone down. A
    cell that kills its own process every time therefore stops; an interruption never counts."""
    charged, crashes = [], 0
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        reason = failure_reason(t)
        if reason == INTERRUPTED:
            continue
        if workers.is_crash(reason):
            crashes += 1
            if crashes == 1:
                continue
        charged.append(t)
    return charged


class GridStorage:
    """An Optuna storage holding one grid study, and the study-wide lock under which cells
    are claimed."""

    def __init__(self, url: str, study_name: str):
        self.url, self.study_name = url, study_name
        self._dialect = "file" if store.is_journal(url) else url.split(":", 1)[0].split("+", 1)[0]
        if self._dialect not in ("file", "sqlite", "postgresql", "mysql", "mariadb"):
            raise AblateError(f"--storage {store.mask_url(url)}: a grid needs PostgreSQL, MySQL, SQLite or a journal "
                              f"file (it has no cross-process lock for {self._dialect!r})")
        self.storage = store.open_storage(url)
        self.running = 0  # RUNNING trials seen at the last claim (other workers' cells)
        self._reclaimer = workers.Reclaimer()

    # ---- the lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across every process that uses this storage (for file storages: on one
        machine; for PostgreSQL and MySQL: across machines)."""
        if self._dialect in ("file", "sqlite"):
            path = self.url.removeprefix("sqlite:///")
            with _flock(f"{path}.grid-lock"):
                yield
            return
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(f"ablate-grid:{self.study_name}".encode()).digest()[:8], "big", signed=True)
        if self._dialect == "postgresql":  # session-level: released by the server if this process dies
            lock, unlock, args = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)", {"k": key}
        else:
            lock, unlock, args = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)", {"k": f"ablate-grid-{key}"}
        with self.storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text(lock), args)
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(unlock), args)
                conn.commit()

    # ---- the study
    def study_id(self) -> int | None:
        try:
            return self.storage.get_study_id_from_name(self.study_name)
        except KeyError:
            return None

    def study_attrs(self) -> dict[str, Any] | None:
        sid = self.study_id()
        return None if sid is None else self.storage.get_study_user_attrs(sid)

    def trials(self) -> list[FrozenTrial]:
        sid = self.study_id()
        return [] if sid is None else self.storage.get_all_trials(sid, deepcopy=False)

    def prepare(self, study: GridStudy, cells: list[Cell], grid: dict[str, Any], *, dataset: dict | None = None,
                command: list[str] | None = None) -> dict[str, Any]:
        """Create the study, or check that the existing one is this grid and add any new
        seeds' cells to it; returns the study's attrs (its cells and seeds so far). The
        storage holds what study.json says (`setup`: models, toggles, [train], ...; the
        `dataset` summary; the `command`), so a report needs no file from this machine."""
        with self.lock():
            sid = self.study_id()
            if sid is None:
                sid = self.storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], self.study_name)
            attrs = self.storage.get_study_user_attrs(sid)
            if attrs:
                check_same_grid(self.study_name, attrs, grid, self.url, study.train)
            elif self.storage.get_all_trials(sid, deepcopy=False):
                raise AblateError(f"study {self.study_name!r} in {store.mask_url(self.url)} is not a grid study; "
                                  "use another --study-name")
            known = {c["cell_id"] for c in attrs.get("cells", [])}
            # grid_hash last: a reader outside the lock that sees it sees the whole definition
            new = {"kind": KIND, "grid": grid, "description": study.description,
                   "seeds": sorted(set(attrs.get("seeds", [])) | set(study.seeds)),
                   "cells": attrs.get("cells", []) + [c.brief() for c in cells if c.cell_id not in known],
                   "setup": _setup(study),
                   **({"dataset": _io._json_safe(dataset)} if dataset is not None else {}),
                   **({"command": command} if command is not None else {}),
                   "grid_hash": stable_hash(grid)}
            for key, value in new.items():
                if attrs.get(key) != value:
                    self.storage.set_study_user_attr(sid, key, value)
            return new

    # ---- claiming
    def claim(self, cells: list[Cell], *, max_retries: int) -> tuple[Cell, int] | None:
        """Create a RUNNING trial for the first cell that needs a run, or return None."""
        with self.lock():
            sid = self.study_id()
            trials = self.storage.get_all_trials(sid, deepcopy=False)
            if self._reclaimer.reclaim(self.storage, trials):
                trials = self.storage.get_all_trials(sid, deepcopy=False)
            states = cell_states([c.brief() for c in cells], trials, max_retries)
            self.running = sum(s.status == "running" for s in states.values())
            for cell in cells:
                if states[cell.cell_id].status in ("pending", "retry"):
                    return cell, self.storage.create_new_trial(sid, template_trial=self._new_trial(cell, cells))
        return None

    def _new_trial(self, cell: Cell, cells: list[Cell]) -> FrozenTrial:
        """Model and toggles are the trial's params (what the dashboard's importance ranks);
        the seed is a replicate, not a search parameter, so it is a user attr only (cells are
        told apart by `cell_id`, never by params)."""
        c = cell.config
        distributions = {
            "model": CategoricalDistribution(sorted({x.config.model for x in cells})),
            **{t: CategoricalDistribution([False, True]) for t in TOGGLES},
            # other factors: their levels as text, in the study's order (the reference first)
            **{k: CategoricalDistribution(cell.design["levels"][k]) for k in cell.factors},
        }
        params = {"model": c.model, **{t: getattr(c, t) for t in TOGGLES}, **cell.levels}
        return optuna.trial.create_trial(
            state=TrialState.RUNNING, params=params, distributions=distributions,
            user_attrs={"label": trial_label(c.model, cell.toggles, c.seed, cell.levels), "cell_id": cell.cell_id,
                        "seed": c.seed,
                        "toggles": cell.toggles, "model_args": json.dumps(c.model_args),
                        "worker": workers.identity()},
            system_attrs=workers.owner_system_attrs(),
        )


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_same_grid(name: str, attrs: dict[str, Any], grid: dict[str, Any], url: str,
                    train: TrainConfig | None = None) -> None:
    """Refuse a study of another kind, another execution (when `train`, the requested
    settings, is given: the message names the flags) or another grid."""
    if attrs.get("kind") != KIND:
        raise AblateError(f"study {name!r} in {store.mask_url(url)} is a {attrs.get('kind') or 'non-grid'} study, "
                          "not a grid; use another --study-name")
    if attrs.get("grid_hash") == stable_hash(grid):
        return
    old = attrs.get("grid") or {}
    if train is not None:
        check_execution(name, old, grid["execution"], train)
    old_models, new_models = old.get("models") or {}, grid["models"]
    diff = ["models"] if sorted(old_models) != sorted(new_models) else []
    for model in sorted(new_models) if not diff else []:
        was, now = old_models[model] if isinstance(old_models[model], dict) else {}, new_models[model]
        if was.get("args") != now["args"]:
            diff.append(f"model_args.{model}")
        train_keys = sorted(set(was.get("train") or {}) | set(now["train"]))
        diff += [f"model_train.{model}.{k}" for k in train_keys if (was.get("train") or {}).get(k) != now["train"].get(k)]
    diff += [k for k in ("toggles", "factors", "design", "execution") if old.get(k) != grid.get(k)]
    diff += [k for k in grid["train"] if (old.get("train") or {}).get(k) != grid["train"][k]]
    diff = [("data (its files changed)" if k == "data" else k) for k in diff]
    raise AblateError(f"study {name!r} in {store.mask_url(url)} holds a different grid (differs in: "
                      f"{', '.join(diff) or 'definition'}); choose a new --study-name, e.g. {name}-2, "
                      "or repeat the original settings")


# --------------------------------------------------------------------------- running cells
@dataclass(frozen=True)
class CellResult:
    cell_id: str
    label: str
    status: str  # completed | failed
    val_miou: float | None
    test_miou: float | None
    seconds: float
    failure_reason: str | None = None


def run_cell(gs: GridStorage, cell: Cell, trial_id: int, dataset, *, run_dir: Path, progress: bool = False,
             artifacts: store.Artifacts | None = None, keep_checkpoints: str = "best") -> CellResult:
    """Train one claimed cell (on `dataset`, at its image size) into its attempt's own folder (`run_dir`: a worker
    reclaimed while alive writes beside the rerun, never over it) and tell the storage; its files
    go to `artifacts` (see `_tell`)."""
    from ablate import record as records
    from ablate.engine import fit_safely

    storage = gs.storage

    def on_epoch(epoch: int, metrics: dict) -> None:
        if metrics.get("miou") is not None and math.isfinite(metrics["miou"]):
            storage.set_trial_intermediate_value(trial_id, epoch, float(metrics["miou"]))

    start = time.perf_counter()
    try:
        with workers.Heartbeat(storage, trial_id):
            try:
                record = fit_safely(cell.config, dataset, out_dir=run_dir, on_epoch=on_epoch, quiet=True, progress=progress)
            except AblateError as exc:  # e.g. a batch larger than the split: this cell's problem only
                record = records.failed(cell.config, reason=str(exc), tb=None)
                records.write(run_dir, record, None)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the bookkeeping
        workers.fail_trial(storage, trial_id, INTERRUPTED)
        raise
    return _tell(storage, cell, trial_id, record, time.perf_counter() - start, run_dir=run_dir, artifacts=artifacts,
                 keep_checkpoints=keep_checkpoints, dataset=dataset)


def _tell(storage, cell: Cell, trial_id: int, record: dict, seconds: float, *, run_dir: Path | None = None,
          artifacts: store.Artifacts | None = None, keep_checkpoints: str = "best", dataset=None) -> CellResult:
    """Put the trial's record into the storage (summary, flags, curves and the whole record as
    user attrs, `record.to_attrs`), attach its files to it in `artifacts` (run.json; for a
    completed run best.pt unless `keep_checkpoints` is 'none', and, given its `dataset`, its
    predictions of the report gallery's val images, so the gallery needs no checkpoint), then
    finish it. The local best.pt is removed afterwards: the artifact store holds the one copy
    (`prune_checkpoints` thins it)."""
    from ablate import record as records

    row = records.summary(record)
    row.update(run_flags(record, row))
    value = row.get("val_miou")
    ok = record["status"] == "completed" and value is not None and math.isfinite(value)
    reason = None if ok else (record.get("failure_reason") or "no finite val mIoU")
    try:
        for key, v in {**row, **_curves(record), **records.to_attrs(record)}.items():
            if key not in ("model", "seed", *TOGGLES):  # already params or set at creation
                storage.set_trial_user_attr(trial_id, key, _plain(v))
        if artifacts is not None and run_dir is not None:  # only a trial not yet finished takes artifacts
            try:
                _attach_files(storage, trial_id, record, run_dir, artifacts, completed=ok,
                              with_checkpoint=ok and keep_checkpoints != "none", dataset=dataset)
            except AblateError as exc:  # the store is the record: a cell whose files are not there failed
                ok, reason = False, str(exc)
        storage.set_trial_user_attr(trial_id, "failure_reason", reason)
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE if ok else TrialState.FAIL, [value] if ok else None)
    except UpdateFinishedTrialError:  # another worker reclaimed it; the cell's result is that worker's
        print(f"warning: cell {cell.label} was reclaimed by another worker while it ran; this attempt's result "
              "is dropped", file=sys.stderr)
        reason = workers.RECLAIMED
        ok = False
    finally:
        if artifacts is not None and run_dir is not None:
            (run_dir / records.CHECKPOINT_FILE).unlink(missing_ok=True)
    return CellResult(cell.cell_id, cell.label, "completed" if ok else "failed", row.get("val_miou"),
                      row.get("test_miou"), seconds, reason)


def _attach_files(storage, trial_id: int, record: dict, run_dir: Path, artifacts: store.Artifacts, *,
                  completed: bool, with_checkpoint: bool, dataset=None) -> None:
    from ablate import record as records

    if not (run_dir / records.RECORD_FILE).is_file():
        records.write(run_dir, record, None)
    storage.set_trial_user_attr(trial_id, "artifact_store", artifacts.spec)
    store.attach(storage, trial_id, artifacts.store, run_dir / records.RECORD_FILE)
    if not completed:
        return
    checkpoint = run_dir / records.CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise AblateError(f"{checkpoint}: the completed run left no checkpoint")
    if dataset is not None:
        store.attach(storage, trial_id, artifacts.store, _predictions_png(run_dir, dataset))
    if with_checkpoint:
        store.attach(storage, trial_id, artifacts.store, checkpoint)


def _predictions_png(run_dir: Path, dataset) -> Path:
    """The run's predictions of the report gallery's val images (`analysis.gallery_indices`)."""
    from ablate import analysis
    from ablate.predict import load_run, predict_masks

    val = dataset.splits["val"]
    idx = analysis.gallery_indices(len(val))
    model, ckpt = load_run(run_dir)
    masks = predict_masks(model, val.images[idx], tuple(ckpt["image_size"]))
    return analysis.write_predictions_png(run_dir / analysis.PREDICTIONS_FILE, [m.numpy() for m in masks],
                                          [val.ids[i] for i in idx])


def run_flags(record: dict, summary: dict) -> dict[str, Any]:
    """A run's learning flags (see `ablate.stats.did_not_learn`), and `flags` in words for the
    dashboard: did not learn, still improving (best epoch = last), early-stopped."""
    from ablate import stats

    m = (record.get("metrics") or {}).get("val") or {}
    bar = stats.majority_bar(record.get("dataset"))
    dnl = stats.did_not_learn(m.get("pixel_acc"), m.get("miou"), bar) if record.get("status") == "completed" else None
    words = [w for w, on in (("did not learn", dnl), ("still improving: budget-limited", summary.get("best_is_last")),
                             ("early-stopped", summary.get("early_stopped"))) if on]
    if record.get("status") == "completed" and bar is None:
        words.append("did-not-learn bar unknown")
    return {"did_not_learn": dnl, "flags": "; ".join(words)}


CURVES = ("train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr")


def _curves(record: dict) -> dict[str, list]:
    """Per-epoch series for the dashboard, one user attr each (rounded for reading; the
    analysis reads the full-precision ones in the stored record)."""
    curves = record.get("curves") or []
    return {f"curve_{k}": [None if c.get(k) is None else float(f"{float(c[k]):.5g}") if k == "lr" else round(float(c[k]), 5)
                           for c in curves]
            for k in CURVES if curves}


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def work(gs: GridStorage, cells: list[Cell], datasets: Callable[[tuple[int, int]], Any], *, results_dir: Path,
         max_retries: int, on_result: Callable[[CellResult], None], progress: bool = False,
         requested: TrainConfig | None = None, artifacts: str | None = None, keep_checkpoints: str = "best") -> None:
    """Claim and run cells until none is left to claim and none runs elsewhere. `datasets`
    gives the data at an image size; `requested` (the study's [train]) is resolved here and
    must match the execution the study was created for before any cell is claimed. Each
    cell's files go to the artifact store `artifacts` (default: <results_dir>/<study>/artifacts)."""
    if requested is not None:
        check_execution(gs.study_name, (gs.study_attrs() or {}).get("grid") or {}, resolve_execution(requested),
                        requested)
    folder = store.study_dir(results_dir, gs.study_name)
    files = store.artifacts(artifacts or store.default_artifacts(results_dir, gs.study_name))
    while True:
        claimed = gs.claim(cells, max_retries=max_retries)
        if claimed is None:
            if not gs.running:
                return
            time.sleep(POLL_SECONDS)  # other workers' cells may fail (retry) or turn out lost (reclaim)
            continue
        cell, trial_id = claimed
        run_dir = f"{RUNS}/{cell.cell_id}/{gs.storage.get_trial_number_from_id(trial_id)}"
        gs.storage.set_trial_user_attr(trial_id, "run_dir", run_dir)  # relative to the study folder
        on_result(run_cell(gs, cell, trial_id, datasets(cell.config.image_size), run_dir=folder / run_dir,
                           progress=progress, artifacts=files, keep_checkpoints=keep_checkpoints))


# --------------------------------------------------------------------------- workers
def _worker(index: int, events, study: GridStudy, cells: list[Cell], url: str, results_dir: Path,
            cache_dir: Path, artifacts: str | None = None, keep_checkpoints: str = "best") -> None:
    """A spawned grid worker (`workers.supervise`): data from the cache, per image size, then cells."""
    try:
        work(GridStorage(url, study.name), cells, Datasets(study.train, cache_dir), results_dir=Path(results_dir),
             max_retries=study.max_retries, on_result=events.put, requested=study.train, artifacts=artifacts,
             keep_checkpoints=keep_checkpoints)
    except AblateError as exc:  # e.g. this worker resolves another precision: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run_workers(study: GridStudy, cells: list[Cell], url: str, *, results_dir: Path, cache_dir: Path,
                datasets: Callable[[tuple[int, int]], Any], on_result: Callable[[CellResult], None],
                progress: bool = False, artifacts: str | None = None, keep_checkpoints: str = "best") -> list[int]:
    """Run the grid on `study.workers` processes (in this process for one, with `datasets`;
    spawned workers load their data from `cache_dir`); returns the exit codes of workers
    that failed. A worker killed by a signal is replaced: each crash of a cell after its
    first is charged to --max-retries, so the replacements are bounded by the cells' retry budgets."""
    if study.workers == 1:
        with workers.sigterm_interrupts():
            work(GridStorage(url, study.name), cells, datasets, results_dir=results_dir,
                 max_retries=study.max_retries, on_result=on_result, progress=progress, requested=study.train,
                 artifacts=artifacts, keep_checkpoints=keep_checkpoints)
        return []
    return workers.supervise(_worker, (study, cells, url, results_dir, cache_dir, artifacts, keep_checkpoints),
                             workers=study.workers,
                             device=study.train.device, on_event=on_result,
                             respawns=len(cells) * (study.max_retries + 2))


# --------------------------------------------------------------------------- tables
RUN_COLUMNS = ("cell_id", "run_id", "label", "model", "model_args", "toggles", *TOGGLES, "factors", "seed", "status",
               "attempts",
               "trial_number", "did_not_learn", "best_is_last", "early_stopped", "flags", "val_miou", "val_pixel_acc",
               "val_mean_acc", "val_mdice", "val_loss", "test_miou", "test_pixel_acc", "test_mean_acc", "test_mdice",
               "test_loss", "best_epoch", "stopped_epoch", "max_epochs", "seconds", "images_per_second", "precision",
               "failure_reason", "run_dir", "design")
SUMMARY_METRICS = ("val_miou", "test_miou", "val_pixel_acc", "test_pixel_acc")


def runs_table(cells: list[dict], trials: list[FrozenTrial], *, results_dir: Path | None = None,
               study_name: str | None = None):
    """One row per cell: its identity, status and the metrics of the trial that speaks for it
    (from the trial's user attrs; a run record on disk fills in what the storage lacks)."""
    import pandas as pd

    from ablate import record as records

    states = cell_states(cells, trials)
    rows = []
    for cell in cells:
        state = states[cell["cell_id"]]
        row = {k: cell.get(k) for k in ("cell_id", "run_id", "model", "toggles", *TOGGLES, "seed")}
        row["label"] = trial_label(cell["model"], cell["toggles"], cell["seed"], cell.get("factors"))
        row["model_args"] = json.dumps(cell.get("model_args") or {}, sort_keys=True)
        # factor levels ({"loss": "dice"}, JSON) and the design with every factor's levels, when the study has them
        row["factors"] = json.dumps(cell["factors"]) if cell.get("factors") else None
        row["design"] = json.dumps(cell["design"]) if cell.get("design") else None
        row.update(status=state.status, attempts=state.attempts)
        t = state.trial
        if t is not None:
            attrs = dict(t.user_attrs)
            run_json = (store.study_dir(results_dir, study_name) / attrs.get("run_dir", f"{RUNS}/{cell['cell_id']}")
                        if results_dir else None)
            if state.status == "completed" and attrs.get("val_miou") is None and run_json and (run_json / records.RECORD_FILE).is_file():
                record = records.read(run_json)
                attrs.update(records.summary(record))
                attrs.update(run_flags(record, attrs))
            row["trial_number"] = t.number
            for key in RUN_COLUMNS:
                if key not in row and key in attrs:
                    row[key] = attrs[key]
            if t.state == TrialState.FAIL:
                row["failure_reason"] = failure_reason(t)
            if state.status == "running":
                row["failure_reason"] = None
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def summary_table(runs, bar: dict | None = None):
    """Per model x toggle setting, over seeds: n, mean and std of val/test mIoU and pixel acc,
    and the flags: `did_not_learn` (the mean val pixel acc or mIoU at or below the
    all-majority prediction's `bar`; empty when the bar is unknown), how many seeds did not
    learn, were still improving at their last epoch, or stopped early."""
    import pandas as pd

    from ablate import stats

    done = runs[runs["status"] == "completed"].copy()
    done["factors"] = done["factors"].fillna("") if "factors" in done else ""  # cells differing in a factor stay apart
    keys = ["model", "model_args", "toggles", *TOGGLES, "factors"]
    counts = ["n_did_not_learn", "n_best_is_last", "n_early_stopped"]
    columns = keys + ["n"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")] + ["did_not_learn", *counts]
    if done.empty:
        return pd.DataFrame(columns=columns)
    for m in SUMMARY_METRICS:
        done[m] = pd.to_numeric(done[m], errors="coerce")
    for flag, count in zip(("did_not_learn", "best_is_last", "early_stopped"), counts):
        done[count] = done[flag].astype(str).str.lower().isin(("true", "1", "1.0")) if flag in done else False
    grouped = done.groupby(keys, sort=False)
    out = grouped.size().rename("n").to_frame()
    for m in SUMMARY_METRICS:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1)
    for count in counts:
        out[count] = grouped[count].sum().astype(int)
    out["did_not_learn"] = [stats.did_not_learn(a, m, bar) for a, m in zip(out["val_pixel_acc_mean"], out["val_miou_mean"])]
    return out.reset_index()[columns]


def write_tables(gs: GridStorage, results_dir: Path) -> tuple[Path, Path]:
    """Rebuild runs.csv and summary.csv from the storage (atomically); name the objective
    for the dashboard on the way."""
    from ablate import stats

    attrs = gs.study_attrs() or {}
    runs = runs_table(attrs.get("cells") or [], gs.trials(), results_dir=results_dir, study_name=gs.study_name)
    folder = store.study_dir(results_dir, gs.study_name)
    name_objective(gs)
    bar = stats.majority_bar(attrs.get("dataset") or _study_json(folder).get("dataset"))
    return (_io.write_csv(folder / "runs.csv", runs),
            _io.write_csv(folder / "summary.csv", summary_table(runs, bar)))


def prune_checkpoints(gs: GridStorage, artifacts: store.Artifacts, keep: str) -> list[str]:
    """--keep-checkpoints best: once the grid is done, remove from `artifacts` the checkpoint of
    every completed trial except those the report's gallery (and `ablate predict`) needs: per
    architecture, the best seed of its best cell (`analysis.gallery_keys`). A finished trial's
    artifact list cannot change, so the removed ids are listed in the study attr
    `pruned_checkpoints` (the report says "pruned", not "missing"). Trials whose files went to
    another store are left to that store's machine. Returns the ids removed now."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    from ablate import analysis
    from ablate.record import CHECKPOINT_FILE

    if keep != "best":
        return []
    with gs.lock():
        attrs, trials = gs.study_attrs() or {}, gs.trials()
        cells = attrs.get("cells") or []
        states = cell_states(cells, trials)
        wanted = {states[k].trial.number for k in analysis.gallery_keys(runs_table(cells, trials)) if k in states}
        pruned, removed = list(attrs.get("pruned_checkpoints") or []), []
        for t in trials:
            aid = store.artifact_ids(t.system_attrs).get(CHECKPOINT_FILE)
            if (t.state != TrialState.COMPLETE or t.number in wanted or not aid or aid in pruned
                    or t.user_attrs.get("artifact_store") != artifacts.spec):
                continue
            with contextlib.suppress(ArtifactNotFound):
                artifacts.store.remove(aid)
            pruned.append(aid)
            removed.append(aid)
        if removed:
            gs.storage.set_study_user_attr(gs.study_id(), "pruned_checkpoints", pruned)
    return removed


OBJECTIVE_NAME = "val mIoU"


def name_objective(gs: GridStorage) -> None:
    """The dashboard says 'val mIoU', not 'Objective 0' (Study.set_metric_names, once)."""
    if gs.study_id() is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(study_name=gs.study_name, storage=gs.storage)
        if study.metric_names != [OBJECTIVE_NAME]:
            study.set_metric_names([OBJECTIVE_NAME])


def _study_json(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "study.json").read_text())
    except (OSError, ValueError):
        return {}  # tables are rebuilt without the bar; the report names a broken study.json


def write_study_json(results_dir: Path, study: GridStudy, url: str, attrs: dict[str, Any], dataset_summary: dict,
                     command: list[str] | None = None, artifacts: str | None = None) -> Path:
    """The study's description for the report: what it holds (`attrs` from `prepare`: every
    seed run so far), where it is stored, and the `ablate` arguments that ran it (so the
    report can print the exact command that adds seeds). A local export of what the storage
    holds (`study_meta` rebuilds it from the storage anywhere)."""
    meta = study_meta(study.name, url, {**attrs, "setup": _setup(study), "dataset": dataset_summary, "command": command})
    meta["artifacts"] = artifacts
    return _io.write_json(store.study_dir(results_dir, study.name) / "study.json", meta)


def _setup(study: GridStudy) -> dict[str, Any]:
    return {"models": list(study.models), "model_args": study.model_args, "toggles": list(study.toggles),
            "train": {k: v for k, v in study.train.to_dict().items() if k not in CELL_FIELDS},
            "max_retries": study.max_retries, "workers": study.workers}


def study_meta(name: str, url: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """study.json's content from the study's user attrs (`GridStorage.prepare`)."""
    setup = attrs.get("setup") or {}
    return {
        "kind": KIND, "study_name": name, "description": attrs.get("description", ""),
        "storage": store.mask_url(url), "grid": attrs.get("grid"), "grid_hash": attrs.get("grid_hash"),
        "cells": len(attrs.get("cells") or []), "models": setup.get("models"), "model_args": setup.get("model_args"),
        "toggles": setup.get("toggles"), "seeds": attrs.get("seeds"), "train": setup.get("train"),
        "max_retries": setup.get("max_retries"), "workers": setup.get("workers"), "command": attrs.get("command"),
        "dataset": attrs.get("dataset"), "tables": {"runs": "runs.csv", "summary": "summary.csv"},
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class Progress:
    cells: int
    completed: int
    running: int
    failed: int  # genuine failures, retried or not
    pending: int
    compute_seconds: float  # wall time of all trials so far (running ones up to now)
    failed_cells: list[tuple[str, str]]  # (label, reason)


def progress(cells: list[dict], trials: list[FrozenTrial], max_retries: int | None = None) -> Progress:
    states = cell_states(cells, trials, max_retries)
    count = {s: sum(st.status == s for st in states.values()) for s in ("completed", "running", "failed", "retry", "pending")}
    now = datetime.datetime.now()
    compute = 0.0
    for t in trials:
        if t.datetime_start is not None:
            compute += max(0.0, ((t.datetime_complete or now) - t.datetime_start).total_seconds())
    labels = {c["cell_id"]: f"{c['model']} {c['toggles']}" + "".join(f" {k}={v}" for k, v in (c.get("factors") or {}).items())
              + f" seed {c['seed']}" for c in cells}
    failed = [(labels[cid], failure_reason(st.trial) or "") for cid, st in states.items() if st.status == "failed"]
    return Progress(len(cells), count["completed"], count["running"], count["failed"],
                    count["pending"] + count["retry"], compute, failed)

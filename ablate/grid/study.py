"""Grid study files: a study file (or the built-in quick study), with flags on top -> GridStudy.

Every value is checked against its declared option (ablate.options): the TrainConfig fields for
[train], [model_train.MODEL] and [factors], the models' signatures for [model_args.MODEL] and
--model-arg, and STUDY_OPTIONS for the top-level keys; a mistake is one line naming the flag,
or the file, the line and the key. ablate.grid.definition expands a GridStudy into cells."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate import store
from ablate.stats import DEFAULT_MIN_EFFECT
from ablate.seedplan import SeedPlan
from ablate.config import TOGGLES, TRAIN_OPTIONS, TrainConfig
from ablate.errors import AblateError
from ablate.options import CELL, RUN, STUDY, TOGGLE, Option, coerce, flag, split_assignment, unknown_key
from ablate.studyfile import Source, check_keys, read_study, table

DEFAULT_STUDY_FILE = Path("studies") / "quick.toml"


def _keys(*scopes: str) -> tuple[str, ...]:
    """The TrainConfig options a study may set where `scopes` say (`Option.scope`)."""
    return tuple(name for name, option in TRAIN_OPTIONS.items() if option.scope in scopes)


CELL_FIELDS = _keys(CELL, TOGGLE)  # set per cell, never in [train]
TRAIN_KEYS = _keys(STUDY, RUN)  # [train]
SHARED_KEYS = _keys(STUDY)  # [train] keys a model may not override: one dataset and execution set-up per study
MODEL_TRAIN_KEYS = _keys(RUN)  # [model_train.MODEL]
# Factors: the training options and the toggles; not the architecture (`models` / `model_args`),
# the seed (the replicate), or the dataset and execution set-up (one per study)
FACTOR_KEYS = _keys(RUN, TOGGLE)
NOT_FACTORS = _keys(CELL, STUDY)
STUDY_KEYS = ("name", "description", "models", "model_args", "model_train", "toggles", "factors", "design", "seeds",
              "min_effect", "train", "max_retries", "workers", "storage")
DESIGNS = ("full", "fractional", "one-at-a-time")
# The study's own settings (models, toggles, seeds and the tables are read by build_study)
STUDY_OPTIONS = {
    "name": Option(str),  # store.check_study_name: it names a folder
    "description": Option(str),
    "design": Option(str, choices=DESIGNS),
    "max_retries": Option(int, ge=0),
    "workers": Option(int, ge=1, also=("auto",)),
    "storage": Option(str, pattern=".+", words="a storage URL or a journal file path"),
    "min_effect": Option(float, gt=0, lt=1, words="a minimum effect of interest in mIoU, > 0 and < 1 (e.g. 0.01)"),
}
TOGGLE_NAME = Option(str, choices=TOGGLES)
SEEDS_RULE = ("a count >= 1, a list of distinct integers >= 0 (3 or [0, 5, 7]), or sequential seeds: auto, "
              "auto:MIN-MAX (auto:3-10) or {min = 3, max = 10}")
SEQUENTIAL_DEFAULT = (3, 10)  # --seeds auto

# The built-in quick study: what studies/quick.toml says, for when that file is not around.
QUICK_STUDY: dict[str, Any] = {
    "name": "quick",
    "description": ("U-Net (8 wide) x all 8 toggle settings on the embedded synthetic dataset, 3 seeds, in minutes on "
                    "2 CPU cores; the four-architecture study is studies/four-archs.toml."),
    "models": ["unet"],
    "toggles": list(TOGGLES),
    "seeds": 3,
    "max_retries": 1,
    "model_args": {"unet": {"base_channels": 8}, "resnet18": {"weights": "none", "freeze_encoder": False}},
    "train": {"data": "synthetic", "image_size": 32, "epochs": 14, "batch_size": 8, "lr": 8e-3,
              "class_weights": "enet", "patience": 0},
}


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
    seeds: tuple[int, ...] = (0,)  # every setting runs once per seed (sequential: the most it may run)
    sequential: SeedPlan | None = None  # --seeds auto: seeds added in stages (ablate.grid.stages)
    min_effect: float = DEFAULT_MIN_EFFECT  # δ: the smallest effect on mIoU worth knowing about
    train: TrainConfig = field(default_factory=TrainConfig)  # options shared by every cell
    max_retries: int = 1  # a failed cell runs again up to this many times (this run or a later one)
    workers: int | str = "auto"  # worker processes on this machine; "auto": `resolve_workers`
    storage: str | None = None  # Optuna storage URL; None: a file under <results-dir>/<name>/
    description: str = ""  # free text for the report


def default_study_file() -> Path | None:
    """studies/quick.toml under the working directory, else beside the package."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / DEFAULT_STUDY_FILE).is_file():
            return root / DEFAULT_STUDY_FILE
    return None


def read_grid_study(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> GridStudy:
    """The study in `path` (default: studies/quick.toml, else the built-in quick study), with
    `overrides` (flags: study key or [train] key -> value) on top. Everything is validated."""
    if path is None:
        found = default_study_file()
        raw, where = read_study(found) if found else (QUICK_STUDY, Source("built-in quick study"))
    else:
        raw, where = read_study(Path(path))
    return build_study(raw, where=where, overrides=overrides or {},
                       default_name=Path(path).stem if path is not None else "quick")


def build_study(raw: dict[str, Any], *, where: str | Source, overrides: dict[str, Any],
                default_name: str = "quick") -> GridStudy:
    """The study `raw` (a study file's tables) with `overrides` (flags) on top, every value
    checked against its option (ablate.options): one line naming the flag, or the file, the
    line and the key."""
    from ablate.models import check_model_name, list_models

    src = where if isinstance(where, Source) else Source(str(where))
    check_keys(raw, STUDY_KEYS, src)
    for key in ("train", "model_args", "model_train", "factors"):
        table(raw.get(key, {}), src.at(key))
    check_keys(raw.get("train", {}), TRAIN_KEYS, src, "train",
               hint="; model, model args, toggles and seeds are set at the top level")
    study = _Reader(raw, src, overrides)
    name = store.check_study_name(study.read("name", STUDY_OPTIONS["name"], default_name), study.given("name")[1])
    value, label, _ = study.given("models")
    models = _names(value if value is not None else list_models(), label, "model")
    for model in models:  # models from elsewhere: imported (or smp found) now, one line if not
        check_model_name(model, label)
    factors_raw = _factor_tables(raw, src, overrides.get("factor") or ())
    value, label, _ = study.given("toggles")
    value = _names(value if value is not None else [] if factors_raw else list(TOGGLES), label, "toggle", none=True)
    toggles = tuple(t for t in TOGGLES if t in {coerce(TOGGLE_NAME, v, label) for v in value})  # canonical order
    value, label, _ = study.given("seeds")
    seeds, sequential = parse_seeds(value if value is not None else 1, label)
    model_args = _model_args(raw, src, models, overrides.get("model_arg") or ())
    train = {key: study.read(key, TRAIN_OPTIONS[key], None, "train") for key in TRAIN_KEYS}
    factors, on = _factors(factors_raw, toggles, overrides)
    toggles = tuple(t for t in TOGGLES if t in toggles or t in on)
    design = _design(study.read("design", STUDY_OPTIONS["design"], "full"), study.given("design")[1], toggles, factors)
    return GridStudy(name=name, models=models, model_args=model_args, toggles=toggles, factors=factors,
                     design=design, seeds=seeds, sequential=sequential,
                     min_effect=study.read("min_effect", STUDY_OPTIONS["min_effect"], DEFAULT_MIN_EFFECT), train=TrainConfig(**{k: v for k, v in train.items() if v is not None}),
                     model_train=_model_train(raw, src, models, factors, overrides),
                     **{key: study.read(key, STUDY_OPTIONS[key], default)
                        for key, default in (("max_retries", 1), ("workers", "auto"), ("storage", None),
                                             ("description", ""))})


@dataclass(frozen=True)
class _Reader:
    """A study's settings: from its flag when one is given (command-line text), else the file's."""

    raw: dict[str, Any]
    src: Source
    overrides: dict[str, Any]

    def given(self, key: str, *path: str) -> tuple[Any, str, bool]:
        """(value or None, the label its errors name, whether it is command-line text)."""
        if self.overrides.get(key) is not None:
            return self.overrides[key], "--study-name" if key == "name" else flag(key), True
        values = self.raw
        for part in path:
            values = values.get(part, {})
        return values.get(key), self.src.at(*path, key), False

    def read(self, key: str, option: Option, default: Any, *path: str) -> Any:
        value, label, text = self.given(key, *path)
        return default if value is None else coerce(option, value, label, text=text)


def _names(value: Any, label: str, what: str, none: bool = False) -> tuple[str, ...]:
    """A list of names: a study file's list, or 'a,b' from a flag ('none' for none, where `none`)."""
    if isinstance(value, str):
        value = [] if none and value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AblateError(f"{label}: expected a list of names, got {value!r}")
    if not value and not none:
        raise AblateError(f"{label}: expected at least one {what}, got none")
    if len(set(value)) != len(value):
        raise AblateError(f"{label}: {what}s repeat in {value}")
    return tuple(value)


def _model_args(raw: dict[str, Any], src: Source, models: tuple[str, ...], flags: Sequence[str]) -> dict[str, dict]:
    """[model_args.MODEL], then --model-arg [MODEL.]KEY=VALUE on top; kept for the study's models."""
    from ablate.models import check_model_name, model_args_from_flags, model_option, model_params

    out: dict[str, dict[str, Any]] = {}
    for model, values in raw.get("model_args", {}).items():
        check_model_name(model, f"{src.where('model_args', model)}: model_args")
        check_keys(table(values, src.at("model_args", model)), model_params(model), src, "model_args", model)
        out[model] = {key: coerce(model_option(model, key), value, src.at("model_args", model, key), text=True)
                      for key, value in values.items()}  # a string is read as a flag's value is ("none")
    for model, values in model_args_from_flags(models, flags).items():
        out.setdefault(model, {}).update(values)
    return {model: args for model, args in out.items() if model in models and args}


def _model_train(raw: dict[str, Any], src: Source, models: tuple[str, ...], factors: dict[str, tuple],
                 overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """[model_train.MODEL]: that model's cells train with these instead of [train]; a flag wins
    over both, and a factor sets its option in every cell."""
    from ablate.models import check_model_name

    out = {}
    for model, values in raw.get("model_train", {}).items():
        check_model_name(model, f"{src.where('model_train', model)}: model_train")
        check_keys(table(values, src.at("model_train", model)), MODEL_TRAIN_KEYS, src, "model_train", model,
                   hint=f"; {', '.join(SHARED_KEYS)} are shared by every model ([train])")
        typed = {key: coerce(TRAIN_OPTIONS[key], value, src.at("model_train", model, key))
                 for key, value in values.items() if overrides.get(key) is None and key not in factors}
        if model in models and typed:
            out[model] = typed
    return out


# --------------------------------------------------------------------------- factors
def _factor_tables(raw: dict[str, Any], src: Source, flags: Sequence[str]) -> dict[str, tuple[list, str, bool]]:
    """[factors] and --factor KEY=A,B,... (a flag replaces the file's entry): key -> (raw levels,
    the label errors name, whether the levels are command-line text)."""
    out = {}
    for key, levels in raw.get("factors", {}).items():
        _check_factor(key, src.where("factors", key), f"factors.{key}")
        if not isinstance(levels, list):
            raise AblateError(f"{src.at('factors', key)}: expected a list of levels, e.g. {key} = [{_example(key)}], "
                              f"got {levels!r}")
        out[key] = (levels, src.at("factors", key), False)
    seen = set()
    for text in flags:
        key, levels = split_assignment(text, "--factor", "KEY=LEVEL,LEVEL,... (e.g. loss=ce,dice)")
        _check_factor(key, "--factor", key)
        if key in seen:
            raise AblateError(f"--factor {key}: given twice; list every level in one --factor {key}=A,B")
        seen.add(key)
        out[key] = ([v.strip() for v in levels.split(",") if v.strip()], f"--factor {key}", True)
    return out


def _check_factor(key: str, where: str, shown: str) -> None:
    if key not in FACTOR_KEYS:
        hint = ("; models, model_args and seeds are set at the top level, and data, num_classes, ignore_index, "
                "val_fraction, precision, device and compile are one per study" if key in NOT_FACTORS else "")
        raise unknown_key(where, shown, FACTOR_KEYS, hint)


def _example(key: str) -> str:
    return {"loss": '"ce", "dice"', "optimizer": '"adamw", "sgd"', "image_size": "64, 128"}.get(key, "A, B")


def _factors(raw: dict[str, tuple[list, str, bool]], toggles: tuple[str, ...],
             overrides: dict[str, Any]) -> tuple[dict[str, tuple], set[str]]:
    """Typed, checked levels per factor; a toggle given as [off, on] joins `toggles` (the second
    value returned), one given a single level stays a fixed factor."""
    factors, on = {}, set()
    for key, (values, label, text) in raw.items():
        if not values:
            raise AblateError(f"{label}: expected at least one level, e.g. {key} = [{_example(key)}]")
        if overrides.get(key) is not None:
            raise AblateError(f"{label}: {flag(key)} also sets {key}; drop one of them")
        if key in toggles:
            raise AblateError(f"{label}: {key} is also in toggles (switched off and on); list it once")
        levels = tuple(coerce(TRAIN_OPTIONS[key], v, label, text=text) for v in values)
        if len(set(levels)) != len(levels):
            raise AblateError(f"{label}: levels repeat in {values}")
        if key in TOGGLES and len(levels) == 2:
            if levels != (False, True):
                raise AblateError(f"{label}: a toggle's levels are off and on, off first (the reference); got {values}")
            on.add(key)
        else:
            factors[key] = levels
    return factors, on


def _design(value: str, label: str, toggles: tuple[str, ...], factors: dict[str, tuple]) -> str:
    """The design, when the factors allow it: a fractional design needs two-level factors."""
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


def parse_seeds(value: Any, label: str) -> tuple[tuple[int, ...], SeedPlan | None]:
    """(seeds, sequential plan): 3 -> (0, 1, 2); [0, 5, 7] or '0,5,7' -> (0, 5, 7); 'auto' ->
    seeds 0..9 decided in stages from 3; 'auto:4-12' or {min = 4, max = 12} -> 0..11 from 4."""
    plan = _sequential(value, label)
    if plan is not None:
        return tuple(range(plan.max)), plan
    return _fixed_seeds(value, label), None


def _sequential(value: Any, label: str) -> SeedPlan | None:
    """The plan of sequential seeds `value` asks for, or None for fixed seeds."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"min", "max", "spending"})
        low, high = value.get("min", SEQUENTIAL_DEFAULT[0]), value.get("max", SEQUENTIAL_DEFAULT[1])
        if unknown or not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise AblateError(f"{label}: expected {SEEDS_RULE}, got {value!r}")
        return _plan(low, high, value.get("spending", "pocock"), label)
    if not isinstance(value, str) or not value.strip().lower().startswith("auto"):
        return None
    match = re.fullmatch(r"auto(?::(\d+)-(\d+))?", value.strip().lower())
    if match is None:
        raise AblateError(f"{label}: expected {SEEDS_RULE}, got {value!r}")
    low, high = (int(match[1]), int(match[2])) if match[1] else SEQUENTIAL_DEFAULT
    return _plan(low, high, "pocock", label)


def _plan(low: int, high: int, shape: Any, label: str) -> SeedPlan:
    try:
        return SeedPlan(low, high, str(shape))
    except AblateError as exc:
        raise AblateError(f"{label}: {str(exc).removeprefix('seeds: ')}") from None


def _fixed_seeds(value: Any, label: str) -> tuple[int, ...]:
    seeds = value
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if parts and all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
            seeds = int(parts[0]) if len(parts) == 1 and "," not in value else [int(p) for p in parts]
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        return tuple(range(seeds))
    if (isinstance(seeds, list) and seeds and len(set(seeds)) == len(seeds)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        return tuple(seeds)
    raise AblateError(f"{label}: expected {SEEDS_RULE}, got {value!r}")

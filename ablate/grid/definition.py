"""Grid definition: a study file (or the built-in quick study) -> GridStudy -> cells.

Every cell is one architecture x one setting of the factors (toggles on/off, [factors]) x one
seed, with its TrainConfig and its id; the grid definition (its hash) is what a rerun must match."""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ablate import workers
from ablate.config import TOGGLES, TrainConfig, parse_image_size, stable_hash
from ablate.errors import AblateError
from ablate.studyfile import read_toml

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
# How often an idle worker looks again while other workers' cells run (a grid ends at most this
# late after its last cell): often for a file storage (one machine, a local lock), less for a
# database server shared by many machines (each look takes the study lock and reads every trial).
POLL_SECONDS = {"file": 0.1, "sqlite": 0.25, "server": 1.0}  # a look at a journal file: 1-3 ms
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



"""Grid definition: a GridStudy (ablate.grid.study reads it from a study file) -> cells.

Every cell is one architecture x one setting of the factors (toggles on/off, [factors]) x one
seed, with its TrainConfig and its id; the grid definition (its hash) is what a rerun must match."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate import workers
from ablate.config import TOGGLES, TrainConfig, stable_hash
from ablate.errors import AblateError
from ablate.results import trial_label  # noqa: F401  (how a stored trial is labelled: the read side's)
# the study file's reader, and the names the grid package has always had from here
from ablate.grid.study import (CELL_FIELDS, DEFAULT_STUDY_FILE, DESIGNS, FACTOR_KEYS, MODEL_TRAIN_KEYS,  # noqa: F401
                               NOT_FACTORS, QUICK_STUDY, SHARED_KEYS, STUDY_KEYS, TRAIN_KEYS, GridStudy, build_study,
                               default_study_file, parse_seeds, read_grid_study, varying_factors_of)

KIND = "grid"
RUNS = "runs"  # attempt folders: <study>/runs/<cell_id>/<trial number>/
# How often an idle worker looks again while other workers' cells run (a grid ends at most this
# late after its last cell): often for a file storage (one machine, a local lock), less for a
# database server shared by many machines (each look takes the study lock and reads every trial).
POLL_SECONDS = {"file": 0.1, "sqlite": 0.25, "server": 1.0}  # a look at a journal file: 1-3 ms


# --------------------------------------------------------------------------- definition
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


def resolve_workers(study: GridStudy, cells: list[Cell], execution: dict[str, str]) -> GridStudy:
    """`workers = "auto"` made a number for these cells on this machine (`workers.auto_workers`)."""
    if study.workers != "auto":
        return study
    n = workers.auto_workers(len(cells), device=execution["device"], gpus=len(workers.visible_gpus()),
                             cores=workers.cores())
    return dataclasses.replace(study, workers=n)


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



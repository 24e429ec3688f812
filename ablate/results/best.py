"""Results stage, the one best-run rule: which run of a study the report's gallery shows and
--keep-checkpoints best keeps. Per architecture, the cell with the highest mean val mIoU and,
in it, the seed with the highest val mIoU; ties go to what ran first (the lower trial number;
for a cell, its first run's), and means are exact sums (math.fsum), because cells that did
not learn often tie exactly. A tune is one architecture whose every trial is its own cell."""
from __future__ import annotations

import json
import math
from typing import Hashable, Iterable, NamedTuple

from optuna.trial import FrozenTrial, TrialState


class Run(NamedTuple):
    key: str  # the run: a grid cell id, a tune trial number
    arch: Hashable  # what runs are ranked within: an architecture (model and its arguments)
    cell: Hashable  # the runs that differ only in their seed
    value: float  # val mIoU
    order: float  # when it ran (trial number): ties go to the lower


def rank(value: float, order: float) -> tuple[float, float]:
    """Sort key of the rule: the higher value first, then what ran first."""
    return -value, order


def _standing(runs: list[Run]) -> tuple[float, float]:
    """A cell's rank: its exact mean value and its first run's order."""
    return rank(math.fsum(r.value for r in runs) / len(runs), min(r.order for r in runs))


def best_runs(runs: Iterable[Run]) -> list[Run]:
    """The rule's choice, one run per architecture (in the order the architectures first
    appear): the best run of the best cell. `runs` are completed runs with a value."""
    archs: dict[Hashable, dict[Hashable, list[Run]]] = {}
    for r in runs:
        archs.setdefault(r.arch, {}).setdefault(r.cell, []).append(r)
    out = []
    for cells in archs.values():
        # equal standings (possible only for runs of unknown order) go to the cell named first
        best = min(cells.values(), key=lambda rs: (_standing(rs), str(rs[0].cell)))
        out.append(min(best, key=lambda r: rank(r.value, r.order)))
    return out


def setting(cell: dict) -> tuple:
    """(model, its arguments, toggles, factor levels) of a grid cell brief: its cell without
    the seed; the first two name its architecture."""
    return (cell["model"], json.dumps(cell.get("model_args") or {}, sort_keys=True), cell["toggles"],
            json.dumps(cell.get("factors") or {}, sort_keys=True))


def best_grid_runs(cells: list[dict], trials: list[FrozenTrial]) -> list[Run]:
    """The rule's choice among a grid's completed cells (`cells`: the briefs the study attrs
    keep), each cell as the trial that speaks for it says (`cells.cell_states`): what
    --keep-checkpoints best keeps and the report's gallery shows. Run.order is the trial number."""
    from ablate.results.cells import cell_states

    states = cell_states(cells, trials)
    runs = []
    for c in cells:
        t = states[c["cell_id"]].trial
        value = _completed_value(t) if states[c["cell_id"]].status == "completed" else None
        if value is not None:
            key = setting(c)
            runs.append(Run(c["cell_id"], key[:2], key, value, t.number))
    return best_runs(runs)


def _completed_value(trial: FrozenTrial) -> float | None:
    v = trial.user_attrs.get("val_miou")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

"""Analysis stage, sequential seeds as a study records them (the plan is `ablate.seedplan`):
each architecture's recorded looks, and what they say:
decided at n seeds, undecided at the maximum, or still running, with the runs used beside a
fixed design's. The decisions themselves are taken by `ablate.grid.stages`."""
from __future__ import annotations

from typing import Any

from ablate.decisions import DECIDED, NO_ESTIMATE, UNLEARNED, ZERO_SPREAD, Look, first_decisions
from ablate.results import cells as results_cells
from ablate.seedplan import STAGES_ATTR, SeedPlan, open_seeds, plan_of  # noqa: F401  (the read side's names)

FINAL = (*DECIDED, UNLEARNED, ZERO_SPREAD, NO_ESTIMATE)  # states more seeds cannot change


def status(record: dict | None, plan: SeedPlan) -> str:
    """'decided at 3 seeds', 'undecided at the maximum (10 seeds)', 'running: 5 seeds',
    'stopped at 4 seeds (no verdict possible: ...)'."""
    looks = [Look.from_dict(d) for d in (record or {}).get("looks", [])]
    target = (record or {}).get("target", plan.min)
    if target is not None:
        return f"running: {target} seeds"
    words = [w for w, _ in first_decisions(looks).values()]
    n = looks[-1].n if looks else 0
    if all(w in DECIDED for w in words):
        return f"decided at {n} seeds"
    if any(w in (UNLEARNED, ZERO_SPREAD) for w in words):
        why = "a cell did not learn" if UNLEARNED in words else "every seed gave the same result"
        return f"stopped at {n} seeds: no verdict possible ({why})"
    return f"undecided at the maximum ({n} seeds)" if n >= plan.max else f"stopped at {n} seeds (failed cells)"


def recorded_looks(attrs: dict[str, Any]) -> tuple[dict[str, list[Look]], str | None]:
    """A sequential study's looks per architecture and the metric they decide on (the
    analysis's `looks` / `decision_metric`); ({}, None) for a fixed design."""
    records = attrs.get(STAGES_ATTR) or {}
    looks = {m: [Look.from_dict(d) for d in r.get("looks", [])] for m, r in records.items()}
    metric = next((r.get("metric") for r in records.values() if r.get("metric")), None)
    return looks, metric


def summary_lines(attrs: dict[str, Any]) -> list[str]:
    """Per architecture of a sequential study (a grid study's attrs, or its study.json: with
    `decisions`, `stages` and `cells_per_seed`): decided at n seeds, undecided at the maximum or
    still running, the runs it used and those a fixed design at the maximum would use."""
    plan = plan_of(attrs)
    if plan is None:
        return []
    records = attrs.get(STAGES_ATTR) or {}
    seeds = list(range(plan.max))
    lines = []
    for model, per_seed in cells_per_seed(attrs).items():
        used = per_seed * len(open_seeds(seeds, records.get(model), plan))
        lines.append(f"{model}: {status(records.get(model), plan)}; {used} runs (a fixed design at {plan.max} seeds: "
                     f"{per_seed * plan.max})")
    return lines


def cells_per_seed(attrs: dict[str, Any]) -> dict[str, int]:
    """Each model's cells per seed: study.json's count, or from the cell list a grid stores."""
    if isinstance(attrs.get("cells_per_seed"), dict):
        return {k: int(v) for k, v in attrs["cells_per_seed"].items()}
    cells = attrs.get("cells")
    return results_cells.cells_per_seed(cells) if isinstance(cells, list) else {}

"""Grid stage, sequential seeds (`ablate grid --seeds auto`): each architecture runs its
minimum of seeds, then, at each look, the family of its main effects is judged at that look's
group-sequential thresholds; an architecture with an effect still undecided gets the next stage
of seeds, until every effect is decided or the maximum is reached.

Error control over the looks: each main effect's tests run at level α/m (m main effects; an
effect's difference and equivalence hypotheses cannot both be true), and each is a
group-sequential t-test whose level is spent over the looks by the Lan-DeMets Pocock shape
(`stats.gs_boundaries`: thresholds that account for the looks' correlation), so the chance of
any false verdict for an architecture and metric is at most α over every look
(benchmarks/sequential.py measures it). A verdict, once given, stands. The intervals reported
are the plain 95% t intervals over all the seeds run.

A look is data: it is taken once, by whichever worker first finds a stage complete, under the
grid's lock, and recorded in the study's `stages` attr, so every machine and every rerun
agree on which seeds run. The pure part (`take_look`, `next_target`) is what the benchmark
simulates; `advance` is what a claim calls."""
from __future__ import annotations

from typing import Any

import pandas as pd

from ablate.analysis.effects import factorial_effects
from ablate.analysis.runs import completed_runs, primary_metric
from ablate.analysis.sequential import FINAL
from ablate.decisions import Look, first_decisions, look
from ablate.results.cells import cell_states, runs_table
from ablate.seedplan import STAGES_ATTR, SeedPlan, open_cells


def take_look(runs: pd.DataFrame, metric: str, plan: SeedPlan, previous: list[Look], *, delta: float) -> Look | None:
    """One architecture's look at its completed `runs`: its main effects on `metric`, judged as one
    family at this look's group-sequential thresholds. None when no new seed has completed in
    every cell since the last look (nothing to look at)."""
    effects = factorial_effects(runs, metrics=(metric,), min_effect=delta)
    mains = [] if effects.empty else effects[effects["kind"] == "main"].to_dict("records")
    n = min((int(r["n"] or 0) for r in mains), default=0)
    last = max((lk.n for lk in previous), default=0)
    if n <= last or n < 2:
        return None
    return look(mains, delta=delta, looks=(*[lk.n for lk in previous], n), n_max=plan.max, shape=plan.shape)


def next_target(looks: list[Look], plan: SeedPlan) -> int | None:
    """The seeds the architecture should have next: the schedule's next count after the last
    look while some effect is undecided (and more seeds could decide it); None to stop."""
    if not looks:
        return plan.min
    if all(word in FINAL for word, _ in first_decisions(looks).values()):
        return None
    later = [n for n in plan.schedule() if n > looks[-1].n]
    return later[0] if later else None


def advance(cells: list[dict], trials: list, attrs: dict[str, Any], plan: SeedPlan, *, delta: float,
            max_retries: int) -> dict[str, dict] | None:
    """Take every look that is due: an architecture whose open cells have all finished (or
    used up their retries) and whose last look is not at that count. Returns the new `stages`
    attr, or None when nothing changed. Called under the grid lock."""
    records = {k: dict(v) for k, v in (attrs.get(STAGES_ATTR) or {}).items()}
    states = cell_states(cells, trials, max_retries)
    opened = open_cells(cells, attrs, plan)
    changed = False
    for model in dict.fromkeys(c["model"] for c in cells):
        record = records.get(model) or {"looks": [], "target": plan.min}
        mine = [c for c in opened if c["model"] == model]
        if record.get("target") is None or any(states[c["cell_id"]].status not in ("completed", "failed") for c in mine):
            continue
        records[model], changed = _look_at(record, mine, trials, attrs, plan, delta), True
    return records if changed else None


def _look_at(record: dict, cells: list[dict], trials: list, attrs: dict, plan: SeedPlan, delta: float) -> dict:
    """An architecture's record after the look its finished stage is due."""
    runs = completed_runs(runs_table(cells, trials), attrs.get("dataset"))
    metric = record.get("metric") or (primary_metric(runs) if not runs.empty else "val_miou")
    previous = [Look.from_dict(d) for d in record.get("looks", [])]
    new = None if runs.empty else take_look(runs, metric, plan, previous, delta=delta)
    looks = previous + ([new] if new is not None else [])
    target = next_target(looks, plan) if new is not None else None
    opened = max(record.get("opened") or 0, record.get("target") or 0, target or 0)
    return {"metric": metric, "delta": delta, "looks": [lk.to_dict() for lk in looks], "target": target,
            "opened": opened, "plan": plan.to_dict()}

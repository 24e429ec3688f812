"""Analysis stage, the Findings panel: per architecture its decisions (every main effect with
its verdict, estimate, interval and seeds), its flagged cells and, with sequential seeds, its
stage; the advice (and exact command) to add seeds; what the design can and cannot see."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablate import stats
from ablate.analysis.cells import cell_flags
from ablate.analysis.effects import factorial_effects
from ablate.analysis.runs import METRIC_LABELS, design_of, primary_metric
from ablate.analysis.sequential import plan_of, recorded_looks, summary_lines
from ablate.analysis.verdicts import DEFAULT_MIN_EFFECT, FAMILY, VERDICT_WORDS
from ablate.results import Study


def more_seeds(study: Study, runs: pd.DataFrame, *, target: int = stats.MIN_VERDICT_N) -> dict | None:
    """When some cell has fewer than `target` seeds: the exact command that adds them (the
    grid command study.json recorded, with --seeds auto, or the seed list when the study's
    seeds do not start at 0), how many runs its first stage adds, and the
    time it should take (new runs × mean seconds per finished run of this study / workers).
    None when every cell has `target` seeds."""
    if runs.empty:
        return None
    n_min = int(runs.groupby("cell")["seed"].nunique().min())
    if n_min >= target:
        return None
    have = [int(s) for s in (study.meta.get("seeds") or sorted(runs["seed"].unique()))]
    seeds = list(have)
    candidate = 0
    while len(seeds) < target:
        if candidate not in seeds:
            seeds.append(candidate)
        candidate += 1
    new = len(seeds) - len(have)
    per_seed = int(study.meta.get("cells") or runs["cell"].nunique() * len(have)) // max(len(have), 1)
    sequential = sorted(seeds) == list(range(target))  # seeds 0..: sequential seeds continue them
    value = "auto" if sequential else ",".join(map(str, seeds))
    args = _without_seeds(study.meta.get("command") or ["grid", "--study-name", study.name])
    command = " ".join(["ablate", *map(_quote, args), "--seeds", value])
    new_runs = new * per_seed
    workers = study.meta.get("workers")
    workers = int(workers) if str(workers).isdigit() else 1  # "auto" in a study that never ran: one
    minutes = new_runs * float(runs["seconds"].mean()) / workers / 60
    then = (" first; later stages add seeds (up to 10) only to architectures with an effect still undecided"
            if sequential else "")
    if new_runs and np.isfinite(minutes):
        text = f"`{command}` adds {new_runs} runs, about {max(1, round(minutes))} min{then}"
    elif new_runs:  # no timings recorded
        text = f"`{command}` adds {new_runs} runs"
    else:  # enough seeds asked for, some runs failed or are missing: rerunning retries them
        text = f"`{command}` reruns the missing runs"
    return {"n_min": n_min, "target": target, "command": command, "new_runs": new_runs,
            "minutes": minutes, "text": text}


def _without_seeds(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--seeds":
            skip = True
        elif not a.startswith("--seeds="):
            out.append(a)
    return out


def _quote(arg: str) -> str:
    return shlex.quote(str(arg))


@dataclass
class ArchFindings:
    """What the Findings panel says of one architecture."""
    arch: str
    metric: str
    decisions: list[dict]  # its main effects on the metric: verdict (or why none), estimate, interval, seeds
    flagged: pd.DataFrame  # cell_flags rows with a flag
    n_min: int
    stage: str | None = None  # sequential seeds: decided at n seeds / undecided at the maximum, runs used

    @property
    def verdicts(self) -> list[dict]:
        """The decisions that carry a verdict word."""
        return [r for r in self.decisions if r["verdict"] in VERDICT_WORDS]


@dataclass
class Findings:
    """The Findings panel: the primary metric, the did-not-learn bar, the seeds advice, and
    one `ArchFindings` per architecture."""
    metric: str
    bar: dict | None
    seeds: dict | None  # more_seeds()
    n_max: int
    archs: list[ArchFindings]
    families: dict[str, str] = field(default_factory=lambda: dict(FAMILY))
    design: list[str] = field(default_factory=list)  # the design in words (`design_notes`); empty: full
    min_effect: float = DEFAULT_MIN_EFFECT  # δ
    sequential: str | None = None  # the plan of sequential seeds in words; None: fixed seeds


def findings(study: Study, runs: pd.DataFrame, *, effects: pd.DataFrame | None = None,
             comparisons: pd.DataFrame | None = None) -> Findings:
    """What the Findings panel says, per architecture: its decisions (every main effect on the
    primary metric with its verdict, estimate, 95% interval and seeds), its flagged cells and,
    with sequential seeds, its stage; plus the "not enough seeds" advice and the did-not-learn bar."""
    delta, looks, decision_metric = decision_inputs(study.meta)
    metric = decision_metric or primary_metric(runs)
    effects = factorial_effects(runs, min_effect=delta, looks=looks, decision_metric=decision_metric) \
        if effects is None else effects
    flags = cell_flags(runs)
    stages = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in summary_lines(study.meta)}
    archs = []
    for arch, a in runs.groupby("arch", sort=False):
        decisions = [] if effects.empty else effects[(effects["arch"] == arch) & (effects["metric"] == metric)
                                                     & (effects["kind"] == "main")].to_dict("records")
        f = flags[(flags["arch"] == arch) & (flags["flags"] != "")]
        archs.append(ArchFindings(arch, metric, decisions, f, int(a.groupby("cell")["seed"].nunique().min()),
                                  stages.get(arch)))
    n_max = int(runs.groupby("cell")["seed"].nunique().max()) if not runs.empty else 0
    plan = plan_of(study.meta)
    return Findings(metric, stats.majority_bar(study.dataset), None if plan else more_seeds(study, runs), n_max, archs,
                    design=design_notes(study, runs), min_effect=delta, sequential=plan.text() if plan else None)


def decision_inputs(meta: dict) -> tuple[float, dict | None, str | None]:
    """(δ, each architecture's recorded looks or None for fixed seeds, the metric they decide on)
    from a grid study's meta (study.json or its storage attrs)."""
    delta = float((meta.get("decisions") or {}).get("min_effect") or DEFAULT_MIN_EFFECT)
    if plan_of(meta) is None:
        return delta, None, None
    looks, metric = recorded_looks(meta)
    return delta, looks, metric


ONE_AT_A_TIME_NOTE = ("One-at-a-time design: each factor was varied from the reference cell with every other factor "
                      "at its reference level, so these effects hold at that setting only and the design cannot see "
                      "interactions.")


def design_notes(study: Study, runs: pd.DataFrame) -> list[str]:
    """What the Findings panel says about the design: nothing for a full factorial; a
    fractional design's generators and alias structure (as `ablate grid --dry-run` printed them,
    from study.json); one-at-a-time's blind spot for interactions."""
    kind = design_of(runs)[0] if not runs.empty else "full"
    lines = list(((study.meta.get("grid") or {}).get("design") or {}).get("lines") or [])
    if kind == "one-at-a-time":
        return [ONE_AT_A_TIME_NOTE]
    if kind == "fractional":
        return lines or ["Fractional design: main effects are aliased with interactions of three or more factors "
                         "(see effects.csv, column aliases)."]
    return []


def rules_text(f: Findings) -> str:
    """The rules behind every verdict word in the report, in one paragraph."""
    label = METRIC_LABELS[f.metric]
    bar = ("the did-not-learn bar is unknown (this study's dataset summary has no per-split class frequencies)"
           if f.bar is None else
           f"a cell did not learn when its mean val pixel accuracy is ≤ {f.bar['pixel_acc']:.1%} (the majority "
           f"class's share of non-void val pixels) or its val mIoU is ≤ {f.bar['miou']:.3f} (predicting the majority "
           f"class everywhere, {f.bar['classes_present']} classes present)")
    looks = (f" over every look of the sequential seeds ({f.sequential}): each test is group-sequential, its level "
             "spent over the looks by the Lan-DeMets Pocock shape" if f.sequential else "")
    return (f"Verdicts on {label}, one family per architecture: each of its m main effects (a level vs the reference "
            "level, averaged over the other factors) is tested for a difference (helps / hurts: the paired t-test "
            f"over seeds rejects 0) and for equivalence (no effect larger than δ = {f.min_effect:g} mIoU: two "
            "one-sided t-tests reject |effect| ≥ δ), both at level 5%/m (at most one of an effect's two hypotheses "
            f"can be true), so the chance of any false verdict for an architecture is at most 5%{looks}. Otherwise "
            "the effect is inconclusive, with about the seeds that would likely decide it. A verdict needs n ≥ 3 "
            "paired seeds; intervals are 95% Student-t over seeds. Interactions and comparisons with the reference "
            f"cell are described, not tested. Effects involving a cell that did not learn get no verdict; {bar}.")

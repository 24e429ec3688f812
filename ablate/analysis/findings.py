"""Analysis stage, the Findings panel: per architecture the verdicts that meet the rules, every
main effect and the flagged cells; the advice (and exact command) to add seeds; what the
design can and cannot see."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablate import stats
from ablate.analysis.cells import cell_flags
from ablate.analysis.effects import factorial_effects, paired_comparisons
from ablate.analysis.runs import design_of, primary_metric
from ablate.analysis.verdicts import FAMILY, VERDICT_WORDS
from ablate.results import Study


def more_seeds(study: Study, runs: pd.DataFrame, *, target: int = stats.MIN_VERDICT_N) -> dict | None:
    """When some cell has fewer than `target` seeds: the exact command that adds them (the
    grid command study.json recorded, with --seeds replaced), how many runs it adds, and the
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
    value = str(target) if sorted(seeds) == list(range(target)) else ",".join(map(str, seeds))
    args = _without_seeds(study.meta.get("command") or ["grid", "--study-name", study.name])
    command = " ".join(["ablate", *map(_quote, args), "--seeds", value])
    new_runs = new * per_seed
    workers = study.meta.get("workers")
    workers = int(workers) if str(workers).isdigit() else 1  # "auto" in a study that never ran: one
    minutes = new_runs * float(runs["seconds"].mean()) / workers / 60
    if new_runs and np.isfinite(minutes):
        text = f"`{command}` adds {new_runs} runs, about {max(1, round(minutes))} min"
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
    verdicts: list[dict]  # effects/comparisons rows that carry a verdict word
    main_effects: list[dict]  # every main effect (with or without a verdict)
    flagged: pd.DataFrame  # cell_flags rows with a flag
    n_min: int


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


def findings(study: Study, runs: pd.DataFrame, *, effects: pd.DataFrame | None = None,
             comparisons: pd.DataFrame | None = None) -> Findings:
    """What the Findings panel says, per architecture: the verdicts that meet the rules (on
    the primary metric), every main effect with its interval, the flagged cells; plus the
    "not enough seeds" advice and the did-not-learn bar."""
    metric = primary_metric(runs)
    effects = factorial_effects(runs) if effects is None else effects
    comparisons = paired_comparisons(runs) if comparisons is None else comparisons
    flags = cell_flags(runs)
    archs = []
    for arch, a in runs.groupby("arch", sort=False):
        rows = []
        for table in (effects, comparisons):
            if not table.empty:
                t = table[(table["arch"] == arch) & (table["metric"] == metric)]
                rows += t[t["verdict"].isin(VERDICT_WORDS)].to_dict("records")
        mains = [] if effects.empty else effects[(effects["arch"] == arch) & (effects["metric"] == metric)
                                                 & (effects["kind"] == "main")].to_dict("records")
        f = flags[(flags["arch"] == arch) & (flags["flags"] != "")]
        archs.append(ArchFindings(arch, metric, rows, mains, f, int(a.groupby("cell")["seed"].nunique().min())))
    n_max = int(runs.groupby("cell")["seed"].nunique().max()) if not runs.empty else 0
    return Findings(metric, stats.majority_bar(study.dataset), more_seeds(study, runs), n_max, archs,
                    design=design_notes(study, runs))


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

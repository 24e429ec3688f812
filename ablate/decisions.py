"""Decisions stage, one family's decision at a look (plain data, no pandas: the grid's stage
logic and the tuner's confirmation both decide with it; `ablate.analysis.verdicts` puts it
into words and tables).

A family is the effects (or comparisons) of one architecture and metric. Each of its m members
brings two hypotheses, a difference (mean = 0: "helps" / "hurts") and an equivalence
(|mean| >= δ: "no effect larger than δ"), of which at most one can be true, so testing both at
α/m keeps the chance of any false verdict word for the family at α; over the looks of a
sequential study each test is group-sequential at that level (`stats.gs_boundaries`). The
thresholds assume each member has the look's number of paired seeds; a member with fewer
(a failed run) keeps a valid p of its own, and the spending over looks is then approximate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ablate import stats

DECIDED = (stats.HELPS, stats.HURTS, stats.EQUIVALENT)  # the three verdicts a user acts on
VERDICT_WORDS = DECIDED  # rows that carry a verdict word
# what a row without a verdict says instead, and its short form
NOT_ENOUGH, UNLEARNED, ZERO_SPREAD, NO_ESTIMATE, ESTIMATE_ONLY = (
    "not enough seeds", "did not learn", "seeds do not vary", "no estimate", "estimate only")
VERDICT_SHORT = {UNLEARNED: "no verdict (a cell did not learn)", NOT_ENOUGH: "not enough seeds",
                 NO_ESTIMATE: "no estimate", ZERO_SPREAD: "no verdict (every seed gave the same result)",
                 ESTIMATE_ONLY: "estimate only", stats.EQUIVALENT: "no effect larger than δ"}


@dataclass(frozen=True)
class Look:
    """One decision over a family at `n` seeds: each main effect's tests run at `level`
    (α / the family's number of main effects), and at this look a difference is decided when
    its p is at most `threshold` and an equivalence when its p is at most `threshold_equiv`
    (the group-sequential thresholds of the looks so far; a single look: `level` itself).
    Per effect its verdict and its raw p-values (difference, equivalence)."""
    n: int
    level: float
    threshold: float
    threshold_equiv: float
    delta: float
    verdicts: dict[str, str]
    p_diff: dict[str, float]
    p_equiv: dict[str, float]

    def to_dict(self) -> dict:
        return {"n": self.n, "level": self.level, "threshold": self.threshold, "threshold_equiv": self.threshold_equiv,
                "delta": self.delta, "verdicts": self.verdicts,
                "p_diff": {k: finite(v) for k, v in self.p_diff.items()},
                "p_equiv": {k: finite(v) for k, v in self.p_equiv.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Look":
        nan = float("nan")
        return cls(int(d["n"]), float(d["level"]), float(d["threshold"]), float(d["threshold_equiv"]),
                   float(d["delta"]), dict(d["verdicts"]),
                   {k: nan if v is None else float(v) for k, v in d.get("p_diff", {}).items()},
                   {k: nan if v is None else float(v) for k, v in d.get("p_equiv", {}).items()})


def finite(v: float | None) -> float | None:
    """A float as the storage keeps it: None for a missing or non-finite value (NaN is not JSON)."""
    return None if v is None or not np.isfinite(v) else float(v)


def no_verdict_reason(row: dict) -> str | None:
    """Why an effect row cannot enter its family, or None when it can."""
    n, est = row.get("n"), row.get("estimate")
    if not n or est is None or np.isnan(est):
        return NO_ESTIMATE
    if row.get("unlearned"):
        return UNLEARNED
    if n < stats.MIN_VERDICT_N:
        return NOT_ENOUGH
    if row.get("zero_spread"):
        return ZERO_SPREAD
    return None


def look(rows: list[dict], *, delta: float, looks: tuple[int, ...] | None = None, n_max: int | None = None,
         shape: str = "pocock") -> Look:
    """The family's decision at one look: `rows` are one architecture's main effects on one
    metric (with `effect`, `n`, `estimate`, `p_value` and `p_equiv`). Each of the m main effects
    gets level α/m, shared by its two hypotheses (at most one of them can be true, so at most m
    true hypotheses: Bonferroni over them keeps the family's error rate at α); over looks
    (`looks`: the seed counts of every look so far, this one last; `n_max`: the most seeds)
    each test uses its group-sequential threshold (`stats.gs_boundaries`). A single look
    (the default) tests at α/m. Rows that cannot enter the family (`no_verdict_reason`) keep
    that reason as their verdict."""
    n = min((int(r["n"]) for r in rows if r.get("n")), default=0)
    looks = looks or (n,)
    level = stats.ALPHA / max(len(rows), 1)
    if len(looks) == 1 and (n_max is None or n_max == looks[0]):
        threshold = threshold_equiv = level
    else:
        threshold = stats.gs_boundaries(looks, n_max, level, sided=2, shape=shape)[-1]
        threshold_equiv = stats.gs_boundaries(looks, n_max, level, sided=1, shape=shape)[-1]
    verdicts, p_diff, p_equiv = {}, {}, {}
    for r in rows:
        effect, why = r["effect"], no_verdict_reason(r)
        if why is not None:
            verdicts[effect] = why
            continue
        p_diff[effect], p_equiv[effect] = float(r["p_value"]), float(r["p_equiv"])
        if p_diff[effect] <= threshold:
            verdicts[effect] = stats.HELPS if r["estimate"] > 0 else stats.HURTS
        elif p_equiv[effect] <= threshold_equiv:
            verdicts[effect] = stats.EQUIVALENT
        else:
            verdicts[effect] = stats.INCONCLUSIVE
    return Look(n, level, threshold, threshold_equiv, float(delta), verdicts, p_diff, p_equiv)


def first_decisions(looks: list[Look]) -> dict[str, tuple[str, Look]]:
    """Each effect's verdict over a sequence of looks: the first look that decided it (a
    decision stands: later seeds do not revise it), else its state at the last look."""
    out: dict[str, tuple[str, Look]] = {}
    for lk in looks:
        for effect, word in lk.verdicts.items():
            if effect not in out or out[effect][0] not in DECIDED:
                out[effect] = (word, lk)
    return out

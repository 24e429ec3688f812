"""Analysis stage, the words of a test: the three verdicts of STATISTICS.md (the family's
decision at a look is `ablate.decisions`) and one plain sentence per effect or comparison.

One family per architecture and metric: its m main effects (each level of a factor vs its
reference level, averaged over the other factors). Each brings two hypotheses, a difference
(mean = 0: "helps" / "hurts") and an equivalence (|mean| >= δ: "no effect larger than δ"), of
which at most one can be true, so testing both at α/m keeps the chance of any false verdict
word for an architecture and metric at α; over the looks of a sequential study each test is
group-sequential at that level (`stats.gs_boundaries`). Interactions and the comparisons of
each cell with the reference cell are described (estimate, 95% interval, P(improve)) and
carry no verdict word.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate import stats
from ablate.analysis.runs import METRIC_LABELS, TOGGLE_LABELS
from ablate.decisions import (DECIDED, ESTIMATE_ONLY, NO_ESTIMATE, NOT_ENOUGH, UNLEARNED,  # noqa: F401  (the family's
                              VERDICT_SHORT, VERDICT_WORDS, ZERO_SPREAD, Look, first_decisions, look,  # decision,
                              no_verdict_reason)  # here in words)

DEFAULT_MIN_EFFECT = stats.DEFAULT_MIN_EFFECT
FAMILY = {"effect": "the main effects of the factors (each level vs the reference level, averaged over the other "
                    "factors): a difference and an equivalence test each, per architecture and metric",
          "comparison": "none: every cell vs the reference cell is described, not tested"}
def judge_effects(table: pd.DataFrame, *, delta: float, looks: dict[str, list[Look]] | None = None,
                  decision_metric: str | None = None) -> pd.DataFrame:
    """Verdicts for an effects table. Per architecture and metric, the main effects form one
    family: in a sequential study (`looks`: each architecture's recorded looks on
    `decision_metric`) each effect's verdict is the first recorded look that decided it, and the
    other metric is described only (its looks were never taken); otherwise one look at α over
    the seeds there are. Interactions are described only."""
    out = table.copy()
    for col in ("verdict", "level", "threshold", "threshold_equiv", "decided_at"):
        out[col] = np.nan if col != "verdict" else ESTIMATE_ONLY
    out["verdict"] = out["verdict"].astype(object)
    out["min_effect"] = delta
    for (arch, metric), idx in out.groupby(["arch", "metric"], sort=False).groups.items():
        mains = [i for i in idx if out.at[i, "kind"] == "main"]
        if looks is not None:
            if metric != decision_metric or arch not in looks:
                continue
            decisions = first_decisions(looks[arch])
        else:
            lk = look([out.loc[i].to_dict() for i in mains], delta=delta)
            decisions = {e: (w, lk) for e, w in lk.verdicts.items()}
        for i in mains:
            word, lk = decisions.get(out.at[i, "effect"], (no_verdict_reason(out.loc[i].to_dict()) or ESTIMATE_ONLY, None))
            out.at[i, "verdict"] = word
            if lk is not None:
                out.at[i, "level"], out.at[i, "decided_at"] = lk.level, lk.n
                out.at[i, "threshold"], out.at[i, "threshold_equiv"] = lk.threshold, lk.threshold_equiv
                if looks is not None and word in DECIDED:  # the p that decided it, at its look
                    effect = out.at[i, "effect"]
                    out.at[i, "p_value"] = lk.p_diff.get(effect, out.at[i, "p_value"])
                    out.at[i, "p_equiv"] = lk.p_equiv.get(effect, out.at[i, "p_equiv"])
    out["family"] = FAMILY["effect"]
    out["seeds_to_decide"] = [_seeds_to_decide(r) for r in out.to_dict("records")]
    out["sentence"] = [effect_sentence(r) for r in out.to_dict("records")]
    return out


def describe_comparisons(table: pd.DataFrame) -> pd.DataFrame:
    """Comparisons with the reference cell: described (estimate, 95% interval, P(improve)), no
    verdict word, so they spend none of the architecture's error budget."""
    out = table.copy()
    out["verdict"] = [no_verdict_reason(r) if no_verdict_reason(r) in (NO_ESTIMATE, ZERO_SPREAD) else ESTIMATE_ONLY
                      for r in out.to_dict("records")]
    out["family"] = FAMILY["comparison"]
    out["sentence"] = [comparison_sentence(r) for r in out.to_dict("records")]
    return out


def _seeds_to_decide(row: dict) -> float:
    """For an inconclusive main effect: about how many seeds would likely decide it."""
    if row.get("verdict") != stats.INCONCLUSIVE:
        return np.nan
    m = max(1, int(row.get("family_size") or 1))
    n = stats.seeds_to_decide(row["estimate"], row.get("sd", np.nan), delta=float(row["min_effect"]),
                              alpha=stats.ALPHA / m)
    return np.nan if n is None else float(max(n, int(row["n"]) + 1))


# --------------------------------------------------------------------------- words
def fmt(x: float, digits: int = 3) -> str:
    """A signed number that never rounds to the wrong side of 0: '+0.012', '-0.0004', '0.000'."""
    if x is None or not np.isfinite(x):
        return "–"
    if abs(x) < 1e-9:  # zero up to float error (a mean of per-seed values rounded to 1e-12)
        return f"{0:.{digits}f}"
    d = digits
    while round(abs(x), d) == 0 and d < 8:
        d += 1
    return f"{x:+.{d}f}"


def interval_text(est, lo, hi) -> str:
    """'+0.031 [95% CI +0.012, +0.050]', or the estimate alone when there is no interval."""
    if est is None or np.isnan(est):
        return "–"
    return fmt(est) + ("" if lo is None or np.isnan(lo) else f" [95% CI {fmt(lo)}, {fmt(hi)}]")


def p_text(p, alpha: float | None = None) -> str:
    """'= 0.012', '< 0.001'; beside a level α, digits enough that the printed p is on the
    same side of α as the p (never 'p = 0.05' for a p below 0.05)."""
    if p is None or np.isnan(p):
        return "–"
    if p < 0.001 and (alpha is None or alpha >= 0.001):
        return "< 0.001"
    for digits in (2, 3, 4, 6):
        text = f"{p:.{digits}g}"
        if alpha is None or (float(text) <= alpha) == (p <= alpha):
            return f"= {text}"
    return f"= {p!r}"


def effect_label(row: dict) -> str:
    """'weighted loss', 'loss = dice vs ce', 'augmentation × weighted loss' (no trailing
    'interaction': the sentence says it once)."""
    label = row.get("label")
    if not isinstance(label, str) or not label:
        names = [TOGGLE_LABELS.get(f, f) for f in str(row["factors"]).split()]
        label = names[0] if row.get("kind") == "main" else " × ".join(names)
    return label.removesuffix(" interaction")


def _scope(row: dict) -> str:
    """Where a main effect holds: averaged over the other factors, or at the reference setting."""
    if row.get("design") == "one-at-a-time":
        return "at the reference setting of the other factors"
    if str(row.get("others", "")) == "0":
        return ""
    aliases = row.get("aliases")
    extra = f"; aliased with {aliases}" if isinstance(aliases, str) and aliases else ""
    return f"averaged over the other factors{extra}"


def effect_sentence(row: dict) -> str:
    """One sentence a reviewer would sign for an effects row."""
    metric = METRIC_LABELS.get(row["metric"], row["metric"])
    subject = f"{row['arch']}: {effect_label(row)}"
    est = interval_text(row["estimate"], row["ci_low"], row["ci_high"])
    word, n = row["verdict"], row.get("n")
    if row.get("kind") != "main":
        flat = "; every seed gave the same value (the seed does not vary training)" if row.get("zero_spread") else ""
        return f"{subject} interaction on {metric}: {est}, n={n} seeds{flat}; described only (no verdict)"
    scope = _scope(row)
    scope = f", {scope}" if scope else ""
    if word == NO_ESTIMATE:
        return f"{subject}: no estimate ({row.get('ci_method')})"
    if word == UNLEARNED:
        return f"{subject}: no verdict, cells that did not learn ({row['unlearned']}); {metric} {est}, n={n} seeds"
    if word == NOT_ENOUGH:
        return f"{subject}: not enough seeds for a verdict (n={n}, {stats.MIN_VERDICT_N} needed); {metric} {est}"
    if word == ZERO_SPREAD:
        return (f"{subject}: every seed gave the same effect on {metric} ({fmt(row['estimate'])}): the seed does not "
                "vary training, so the seeds are not replicates; no verdict")
    if word == ESTIMATE_ONLY:
        return f"{subject} on {metric}: {est}{scope}; n={n} seeds, described only (not the decision metric)"
    at = _decided_at(row)
    if word in (stats.HELPS, stats.HURTS):
        verb = "raises" if word == stats.HELPS else "lowers"
        return f"{subject} {verb} {metric}{scope}: {est}; {at} ({test_text(row)})"
    if word == stats.EQUIVALENT:
        return f"{subject} changes {metric} by less than δ = {row['min_effect']:g}{scope}: {est}; {at} ({test_text(row)})"
    more = row.get("seeds_to_decide")
    advice = (f"; about {int(more)} seeds would likely decide it" if more is not None and np.isfinite(more)
              else "; more seeds than is practical would be needed to decide it")
    return f"{subject} on {metric}: inconclusive{scope}, {est}; n={n} seeds{advice}"


def test_text(row: dict) -> str:
    """The test behind a main effect's verdict: 'p = 0.0012 ≤ 0.025, α/2', or at a look of
    sequential seeds '… ≤ 0.0041, this look's threshold, level α/2'; p and its threshold are
    printed with the digits that keep them apart."""
    threshold, level = row.get("threshold"), row.get("level")
    if threshold is None or not np.isfinite(threshold):
        return "–"
    m = max(1, round(stats.ALPHA / level)) if level else 1
    where = f"α/{m}" if m > 1 else "α"
    if not np.isclose(threshold, level) or not np.isclose(row.get("threshold_equiv", threshold), level):
        where = f"this look's threshold, level {where}"
    if row["verdict"] == stats.EQUIVALENT:
        p, t = _apart(row["p_equiv"], row["threshold_equiv"])
        return f"equivalence p = {p} ≤ {t}, {where}"
    if row["verdict"] in (stats.HELPS, stats.HURTS):
        p, t = _apart(row["p_value"], threshold)
        return f"p = {p} ≤ {t}, {where}"
    (p, t), (pe, te) = _apart(row["p_value"], threshold), _apart(row["p_equiv"], row["threshold_equiv"])
    return f"p = {p} > {t} and equivalence p = {pe} > {te}, {where.replace('threshold,', 'thresholds,')}"


def _apart(p: float, threshold: float) -> tuple[str, str]:
    """p and its threshold with the fewest significant digits (2 to 6) that print them on the
    right sides of each other: never 'p = 0.017 > 0.017', nor 'p = 0.05' beside a '≤ 0.05' it
    is not."""
    if p is None or not np.isfinite(p):
        return "–", f"{threshold:.2g}"
    for digits in (2, 3, 4, 6):
        ps, ts = f"{p:.{digits}g}", f"{threshold:.{digits}g}"
        if ps != ts and (float(ps) <= float(ts)) == (p <= threshold):
            return ps, ts
    return repr(p), repr(threshold)


def _decided_at(row: dict) -> str:
    at, n = row.get("decided_at"), row.get("n")
    if at is not None and np.isfinite(at) and int(at) != n:
        return f"decided at n={int(at)} seeds (now n={n})"
    return f"n={n} seeds"


def comparison_sentence(row: dict) -> str:
    """A comparison with the reference cell, described: estimate, 95% interval, P(improve)."""
    metric = METRIC_LABELS.get(row["metric"], row["metric"])
    subject = f"{row['cell']} vs {row['baseline'].split(' · ')[-1]}"
    if row["verdict"] == NO_ESTIMATE:
        return f"{subject}: no estimate ({row['ci_method']})"
    est = interval_text(row["estimate"], row["ci_low"], row["ci_high"])
    if row["verdict"] == ZERO_SPREAD:
        return (f"{subject}: {metric} {fmt(row['estimate'])} in every one of n={row['n']} paired seeds: the seed does "
                "not vary training, so these are not replicates")
    p_imp = row.get("p_improve")
    p_imp = f", P(improve) = {p_imp:.2f}" if p_imp is not None and np.isfinite(p_imp) else ""
    return f"{subject}: {metric} {est}, n={row['n']} paired seeds{p_imp}"


def seeds_cell(r: dict) -> str:
    """A decisions table's seeds: '3', '5 (decided at 3)', '3 (≈12 would decide)'."""
    n, at = r.get("n"), r.get("decided_at")
    if r["verdict"] in DECIDED and at is not None and np.isfinite(at) and int(at) != n:
        return f"{n} (decided at {int(at)})"
    more = r.get("seeds_to_decide")
    if r["verdict"] == "inconclusive":
        return f"{n} (≈{int(more)} would decide)" if more is not None and np.isfinite(more) else f"{n} (many more needed)"
    return str(n)

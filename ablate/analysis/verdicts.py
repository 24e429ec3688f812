"""Analysis stage, the words of a test: Holm-adjusted p within each family, the verdict
(helps, hurts, no clear effect, ...) by the rules of STATISTICS.md, and one plain sentence
per effect or comparison."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ablate import stats
from ablate.analysis.runs import METRIC_LABELS, TOGGLE_LABELS


FAMILY = {"effect": "the main effects (each level vs the reference level) and two-way interactions of the factors, "
                    "per architecture and metric",
          "comparison": "every cell vs the reference cell (toggles off, every other factor at its first level), "
                        "per architecture and metric"}
VERDICT_WORDS = ("helps", "hurts", "positive interaction", "negative interaction")
VERDICT_SHORT = {"did not learn": "no verdict (a cell did not learn)", "not enough seeds": "not enough seeds",
                 "no estimate": "no estimate"}


def judge(table: pd.DataFrame, *, kind: str) -> pd.DataFrame:
    """Holm-adjust p within each (architecture, metric) family, then give every row its verdict."""
    out = table.copy()
    out["p_holm"] = np.nan
    for _, idx in out.groupby(["arch", "metric"], sort=False).groups.items():
        out.loc[idx, "p_holm"] = stats.holm(out.loc[idx, "p_value"].to_numpy(dtype=float))
    out["family"] = FAMILY[kind]
    out["verdict"] = [verdict_word(r) for r in out.to_dict("records")]
    out["sentence"] = [_sentence(r, kind) for r in out.to_dict("records")]
    return out


def verdict_word(row: dict) -> str:
    """'helps' / 'hurts' (an interaction: 'positive interaction' / 'negative interaction')
    only with n >= 3 paired seeds, a 95% interval that excludes 0, Holm p < 0.05 and no cell
    that did not learn; else 'no clear effect', 'not enough seeds', 'did not learn' or
    'no estimate'."""
    n, est = row["n"], row["estimate"]
    if not n or est is None or np.isnan(est):
        return "no estimate"
    if row.get("unlearned"):
        return "did not learn"
    if n < stats.MIN_VERDICT_N:
        return "not enough seeds"
    if row["excludes_zero"] and row["p_holm"] < stats.ALPHA:
        if row.get("kind") == "interaction":
            return "positive interaction" if est > 0 else "negative interaction"
        return "helps" if est > 0 else "hurts"
    return "no clear effect"


def _subject(row: dict, kind: str) -> str:
    if kind == "comparison":
        return f"{row['cell']} vs {row['baseline'].split(' · ')[-1]}"
    label = row.get("label")
    if not isinstance(label, str) or not label:  # an effects table written before factors
        names = [TOGGLE_LABELS.get(f, f) for f in str(row["factors"]).split()]
        label = names[0] if row["kind"] == "main" else " × ".join(names) + " interaction"
    return f"{row['arch']}: {label}"


def p_text(p) -> str:
    """'= 0.012', '< 0.001', or '–' (no p: n < 2)."""
    if p is None or np.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def interval_text(est, lo, hi) -> str:
    if est is None or np.isnan(est):
        return "–"
    return f"{est:+.3f}" + ("" if np.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]")


def _sentence(row: dict, kind: str) -> str:
    """One plain-language sentence for a comparisons or effects row."""
    metric = METRIC_LABELS.get(row["metric"], row["metric"])
    subject, word, n = _subject(row, kind), row["verdict"], row["n"]
    est = interval_text(row["estimate"], row["ci_low"], row["ci_high"])
    if word == "no estimate":
        return f"{subject}: no estimate ({row['ci_method']})"
    seeds = f"n={n}"
    if word == "did not learn":
        return f"{subject}: no verdict, involves cells that did not learn ({row['unlearned']}); {metric} {est}, {seeds}"
    if word == "not enough seeds":
        return f"{subject}: not enough seeds (n={n}, {stats.MIN_VERDICT_N} needed); {metric} {est}"
    tail = f"{seeds}, Holm p {p_text(row['p_holm'])}, P(improve) = {row['p_improve']:.2f}"
    if word == "no clear effect":
        return f"{subject}: no clear effect on {metric}, {est}; {tail}"
    if word in ("helps", "hurts"):
        return f"{subject} {'raises' if word == 'helps' else 'lowers'} {metric}: {est}; {tail}"
    return f"{subject}: {word} on {metric}, {est}; {tail}"

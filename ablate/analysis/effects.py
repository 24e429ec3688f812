"""Analysis stage, what the factors do: each cell against its architecture's reference cell,
paired by seed (comparisons.csv), and the main effects and interactions of the factors for a
full, fractional or one-at-a-time design (effects.csv), each with its interval, test and verdict."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ablate import design, stats
from ablate.analysis.cells import interval, seeds_text, unlearned_seeds
from ablate.analysis.runs import TOGGLE_LABELS, cell_label, design_of
from ablate.analysis.verdicts import DEFAULT_MIN_EFFECT, Look, describe_comparisons, judge_effects
from ablate.config import TOGGLES

_TEST_COLUMNS = ["n", "estimate", "ci_low", "ci_high", "ci_method", "sd", "zero_spread", "excludes_zero", "p_value",
                 "p_method", "p_improve", "verdict", "sentence", "unlearned", "family"]
_DECISION_COLUMNS = ["p_equiv", "min_effect", "level", "threshold", "threshold_equiv", "decided_at", "family_size",
                     "seeds_to_decide"]
EFFECT_COLUMNS = ["arch", "metric", "effect", "kind", "factors", "label", "design", "aliases", "n_seeds", *_TEST_COLUMNS,
                  *_DECISION_COLUMNS, "seeds", "per_seed"]
COMPARISON_COLUMNS = ["arch", "cell", "baseline", "metric", "n_pairs", "mean_diff", *_TEST_COLUMNS, "seeds", "diffs"]


def _baseline_cell(arch_runs: pd.DataFrame) -> str | None:
    """The reference cell: every varying toggle off, every other varying factor at its first
    level (factors fixed by the study stay as they are)."""
    _, levels = design_of(arch_runs)
    if not levels:
        return None
    ref = _at(arch_runs, {k: v[0] for k, v in levels.items()})
    return ref["cell"].iloc[0] if not ref.empty else None


def comparisons_note(runs: pd.DataFrame) -> str | None:
    """Why `paired_comparisons` has no rows for an architecture whose factors vary: its runs
    lack the reference cell. One sentence per reason; None when no architecture lacks it."""
    missing: dict[str, list[str]] = {}
    for arch, a in runs.groupby("arch", sort=False):
        kind, levels = design_of(a)
        if levels and _baseline_cell(a) is None:
            missing.setdefault(kind, []).append(arch)
    sentences = []
    for kind, archs in missing.items():
        who = "" if len(archs) == runs["arch"].nunique() else f" for {', '.join(archs)}"
        why = ("this fractional design has no reference cell (every factor at its first level); the effects below "
               "are estimated from the design's contrasts" if kind == "fractional" else
               "the reference cell (every factor at its first level) has no finished run")
        sentences.append(f"No paired comparisons{who}: {why}.")
    return " ".join(sentences) or None


def _at(runs: pd.DataFrame, setting: dict) -> pd.DataFrame:
    """The runs at this setting of the factors ({factor: level})."""
    mask = np.ones(len(runs), dtype=bool)
    for k, v in setting.items():
        mask &= (runs[k] == v).to_numpy() if k in runs else False
    return runs[mask]


def _unlearned(runs: pd.DataFrame, cells) -> list[str]:
    """Of `cells`, those that did not learn (`with_flags`): 'unet · augment' when the cell's
    mean is at or below the bar, 'unet · augment (seed 2)' when only some of its seeds are."""
    if "cell_did_not_learn" not in runs:
        return []
    out = []
    for cell, g in runs[runs["cell"].isin(list(cells))].groupby("cell"):
        seeds = unlearned_seeds(g) if "did_not_learn" in g else []
        if g["cell_did_not_learn"].astype(bool).any():
            out.append(cell)
        elif seeds:
            out.append(f"{cell} ({seeds_text(seeds)})")
    return out


def _test_row(values, delta: float = DEFAULT_MIN_EFFECT) -> dict:
    """Estimate, t interval, seed-to-seed SD, paired t p, equivalence p within ±`delta` and
    P(>0) of per-seed values (differences or effects). Rounded to 1e-12 first: a difference
    that is 0 up to float error is a tie, not a sign. Zero spread gets no p (not replicates)."""
    values = np.round(np.asarray(values, dtype=float), 12)
    s = interval(values)
    flat = stats.zero_spread(values)
    return {"n": s["n"], "estimate": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "ci_method": s["ci_method"], "sd": float(np.std(values, ddof=1)) if len(values) >= 2 else np.nan,
            "zero_spread": flat, "excludes_zero": _excludes_zero(s) and not flat,
            "p_value": np.nan if flat else stats.paired_t_p(values), "p_equiv": stats.tost_p(values, delta),
            "p_method": stats.P_METHOD if s["n"] >= 2 else "–", "p_improve": stats.p_improve(values)}


def paired_comparisons(runs: pd.DataFrame, *, metrics=("val_miou", "test_miou")) -> pd.DataFrame:
    """Each cell against its architecture's reference cell (`_baseline_cell`), paired
    by seed over the seeds present in both: the per-seed differences, their mean with a 95% t
    interval, the paired t-test p (unadjusted) and P(on > off) over the pairs (`p_improve`).
    Described, not judged: no verdict word (`describe_comparisons`)."""
    rows = []
    for arch, a in runs.groupby("arch", sort=False):
        base = _baseline_cell(a)
        if base is None:
            continue
        for cell, g in a.groupby("cell", sort=False):
            if cell == base:
                continue
            for metric in metrics:
                if metric not in g or g[metric].isna().all():
                    continue
                y = g.groupby("seed")[metric].mean()
                y0 = a[a["cell"] == base].groupby("seed")[metric].mean()
                seeds = sorted(set(y.dropna().index) & set(y0.dropna().index))
                diffs = np.array([y[s] - y0[s] for s in seeds], dtype=float)
                row = _test_row(diffs)
                rows.append({"arch": arch, "cell": cell, "baseline": base, "metric": metric, "n_pairs": len(seeds),
                             "seeds": " ".join(map(str, seeds)), "diffs": " ".join(f"{d:+.4f}" for d in diffs),
                             **row, "mean_diff": row["estimate"], "unlearned": ", ".join(_unlearned(a, (cell, base)))})
    out = pd.DataFrame(rows)
    return describe_comparisons(out) if not out.empty else out


def _excludes_zero(s: dict) -> bool:
    return bool(s["ci_low"] > 0 or s["ci_high"] < 0)  # False for NaN (no interval)


def factorial_effects(runs: pd.DataFrame, *, metrics=("val_miou", "test_miou"), min_effect: float = DEFAULT_MIN_EFFECT,
                      looks: dict[str, list[Look]] | None = None, decision_metric: str | None = None) -> pd.DataFrame:
    """Main effects and two-way interactions of the factors, per architecture.

    Full design (STATISTICS.md, generalised to factors of any number of levels): with y the
    per-seed cell values,
      main effect of F, level l vs the reference r = mean over the other factors' settings of
                         y(F = l) − y(F = r); for a toggle (off, on) it is the classical
                         mean(y | on) − mean(y | off) = (2 / 2^k) Σ_cells s · y
      interaction (F: l vs r) × (G: m vs q) = ½ [(effect of F's l vs r with G = m) − (with G = q)],
                         averaged over the remaining factors (for two toggles the Yates /
                         Box–Hunter–Hunter convention: a pure A·B synergy δ on the (on, on) cell gives δ/2).
    Fractional design: main effects (and, at resolution ≥ V, two-way interactions) from the
    ±1 contrasts of the runs, (2/N) Σ s · y; `aliases` names what each estimate is confounded
    with (effects of order ≤ 3). One-at-a-time: each factor's other levels vs the reference
    cell, paired by seed; no interactions (the design cannot see them).
    Each effect is computed per seed (seeds present in every cell); the per-seed effects get
    the t interval, the t-test p, the equivalence p within ±`min_effect` (δ), P(effect > 0)
    over seeds and, for main effects, a verdict (`judge_effects`: one family per architecture
    and metric; `looks` are a sequential study's recorded decisions on `decision_metric`). An
    effect of an architecture with a cell that did not learn gets no verdict: every cell
    enters every effect.
    """
    rows = []
    for arch, a in runs.groupby("arch", sort=False):
        kind, levels = design_of(a)
        if not levels:
            continue
        settings, contrasts = design_contrasts(kind, levels)
        unlearned = ", ".join(_unlearned(a, a["cell"].unique()))
        for metric in metrics:
            if metric in a and not a[metric].isna().all():
                base = {"arch": arch, "metric": metric, "unlearned": unlearned, "design": kind,
                        "others": len(levels) - 1}
                rows += _effect_rows(a, metric, base, levels, settings, contrasts, min_effect)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["family_size"] = out.groupby(["arch", "metric"])["kind"].transform(lambda k: int((k == "main").sum()))
    return judge_effects(out, delta=min_effect, looks=looks, decision_metric=decision_metric)


def _effect_rows(a: pd.DataFrame, metric: str, base: dict, levels: dict[str, list], settings: list[dict],
                 contrasts: list[dict], delta: float = DEFAULT_MIN_EFFECT) -> list[dict]:
    """One architecture's effects on one metric: each contrast over the per-seed cell means
    (seeds present in every cell), or one row saying why the design cannot be estimated."""
    per_cell = [_at(a, st).groupby("seed")[metric].mean().dropna() for st in settings]
    missing = [_setting_text(base["arch"], st) for st, v in zip(settings, per_cell) if v.empty]
    seeds = sorted(set.intersection(*(set(v.index) for v in per_cell)))
    if missing or not seeds:
        note = f"incomplete design: no finished run in {', '.join(missing)}" if missing else "no seed common to all cells"
        return [{**base, "effect": "+".join(levels), "kind": "main", "factors": " ".join(levels),
                 "label": "+".join(levels), "aliases": "", "n_seeds": 0, **_test_row([]),
                 "ci_method": note, "seeds": "", "per_seed": ""}]
    y = np.array([[v[s] for v in per_cell] for s in seeds])  # seeds × cells
    rows = []
    for c in contrasts:
        per_seed = y @ c["weights"]
        rows.append({**base, **{k: v for k, v in c.items() if k != "weights"}, "n_seeds": len(seeds),
                     **_test_row(per_seed, delta), "seeds": " ".join(map(str, seeds)),
                     "per_seed": " ".join(f"{e:+.4f}" for e in per_seed)})
    return rows


def _setting_text(arch: str, setting: dict) -> str:
    return cell_label(arch, {k: v for k, v in setting.items() if k in TOGGLES},
                      {k: v for k, v in setting.items() if k not in TOGGLES})


def _part(name: str, level, ref) -> tuple[str, str]:
    """(effect text, words) of one factor's contrast: ('augment', 'augmentation') for a toggle,
    ('loss = dice vs ce', 'loss = dice vs ce') otherwise."""
    if name in TOGGLES:
        return name, TOGGLE_LABELS.get(name, name)
    text = f"{name} = {level} vs {ref}"
    return text, text


def design_contrasts(kind: str, levels: dict[str, list]) -> tuple[list[dict], list[dict]]:
    """The design's settings (cells, in a fixed order) and its contrasts over them: effect,
    kind, factors, label, aliases and the weights that turn per-cell values into the effect."""
    if kind == "one-at-a-time":
        return _one_at_a_time_contrasts(levels)
    if kind == "fractional":
        return _fractional_contrasts(levels)
    return _full_contrasts(levels)


def _one_at_a_time_contrasts(levels: dict[str, list]) -> tuple[list[dict], list[dict]]:
    """Each varied cell against the reference cell (the first setting)."""
    names = list(levels)
    settings = design.one_at_a_time(levels)
    contrasts = []
    for i, st in enumerate(settings[1:], start=1):
        name = next(k for k in names if st[k] != settings[0][k])
        effect, label = _part(name, st[name], levels[name][0])
        w = np.zeros(len(settings))
        w[i], w[0] = 1.0, -1.0
        contrasts.append({"effect": effect, "kind": "main", "factors": name, "label": label,
                          "aliases": "not seen: interactions (one-at-a-time)", "weights": w})
    return settings, contrasts


def _fractional_contrasts(levels: dict[str, list]) -> tuple[list[dict], list[dict]]:
    """The ±1 contrasts of a two-level fractional factorial: main effects, and at resolution
    V or more the two-way interactions, each naming what it is aliased with (`_named_aliases`)."""
    names = list(levels)
    d = design.fractional_factorial(names)
    settings = [{k: levels[k][int(on)] for k, on in run.items()} for run in d.settings()]
    letters = {letter: name for name, letter in d.letters.items()}
    aliases = d.aliases(max_length=None)
    n = len(settings)
    terms = [(i,) for i in range(len(names))]
    if d.resolution >= 5:
        terms += list(itertools.combinations(range(len(names)), 2))
    contrasts = []
    for term in terms:
        parts = [_part(names[i], levels[names[i]][1], levels[names[i]][0]) for i in term]
        word = "".join(d.letters[names[i]] for i in term)
        partners = ["×".join(letters[ch] for ch in w) for w in _named_aliases(aliases.get(word, []))]
        contrasts.append({"effect": " × ".join(p[0] for p in parts), "kind": "main" if len(term) == 1 else "interaction",
                          "factors": " ".join(names[i] for i in term),
                          "label": parts[0][1] if len(term) == 1 else " × ".join(p[1] for p in parts) + " interaction",
                          "aliases": "; ".join(partners),
                          "weights": np.prod([d.runs[:, i] for i in term], axis=0) * 2.0 / n})
    return settings, contrasts


def _named_aliases(words: list[str]) -> list[str]:
    """The aliases (shortest first) an estimate names: those of order ≤ 3, or where all are
    longer (a main effect at resolution V: A = BCDE) the shortest, so a confounded estimate
    never reads as a clean one."""
    short = [w for w in words if len(w) <= 3]
    return short or [w for w in words if len(w) == len(words[0])]


def _full_contrasts(levels: dict[str, list]) -> tuple[list[dict], list[dict]]:
    """A full factorial's main effects (each level vs the reference level, averaged over the
    other factors) and two-way interactions (half the difference of one factor's effect
    between two levels of the other)."""
    names = list(levels)
    settings = design.full_factorial(levels)
    table = pd.DataFrame(settings)
    contrasts = []
    for name in names:
        ref = levels[name][0]
        for level in levels[name][1:]:
            on, off = (table[name] == level).to_numpy(), (table[name] == ref).to_numpy()
            effect, label = _part(name, level, ref)
            contrasts.append({"effect": effect, "kind": "main", "factors": name, "label": label, "aliases": "",
                              "weights": on / on.sum() - off / off.sum()})
    for f, g in itertools.combinations(names, 2):
        for lf in levels[f][1:]:
            for lg in levels[g][1:]:
                w = np.zeros(len(settings))
                for gl, sign in ((lg, 0.5), (levels[g][0], -0.5)):
                    at = (table[g] == gl).to_numpy()
                    on, off = at & (table[f] == lf).to_numpy(), at & (table[f] == levels[f][0]).to_numpy()
                    w += sign * (on / on.sum() - off / off.sum())
                (ef, lab_f), (eg, lab_g) = _part(f, lf, levels[f][0]), _part(g, lg, levels[g][0])
                contrasts.append({"effect": f"{ef} × {eg}", "kind": "interaction", "factors": f"{f} {g}",
                                  "label": f"{lab_f} × {lab_g} interaction", "aliases": "", "weights": w})
    return settings, contrasts

"""Analysis stage, per-cell numbers: the learning flags of each cell, the mean and 95%
Student-t interval of each metric over seeds, the summary table (summary.csv), the
architectures ranked at their best cell, and quality against cost with its Pareto front."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ablate import stats
from ablate.analysis.runs import METRICS, primary_metric
from ablate.config import TOGGLES


NO_INTERVAL = "n=1, no interval"


def cell_flags(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: n, whether it did not learn (its mean), and how many of its seeds did not
    learn, were still improving at their last epoch (best epoch = last: budget-limited) or
    stopped early; `flags` says it in words, naming the seeds that did not learn in a cell
    whose mean clears the bar. `runs` comes from `with_flags`."""
    rows = []
    for (arch, cell), g in runs.groupby(["arch", "cell"], sort=False):
        n = len(g)
        counts = {c: int((g[c] == True).sum()) for c in ("did_not_learn", "best_is_last", "early_stopped")}  # noqa: E712
        words = []
        if g["cell_did_not_learn"].iloc[0]:
            words.append("did not learn")
        elif counts["did_not_learn"]:
            words.append(f"{counts['did_not_learn']} of {n} seeds did not learn ({seeds_text(unlearned_seeds(g))})")
        if counts["best_is_last"]:
            words.append(f"still improving: budget-limited ({counts['best_is_last']}/{n} seeds)")
        if counts["early_stopped"]:
            words.append(f"early-stopped ({counts['early_stopped']}/{n} seeds)")
        rows.append({"arch": arch, "cell": cell, "n": n, "did_not_learn": bool(g["cell_did_not_learn"].iloc[0]),
                     "n_did_not_learn": counts["did_not_learn"], "n_best_is_last": counts["best_is_last"],
                     "n_early_stopped": counts["early_stopped"], "flags": "; ".join(words)})
    return pd.DataFrame(rows, columns=["arch", "cell", "n", "did_not_learn", "n_did_not_learn", "n_best_is_last",
                                       "n_early_stopped", "flags"])


def unlearned_seeds(cell_runs: pd.DataFrame) -> list[int]:
    """The seeds of one cell's runs (`with_flags`) that did not learn."""
    unlearned = cell_runs["did_not_learn"] == True  # noqa: E712 (None: the bar is unknown)
    return sorted(int(s) for s in cell_runs.loc[unlearned, "seed"])


def seeds_text(seeds: list[int]) -> str:
    """'seed 2', 'seeds 1, 2'."""
    return f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}"


def interval(values) -> dict:
    """n, mean, std and the 95% Student-t interval of the non-NaN `values` (no interval for n < 2)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    ci = stats.t_interval(v)
    return {
        "n": len(v), "mean": float(v.mean()) if len(v) else np.nan,
        "std": float(v.std(ddof=1)) if len(v) > 1 else np.nan,
        "ci_low": ci[0] if ci else np.nan, "ci_high": ci[1] if ci else np.nan,
        "ci_method": stats.CI_METHOD if ci else (NO_INTERVAL if len(v) == 1 else "no values"),
    }


def cell_stats(runs: pd.DataFrame, *, metrics=(*METRICS, "seconds", "images_per_second")) -> pd.DataFrame:
    """Tidy per-cell statistics: one row per (cell, metric) with n, mean, std and the 95%
    Student-t interval over seeds."""
    rows = []
    for (arch, cell), g in runs.groupby(["arch", "cell"], sort=False):
        for metric in metrics:
            if metric not in g or g[metric].isna().all():
                continue
            rows.append({"arch": arch, "cell": cell, **{t: bool(g[t].iloc[0]) for t in TOGGLES},
                         "metric": metric, "seeds": " ".join(str(s) for s in sorted(g["seed"])),
                         **interval(g[metric])})
    return pd.DataFrame(rows)


def compare_architectures(runs: pd.DataFrame, *, select_by: str = "val_miou", metric: str | None = None) -> pd.DataFrame:
    """Each architecture at its best cell (highest mean `select_by`), scored on `metric` (test
    mIoU by default, so the selection and the score use different data). Rank r means r−1
    architectures are clearly better (their CI lies wholly above this one's); overlapping
    CIs share a rank. With n=1 the point value stands in for the interval."""
    metric = metric or primary_metric(runs)
    rows = []
    for arch, a in runs.groupby("arch", sort=False):
        best = a.groupby("cell")[select_by].mean().idxmax()
        rows.append({"arch": arch, "best_cell": best, "selected_by": select_by, "metric": metric,
                     **interval(a.loc[a["cell"] == best, metric])})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    lo = out["ci_low"].fillna(out["mean"]).to_numpy()
    hi = out["ci_high"].fillna(out["mean"]).to_numpy()
    out["rank"] = [1 + int(np.sum(lo > hi[i])) for i in range(len(out))]
    out["tied_with"] = [", ".join(out["arch"][j] for j in range(len(out)) if j != i and lo[j] <= hi[i] and lo[i] <= hi[j])
                        for i in range(len(out))]
    return out.sort_values(["rank", "mean"], ascending=[True, False], ignore_index=True)


def pareto_front(cost, quality) -> np.ndarray:
    """True where no other point is at least as cheap and at least as good, and better in one."""
    c, q = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    dominated = ((c[None, :] <= c[:, None]) & (q[None, :] >= q[:, None])
                 & ((c[None, :] < c[:, None]) | (q[None, :] > q[:, None])))
    return ~dominated.any(axis=1)


def cost_table(runs: pd.DataFrame, *, quality: str | None = None) -> pd.DataFrame:
    """Per cell: mean seconds per run, mean training images/s, mean quality (with CI), and
    whether the cell is on the quality-vs-seconds Pareto front."""
    quality = quality or primary_metric(runs)
    rows = []
    for (arch, cell), g in runs.groupby(["arch", "cell"], sort=False):
        q = interval(g[quality])
        rows.append({"arch": arch, "cell": cell, "n": q["n"], "seconds": g["seconds"].mean(),
                     "images_per_second": g["images_per_second"].mean(), "metric": quality,
                     "quality": q["mean"], "ci_low": q["ci_low"], "ci_high": q["ci_high"]})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["pareto"] = pareto_front(out["seconds"], out["quality"])
    return out


def summary_table(runs: pd.DataFrame, bar: dict | None = None) -> pd.DataFrame:
    """summary.csv from a grid's runs table (`results.runs_table`): per model x factor setting,
    over seeds, n, mean and std of val/test mIoU and pixel acc, and the flags: `did_not_learn` (the mean val pixel acc or mIoU at or below the
    all-majority prediction's `bar`; empty when the bar is unknown), how many seeds did not
    learn, were still improving at their last epoch, or stopped early."""
    done = runs[runs["status"] == "completed"].copy()
    done["factors"] = done["factors"].fillna("") if "factors" in done else ""  # cells differing in a factor stay apart
    keys = ["model", "model_args", "toggles", *TOGGLES, "factors"]
    counts = ["n_did_not_learn", "n_best_is_last", "n_early_stopped"]
    columns = keys + ["n"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] + ["did_not_learn", *counts]
    if done.empty:
        return pd.DataFrame(columns=columns)
    for m in METRICS:
        done[m] = pd.to_numeric(done[m], errors="coerce")
    for flag, count in zip(("did_not_learn", "best_is_last", "early_stopped"), counts):
        done[count] = done[flag].astype(str).str.lower().isin(("true", "1", "1.0")) if flag in done else False
    grouped = done.groupby(keys, sort=False)
    out = grouped.size().rename("n").to_frame()
    for m in METRICS:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1)
    for count in counts:
        out[count] = grouped[count].sum().astype(int)
    out["did_not_learn"] = [stats.did_not_learn(a, m, bar) for a, m in zip(out["val_pixel_acc_mean"], out["val_miou_mean"])]
    return out.reset_index()[columns]

"""Analysis stage, the runs table made analysable: completed runs with `arch` (the model and
its arguments), `cell` (a label for model × factor setting), `key` (the run), the toggles as
booleans, each factor as a column of level text, and the learning flags; the design a study's
runs follow, and the vocabulary of metrics and toggles every other part uses.

Vocabulary: a *run* is one training (one seed); a *cell* is a model × factor setting (the
toggles on/off and any other factors' levels), i.e. the runs that differ only in their seed.
The *reference* cell has every toggle off and every other factor at its first listed level.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd

from ablate import stats
from ablate.config import TOGGLES
from ablate.errors import AblateError
from ablate.results import Study


METRICS = ("val_miou", "test_miou", "val_pixel_acc", "test_pixel_acc")
METRIC_LABELS = {"val_loss": "val loss", "val_miou": "val mIoU", "test_miou": "test mIoU", "val_pixel_acc": "val pixel acc",
                 "test_pixel_acc": "test pixel acc", "seconds": "seconds", "images_per_second": "images/s"}
TOGGLE_LABELS = {"scheduler": "cosine scheduler", "augment": "augmentation", "weighted_loss": "weighted loss"}


def trial_states(trials: pd.DataFrame) -> pd.Series:
    """A trials table's states as COMPLETE, PRUNED, FAIL, ... (also from 'TrialState.COMPLETE')."""
    return trials["state"].astype(str).str.split(".").str[-1].str.upper()


def _as_bool(col: pd.Series) -> pd.Series:
    return col.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes"))


def _canonical_args(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, sort_keys=True)


def finished_runs(study: Study) -> pd.DataFrame:
    """Completed grid runs (or COMPLETE trials) with `arch`, `cell` and the toggles normalised."""
    t = study.table
    if t.empty:
        return t
    if study.kind == "tune":
        out = t[trial_states(t) == "COMPLETE"].copy()
        out["key"] = out["number"].astype(int).astype(str)
        return out
    return completed_runs(t, study.dataset)


def completed_runs(table: pd.DataFrame, dataset: dict | None) -> pd.DataFrame:
    """A grid's runs table (`results.runs_table`) → its completed runs with a val mIoU, with
    cells (`with_cells`) and learning flags against `dataset`'s bar (`with_flags`)."""
    out = table[table["status"].astype(str) == "completed"].copy()
    out = out[pd.to_numeric(out["val_miou"], errors="coerce").notna()]
    return with_flags(with_cells(out), stats.majority_bar(dataset))


def with_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Add `arch` (model, plus its args when one model appears with several), `cell` (a label
    for model × factor setting) and `key` (the run folder name); toggles become real booleans,
    and each factor of the grid's `factors` column (JSON {"loss": "dice"}) a column of level text."""
    out = runs.copy()
    for t in TOGGLES:
        out[t] = _as_bool(out[t]) if t in out else False
    levels = [_json_dict(v) for v in out["factors"]] if "factors" in out else [{} for _ in range(len(out))]
    names = list(dict.fromkeys(k for d in levels for k in d))
    for name in names:
        out[name] = [d.get(name) for d in levels]
    args = out["model_args"].map(_canonical_args) if "model_args" in out else pd.Series("{}", index=out.index)
    out["model_args"] = args
    variants = out.groupby("model")["model_args"].transform("nunique")
    out["arch"] = [m if v <= 1 or a == "{}" else f"{m} {a}" for m, a, v in zip(out["model"], args, variants)]
    out["cell"] = [cell_label(arch, row, lv) for arch, row, lv
                   in zip(out["arch"], out[list(TOGGLES)].to_dict("records"), levels)]
    out["key"] = (out["cell_id"] if "cell_id" in out else out["run_id"]).astype(str)
    for col in (*METRICS, "seconds", "images_per_second"):
        out[col] = pd.to_numeric(out[col], errors="coerce") if col in out else np.nan
    return out


def _json_dict(value) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            raise AblateError(f"runs table: a factors/design entry is not JSON: {value[:80]!r}") from None
        return parsed if isinstance(parsed, dict) else {}
    return {}


def cell_label(arch: str, toggles: dict[str, bool], factors: dict[str, str] | None = None) -> str:
    """'unet · augment', 'unet · no toggles'; with other factors 'unet · loss=dice optimizer=sgd'
    (toggles named first when one is on)."""
    on = [t for t in TOGGLES if toggles.get(t)]
    setting = "+".join(on) if on else "no toggles"
    if factors:
        words = " ".join(f"{k}={v}" for k, v in factors.items())
        setting = f"{setting} {words}" if on else words
    return f"{arch} · {setting}"


def design_of(runs: pd.DataFrame) -> tuple[str, dict[str, list]]:
    """The grid's design ("full" | "fractional" | "one-at-a-time") and every varying factor's
    levels in the design's order, the reference first: toggles as [False, True], other factors
    as level text (as their columns hold them). A study without a `design` column is a full
    design of the toggles that vary in `runs`."""
    design = next((d for d in map(_json_dict, runs["design"]) if d), {}) if "design" in runs else {}
    if not design:
        return "full", {t: [False, True] for t in varying_toggles(runs)}
    levels = {k: ([False, True] if k in TOGGLES else [str(x) for x in v]) for k, v in design.get("levels", {}).items()}
    return str(design.get("kind", "full")), levels


def primary_metric(runs: pd.DataFrame) -> str:
    """Test mIoU where the dataset has a test split, else val mIoU."""
    return "test_miou" if "test_miou" in runs and runs["test_miou"].notna().any() else "val_miou"


def varying_toggles(runs: pd.DataFrame) -> list[str]:
    """The toggles that are on in some runs and off in others."""
    return [t for t in TOGGLES if t in runs and runs[t].nunique() == 2]


def with_flags(runs: pd.DataFrame, bar: dict | None) -> pd.DataFrame:
    """Add the learning flags (STATISTICS.md): per run `did_not_learn` (val pixel acc or val
    mIoU at or below the all-majority prediction's, see `stats.majority_bar`; None when the
    bar is unknown), and per cell `cell_did_not_learn`: the cell's mean over seeds is at or
    below the bar. `best_is_last` and `early_stopped` become real booleans (NaN: unknown)."""
    out = runs.copy()
    if out.empty:
        return out.assign(did_not_learn=pd.Series(dtype=object), cell_did_not_learn=pd.Series(dtype=bool))
    acc = pd.to_numeric(out["val_pixel_acc"], errors="coerce") if "val_pixel_acc" in out else pd.Series(np.nan, index=out.index)
    out["did_not_learn"] = [stats.did_not_learn(a, m, bar) for a, m in zip(acc, out["val_miou"])]
    means = out.assign(_acc=acc).groupby("cell")[["_acc", "val_miou"]].transform("mean")
    out["cell_did_not_learn"] = [bool(stats.did_not_learn(a, m, bar)) for a, m in zip(means["_acc"], means["val_miou"])]
    for col in ("best_is_last", "early_stopped"):
        raw = out[col] if col in out else pd.Series(np.nan, index=out.index)
        known = raw.notna() & (raw.astype(str).str.strip() != "")
        out[col] = np.where(known, _as_bool(raw), np.nan)
    return out


INCOMPLETE_COLUMNS = ["arch", "metric", "cell", "seed", "key", "why"]


def incomplete_metrics(runs: pd.DataFrame, *, metrics=("val_miou", "test_miou")) -> pd.DataFrame:
    """Completed runs without a value (NaN or missing) of a metric that other runs of their
    architecture have. Effects use the seeds present in every cell, so each such run takes its
    seed out of every effect of its architecture on that metric. One row per run and metric."""
    rows = []
    for (arch, metric), have in _has_metric(runs, metrics):
        label = METRIC_LABELS.get(metric, metric)
        for r in runs.loc[have.index[~have]].to_dict("records"):
            rows.append({"arch": arch, "metric": metric, "cell": r["cell"], "seed": int(r["seed"]), "key": r["key"],
                         "why": f"no {label}, which {int(have.sum())} of the {len(have)} {arch} runs have: every "
                                f"{arch} effect on {label} leaves out seed {int(r['seed'])}"})
    out = pd.DataFrame(rows, columns=INCOMPLETE_COLUMNS)
    return out.sort_values(["arch", "metric", "cell", "seed"], ignore_index=True)


def _has_metric(runs: pd.DataFrame, metrics) -> Iterator[tuple[tuple[str, str], pd.Series]]:
    """((arch, metric), per-run 'has a value') where some runs of the architecture have it and some not."""
    for arch, a in runs.groupby("arch", sort=False):
        for metric in metrics:
            have = a[metric].notna() if metric in a else pd.Series(False, index=a.index)
            if have.any() and not have.all():
                yield (arch, metric), have


def seeds_to_restore(runs: pd.DataFrame, incomplete: pd.DataFrame) -> int:
    """Seeds per cell that give every effect back the seeds the `incomplete_metrics` runs take:
    the most seeds a cell has, plus the most seeds one architecture lost on one metric."""
    have = int(runs.groupby("cell")["seed"].nunique().max()) if not runs.empty else 0
    lost = int(incomplete.groupby(["arch", "metric"])["seed"].nunique().max()) if not incomplete.empty else 0
    return have + lost


def incomplete_metrics_note(incomplete: pd.DataFrame, repair: dict | None = None) -> str | None:
    """One banner for the `incomplete_metrics` rows: how many runs, what they cost, each run
    (cell, seed, the metrics it lacks), and `repair` (`more_seeds` at `seeds_to_restore`): the
    command that adds a seed every cell has. None when no run lacks a metric."""
    if incomplete.empty:
        return None
    lacks = incomplete.groupby(["cell", "seed"], sort=False)["metric"].agg(
        lambda ms: ", ".join(METRIC_LABELS.get(m, m) for m in ms))
    one = len(lacks) == 1
    its = "its" if one else "their"
    listed = ", ".join(f"{cell} seed {seed} ({what})" for (cell, seed), what in lacks.items())
    text = (f"{len(lacks)} completed run{'' if one else 's'} {'has' if one else 'have'} no value of a metric that the "
            f"other runs of {its} architecture have, so every effect on that metric leaves out {its} seed: {listed}.")
    if repair:
        text += (" A finished run is not scored again; a seed more in every cell gives the effects their n back: "
                 f"{repair['text']}.")
    return text

"""Analysis stage, what the run records say beyond the tables: the study overview (data,
hardware, seeds, compute), how each architecture was trained, the failures, the learning
curves, per-class IoU, and the prediction gallery of the best runs (`ablate.results.best`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from ablate import results
from ablate.analysis.runs import METRIC_LABELS, primary_metric, trial_states, with_cells
from ablate.results import Study, ValImages


TRACEBACK_LINES = 12


def overview(study: Study) -> dict:
    """Dataset, hardware, seeds (and, where architectures completed different numbers of seeds,
    as sequential seeds make them, each one's), run counts and total compute, as plain data."""
    t, per_model = study.table, {}
    if study.kind == "tune":
        counts = trial_states(t).value_counts().to_dict() if not t.empty else {}
        seeds = sorted({r["config"]["seed"] for r in study.records.values() if r.get("config")})
    else:
        counts = t["status"].astype(str).value_counts().to_dict() if "status" in t else {}
        seeds = sorted(pd.to_numeric(t["seed"], errors="coerce").dropna().astype(int).unique().tolist()) if "seed" in t else []
        if {"model", "seed", "status"} <= set(t):
            per_model = t[t["status"] == "completed"].groupby("model")["seed"].nunique().to_dict()
    hardware: dict[tuple, int] = {}
    for rec in study.records.values():
        env = rec.get("environment") or {}
        if env:
            key = tuple(env.get(k) for k in ("device_name", "device", "threads", "precision", "torch", "python"))
            hardware[key] = hardware.get(key, 0) + 1
    seconds = pd.to_numeric(t["seconds"], errors="coerce").sum() if "seconds" in t else 0.0
    return {
        "kind": study.kind, "storage": study.meta.get("storage"), "dataset": study.dataset,
        "hardware": [dict(zip(("device_name", "device", "threads", "precision", "torch", "python"), k), runs=n)
                     for k, n in hardware.items()],
        "seeds": seeds, "seeds_per_model": {str(k): int(v) for k, v in per_model.items()}
        if len(set(per_model.values())) > 1 else {},
        "counts": {str(k): int(v) for k, v in counts.items()}, "total_seconds": float(seconds),
    }


def training_setup(study: Study) -> pd.DataFrame:
    """Per architecture, how its runs were trained, as the records say: epoch budget, the
    early-stopping rule, the weights it started from, and the resolution of its metrics.
    Several values in one column mean the runs differ (e.g. a study extended with a flag)."""
    rows: dict[str, dict[str, set]] = {}
    for rec in study.records.values():
        cfg = rec.get("config") or {}
        if not cfg or rec.get("status") != "completed":
            continue
        row = rows.setdefault(str(cfg.get("model")), {k: set() for k in ("epochs", "early_stopping", "weights", "metrics")})
        row["epochs"].add(str(cfg.get("epochs")))
        row["early_stopping"].add(_stopping_rule(rec.get("early_stopping"), cfg))
        row["weights"].add(str(rec.get("weights") or "random init (architecture without pretrained weights)"))
        row["metrics"].add(str(rec.get("metrics_resolution") or "working size"))
    return pd.DataFrame([{"model": m, **{k: "; ".join(sorted(v)) for k, v in r.items()}} for m, r in sorted(rows.items())],
                        columns=["model", "epochs", "early_stopping", "weights", "metrics"])


def _stopping_rule(stop: dict | None, cfg: dict) -> str:
    patience = (stop or {}).get("patience", cfg.get("patience"))
    if not patience:
        return "off (every run trains its whole budget)"
    monitor = (stop or {}).get("monitor") or ("val_loss" if cfg.get("early_stop_on") == "loss" else "val_miou")
    delta = (stop or {}).get("min_delta", cfg.get("min_delta")) or 0
    return f"on {METRIC_LABELS.get(monitor, monitor.replace('_', ' '))}, patience {patience}" + (
        f", min delta {delta}" if delta else "")


def failures(study: Study) -> pd.DataFrame:
    """Failed runs or trials: key, label, reason and the last lines of the traceback."""
    t = study.table
    if t.empty:
        return pd.DataFrame(columns=["key", "label", "reason", "traceback"])
    if study.kind == "tune":
        bad = t[trial_states(t) == "FAIL"]
        keys = bad["number"].astype(int).astype(str)
        labels = [f"trial {k}" for k in keys]
    else:
        # "retry": failed, and the grid will try it again on its next run
        bad = with_cells(t[t["status"].astype(str).isin(("failed", "retry"))]) if "status" in t else t.iloc[:0]
        keys = bad["key"] if not bad.empty else pd.Series(dtype=str)
        labels = [f"{c} · seed {s}" + (" (will be retried)" if st == "retry" else "")
                  for c, s, st in zip(bad.get("cell", []), bad.get("seed", []), bad.get("status", []))]
    rows = []
    for key, label in zip(keys, labels):
        rec = study.records.get(key, {})
        tb = rec.get("traceback") or ""
        reason = rec.get("failure_reason")
        if reason is None and "failure_reason" in bad:
            reason = bad.loc[keys == key, "failure_reason"].iloc[0]
        rows.append({"key": key, "label": label, "reason": "" if pd.isna(reason) else str(reason),
                     "traceback": "\n".join(tb.rstrip().splitlines()[-TRACEBACK_LINES:])})
    return pd.DataFrame(rows, columns=["key", "label", "reason", "traceback"])


def learning_curves(study: Study, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table of per-epoch curves: one row per (run, epoch), with the run's best and stop epochs."""
    rows = []
    for r in runs.itertuples():
        rec = study.records.get(r.key)
        if not rec:
            continue
        epochs = rec["config"].get("epochs")
        for c in rec.get("curves") or []:
            rows.append({"arch": getattr(r, "arch", ""), "cell": getattr(r, "cell", f"trial {r.key}"),
                         "seed": rec["config"].get("seed"), "key": r.key, "best_epoch": rec.get("best_epoch"),
                         "stopped_epoch": rec.get("stopped_epoch"), "max_epochs": epochs,
                         **{k: c.get(k) for k in ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr")}})
    return pd.DataFrame(rows)


def class_iou_table(study: Study, runs: pd.DataFrame, *, split: str | None = None) -> pd.DataFrame:
    """Cells × classes: per-class IoU averaged over seeds (classes absent from the split are NaN)."""
    split = split or primary_metric(runs).split("_")[0]
    names = study.class_names
    rows = {}
    for cell, g in runs.groupby("cell", sort=False):
        ious = [study.records[k]["metrics"].get(split, {}).get("class_iou") for k in g["key"] if k in study.records]
        ious = [[np.nan if x is None else x for x in v] for v in ious if v]
        if ious:
            with warnings.catch_warnings():  # a class absent from every seed's split stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                rows[cell] = np.nanmean(np.array(ious, dtype=float), axis=0) if len(ious) > 1 else np.array(ious[0], dtype=float)
    if not rows:
        return pd.DataFrame()
    k = max(len(v) for v in rows.values())
    columns = [names[i] if i < len(names) else f"class {i}" for i in range(k)]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def best_runs(study: Study, runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, run key) of the runs the gallery shows, by the one best-run rule
    (`results.best`): per architecture the best seed of its best cell (grid), or the best
    trial (tune: one architecture whose every trial is its own cell)."""
    if runs.empty:
        return []
    if study.kind == "tune":
        value = pd.to_numeric(runs["val_miou"], errors="coerce")
        chosen = results.best_runs(results.Run(k, "", k, v, n) for k, v, n in zip(runs["key"], value, runs["number"])
                                   if not np.isnan(v))
        return [(f"best trial {r.key}", r.key) for r in chosen]
    return grid_best_runs(runs)


def grid_best_runs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, run key) of the rule's choice among a grid's completed runs (`with_cells` rows):
    the same choice a grid worker makes from the runs completed so far when it decides whether
    a run keeps its checkpoint. A run of unknown trial number ranks after those of known ones,
    in table order."""
    order = (pd.to_numeric(runs["trial_number"], errors="coerce") if "trial_number" in runs
             else pd.Series(np.arange(len(runs), dtype=float), index=runs.index)).fillna(np.inf)
    chosen = results.best_runs(results.Run(k, a, c, v, o) for k, a, c, v, o
                               in zip(runs["key"], runs["arch"], runs["cell"], runs["val_miou"], order))
    seed = dict(zip(runs["key"], runs["seed"]))
    cell = dict(zip(runs["key"], runs["cell"]))
    return [(f"{cell[r.key]} (seed {seed[r.key]})", r.key) for r in chosen]


@dataclass
class Gallery:
    """The prediction gallery: a few fixed val images, their ground truth, and each chosen
    run's masks as its worker stored them; `notes` say what could not be shown and why."""
    class_names: list[str]
    image_ids: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)  # H×W×3 uint8
    truths: list[np.ndarray] = field(default_factory=list)  # H×W uint8, 255 = void
    predictions: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)  # (label, one mask per image)
    notes: list[str] = field(default_factory=list)


NO_PREDICTIONS = "the run stored no predictions for these images (a report draws what a run stored; it runs no model)"


def gallery(chosen: list[tuple[str, str]], images: ValImages,
            stored: Mapping[str, tuple[list[str], list[np.ndarray]] | None]) -> Gallery:
    """The gallery of the `chosen` runs ((label, key), `best_runs`) over the val `images`: each
    run's `stored` predictions ((image ids, masks) from its predictions.png, at the size it
    trained at) of these images, brought to their size; a run with none for them gets a note."""
    out = Gallery(images.class_names, images.ids, images.images, images.truths)
    for label, key in chosen:
        by_id = dict(zip(*(stored.get(key) or ([], []))))
        if not all(i in by_id for i in images.ids):
            out.notes.append(f"{label}: {NO_PREDICTIONS}")
            continue
        masks = [by_id[i] for i in images.ids]
        out.predictions.append((label, [m if m.shape == t.shape else _nearest(m, t.shape)
                                        for m, t in zip(masks, images.truths)]))
    return out


def _nearest(mask: np.ndarray, shape: tuple) -> np.ndarray:
    """`mask` resized to `shape` by nearest neighbour (labels are not interpolated)."""
    rows = (np.arange(shape[0]) * mask.shape[0] // shape[0])[:, None]
    cols = (np.arange(shape[1]) * mask.shape[1] // shape[1])[None, :]
    return mask[rows, cols]

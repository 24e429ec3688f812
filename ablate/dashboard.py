"""Dashboard stage: what optuna-dashboard shows beside the trials — a Markdown note on the
study (description, the Findings in words, where the report is) and one on each finished
grid trial (its label, flags and per-epoch curves). `write_notes` is the one writer, called
whenever the report is written; the text comes from `ablate.analysis`. (Each grid trial's
run.json and checkpoint are attached as Optuna artifacts by the grid itself, before the trial
finishes: Optuna refuses to change a finished trial's system attributes; see `ablate.store`.)"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablate import _optuna, analysis, results, store
from ablate.analysis import METRIC_LABELS, Findings
from ablate.results import Study

CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr")
ARTIFACT_DIR = store.ARTIFACT_DIR  # <study folder>/artifacts by default: optuna-dashboard --artifact-dir


def study_note(study: Study, found: Findings, report_path: Path) -> str:
    """The study's note: description, the Findings panel in Markdown (the rules, then per
    architecture its stage and its decisions as a table), the report's path."""
    label = METRIC_LABELS[found.metric]
    lines = [f"## {study.name}", ""]
    if study.meta.get("description"):
        lines += [study.meta["description"], ""]
    lines += [f"**Report:** `{report_path.resolve()}`", "",
              f"Objective: val mIoU (the checkpoint and early-stopping yardstick); verdicts below are on {label}. "
              "The seed is a replicate, not a parameter: it is the trial's `seed` user attribute, and parameter "
              "importance here ranks model and toggles only.", "", "### Findings", ""]
    if found.n_max == 1:
        lines.append("- **One seed per cell**: no intervals, no verdicts.")
    if found.seeds:
        lines.append(f"- **Not enough seeds** (smallest cell n={found.seeds['n_min']}): {found.seeds['text']}.")
    if found.bar is None:
        lines.append("- Did-not-learn bar unknown (no per-split class frequencies in the dataset summary).")
    for a in found.archs:
        lines += ["", f"**{a.arch}**" + (f" — {a.stage}" if a.stage else ""), ""]
        lines += _decisions(a)
        lines += [f"- ⚠ {r['cell']}: {r['flags']}" for r in a.flagged.to_dict("records")]
    lines += ["", "Rules: " + analysis.rules_text(found)]
    return "\n".join(lines)


def _decisions(a) -> list[str]:
    """An architecture's decisions as a Markdown table: effect, verdict, estimate [95% CI], seeds."""
    if not a.decisions:
        return ["- no main effect could be estimated"]
    out = ["| effect | verdict | estimate [95% CI] | seeds |", "|---|---|---|---|"]
    for r in a.decisions:
        verdict = analysis.VERDICT_SHORT.get(r["verdict"], r["verdict"]).replace("δ", f"δ = {r['min_effect']:g}")
        out.append(f"| {analysis.effect_label(r)} | {verdict} | "
                   f"{analysis.interval_text(r['estimate'], r['ci_low'], r['ci_high'])} | {analysis.seeds_cell(r)} |")
    return out


def trial_note(record: dict, label: str, flags: str) -> str:
    """A finished trial's note: label, flags and its per-epoch curves as a Markdown table."""
    curves = record.get("curves") or []
    lines = [f"### {label}", "", f"Flags: {flags or 'none'}", "", "| " + " | ".join(CURVE_COLUMNS) + " |",
             "|" + "---|" * len(CURVE_COLUMNS)]
    for c in curves:
        lines.append("| " + " | ".join(_cell(c.get(k)) for k in CURVE_COLUMNS) + " |")
    best, stopped = record.get("best_epoch"), record.get("stopped_epoch")
    lines += ["", f"Best epoch {best} (checkpoint kept), stopped at {stopped} of {record['config'].get('epochs')}."]
    return "\n".join(lines)


def _cell(v) -> str:
    if v is None:
        return "–"
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def write_notes(study: Study, runs: pd.DataFrame, found: Findings, report_path: Path, *, storage: str | None = None) -> str:
    """Save the study note and the notes of the finished trials (unchanged notes are not
    rewritten). Returns '' or why nothing was written."""
    import optuna
    from optuna_dashboard import get_note, save_note

    ostudy, why = results.open_optuna(study, storage)
    if ostudy is None:
        return why
    text = study_note(study, found, report_path)
    if get_note(ostudy) != text:
        save_note(ostudy, text)
    flags = analysis.cell_flags(runs).set_index("cell")["flags"].to_dict() if not runs.empty else {}
    cell_of = dict(zip(runs.get("key", []), runs.get("cell", [])))
    for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rec = study.records.get(str(t.user_attrs.get("cell_id")))
        if not rec:
            continue
        trial = optuna.trial.Trial(ostudy, _optuna.trial_id(t))  # a note is saved on a live trial object
        label = t.user_attrs.get("label") or cell_of.get(t.user_attrs.get("cell_id"), f"trial {t.number}")
        note = trial_note(rec, label, t.user_attrs.get("flags") or flags.get(cell_of.get(t.user_attrs["cell_id"]), ""))
        if get_note(trial) != note:
            save_note(trial, note)
    return ""

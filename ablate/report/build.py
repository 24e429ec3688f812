"""Report stage, the one entry that `ablate report`, the end of `ablate grid` and the end of
`ablate tune` call: read each study (`ablate.results`), compute what it shows (`ablate.analysis`),
export its CSV tables, draw the page (this package's other modules only draw), write the HTML
file, then the dashboard notes that point at it (`ablate.dashboard`)."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from ablate import _io, analysis, dashboard, results
from ablate.errors import AblateError
from ablate.gallery import GALLERY_IMAGES
from ablate.report.grid_page import grid_study
from ablate.report.html import Page, document
from ablate.report.tune_page import lead as tune_lead
from ablate.report.tune_page import tune_study
from ablate.results import Study


def write_report(*, results_dir: str | Path, study_names: list[str], out: str | Path | None = None,
                 storage: str | None = None, artifacts: str | None = None) -> Path:
    """Analyse each study, export its tables (effects.csv / comparisons.csv beside a grid's,
    and for a study read from its storage runs.csv / summary.csv or trials.csv), and write the
    HTML report (default: <results_dir>/<first study>/report.html). `storage` is the Optuna
    storage to read the studies from (needed on a machine that ran nothing; it overrides the
    URL study.json records, e.g. one with a password); `artifacts` overrides the artifact
    store the trials recorded."""
    if not study_names:
        raise AblateError("no study given; pass --study-name NAME")
    studies = [results.open_study(results_dir, name, storage=storage, artifacts=artifacts) for name in study_names]
    page, bodies, notes = Page(), [], []
    cache = Path(results_dir) / ".cache"  # the gallery's val images, decoded once per dataset
    for study in studies:
        runs = analysis.finished_runs(study)
        _check_finished(study, runs)
        if study.kind == "tune":
            results.write_tables(study.folder, analysis.export_tables(study, runs))
            optuna_study, why = results.open_optuna(study, storage or study.storage_url)
            computed = analysis.analyse_tune(study, runs, optuna_study)
            bodies.append(tune_study(page, study, computed, gallery_for(study, runs, cache_dir=cache), optuna_study, why))
        else:
            computed = analysis.analyse_grid(study, runs)
            results.write_tables(study.folder, analysis.export_tables(study, runs, effects=computed.effects,
                                                                      comparisons=computed.comparisons))
            bodies.append(grid_study(page, study, computed, gallery_for(study, runs, cache_dir=cache)))
            notes.append((study, computed))
    # A report of searches only opens with what they searched and found, not with verdicts on toggles.
    lead = " ".join(tune_lead(s) for s in studies) if all(s.kind == "tune" for s in studies) else None
    path = _io.write_text(Path(out) if out is not None else studies[0].folder / "report.html",
                          document(studies, bodies, lead=lead))
    for study, computed in notes:  # the dashboard's study and trial notes point at this report
        why = dashboard.write_notes(study, computed.runs, computed.findings, path, storage=storage or study.storage_url)
        if why:
            print(f"warning: no dashboard note for {study.name}: {why}", file=sys.stderr)
    return path


def _check_finished(study: Study, runs: pd.DataFrame) -> None:
    """A study with nothing finished has no report yet (a tune whose trials were all pruned has one)."""
    pruned = (study.kind == "tune" and not study.table.empty
              and (analysis.trial_states(study.table) == "PRUNED").any())
    if runs.empty and not pruned:
        what = "trials" if study.kind == "tune" else "cells"
        raise AblateError(f"study {study.name} has no finished {what} yet in {study.folder}; "
                          f"wait for `ablate {study.kind}` to finish one, then rerun `ablate report`")


def gallery_for(study: Study, runs: pd.DataFrame, *, cache_dir: str | Path,
                n_images: int = GALLERY_IMAGES) -> analysis.Gallery:
    """The prediction gallery of a study's best runs (`analysis.best_runs`): their val images
    (decoded through `cache_dir`) and the predictions each run stored (`Study.predictions`).
    A storage error on a file the storage says is there is raised (a damaged study); a study
    whose dataset is not here gets a note."""
    chosen = [(label, key) for label, key in analysis.best_runs(study, runs) if key in study.records]
    if not chosen:
        return analysis.Gallery(study.class_names, notes=["no run record to predict with"])
    try:
        images = results.gallery_images(study.records[chosen[0][1]]["config"], study.class_names,
                                        cache_dir=cache_dir, n_images=n_images)
    except AblateError as exc:
        return analysis.Gallery(study.class_names, notes=[f"the dataset could not be loaded: {exc}"])
    return analysis.gallery(chosen, images, {key: study.predictions(key) for _, key in chosen})

"""Results stage, the read side: where a study is read. Open a grid or tune study from its
Optuna storage or its results folder (`open_study`), with its table, run records and files
(checkpoints, stored predictions, via `ablate.store`); the one best-run rule (`best`); the
CSV exports (`write_tables`). The grid, the tuner, the analysis and the report read through
this package, and it imports none of them; nothing here imports pandas before a table is built,
so a grid worker can use the cell states and the rule.

    cells    a grid study's cells as stored: cell states, runs table, study.json content
    trials   a tune study's trials as stored: trials table, counts, best trial, study.json content
    best     the best-run rule (the gallery's runs, the checkpoints --keep-checkpoints best keeps)
    study    one opened study: records, files, checkpoint and predictions downloads
    load     opening a study from a storage or a folder
    exports  the CSV tables
"""
from ablate.results.best import Run, best_grid_runs, best_runs, rank
from ablate.results.cells import (GRID_KIND, RUN_COLUMNS, CellState, cell_states, charged_failures, failure_reason,
                                  grid_meta, runs_table, study_cells, trial_label)
from ablate.results.exports import TABLES, write_tables
from ablate.results.load import open_optuna, open_stored_study, open_study, optuna_study
from ablate.results.study import NoCheckpoint, Study, ValImages, gallery_images
from ablate.results.trials import (META_ATTR, TRIAL_COLUMNS, TUNE_ATTR, best_trial, counts, is_tune, trials_frame,
                                   tune_meta)

__all__ = [
    "Run", "best_grid_runs", "best_runs", "rank",
    "GRID_KIND", "RUN_COLUMNS", "CellState", "cell_states", "charged_failures", "failure_reason", "grid_meta",
    "runs_table", "study_cells", "trial_label",
    "TABLES", "write_tables",
    "open_optuna", "open_stored_study", "open_study", "optuna_study",
    "NoCheckpoint", "Study", "ValImages", "gallery_images",
    "META_ATTR", "TRIAL_COLUMNS", "TUNE_ATTR", "best_trial", "counts", "is_tune", "trials_frame", "tune_meta",
]

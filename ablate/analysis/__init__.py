"""Analysis stage: pure functions over what `ablate.results` returns (a study's table and run
records) → DataFrames and plain data: per-cell Student-t intervals over seeds, paired tests
against the reference cell, 2^k and other factorial effects, Holm-corrected verdicts, learning
flags, the Findings summary, architecture ranking, cost Pareto front, and the tuner's
expected-best-vs-budget curve (the numerics are in `ablate.stats`). No file or storage I/O
and no model runs here; `ablate.report` only draws what these return.

    runs      the runs table made analysable (arch, cell, key, toggles, factors, flags)
    cells     per-cell flags and intervals, summary.csv, ranking, cost
    effects   comparisons with the reference cell, factorial effects
    verdicts  Holm, verdict words, sentences
    findings  the Findings panel, the more-seeds advice, the design in words
    records   overview, training setup, failures, curves, per-class IoU, the gallery
    tuning    best so far, expected best vs budget, importances
    study     one study computed once for the report, and its CSV tables
"""
from ablate.analysis.cells import (NO_INTERVAL, cell_flags, cell_stats, compare_architectures, cost_table, interval,
                                   pareto_front, summary_table)
from ablate.analysis.effects import (COMPARISON_COLUMNS, EFFECT_COLUMNS, design_contrasts, factorial_effects,
                                     paired_comparisons)
from ablate.analysis.findings import ONE_AT_A_TIME_NOTE, ArchFindings, Findings, design_notes, findings, more_seeds
from ablate.analysis.records import (NO_PREDICTIONS, TRACEBACK_LINES, Gallery, best_runs, class_iou_table, failures,
                                     gallery, grid_best_runs, learning_curves, overview, training_setup)
from ablate.analysis.runs import (METRIC_LABELS, METRICS, TOGGLE_LABELS, cell_label, design_of, finished_runs,
                                  primary_metric, trial_states, varying_toggles, with_cells, with_flags)
from ablate.analysis.study import GridAnalysis, TuneAnalysis, analyse_grid, analyse_tune, export_tables
from ablate.analysis.tuning import IMPORTANCE_EVALUATOR, best_so_far, expected_max, param_importances, quiet_optuna
from ablate.analysis.verdicts import FAMILY, VERDICT_SHORT, VERDICT_WORDS, interval_text, judge, p_text, verdict_word

__all__ = [
    "NO_INTERVAL", "cell_flags", "cell_stats", "compare_architectures", "cost_table", "interval", "pareto_front",
    "summary_table",
    "COMPARISON_COLUMNS", "EFFECT_COLUMNS", "design_contrasts", "factorial_effects", "paired_comparisons",
    "ONE_AT_A_TIME_NOTE", "ArchFindings", "Findings", "design_notes", "findings", "more_seeds",
    "NO_PREDICTIONS", "TRACEBACK_LINES", "Gallery", "best_runs", "class_iou_table", "failures", "gallery",
    "grid_best_runs", "learning_curves", "overview", "training_setup",
    "METRIC_LABELS", "METRICS", "TOGGLE_LABELS", "cell_label", "design_of", "finished_runs", "primary_metric",
    "trial_states", "varying_toggles", "with_cells", "with_flags",
    "GridAnalysis", "TuneAnalysis", "analyse_grid", "analyse_tune", "export_tables",
    "IMPORTANCE_EVALUATOR", "best_so_far", "expected_max", "param_importances", "quiet_optuna",
    "FAMILY", "VERDICT_SHORT", "VERDICT_WORDS", "interval_text", "judge", "p_text", "verdict_word",
]

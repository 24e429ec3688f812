"""Analysis stage: pure functions over what `ablate.results` returns (a study's table and run
records) → DataFrames and plain data: per-cell Student-t intervals over seeds, paired tests
against the reference cell, 2^k and other factorial effects, the three verdicts (one family per architecture), learning
flags, the Findings summary, architecture ranking, cost Pareto front, and the tuner's
expected-best-vs-budget curve (the numerics are in `ablate.stats`). No file or storage I/O
and no model runs here; `ablate.report` only draws what these return.

    runs      the runs table made analysable (arch, cell, key, toggles, factors, flags)
    cells     per-cell flags and intervals, summary.csv, ranking, cost
    effects   comparisons with the reference cell, factorial effects
    verdicts  one family per architecture and metric, the three verdicts, looks, sentences
    findings  the Findings panel, the more-seeds advice, the design in words
    records   overview, training setup, failures, curves, per-class IoU, the gallery
    tuning    best so far, expected best vs budget, importances
    study     one study computed once for the report, and its CSV tables
"""
from ablate.analysis.cells import (NO_INTERVAL, cell_flags, cell_stats, compare_architectures, cost_table, interval,
                                   pareto_front, summary_table)
from ablate.analysis.effects import (COMPARISON_COLUMNS, EFFECT_COLUMNS, comparisons_note, design_contrasts,
                                     factorial_effects, paired_comparisons)
from ablate.analysis.findings import (ONE_AT_A_TIME_NOTE, ArchFindings, Findings, decision_inputs, design_notes, findings,
                                     more_seeds, rules_text)
from ablate.analysis.records import (NO_PREDICTIONS, TRACEBACK_LINES, Gallery, best_runs, class_iou_table, failures,
                                     gallery, grid_best_runs, learning_curves, overview, training_setup)
from ablate.analysis.runs import (INCOMPLETE_COLUMNS, METRIC_LABELS, METRICS, TOGGLE_LABELS, cell_label, design_of,
                                  finished_runs, incomplete_metrics, incomplete_metrics_note, primary_metric,
                                  seeds_to_restore, trial_states, varying_toggles, with_cells, with_flags)
from ablate.analysis.study import GridAnalysis, TuneAnalysis, analyse_grid, analyse_tune, export_tables, study_effects
from ablate.analysis.tuning import IMPORTANCE_EVALUATOR, best_so_far, expected_max, param_importances, quiet_optuna
from ablate.analysis.verdicts import (DECIDED, DEFAULT_MIN_EFFECT, FAMILY, VERDICT_SHORT, VERDICT_WORDS, Look,
                                     effect_label, first_decisions, fmt, interval_text, judge_effects, look, p_text,
                                     seeds_cell, test_text)

__all__ = [
    "NO_INTERVAL", "cell_flags", "cell_stats", "compare_architectures", "cost_table", "interval", "pareto_front",
    "summary_table",
    "COMPARISON_COLUMNS", "EFFECT_COLUMNS", "comparisons_note", "design_contrasts", "factorial_effects",
    "paired_comparisons",
    "ONE_AT_A_TIME_NOTE", "ArchFindings", "Findings", "decision_inputs", "design_notes", "findings", "more_seeds",
    "rules_text", "seeds_cell", "study_effects",
    "NO_PREDICTIONS", "TRACEBACK_LINES", "Gallery", "best_runs", "class_iou_table", "failures", "gallery",
    "grid_best_runs", "learning_curves", "overview", "training_setup",
    "METRIC_LABELS", "METRICS", "TOGGLE_LABELS", "cell_label", "design_of", "finished_runs", "primary_metric",
    "trial_states", "varying_toggles", "with_cells", "with_flags", "INCOMPLETE_COLUMNS", "incomplete_metrics",
    "incomplete_metrics_note", "seeds_to_restore",
    "GridAnalysis", "TuneAnalysis", "analyse_grid", "analyse_tune", "export_tables",
    "IMPORTANCE_EVALUATOR", "best_so_far", "expected_max", "param_importances", "quiet_optuna",
    "DECIDED", "DEFAULT_MIN_EFFECT", "FAMILY", "VERDICT_SHORT", "VERDICT_WORDS", "Look", "effect_label",
    "first_decisions", "fmt", "interval_text", "judge_effects", "look", "p_text", "test_text",
]

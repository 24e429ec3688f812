"""Analysis stage, a tune's search: the best value reached after each trial, the expected best
of a search of n trials (Dodge et al. 2019), and the hyperparameters' importances."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd

from ablate.analysis.runs import trial_states


IMPORTANCE_EVALUATOR = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, target quantile 0.1; deterministic)"


def best_so_far(trials: pd.DataFrame, *, value: str = "val_miou") -> pd.DataFrame:
    """Trials in order with their value and the best COMPLETE value reached by then (maximised)."""
    t = trials.assign(state=trial_states(trials)).sort_values("number")
    v = pd.to_numeric(t[value], errors="coerce").where(t["state"] == "COMPLETE")
    return pd.DataFrame({"number": t["number"].astype(int).to_numpy(), "state": t["state"].to_numpy(),
                         "value": v.to_numpy(), "best_so_far": v.cummax().ffill().to_numpy()})


def expected_max(values, n_max: int | None = None) -> pd.DataFrame:
    """Dodge et al. (2019) expected best value among n trials drawn (with replacement) from the
    observed ones: with v_(1) ≤ … ≤ v_(N), E[max_n] = Σ_i v_(i) [(i/N)^n − ((i−1)/N)^n].
    Also the standard deviation of that maximum, from E[max_n²]."""
    v = np.sort(np.asarray(values, dtype=float)[~np.isnan(np.asarray(values, dtype=float))])
    big_n = len(v)
    if big_n == 0:
        return pd.DataFrame(columns=["n", "expected_max", "std"])
    i = np.arange(1, big_n + 1)
    rows = []
    for n in range(1, (n_max or big_n) + 1):
        w = (i / big_n) ** n - ((i - 1) / big_n) ** n
        mean = float(w @ v)
        rows.append({"n": n, "expected_max": mean, "std": float(np.sqrt(max(w @ v**2 - mean**2, 0.0)))})
    return pd.DataFrame(rows)


@contextlib.contextmanager
def quiet_optuna():
    """Optuna logs advice ("too few trials", "unique value length...") that is noise in a report."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def param_importances(optuna_study) -> pd.DataFrame:
    """Hyperparameter importances for val mIoU by PED-ANOVA (no randomness; fANOVA would need
    scikit-learn). Empty when there are too few complete trials."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    try:
        with quiet_optuna():
            imp = get_param_importances(optuna_study, evaluator=PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError):
        return pd.DataFrame(columns=["param", "importance"])
    return pd.DataFrame({"param": list(imp), "importance": list(imp.values())})

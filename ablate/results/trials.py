"""Results stage, a tune study's trials as its storage holds them: the trials table
(trials.csv), the trial counts, the best trial (`best.rank`) and study.json's content rebuilt
from the study's attributes. The tuner writes what these read."""
from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablate import store
from ablate.results.best import rank

if TYPE_CHECKING:
    import pandas as pd

TUNE_ATTR = "ablate"  # study user attr holding the tune's identity ({"kind": "tune", ...}) and its hash
META_ATTR = "meta"  # study user attr: what study.json says of the tune, less its trial counts and best
CONFIRM_ATTR = "confirm"  # study user attr: the latest confirmation of the winner (`ablate tune --confirm K`)
# trials.csv column -> trial user attribute
TRIAL_COLUMNS = {"val_miou": "val_miou", "test_miou": "test_miou", "epochs": "epochs_run",
                 "pruned_at_epoch": "pruned_at_epoch", "seconds": "seconds", "images_per_second": "images_per_second",
                 "failure_reason": "failure_reason", "run_dir": "run_dir"}


def is_tune(study_attrs: dict) -> bool:
    """Whether a study's user attrs are those of a study `ablate tune` made."""
    return (study_attrs.get(TUNE_ATTR) or {}).get("kind") == "tune"


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, params_<name>..., val/test mIoU, epochs run, seconds, ..."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    param_names = list(dict.fromkeys(k for t in trials for k in t.params))
    rows = []
    for t in trials:
        row = {"number": t.number, "state": t.state.name}
        row.update({f"params_{name}": t.params.get(name) for name in param_names})
        row.update({col: t.user_attrs.get(attr) for col, attr in TRIAL_COLUMNS.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["number", "state", *(f"params_{n}" for n in param_names), *TRIAL_COLUMNS])
    for col in ("epochs", "pruned_at_epoch"):
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")  # blanks stay blank, not 1.0
    return frame


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name, and `finished` (COMPLETE + PRUNED: what counts towards --n-trials)."""
    out = {state.name: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    out["finished"] = out["COMPLETE"] + out["PRUNED"]
    return out


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE trial with the highest val mIoU, a tie going to the lower trial number
    (`best.rank`; Optuna's own choice among ties depends on the storage); None before any."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return min(done, key=lambda t: rank(t.value, t.number)) if done else None


def tune_meta(study: optuna.Study, storage_url: str) -> dict:
    """study.json rebuilt from the storage alone: the study attr `meta`, the storage, the
    trial counts, the best trial and the confirmation of the winner (None without one)."""
    best = best_trial(study)
    c = counts(study)
    return {
        **(study.user_attrs.get(META_ATTR) or {"kind": "tune", "study_name": study.study_name}),
        "storage": store.mask_url(storage_url),
        "trial_counts": {"complete": c["COMPLETE"], "pruned": c["PRUNED"], "fail": c["FAIL"], "running": c["RUNNING"]},
        "trials_csv": "trials.csv",
        "best": None if best is None else {
            "number": best.number, "value": best.value, "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"), "test_miou": best.user_attrs.get("test_miou"),
        },
        "confirm": study.user_attrs.get(CONFIRM_ATTR),
    }

"""The one adapter to Optuna's private names (results store stage).

Optuna's public API gives no way to read the storage id of a FrozenTrial, yet failing a
reclaimed trial and remembering each RUNNING trial's last heartbeat (`ablate.workers`), and
saving a dashboard note on a stored trial (`ablate.dashboard`), need it. Every use goes
through here, so an Optuna upgrade that renames it breaks in one place; pyproject.toml bounds
optuna below the next major version. Where a public route exists it is used instead: a study's
storage is the one ablate opened and kept, and a live trial's id comes from
`storage.get_trial_id_from_study_id_trial_number` (`ablate.tune.study.storage_trial_id`).
"""
from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a live or frozen trial (Optuna: ``trial._trial_id``)."""
    return trial._trial_id

"""Grid stage: the ablation grid as an Optuna study.

A typed study definition (a TOML file, overridden by flags) expands into cells, model x
toggle setting x seed, each identified by a hash of its full training configuration. Workers
on one or many machines claim cells through the Optuna storage under a study-wide lock, so
every cell runs exactly once; runs.csv and summary.csv are rebuilt from the storage.

Per-model training options ([model_train.MODEL] in the study file: image size, epochs, lr,
...) override [train] for that model's cells; a flag overrides both. The data is loaded once
per distinct image size.

Execution is part of a cell's identity: `precision = "auto"` is bf16 on one CPU and fp32 on
another, so a study records the precision and device kind its creator resolved ("fp32 on
cpu"), cell ids hash the resolved precision and device kind, and a worker that resolves
differently refuses to claim cells (exit 2, naming both and the flag that matches).

Exactly once: a trial is only ever created inside `GridStorage.claim`, while holding a lock
that every process sharing the storage respects (an flock beside a SQLite/journal file, a
PostgreSQL advisory lock, a MySQL named lock), and only for a cell whose fresh read shows no
RUNNING or COMPLETE trial. So a cell has at most one live trial at any time and none after it
completed. A RUNNING trial leaves that state only through its owner or through a reclaim
(also under the lock) once its worker is provably dead or silent for the grace period.

study       a study file (and flags) -> GridStudy
definition  GridStudy -> cells, and the definition a rerun must match
claims      the study lock, claiming a cell exactly once, the grid's progress
run         a claimed cell through the engine, its record into the storage; the worker loop
tables      runs.csv, summary.csv, study.json
command     `ablate grid` and `ablate status` from start to end (`run_grid`, `grid_status`)
console     what those two print
"""
from ablate.grid.definition import *  # noqa: F401,F403  (the package's public names, as before the split)
from ablate.grid.claims import *  # noqa: F401,F403
from ablate.grid.run import *  # noqa: F401,F403
from ablate.grid.run import _tell  # noqa: F401  (tests tell a trial as a worker would)
from ablate.grid.tables import *  # noqa: F401,F403

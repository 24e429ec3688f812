"""Grid claims: the Optuna study as a work queue, each cell completed exactly once.

The study lock, the trial that claims a cell, retry accounting, reclaim of lost workers' cells,
and the progress of a grid."""
from __future__ import annotations

import contextlib
import datetime
import json
from dataclasses import dataclass
from typing import Any, Iterator

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from ablate import _io, store, workers
from ablate.config import TOGGLES, TrainConfig, stable_hash
from ablate.errors import AblateError
from ablate.stats import MIN_VERDICT_N
from ablate.workers import INTERRUPTED, WORKER_KILLED, WORKER_LOST  # failure reasons, shared with the tuner
from ablate.grid.definition import CELL_FIELDS, KIND, POLL_SECONDS, Cell, GridStudy, check_execution, trial_label
from ablate.seedplan import STAGES_ATTR, SeedPlan, open_cells
# which trial speaks for a cell, and why a trial failed: the read side's, shared with the report
from ablate.results.cells import CellState, cell_states, charged_failures, failure_reason  # noqa: F401


# --------------------------------------------------------------------------- storage
class GridStorage:
    """An Optuna storage holding one grid study, and the study-wide lock under which cells
    are claimed."""

    def __init__(self, url: str, study_name: str):
        self.url, self.study_name = url, study_name
        self._dialect = "file" if store.is_journal(url) else url.split(":", 1)[0].split("+", 1)[0]
        if self._dialect not in ("file", "sqlite", "postgresql", "mysql", "mariadb"):
            raise AblateError(f"--storage {store.mask_url(url)}: a grid needs PostgreSQL, MySQL, SQLite or a journal "
                              f"file (it has no cross-process lock for {self._dialect!r})")
        self.storage = store.open_storage(url)
        self.running = 0  # RUNNING trials seen at the last claim (other workers' cells)
        self._reclaimer = workers.Reclaimer()

    @property
    def poll_seconds(self) -> float:
        """How long an idle worker of this storage waits before it looks for a cell again."""
        return POLL_SECONDS[self._dialect if self._dialect in ("file", "sqlite") else "server"]

    # ---- the lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across every process that uses this storage (for file storages: on one
        machine; for PostgreSQL and MySQL: across machines)."""
        if self._dialect in ("file", "sqlite"):
            with store.file_lock(f"{store.local_path(self.url)}.grid-lock"):
                yield
            return
        with self.storage.engine.connect() as conn, store.server_lock(conn, f"grid:{self.study_name}"):
            yield

    # ---- the study
    def study_id(self) -> int | None:
        try:
            return self.storage.get_study_id_from_name(self.study_name)
        except KeyError:
            return None

    def study_attrs(self) -> dict[str, Any] | None:
        sid = self.study_id()
        return None if sid is None else self.storage.get_study_user_attrs(sid)

    def trials(self) -> list[FrozenTrial]:
        sid = self.study_id()
        return [] if sid is None else self.storage.get_all_trials(sid, deepcopy=False)

    def prepare(self, study: GridStudy, cells: list[Cell], grid: dict[str, Any], *, dataset: dict | None = None,
                command: list[str] | None = None) -> dict[str, Any]:
        """Create the study, or check that the existing one is this grid and add any new
        seeds' cells to it; returns the study's attrs (its cells and seeds so far). The
        storage holds what study.json says (`setup`: models, toggles, [train], ...; the
        `dataset` summary; the `command`), so a report needs no file from this machine."""
        with self.lock():
            sid = self.study_id()
            if sid is None:
                sid = self.storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], self.study_name)
            attrs = self.storage.get_study_user_attrs(sid)
            # The attrs are written one by one, grid_hash last: without it a command was
            # stopped while preparing (Ctrl-C, kill) and its half-written definition is redone.
            if "grid_hash" in attrs or attrs.get("kind") not in (None, KIND):
                check_same_grid(self.study_name, attrs, grid, self.url, study.train)
            elif self.storage.get_all_trials(sid, deepcopy=False):
                raise AblateError(f"study {self.study_name!r} in {store.mask_url(self.url)} is not a grid study; "
                                  "use another --study-name")
            _check_same_decisions(self.study_name, attrs, study, bool(self.storage.get_all_trials(sid, deepcopy=False)))
            known = {c["cell_id"] for c in attrs.get("cells", [])}
            # grid_hash last: a reader outside the lock that sees it sees the whole definition
            new = {"kind": KIND, "grid": grid, "description": study.description,
                   "seeds": sorted(set(attrs.get("seeds", [])) | set(study.seeds)),
                   "cells": attrs.get("cells", []) + [c.brief() for c in cells if c.cell_id not in known],
                   "setup": _setup(study), "decisions": _decisions(study),
                   **({"dataset": _io._json_safe(dataset)} if dataset is not None else {}),
                   **({"command": command} if command is not None else {}),
                   "grid_hash": stable_hash(grid)}
            for key, value in new.items():
                if attrs.get(key) != value:
                    self.storage.set_study_user_attr(sid, key, value)
            return new

    # ---- claiming
    def claim(self, cells: list[Cell], *, max_retries: int, plan: SeedPlan | None = None,
              delta: float = 0.01) -> tuple[Cell, int] | None:
        """Create a RUNNING trial for the waiting cell expected to take longest (`longest_first`),
        or return None. With sequential seeds (`plan`), the looks that are due are taken first
        (`stages.advance`) and only the open seeds' cells are claimed."""
        if plan is not None:  # a look is an analysis (pandas): imported before the lock, not while others wait
            from ablate.grid import stages  # noqa: F401
        with self.lock():
            sid = self.study_id()
            trials = self.storage.get_all_trials(sid, deepcopy=False)
            if self._reclaimer.reclaim(self.storage, trials):
                trials = self.storage.get_all_trials(sid, deepcopy=False)
            if plan is not None:
                cells = self._open(sid, cells, trials, plan, delta, max_retries)
            states = cell_states([c.brief() for c in cells], trials, max_retries)
            self.running = sum(s.status == "running" for s in states.values())
            expected = expected_seconds(cells, trials)
            waiting = [c for c in _longest_first(cells, expected) if states[c.cell_id].waiting]
            if waiting:
                cell = waiting[0]
                return cell, self.storage.create_new_trial(sid, template_trial=self._new_trial(cell, cells))
        return None

    def _open(self, sid: int, cells: list[Cell], trials: list[FrozenTrial], plan: SeedPlan, delta: float,
              max_retries: int) -> list[Cell]:
        """The cells open now, after recording the looks that are due (under the lock). A look
        is an analysis (pandas): only a sequential grid's workers import it (`claim`)."""
        from ablate.grid.stages import advance

        attrs = self.storage.get_study_user_attrs(sid)
        briefs = [c.brief() for c in cells]
        stages = advance(briefs, trials, attrs, plan, delta=delta, max_retries=max_retries)
        if stages is not None:
            self.storage.set_study_user_attr(sid, STAGES_ATTR, stages)
            attrs = {**attrs, STAGES_ATTR: stages}
        opened = {c["cell_id"] for c in open_cells(briefs, attrs, plan)}
        return [c for c in cells if c.cell_id in opened]

    def open_briefs(self, cells: list[dict], plan: SeedPlan | None) -> list[dict]:
        """The cells (briefs) open now: all of them in a fixed design (`seedplan.open_cells`)."""
        return open_cells(cells, self.study_attrs() or {}, plan)

    def _new_trial(self, cell: Cell, cells: list[Cell]) -> FrozenTrial:
        """Model and toggles are the trial's params (what the dashboard's importance ranks);
        the seed is a replicate, not a search parameter, so it is a user attr only (cells are
        told apart by `cell_id`, never by params)."""
        c = cell.config
        distributions = {
            "model": CategoricalDistribution(sorted({x.config.model for x in cells})),
            **{t: CategoricalDistribution([False, True]) for t in TOGGLES},
            # other factors: their levels as text, in the study's order (the reference first)
            **{k: CategoricalDistribution(cell.design["levels"][k]) for k in cell.factors},
        }
        params = {"model": c.model, **{t: getattr(c, t) for t in TOGGLES}, **cell.levels}
        return optuna.trial.create_trial(
            state=TrialState.RUNNING, params=params, distributions=distributions,
            user_attrs={"label": trial_label(c.model, cell.toggles, c.seed, cell.levels), "cell_id": cell.cell_id,
                        "seed": c.seed,
                        "toggles": cell.toggles, "model_args": json.dumps(c.model_args),
                        "worker": workers.identity()},
            system_attrs=workers.owner_system_attrs(),
        )


def longest_first(cells: list[Cell], trials: list[FrozenTrial]) -> list[Cell]:
    """The cells in the order workers should take them: longest expected first (LPT
    scheduling), so the short ones are left for the end and the workers finish together.
    A cell's expected seconds are its epoch budget times the seconds per epoch of the
    completed trials of cells with its model and image size; cells with no such trial yet
    come first, in study order (running one is what teaches their cost)."""
    return _longest_first(cells, expected_seconds(cells, trials))


def _longest_first(cells: list[Cell], expected: dict[str, float | None]) -> list[Cell]:
    return sorted(cells, key=lambda c: (0, 0.0) if expected[c.cell_id] is None else (1, -expected[c.cell_id]))


def expected_seconds(cells: list[Cell], trials: list[FrozenTrial]) -> dict[str, float | None]:
    """Cell id -> its epoch budget times the mean seconds per epoch of the completed trials of
    cells with its model, arguments and image size; None while there is none."""
    by_id = {c.cell_id: c for c in cells}
    per_epoch: dict[tuple, list[float]] = {}
    for t in trials:
        cell = by_id.get(t.user_attrs.get("cell_id"))
        seconds, epochs = t.user_attrs.get("seconds"), t.user_attrs.get("stopped_epoch")
        if t.state == TrialState.COMPLETE and cell is not None and seconds and epochs:
            per_epoch.setdefault(_cost_key(cell), []).append(seconds / epochs)
    out = {}
    for c in cells:
        known = per_epoch.get(_cost_key(c))
        out[c.cell_id] = None if not known else c.config.epochs * sum(known) / len(known)
    return out


def _cost_key(cell: Cell) -> tuple:
    return cell.config.model, json.dumps(cell.config.model_args, sort_keys=True), tuple(cell.config.image_size)


def check_same_grid(name: str, attrs: dict[str, Any], grid: dict[str, Any], url: str,
                    train: TrainConfig | None = None) -> None:
    """Refuse a study of another kind, another execution (when `train`, the requested
    settings, is given: the message names the flags) or another grid."""
    if attrs.get("kind") != KIND:
        raise AblateError(f"study {name!r} in {store.mask_url(url)} is a {attrs.get('kind') or 'non-grid'} study, "
                          "not a grid; use another --study-name")
    if attrs.get("grid_hash") == stable_hash(grid):
        return
    old = attrs.get("grid") or {}
    if train is not None:
        check_execution(name, old, grid["execution"], train)
    old_models, new_models = old.get("models") or {}, grid["models"]
    diff = ["models"] if sorted(old_models) != sorted(new_models) else []
    for model in sorted(new_models) if not diff else []:
        was, now = old_models[model] if isinstance(old_models[model], dict) else {}, new_models[model]
        if was.get("args") != now["args"]:
            diff.append(f"model_args.{model}")
        train_keys = sorted(set(was.get("train") or {}) | set(now["train"]))
        diff += [f"model_train.{model}.{k}" for k in train_keys if (was.get("train") or {}).get(k) != now["train"].get(k)]
    diff += [k for k in ("toggles", "factors", "design", "execution") if old.get(k) != grid.get(k)]
    diff += [k for k in grid["train"] if (old.get("train") or {}).get(k) != grid["train"][k]]
    data = ""
    if "data" in diff:  # name both datasets: another folder, or the same one whose files changed
        was = attrs.get("dataset") or {}  # the summary `prepare` stored; the fingerprints are the grids'
        fp_was, fp_now = ((old.get("train") or {}).get("data") or "?")[:8], grid["train"]["data"][:8]
        images = f"{sum(was['sizes'].values())} images, " if was.get("sizes") else ""
        created = f"{was['name']} ({images}fingerprint {fp_was})" if was.get("name") else f"data of fingerprint {fp_was}"
        now = f"{train.data} (fingerprint {fp_now})" if train is not None else f"data of fingerprint {fp_now}"
        changed = ": its files changed" if train is not None and was.get("name") == train.data else ""
        data = f"; study {name} was created on {created}, this command points at {now}{changed}"
    raise AblateError(f"study {name!r} in {store.mask_url(url)} holds a different grid (differs in: "
                      f"{', '.join(diff) or 'definition'}){data}; choose a new --study-name, e.g. {name}-2, "
                      "or repeat the original settings")


def _decisions(study: GridStudy) -> dict[str, Any]:
    """How the study decides: δ, and the plan of sequential seeds (None: fixed seeds)."""
    return {"min_effect": study.min_effect, "sequential": study.sequential.to_dict() if study.sequential else None}


def _check_same_decisions(name: str, attrs: dict[str, Any], study: GridStudy, has_trials: bool) -> None:
    """A study whose seeds are decided in stages keeps its plan and δ (its looks spent the
    error budget by them), and a study with fixed seeds does not turn sequential."""
    was = attrs.get("decisions")
    if not has_trials or was is None and study.sequential is None:
        return
    if not (was or {}).get("sequential") and study.sequential and len(attrs.get("seeds") or []) < MIN_VERDICT_N:
        return  # fewer seeds than any verdict needs: no verdict was printed yet, the looks start afresh
    now = _decisions(study)
    if (was or {}).get("sequential") != now["sequential"] or (now["sequential"] and was["min_effect"] != study.min_effect):
        def said(d):
            plan = (d or {}).get("sequential")
            return "fixed seeds" if not plan else f"--seeds auto:{plan['min']}-{plan['max']} --min-effect {d['min_effect']:g}"
        raise AblateError(f"study {name!r} was run with {said(was)}, this command asks for {said(now)}; repeat the "
                          f"original seeds settings or choose a new --study-name, e.g. {name}-2")


def _setup(study: GridStudy) -> dict[str, Any]:
    return {"models": list(study.models), "model_args": study.model_args, "toggles": list(study.toggles),
            "train": {k: v for k, v in study.train.to_dict().items() if k not in CELL_FIELDS},
            "max_retries": study.max_retries, "workers": study.workers}


@dataclass(frozen=True)
class Progress:
    cells: int
    completed: int
    running: int
    failed: int  # genuine failures, retried or not
    pending: int
    compute_seconds: float  # wall time of all trials so far (running ones up to now)
    failed_cells: list[tuple[str, str]]  # (label, reason)


def progress(cells: list[dict], trials: list[FrozenTrial], max_retries: int | None = None) -> Progress:
    states = cell_states(cells, trials, max_retries)
    count = {s: sum(st.status == s for st in states.values()) for s in ("completed", "running", "failed", "retry", "pending")}
    now = datetime.datetime.now()
    compute = 0.0
    for t in trials:
        if t.datetime_start is not None:
            compute += max(0.0, ((t.datetime_complete or now) - t.datetime_start).total_seconds())
    labels = {c["cell_id"]: f"{c['model']} {c['toggles']}" + "".join(f" {k}={v}" for k, v in (c.get("factors") or {}).items())
              + f" seed {c['seed']}" for c in cells}
    failed = [(labels[cid], failure_reason(st.trial) or "") for cid, st in states.items() if st.status == "failed"]
    return Progress(len(cells), count["completed"], count["running"], count["failed"],
                    count["pending"] + count["retry"], compute, failed)

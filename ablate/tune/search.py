"""Tuner, the search itself: the objective (a trial is one `TrainConfig` through the engine,
reporting val mIoU per epoch to the pruner), the worker loop that runs trials until the
budget is met, and `tune`, which runs it in this process or on several worker processes."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ablate import record as records
from ablate import store, workers
from ablate.config import TrainConfig, stable_hash
from ablate.errors import AblateError
from ablate.results.trials import best_trial, counts
from ablate.tune.confirm import confirm_winner
from ablate.tune.outputs import (describe_params, describe_trial, prune_checkpoints, store_record, write_study_json,
                                 write_trials_csv)
from ablate.tune.space import config_for
from ablate.tune.spec import TuneSpec, make_sampler, validate
from ablate.tune.study import FINISHED, enqueue_default, open_study, storage_trial_id

MAX_CONSECUTIVE_FAILURES = 5  # a worker gives up when this many trials in a row fail
POLL_SECONDS = 5.0  # how often a worker re-checks while other workers' trials fill the budget


# --------------------------------------------------------------------------- objective
class TrialFailed(Exception):
    """The trial failed in an expected way (non-finite loss, a crash in the engine): FAIL
    it with this reason and go on with the study."""


class _Surplus(TrialFailed):
    """Another worker reserved the last trial of the budget first."""


def _objective(spec: TuneSpec, dataset, study: optuna.Study, storage: BaseStorage,
               files: store.Artifacts) -> Callable[[optuna.Trial], float]:
    """val mIoU of one trial's configuration; its record goes into the trial's user attrs and
    its files into the artifact store, so the storage holds the whole run."""

    def objective(trial: optuna.Trial) -> float:
        _check_budget(spec, study, trial)
        params = {name: param.suggest(trial, name) for name, param in spec.space.items()}
        config = config_for(spec.base, params)
        out_dir = spec.folder / "runs" / str(trial.number)
        trial.set_user_attr("run_dir", str(out_dir))
        record = _fit(spec, study, trial, config, dataset, out_dir)
        row = records.summary(record)
        store_record(trial, record, row)
        value = records.completed_miou(record)
        _attach(storage, storage_trial_id(storage, study, trial.number), trial, record, out_dir, files,
                completed=value is not None)
        return _outcome(trial, row, value)

    return objective


def _check_budget(spec: TuneSpec, study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial asked for once other workers have started the last ones of the budget fails as surplus."""
    ahead = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
             if t.number < trial.number]
    if len(ahead) >= spec.n_trials:
        trial.set_user_attr("failure_reason", "surplus: other workers had already started the last trials")
        raise _Surplus("surplus")


def _fit(spec: TuneSpec, study: optuna.Study, trial: optuna.Trial, config: TrainConfig, dataset,
         out_dir: Path) -> dict:
    """Train `config` through the engine, val mIoU reported per epoch to the pruner; an
    expected failure (e.g. a batch larger than the split) fails this trial only."""
    from ablate.engine import Pruned, fit_safely  # torch: kept out of `ablate tune --help`
    from ablate.predict import gallery_predictions  # torch, as above

    def on_epoch(epoch: int, metrics: dict) -> None:
        if metrics["miou"] == metrics["miou"]:  # NaN (no class present) is not reported
            trial.report(metrics["miou"], epoch)
        # After the last epoch there is nothing left to save: the trial completes.
        if epoch < config.epochs and trial.should_prune():
            raise Pruned(f"pruned at epoch {epoch}")

    try:
        return fit_safely(config, dataset, out_dir=out_dir, on_epoch=on_epoch, quiet=True, progress=False,
                          cache_dir=spec.cache_dir, on_model=lambda model: gallery_predictions(model, dataset, out_dir),
                          checkpoint=lambda record: _keeps_checkpoint(spec.keep_checkpoints, study, record,
                                                                      trial.number))
    except AblateError as exc:
        trial.set_user_attr("failure_reason", str(exc))
        raise TrialFailed(str(exc)) from None


def _attach(storage: BaseStorage, trial_id: int, trial: optuna.Trial, record: dict, out_dir: Path,
            files: store.Artifacts, *, completed: bool) -> None:
    """The run's files into the artifact store; a trial whose files are not there failed."""
    try:
        store.attach_run(storage, trial_id, record, out_dir, files, completed=completed,
                         with_checkpoint=completed and (out_dir / records.CHECKPOINT_FILE).is_file())
    except AblateError as exc:
        trial.set_user_attr("failure_reason", str(exc))
        raise TrialFailed(str(exc)) from None
    finally:  # the artifact store holds the one copy (a rerun never finds a stale one here)
        (out_dir / records.CHECKPOINT_FILE).unlink(missing_ok=True)


def _outcome(trial: optuna.Trial, row: dict, value: float | None) -> float:
    """The trial's value, or the pruned / failed state its record says."""
    reason = row["failure_reason"]
    if row["status"] == "pruned":
        raise optuna.TrialPruned(reason)
    if row["status"] == "failed":
        if reason and reason.startswith("oom"):
            raise optuna.TrialPruned(reason)  # too big a batch for this device: not a crash
        raise TrialFailed(reason)
    if value is None:
        trial.set_user_attr("failure_reason", "val mIoU is not a number")
        raise TrialFailed("val mIoU is not a number")
    return value


def _keeps_checkpoint(keep: str, study: optuna.Study, record: dict, number: int) -> bool:
    """Whether a finished trial (number `number`) writes (and uploads) its best.pt: a completed
    one always (all), never (none), or when it beats every complete trial so far, a tie going
    to the lower trial number, as `best_trial` decides (best; `prune_checkpoints` then
    removes the ones it beat)."""
    value = records.completed_miou(record)
    if keep == "none" or value is None:
        return False
    best = best_trial(study)
    return keep == "all" or best is None or value > best.value or (value == best.value and number < best.number)


# --------------------------------------------------------------------------- workers
def run_worker(spec: TuneSpec, *, index: int = 0, dataset=None, echo: Callable[[str], None] = print) -> None:
    """Run trials until the study holds `n_trials` COMPLETE+PRUNED trials (counting every
    worker's), or `timeout` passes. RUNNING trials whose worker is lost (`workers.Reclaimer`:
    its process gone on this node, or its heartbeat silent for the grace it recorded) are
    failed on the way, for every storage kind."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours to print
    if dataset is None:
        dataset = load_dataset_for(spec)
    storage = store.open_storage(spec.storage)  # kept: a Study does not expose its storage
    study = open_study(spec, create=False, storage=storage)
    # Derive the sampler seed from the history too: a resumed run must not replay the
    # random start-up trials of the first run, nor parallel workers replay each other's.
    seed = int(stable_hash([spec.base.seed, index, len(study.trials)], 8), 16)
    study.sampler = make_sampler(spec.sampler, seed=seed, n_trials=spec.n_trials, workers=spec.workers)
    files = store.artifacts(spec.artifacts or store.default_artifacts(spec.results_dir, spec.study_name))
    objective = _objective(spec, dataset, study, storage, files)
    reclaimer = workers.Reclaimer()
    prefix = f"[worker {index}] " if spec.workers > 1 else ""
    start, failures, waited = time.monotonic(), 0, False

    def after_trial(trial: FrozenTrial) -> None:
        nonlocal failures
        reason = trial.user_attrs.get("failure_reason") or ""
        if reason.startswith("surplus"):
            return
        if not workers.is_crash(reason):  # reclaimed from us: not this configuration's failure
            failures = failures + 1 if trial.state == TrialState.FAIL else 0
        echo(prefix + describe_trial(trial))
        write_trials_csv(study, spec.folder / "trials.csv")
        if spec.keep_checkpoints == "best":
            prune_checkpoints(study, storage, files)

    while True:
        reclaimer.reclaim(storage, study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        c = counts(study)
        if c["finished"] >= spec.n_trials:
            break
        if spec.timeout is not None and time.monotonic() - start > spec.timeout:
            echo(prefix + f"--timeout {spec.timeout:g}s reached; rerun to continue")
            break
        if failures >= MAX_CONSECUTIVE_FAILURES:
            last = study.trials[-1].user_attrs.get("failure_reason") if study.trials else None
            raise AblateError(f"{failures} trials in a row failed (last: {last}); fix the cause and rerun to resume")
        if c["finished"] + c["RUNNING"] >= spec.n_trials:
            if not waited:
                echo(prefix + f"waiting for {c['RUNNING']} running trial(s) of other workers to finish")
                waited = True
            time.sleep(POLL_SECONDS)
            continue
        after_trial(run_trial(study, storage, objective))


def run_trial(study: optuna.Study, storage: BaseStorage, objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Ask for a trial, stamp it with this worker (`workers.take_ownership`), run `objective`
    under its heartbeat and tell the outcome. A trial another worker reclaimed meanwhile stays
    as the reclaimer left it (FAIL, worker lost) and this worker moves on. `storage` is the
    study's (a Study does not expose its own)."""
    trial = study.ask()
    trial_id = storage_trial_id(storage, study, trial.number)
    workers.take_ownership(storage, trial_id)
    value, state = None, TrialState.FAIL
    try:
        with workers.Heartbeat(storage, trial_id):
            value, state = objective(trial), TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except (TrialFailed, UpdateFinishedTrialError):
        pass  # the reason is on the trial already (ours, or the reclaimer's)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug: FAIL the trial, then let it propagate
        workers.fail_trial(storage, trial_id, workers.INTERRUPTED if isinstance(exc, KeyboardInterrupt)
                           else f"{type(exc).__name__}: {exc}")
        raise
    return study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)


def load_dataset_for(spec: TuneSpec):
    from ablate.data import load_dataset  # torch: kept out of `ablate tune --help`

    b = spec.base
    return load_dataset(b.data, image_size=b.image_size, num_classes=b.num_classes, ignore_index=b.ignore_index,
                        val_fraction=b.val_fraction, cache_dir=spec.cache_dir)


def _worker(index: int, events, spec: TuneSpec) -> None:
    """A spawned tune worker (`workers.supervise`): its lines go to the parent to print."""
    try:
        run_worker(spec, index=index, echo=events.put)
    except AblateError as exc:
        print(f"error: [worker {index}] {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


# --------------------------------------------------------------------------- the tune
def tune(spec: TuneSpec, *, echo: Callable[[str], None] = print) -> optuna.Study:
    """Validate, create/resume the study, run `spec.workers` workers, write the tables.
    Ctrl-C or SIGTERM marks the running trial FAIL and raises KeyboardInterrupt: rerun to resume."""
    with workers.sigterm_interrupts():
        return _tune(spec, echo)


def _tune(spec: TuneSpec, echo: Callable[[str], None]) -> optuna.Study:
    validate(spec)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial instead
    dataset = load_dataset_for(spec)  # in the parent: bad data fails before any storage is made
    storage = store.open_storage(spec.storage)
    study = open_study(spec, storage=storage)
    _queue_default(spec, study, storage, echo)
    before = counts(study)
    write_study_json(spec, study, dataset)
    if before["finished"] >= spec.n_trials:
        echo(f"study {spec.study_name!r} already has {before['finished']} finished trials "
             f"(--n-trials {spec.n_trials}); nothing to run")
    else:
        echo(f"tuning {spec.base.model}{f' with {spec.workers} workers' if spec.workers > 1 else ''}: "
             f"{before['finished']}/{spec.n_trials} trials finished; space: {', '.join(spec.space)}")
        if spec.workers == 1:
            run_worker(spec, dataset=dataset, echo=echo)
        else:
            _run_processes(spec, echo)
    study = open_study(spec, create=False)
    write_trials_csv(study, spec.folder / "trials.csv")
    if spec.confirm:
        confirm_winner(spec, study, dataset, echo=echo)
    write_study_json(spec, study, dataset)
    return study


def _queue_default(spec: TuneSpec, study: optuna.Study, storage: BaseStorage, echo: Callable[[str], None]) -> None:
    """The default configuration as the study's first trial (`enqueue_default`), said once."""
    queued = enqueue_default(spec, study, storage)
    if queued is not None:
        params, notes = queued
        echo(f"first trial: the default configuration, {describe_params(params)}")
        for note in notes:
            echo(f"note: {note}")


def _run_processes(spec: TuneSpec, echo: Callable[[str], None]) -> None:
    codes = workers.supervise(_worker, (spec,), workers=spec.workers, device=spec.base.device, on_event=echo,
                              respawns=spec.n_trials, on_killed=lambda pid, how: _settle_killed(spec, pid, how))
    bad = [f"a worker exited with code {code}" for code in codes]
    if bad and counts(open_study(spec, create=False))["finished"] < spec.n_trials:
        raise AblateError("; ".join(bad) + "; rerun the same command to resume")
    if bad:  # the others finished its share
        echo("warning: " + "; ".join(bad))


def _settle_killed(spec: TuneSpec, pid: int, how: str) -> None:
    """The supervisor's word on a worker of its own killed by a signal: its running trial fails
    at once (the other workers leave it to the supervisor, `workers.Reclaimer`)."""
    storage = store.open_storage(spec.storage)  # kept: a Study does not expose its storage
    study = open_study(spec, create=False, storage=storage)
    workers.settle_killed(storage, study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), pid, how)

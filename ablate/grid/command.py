"""Grid stage, the whole of `ablate grid` and `ablate status`: read the study, expand and check
its cells, prepare the storage, run the workers, then the tables, the report and what is left
to do. The click commands (ablate/cli/grid.py) only parse flags and call `run_grid` / `grid_status`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import optuna

from ablate import results, store, workers
from ablate.errors import AblateError
from ablate.grid.claims import GridStorage, Progress, check_same_grid, progress
from ablate.grid.definition import (KIND, Cell, Datasets, check_cells, check_models, definition, expand,
                                    resolve_execution, resolve_workers)
from ablate.grid.console import CellPrinter, print_dry_run, print_start, print_status, print_summary, quietly
from ablate.grid.run import run_workers
from ablate.analysis.sequential import summary_lines
from ablate.grid.study import GridStudy, read_grid_study
from ablate.grid.tables import prune_checkpoints, write_study_json, write_tables
from ablate.studyfile import read_toml


class CellsInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (its `__cause__`) while the cells ran: the running cells are marked
    interrupted (they run again next time) and the tables are written."""


@dataclass(frozen=True)
class _Plan:
    """A grid ready to run: its cells, where it is stored, and what the storage holds of it."""

    study: GridStudy  # `workers` resolved
    cells: list[Cell]
    url: str
    definition: dict[str, Any]  # what the study's grid_hash binds (`definition`)
    gs: GridStorage | None  # None while the storage does not exist
    attrs: dict[str, Any] | None  # the study's attrs there, None if it is not there yet


def run_grid(study_file: Path | None, overrides: dict[str, Any], *, results_dir: Path, cache_dir: Path | None,
             artifacts: str | None, keep_checkpoints: str, report: bool, dry_run: bool, tables_only: bool,
             command: list[str]) -> list[str]:
    """`ablate grid`: the study in `study_file` with `overrides` (study or [train] key -> flag
    value); `command` is the arguments that extend it (study.json, the report's "add seeds").
    Returns what leaves the grid unfinished (failed cells, crashed workers, cells not done),
    which the command reports with exit 1. Ctrl-C or SIGTERM while cells run raises
    `CellsInterrupted` once the tables are written; before, KeyboardInterrupt as it came."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not (dry_run or tables_only) and _may_spawn(overrides.get("workers"), study_file):
        workers.warm_up("ablate.grid.run")  # the worker server imports torch while this process sets up
    study = read_grid_study(study_file, overrides)
    if tables_only:  # an existing storage: default_storage finds the study's file whatever the worker count
        gs = open_grid_storage(study.storage or store.default_storage(results_dir, study.name), study.name)
        runs, summary = write_tables(gs, results_dir)
        click.echo(f"wrote {runs} and {summary}")
        return []
    plan = _plan(study, results_dir)
    if dry_run:
        print_dry_run(plan.study, plan.cells, plan.gs.trials() if plan.attrs else [], plan.url, plan.gs is not None,
                      plan.attrs)
        return []
    return _run(plan, results_dir=results_dir, cache_dir=cache_dir or results_dir / ".cache", artifacts=artifacts,
                keep_checkpoints=keep_checkpoints, report=report, command=command)


def grid_status(study_name: str | None, *, storage: str | None, results_dir: Path) -> None:
    """`ablate status`: the progress of a grid study (the default study's name when none is given)."""
    name = study_name or read_grid_study().name
    url = storage or store.default_storage(results_dir, name)
    gs = open_grid_storage(url, name)
    attrs = gs.study_attrs() or {}
    trials = gs.trials()
    print_status(name, url, progress(results.study_cells(attrs, trials), trials), summary_lines(attrs))


def open_grid_storage(url: str, name: str) -> GridStorage:
    """The storage of an existing grid study; a missing storage, study or a study of another
    kind is a one-line error."""
    if not store.storage_exists(url):
        raise AblateError(f"no grid study {name!r}: {store.mask_url(url)} does not exist; run `ablate grid` first "
                          "(or pass --storage / --results-dir)")
    gs = GridStorage(url, name)
    attrs = gs.study_attrs()
    if attrs is None:
        names = ", ".join(s.study_name for s in gs.storage.get_all_studies()) or "none"
        raise AblateError(f"no study {name!r} in {store.mask_url(url)} (studies there: {names})")
    if attrs.get("kind") != KIND:
        raise AblateError(f"study {name!r} in {store.mask_url(url)} is not a grid study")
    return gs


def _plan(study: GridStudy, results_dir: Path) -> _Plan:
    """Check the models and the execution (--device cuda without a GPU is an input error),
    expand and check the cells, resolve the workers, and look at what the storage holds."""
    from ablate import data as data_stage  # torch: `ablate status` and --tables-only never pay for it

    check_models(study)
    execution = resolve_execution(study.train)
    fingerprint = data_stage.fingerprint(study.train.data)
    cells = expand(study, fingerprint, execution)
    check_cells(cells)
    study = resolve_workers(study, cells, execution)
    url = study.storage or store.default_storage(results_dir, study.name, study.workers)
    grid = definition(study, fingerprint, execution)
    gs = GridStorage(url, study.name) if store.storage_exists(url) else None
    attrs = gs.study_attrs() if gs else None
    # An early check for a quick answer; `prepare` checks again under the study lock. Another
    # process may be writing the attrs one by one right now: judge only a complete set.
    if attrs and "grid_hash" in attrs:
        check_same_grid(study.name, attrs, grid, url, study.train)
    return _Plan(study, cells, url, grid, gs, attrs)


def _run(plan: _Plan, *, results_dir: Path, cache_dir: Path, artifacts: str | None, keep_checkpoints: str,
         report: bool, command: list[str]) -> list[str]:
    """Prepare the storage, run the cells on the workers, then write what the grid produced."""
    study, cells = plan.study, plan.cells
    datasets = Datasets(study.train, cache_dir)  # one per image size the cells use, loaded when first needed
    sizes = [c.config.image_size for c in cells]
    dataset = datasets(study.train.image_size if study.train.image_size in sizes else sizes[0])
    gs = plan.gs or GridStorage(plan.url, study.name)
    files = store.artifacts(artifacts or store.default_artifacts(results_dir, study.name))  # bad --artifacts: exit 2 now
    attrs = gs.prepare(study, cells, plan.definition, dataset=dataset.summary(), command=command)
    write_study_json(results_dir, study, plan.url, attrs, dataset.summary(), command=command, artifacts=files.spec)
    briefs = [c.brief() for c in cells]
    start = progress(gs.open_briefs(briefs, study.sequential), gs.trials(), study.max_retries)
    print_start(study, cells, start, plan.url, dataset)
    printer = CellPrinter(gs, briefs, results_dir, study.max_retries, initial=start.completed + start.failed,
                          plan=study.sequential)
    try:
        crashed = run_workers(study, cells, plan.url, results_dir=results_dir, cache_dir=cache_dir, datasets=datasets,
                              on_result=printer, progress=printer.tty and study.workers == 1,
                              artifacts=files.spec, keep_checkpoints=keep_checkpoints)
    except KeyboardInterrupt as exc:
        printer.close()
        quietly(lambda: write_tables(gs, results_dir))
        raise CellsInterrupted from exc
    printer.close()
    final = progress(gs.open_briefs(briefs, study.sequential), gs.trials(), study.max_retries)
    _finish(gs, study, final, plan.url, files, results_dir=results_dir, keep_checkpoints=keep_checkpoints,
            report=report)
    return _problems(study, final, crashed)


def _finish(gs: GridStorage, study: GridStudy, final: Progress, url: str, files: store.Artifacts, *,
            results_dir: Path, keep_checkpoints: str, report: bool) -> None:
    """Thin the checkpoints once the grid is done, write the tables and the report, and say
    where everything is."""
    if not final.pending and not final.running:
        prune_checkpoints(gs, files, keep_checkpoints)
    write_tables(gs, results_dir)
    attrs = gs.study_attrs() or {}
    if attrs.get("stages"):  # study.json as the storage now holds it: with the looks taken
        write_study_json(results_dir, study, url, attrs, attrs.get("dataset") or {}, command=attrs.get("command"),
                         artifacts=files.spec)
    folder = store.study_dir(results_dir, study.name)
    print_summary(folder / "summary.csv")
    for line in summary_lines(attrs):
        click.echo(f"stage: {line}")
    click.echo(f"\nresults: {folder}/ (runs.csv, summary.csv, study.json); files: {files.spec}")
    if report:
        _write_report(results_dir, study.name, url)
    local = None if files.spec.startswith("s3://") else files.spec
    click.echo(f"dashboard: {store.dashboard_command(url, local)}")


def _problems(study: GridStudy, final: Progress, crashed: list[int]) -> list[str]:
    """What leaves the grid unfinished, each with what to do about it."""
    problems = []
    if final.failed_cells:
        problems.append(f"{len(final.failed_cells)} cell(s) failed: "
                        + "; ".join(f"{label} ({reason})" for label, reason in final.failed_cells)
                        + f"; each used up its --max-retries {study.max_retries}: fix the cause, or rerun with "
                        f"--max-retries {study.max_retries + 1} to try again")
    if crashed:
        problems.append(f"{len(crashed)} worker process(es) crashed (exit codes {', '.join(map(str, crashed))}); "
                        "rerun to finish their cells")
    if final.pending or final.running:
        problems.append(f"{final.pending + final.running} cell(s) not done; rerun the same command")
    return problems


def _may_spawn(flag: str | None, study_file: Path | None) -> bool:
    """Whether this grid may start worker processes, judged before the study is read in full
    (`--workers`, else the study file's `workers`, else auto) on a machine of several cores."""
    value = flag
    if value is None and study_file is not None:
        try:
            value = read_toml(study_file).get("workers")
        except AblateError:
            return False  # reading the study properly reports it
    return workers.cores() > 1 and str(value if value is not None else "auto").strip() not in ("1", "0")


def _write_report(results_dir: Path, study_name: str, url: str) -> None:
    """report.html, or a warning naming what went wrong: the grid's results stand without it."""
    try:
        from ablate.report import write_report  # plotly: imported only once the grid is done

        path = write_report(results_dir=results_dir, study_names=[study_name], storage=url)
        click.echo(f"report: {path}")
    except Exception as exc:  # noqa: BLE001 - the grid's results stand without the report
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"warning: no report written ({type(exc).__name__}{': ' + first if first else ''}); "
                   f"try `ablate report --study-name {study_name}`", err=True)

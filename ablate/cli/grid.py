"""`ablate grid` and `ablate status`: the ablation grid as a resumable, exactly-once Optuna study."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import click
from click.core import ParameterSource

from ablate import workers
from ablate.cli._options import data_options, execution_options, results_dir_option, stopping_options
from ablate.errors import AblateError
from ablate.studyfile import read_toml

# flag parameter -> study key or [train] key it overrides
_OVERRIDES = {
    "study_name": "name", "models": "models", "toggles": "toggles", "factor": "factor", "design": "design",
    "seeds": "seeds", "model_arg": "model_arg",
    "data": "data", "image_size": "image_size", "num_classes": "num_classes", "ignore_index": "ignore_index",
    "val_fraction": "val_fraction", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "patience": "patience", "early_stop_on": "early_stop_on", "min_delta": "min_delta",
    "class_weights": "class_weights", "device": "device", "precision": "precision",
    "compile": "compile", "storage": "storage", "workers": "workers", "max_retries": "max_retries",
}


@click.command()
@click.option("--study", "study_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Study definition (TOML) [default: studies/quick.toml, else the built-in quick study].")
@click.option("--study-name", default=None, help="Optuna study name and results folder [default: from the study file].")
@click.option("--models", default=None, metavar="A,B", help="Architectures: baseline, custom, resnet18, unet.")
@click.option("--toggles", default=None, metavar="A,B",
              help="Toggles switched on/off (2^k settings; the others stay off); 'none' for none.")
@click.option("--factor", "factor", multiple=True, metavar="KEY=A,B",
              help="A factor and its levels, the first the reference; repeatable (--factor loss=ce,dice "
                   "--factor optimizer=adamw,sgd). Replaces the study file's [factors] entry for KEY.")
@click.option("--design", default=None, metavar="full|fractional|one-at-a-time",
              help="Which factor settings run: every combination [default], a 2^(k-p) fraction of two-level "
                   "factors (resolution >= IV), or one factor at a time from the reference (no interactions).")
@click.option("--seeds", default=None, metavar="N|A,B,C", help="A count (seeds 0..N-1) or a list of seeds.")
@click.option("--model-arg", "model_arg", multiple=True, metavar="[MODEL.]KEY=VALUE",
              help="Model argument, repeatable (unet.base_channels=16; without MODEL: every model that has KEY).")
@data_options(default_data=None)
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--weight-decay", type=float, default=None)
@stopping_options(defaults=False)
@execution_options
@click.option("--storage", default=None,
              help="Optuna storage URL (postgresql://user:pw@host/db for many machines) or a journal file path "
                   "[default: results/<study>/optuna.db for one worker; optuna.journal for several].")
@click.option("--workers", default=None, metavar="N|auto",
              help="Worker processes on this machine [default: auto: one per core (1 thread each) or per GPU, "
                   "at most one per cell].")
@click.option("--max-retries", default=None, metavar="N", help="Runs again a failed cell up to N times [default: 1].")
@click.option("--artifacts", default=None, metavar="DIR|s3://BUCKET[/PREFIX]",
              help="Optuna artifact store for each trial's run.json and checkpoint: a folder (share one between "
                   "machines, or use S3: pip install boto3) [default: results/<study>/artifacts].")
@click.option("--keep-checkpoints", type=click.Choice(["best", "all", "none"]), default="best", show_default=True,
              help="Checkpoints kept in the artifact store once the grid is done: best = each architecture's best "
                   "run (the report's gallery, `ablate predict`), all, or none.")
@results_dir_option
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Decoded-dataset cache [default: <results-dir>/.cache].")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write results/<study>/report.html when the grid is done.")
@click.option("--dry-run", is_flag=True, help="List the cells and how many are done; run and write nothing.")
@click.option("--tables-only", is_flag=True, help="Rebuild runs.csv and summary.csv from the storage; train nothing.")
@click.pass_context
def grid(ctx: click.Context, study_file: Path | None, results_dir: Path, cache_dir: Path | None, report: bool,
         dry_run: bool, tables_only: bool, artifacts: str | None, keep_checkpoints: str, **flags):
    """Run the ablation grid: every architecture x every setting of the factors (the toggles
    on/off, and [factors] / --factor) x seeds.

    Rerunning the same command runs only what is missing; several processes or machines
    sharing one --storage split the cells, and no cell runs twice.
    """
    import optuna

    from ablate import grid as grids
    from ablate import store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    overrides = {_OVERRIDES[name]: value for name, value in flags.items()
                 if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    if not (dry_run or tables_only) and _may_spawn(overrides.get("workers"), study_file):
        workers.warm_up("ablate.grid.run")  # the worker server imports torch while this process sets up
    study = grids.load_study(study_file, overrides)
    if tables_only:  # an existing storage: default_storage finds the study's file whatever the worker count
        gs = _open_existing(study.storage or store.default_storage(results_dir, study.name), study.name)
        runs, summary = grids.write_tables(gs, results_dir)
        click.echo(f"wrote {runs} and {summary}")
        return

    grids.check_models(study)
    execution = grids.resolve_execution(study.train)  # also: --device cuda without a GPU is an input error
    from ablate import data as data_stage

    fingerprint = data_stage.fingerprint(study.train.data)
    cells = grids.expand(study, fingerprint, execution)
    grids.check_cells(cells)
    study = grids.resolve_workers(study, cells, execution)
    url = study.storage or store.default_storage(results_dir, study.name, study.workers)
    definition = grids.definition(study, fingerprint, execution)
    exists = _storage_exists(url)
    gs = grids.GridStorage(url, study.name) if exists else None
    attrs = gs.study_attrs() if gs else None
    # An early check for a quick answer; `prepare` checks again under the study lock. Another
    # process may be writing the attrs one by one right now: judge only a complete set.
    if attrs and "grid_hash" in attrs:
        grids.check_same_grid(study.name, attrs, definition, url, study.train)
    if dry_run:
        _print_dry_run(study, cells, gs.trials() if attrs else [], url, exists)
        return

    cache_dir = cache_dir or results_dir / ".cache"
    datasets = grids.Datasets(study.train, cache_dir)  # one per image size the cells use, loaded when first needed
    sizes = [c.config.image_size for c in cells]
    dataset = datasets(study.train.image_size if study.train.image_size in sizes else sizes[0])
    gs = gs or grids.GridStorage(url, study.name)
    files = store.artifacts(artifacts or store.default_artifacts(results_dir, study.name))  # bad --artifacts: exit 2 now
    attrs = gs.prepare(study, cells, definition, dataset=dataset.summary(), command=_command_line(ctx))
    folder = store.study_dir(results_dir, study.name)
    grids.write_study_json(results_dir, study, url, attrs, dataset.summary(), command=_command_line(ctx),
                           artifacts=files.spec)
    briefs = [c.brief() for c in cells]
    start = grids.progress(briefs, gs.trials(), study.max_retries)
    click.echo(f"study {study.name}: {_shape(study, cells)}, {start.completed} done, {start.pending} to run; "
               f"{_plural(study.workers, 'worker')}; storage {store.mask_url(url)}")
    click.echo(dataset.describe())

    printer = _CellPrinter(gs, briefs, results_dir, study.max_retries, initial=start.completed + start.failed,
                           when_all_claimed=(lambda: _warm_report(len(study.seeds)))
                           if report and study.workers > 1 else None)
    try:
        crashed = grids.run_workers(study, cells, url, results_dir=results_dir, cache_dir=cache_dir, datasets=datasets,
                                    on_result=printer, progress=printer.tty and study.workers == 1,
                                    artifacts=files.spec, keep_checkpoints=keep_checkpoints)
    except KeyboardInterrupt:
        printer.close()
        _quietly(lambda: grids.write_tables(gs, results_dir))
        click.echo("\ninterrupted: the running cell is marked 'interrupted' and runs again next time; "
                   "rerun the same command to continue", err=True)
        sys.exit(130)
    printer.close()
    final = grids.progress(briefs, gs.trials(), study.max_retries)
    if not final.pending and not final.running:  # the grid is done: thin the checkpoints once
        grids.prune_checkpoints(gs, files, keep_checkpoints)
    grids.write_tables(gs, results_dir)
    _print_table(folder / "summary.csv")
    click.echo(f"\nresults: {folder}/ (runs.csv, summary.csv, study.json); files: {files.spec}")
    if report:
        _write_report(results_dir, study.name, url)
    local = None if files.spec.startswith("s3://") else files.spec
    click.echo(f"dashboard: {store.dashboard_command(url, local)}")
    problems = []
    if final.failed_cells:
        problems.append(f"{len(final.failed_cells)} cell(s) failed: "
                        + "; ".join(f"{label} ({reason})" for label, reason in final.failed_cells))
    if crashed:
        problems.append(f"{len(crashed)} worker process(es) crashed (exit codes {', '.join(map(str, crashed))}); "
                        "rerun to finish their cells")
    if final.pending or final.running:
        problems.append(f"{final.pending + final.running} cell(s) not done; rerun the same command")
    if problems:
        click.echo("error: " + "; ".join(problems), err=True)
        sys.exit(1)


@click.command()
@click.option("--study-name", default=None, help="Grid study to show [default: the default study's name].")
@click.option("--storage", default=None, help="Optuna storage URL or journal file [default: results/<study>/optuna.*].")
@results_dir_option
def status(study_name: str | None, storage: str | None, results_dir: Path) -> None:
    """Show a grid study's progress: done / running / failed / pending and compute time."""
    from ablate import grid as grids
    from ablate import store

    name = study_name or grids.load_study().name
    url = storage or store.default_storage(results_dir, name)
    gs = _open_existing(url, name)
    attrs = gs.study_attrs() or {}
    p = grids.progress(attrs.get("cells") or [], gs.trials())
    click.echo(f"study {name} ({store.mask_url(url)}): {p.cells} cells")
    click.echo(f"  done {p.completed}, running {p.running}, failed {p.failed}, pending {p.pending}")
    click.echo(f"  elapsed compute {_duration(p.compute_seconds)}")
    for label, reason in p.failed_cells:
        click.echo(f"  failed: {label}: {reason}")


# --------------------------------------------------------------------------- helpers
_NOT_REPEATED = ("seeds", "dry_run", "tables_only", "report")  # not what defines or extends the study


def _command_line(ctx: click.Context) -> list[str]:
    """The `ablate grid ...` arguments the user typed, in click's order, minus --seeds and the
    one-off switches: what the report appends `--seeds N` to."""
    args = [ctx.info_name or "grid"]
    for param in ctx.command.params:
        if (not isinstance(param, click.Option) or param.name in _NOT_REPEATED
                or ctx.get_parameter_source(param.name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)):
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            if param.secondary_opts:
                args.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                args.append(param.opts[0])
        elif param.multiple:
            for v in value:
                args += [param.opts[0], str(v)]
        else:
            args += [param.opts[0], str(value)]
    return args


def _storage_exists(url: str) -> bool:
    from ablate import store

    if store.is_journal(url):
        return Path(url).is_file()
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):]).is_file()
    return True  # a server: opening it is how we learn whether it is reachable


def _open_existing(url: str, name: str):
    from ablate import grid as grids
    from ablate import store

    if not _storage_exists(url):
        raise AblateError(f"no grid study {name!r}: {store.mask_url(url)} does not exist; run `ablate grid` first "
                          "(or pass --storage / --results-dir)")
    gs = grids.GridStorage(url, name)
    attrs = gs.study_attrs()
    if attrs is None:
        names = ", ".join(s.study_name for s in gs.storage.get_all_studies()) or "none"
        raise AblateError(f"no study {name!r} in {store.mask_url(url)} (studies there: {names})")
    if attrs.get("kind") != grids.KIND:
        raise AblateError(f"study {name!r} in {store.mask_url(url)} is not a grid study")
    return gs


class _CellPrinter:
    """A tqdm bar over cells on a terminal, else one line per finished cell; refreshes the
    tables after every cell. `[n/N]` counts the cells finished before this command, those its
    workers finished (one step per line, so two cells ending together never print the same
    n), and those other machines finished meanwhile (read from the storage)."""

    def __init__(self, gs, briefs: list[dict], results_dir: Path, max_retries: int, initial: int,
                 when_all_claimed: Callable[[], None] | None = None):
        from tqdm import tqdm

        self.gs, self.briefs, self.results_dir, self.max_retries = gs, briefs, results_dir, max_retries
        self.tty = sys.stdout.isatty()
        self.bar = tqdm(total=len(briefs), initial=initial, unit="cell", desc="grid", file=sys.stdout,
                        disable=not self.tty, dynamic_ncols=True)
        self.before = {cid for cid, st in self._states().items() if st.status in ("completed", "failed")}
        self.here: set[str] = set()  # cells this command's workers finished
        self.node = workers.identity()["node"]
        self.when_all_claimed = when_all_claimed  # called once, after the first result that leaves no cell waiting

    def _states(self):
        from ablate import grid as grids

        return grids.cell_states(self.briefs, self.gs.trials(), self.max_retries)

    def __call__(self, result) -> None:
        from ablate import grid as grids

        states = self._states()
        if result.status == "completed" or states[result.cell_id].status == "failed":  # a retry is not done yet
            self.here.add(result.cell_id)
        elsewhere = {cid for cid, st in states.items() if st.status in ("completed", "failed") and st.trial is not None
                     and (st.trial.user_attrs.get("worker") or {}).get("node") != self.node}
        done = len(self.before | self.here | elsewhere)
        if result.status == "completed":
            what = f"val mIoU {_num(result.val_miou)} test {_num(result.test_miou)}"
        else:
            what = f"FAILED ({result.failure_reason})"
        line = f"[{done}/{len(self.briefs)}] {result.label}: {what} ({result.seconds:.0f}s)"
        if self.tty:
            self.bar.n = done
            self.bar.refresh()
            self.bar.write(line)
        else:
            click.echo(line)
        _quietly(lambda: grids.write_tables(self.gs, self.results_dir))
        if self.when_all_claimed is not None and not any(st.waiting for st in states.values()):
            self.when_all_claimed, call = None, self.when_all_claimed
            call()

    def close(self) -> None:
        self.bar.close()


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


def _print_dry_run(study, cells, trials, url: str, exists: bool) -> None:
    from ablate import grid as grids
    from ablate import store

    briefs = [c.brief() for c in cells]
    states = grids.cell_states(briefs, trials, study.max_retries)
    p = grids.progress(briefs, trials, study.max_retries)
    click.echo(f"study {study.name}: {_shape(study, cells)}; {p.completed} done, {p.pending} pending"
               + (f", {p.running} running" if p.running else "") + (f", {p.failed} failed" if p.failed else ""))
    click.echo(f"storage: {store.mask_url(url)}" + ("" if exists else " (not created yet)"))
    for line in grids.design_lines(study):
        click.echo(line)
    names = [c.factors for c in cells[:1]][0] if cells else ()
    columns = [("toggles", lambda c: c.toggles)] if study.toggles or not names else []
    columns += [(k, lambda c, k=k: c.levels[k]) for k in names]
    widths = [max(len(h), *(len(f(c)) for c in cells)) for h, f in columns]
    click.echo(f"{'cell_id':<12}  {'model':<8}  " + "  ".join(f"{h:<{w}}" for (h, _), w in zip(columns, widths))
               + f"  {'seed':>4}  status")
    for cell in cells:
        status = states[cell.cell_id].status
        click.echo(f"{cell.cell_id:<12}  {cell.config.model:<8}  "
                   + "  ".join(f"{f(cell):<{w}}" for (_, f), w in zip(columns, widths))
                   + f"  {cell.config.seed:>4}  {'pending' if status == 'retry' else status}")


def _print_table(summary_csv: Path) -> None:
    import pandas as pd

    table = pd.read_csv(summary_csv)
    if table.empty:
        click.echo("\nno completed cells")
        return
    table["setting"] = [_setting(t, f) for t, f in zip(table["toggles"], table.get("factors", [None] * len(table)))]
    width = max(7, table["setting"].str.len().max())
    click.echo(f"\n{'model':<8}  {'setting':<{width}}  {'n':>2}  {'val mIoU':<15}  test mIoU")
    for _, row in table.iterrows():
        click.echo(f"{row['model']:<8}  {row['setting']:<{width}}  {int(row['n']):>2}  "
                   f"{_mean_std(row['val_miou_mean'], row['val_miou_std']):<15}  "
                   f"{_mean_std(row['test_miou_mean'], row['test_miou_std'])}")


def _setting(toggles: str, factors) -> str:
    """'scheduler', or with other factors 'loss=dice optimizer=sgd' (toggles first when on)."""
    import json

    words = " ".join(f"{k}={v}" for k, v in json.loads(factors).items()) if isinstance(factors, str) and factors else ""
    if not words:
        return toggles
    return words if toggles == "none" else f"{toggles} {words}"


def _shape(study, cells) -> str:
    from ablate import grid as grids

    n = len(grids.settings(study))
    what = "toggle setting" if study.design == "full" and not any(len(v) > 1 for v in study.factors.values()) else "setting"
    return (f"{len(cells)} cells ({_plural(len(study.models), 'model')} x {_plural(n, what)}"
            f" x {_plural(len(study.seeds), 'seed')})")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _mean_std(mean, std) -> str:
    return _num(mean) + ("" if std != std else f" ± {std:.3f}")


def _num(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _write_report(results_dir: Path, study_name: str, url: str) -> None:
    try:
        from ablate.report import write_report

        path = write_report(results_dir=results_dir, study_names=[study_name], storage=url)
        click.echo(f"report: {path}")
    except Exception as exc:  # noqa: BLE001 - the grid's results stand without the report
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"warning: no report written ({type(exc).__name__}{': ' + first if first else ''}); "
                   f"try `ablate report --study-name {study_name}`", err=True)


def _warm_report(seeds: int) -> None:
    """Import the report stage and load plotly's template (0.3 s of a core; the report's first
    figure then takes 0.6 s less) while the last cells run: no cell is left to claim, so a
    worker's core is free, or soon, until the report starts. With several seeds, also
    scipy.stats (1.1 s), which the seed intervals need. A failure is left to the report, which
    names it (`_write_report`)."""
    try:
        from ablate import report

        report.warm_up()
        if seeds > 1:
            import scipy.stats  # noqa: F401
    except Exception:  # noqa: BLE001 - the report step says what went wrong
        pass


def _quietly(fn) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - a table refresh must not stop the grid; the final one reports
        click.echo(f"warning: tables not refreshed ({type(exc).__name__}: {exc})", err=True)

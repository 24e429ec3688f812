"""`ablate grid` and `ablate status`: the ablation grid as a resumable, exactly-once Optuna study."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from ablate import workers
from ablate.cli._options import data_options, execution_options, results_dir_option, run_options, stopping_options
from ablate.grid.command import CellsInterrupted, grid_status, run_grid

# flag parameter -> study key or [train] key it overrides
_OVERRIDES = {
    "study_name": "name", "models": "models", "toggles": "toggles", "factor": "factor", "design": "design",
    "seeds": "seeds", "min_effect": "min_effect", "model_arg": "model_arg",
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
@click.option("--seeds", default=None, metavar="N|A,B,C|auto[:MIN-MAX]",
              help="A count (seeds 0..N-1), a list of seeds, or auto: sequential seeds, 3 per cell first, more "
                   "(up to 10; auto:MIN-MAX) only for architectures with an effect still undecided.")
@click.option("--min-effect", default=None, metavar="DELTA",
              help="The smallest effect on mIoU worth knowing about (δ): 'no effect larger than δ' is a verdict "
                   "[default: 0.01].")
@click.option("--model-arg", "model_arg", multiple=True, metavar="[MODEL.]KEY=VALUE",
              help="Model argument, repeatable (unet.base_channels=16; without MODEL: every model that has KEY).")
@data_options(default_data=None)
@run_options(defaults=False)
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
    overrides = {_OVERRIDES[name]: value for name, value in flags.items()
                 if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    try:
        problems = run_grid(study_file, overrides, results_dir=results_dir, cache_dir=cache_dir, artifacts=artifacts,
                            keep_checkpoints=keep_checkpoints, report=report, dry_run=dry_run,
                            tables_only=tables_only, command=_command_line(ctx))
    except CellsInterrupted as exc:  # before the cells ran, the CLI group says "interrupted" in general
        click.echo("\ninterrupted: the running cell is marked 'interrupted' and runs again next time; "
                   "rerun the same command to continue", err=True)
        sys.exit(workers.interrupt_exit_code(exc.__cause__))
    if problems:
        click.echo("error: " + "; ".join(problems), err=True)
        sys.exit(1)


@click.command()
@click.option("--study-name", default=None, help="Grid study to show [default: the default study's name].")
@click.option("--storage", default=None, help="Optuna storage URL or journal file [default: results/<study>/optuna.*].")
@results_dir_option
def status(study_name: str | None, storage: str | None, results_dir: Path) -> None:
    """Show a grid study's progress: done / running / failed / pending and compute time."""
    grid_status(study_name, storage=storage, results_dir=results_dir)


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

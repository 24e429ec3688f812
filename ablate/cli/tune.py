"""`ablate tune`: an Optuna search (TPE + pruning) over one model's hyperparameters, resumable."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ablate import results, store
from ablate import tune as tuning
from ablate import workers as worker_stage
from ablate.cli._options import data_options, execution_options, results_dir_option, toggle_options
from ablate.results.trials import CONFIRM_ATTR
from ablate.store import KEEP_CHECKPOINTS
from ablate.tune import DEFAULT_EPOCHS, DEFAULT_MIN_EFFECT, DEFAULT_N_TRIALS, PRUNERS, SAMPLERS


@click.command()
@click.option("--model", default=None, help="baseline | custom | resnet18 | unet, MODULE:CALLABLE or "
              "smp:ARCHITECTURE/ENCODER  [default: custom]")
@click.option("--study", "study_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Study TOML with a [tune] table (settings and search-space bounds); flags win over it.")
@click.option("--study-name", default=None, help="Optuna study name and results folder  [default: tune-<model>]")
@click.option("--n-trials", type=int, default=None,
              help=f"COMPLETE+PRUNED trials the study ends with (a rerun continues up to it)  [default: {DEFAULT_N_TRIALS}]")
@click.option("--timeout", type=float, default=None, help="Start no new trial after this many seconds.")
@click.option("--pruner", type=click.Choice(PRUNERS), default=None,
              help="Pruning on per-epoch val mIoU  [default: hyperband]")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help="[default: tpe (multivariate)]")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes on this machine, sharing the storage and the CPU cores.")
@click.option("--storage", default=None,
              help="Optuna storage URL (postgresql://user:pw@host/db for many machines) or a journal file "
                   "[default: results/<study>/optuna.db; optuna.journal for --workers > 1].")
@data_options()
@click.option("--epochs", type=int, default=None,
              help=f"Max epochs per trial (Hyperband's max resource)  [default: {DEFAULT_EPOCHS}]")
@click.option("--patience", type=int, default=None,
              help="Early stopping on val mIoU; 0 disables  [default: a third of --epochs, at least 3; off at 4 or fewer]")
@click.option("--seed", type=int, default=None, help="Training seed of every trial and sampler seed  [default: 0]")
@toggle_options
@click.option("--tune-toggles", is_flag=True, default=None,
              help="Search scheduler/augment/weighted_loss too (else they are fixed by their flags).")
@click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE",
              help="Fix a model argument, repeatable (removes it from the search space).")
@execution_options
@results_dir_option
@click.option("--export", "export_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a grid study file (TOML) that reruns the best configuration with 3 seeds.")
@click.option("--keep-checkpoints", type=click.Choice(KEEP_CHECKPOINTS), default="best", show_default=True,
              is_flag=False, flag_value="all",
              help="Which complete trials keep best.pt in the artifact store: the best one (the report's gallery "
                   "and `ablate predict` use it), all (the bare flag), or none.")
@click.option("--artifacts", default=None, metavar="DIR|s3://BUCKET[/PREFIX]",
              help="Optuna artifact store for each trial's run.json, predictions and checkpoint: a folder (share "
                   "one between machines) or S3 (pip install boto3)  [default: results/<study>/artifacts].")
@click.option("--confirm", "confirm", type=int, default=0, metavar="K",
              help="After the search, rerun the best K configurations over 3 to 10 fresh seeds and say whether the "
                   "winner beats the others, is equivalent within --min-effect, or is undecided.")
@click.option("--min-effect", type=float, default=DEFAULT_MIN_EFFECT, show_default=True,
              help="δ of --confirm: the smallest val mIoU difference that matters (equivalence within ±δ).")
@click.option("--dry-run", is_flag=True, help="Print the resolved search space and settings; run and write nothing.")
@click.pass_context
def tune(ctx: click.Context, study_file: Path | None, workers: int, storage: str | None, results_dir: Path,
         export_path: Path | None, keep_checkpoints: str, artifacts: str | None, confirm: int, min_effect: float,
         dry_run: bool, **flags: Any):
    """Search hyperparameters of one model with Optuna: TPE, Hyperband pruning on val mIoU.

    Every trial trains through the same engine as `ablate train` in results/<study>/runs/<trial>/;
    its record is kept in the storage and its files in the artifact store, so `ablate report
    --storage URL --study-name NAME` works on any machine. The first trial is the default
    configuration. Rerunning the same command continues the study until it holds --n-trials
    finished (complete or pruned) trials, and continues a --confirm where it stopped. Review it
    with the printed `optuna-dashboard` command.
    """
    if workers > 1 and not dry_run:
        worker_stage.warm_up("ablate.tune.search")  # the worker server imports torch while this process sets up
    given = {name for name in flags
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    spec = tuning.resolve_spec(flags, given=given, study_file=study_file, workers=workers, storage=storage,
                               results_dir=results_dir, keep_checkpoints=keep_checkpoints, confirm=confirm,
                               min_effect=min_effect)
    if artifacts is not None:
        spec = dataclasses.replace(spec, artifacts=store.artifacts(artifacts).spec)  # a bad one: exit 2 now
    if dry_run:
        _print_plan(spec)
        return
    try:
        study = tuning.tune(spec, echo=lambda line: click.echo(line))
    except KeyboardInterrupt as exc:
        click.echo(f"\ninterrupted: the running trial is marked FAIL; rerun the same command to continue "
                   f"(storage {store.mask_url(spec.storage)})", err=True)
        sys.exit(worker_stage.interrupt_exit_code(exc))
    _print_summary(spec, study)
    if _write_report(spec):
        _print_best_checkpoint(spec, study)
    if export_path is not None:
        path = tuning.export_grid_study(spec, study, export_path)
        click.echo(f"exported: {path}  (run it: ablate grid --study {path})")


def _print_plan(spec: tuning.TuneSpec) -> None:
    click.echo(f"study {spec.study_name}: {spec.base.model}, {spec.n_trials} trials of at most {spec.base.epochs} epochs, "
               f"sampler {spec.sampler}, pruner {spec.pruner}, {spec.workers} worker{'s' * (spec.workers > 1)}")
    click.echo(f"storage: {store.mask_url(spec.storage)}")
    click.echo("search space:")
    for name, param in spec.space.items():
        click.echo(f"  {name:<15} {param.text()}")
    params, notes = tuning.default_trial(spec.space, spec.base, spec.start)
    click.echo(f"first trial (the default configuration): {tuning.describe_params(params)}")
    for note in notes:
        click.echo(f"note: {note}")
    fixed = {k: v for k, v in spec.base.to_dict().items() if k not in spec.space}
    click.echo("fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    if spec.confirm:
        click.echo(f"then --confirm {spec.confirm}: the best {spec.confirm} configurations over 3 to 10 fresh seeds, "
                   f"δ = {spec.min_effect:g} val mIoU")


def _print_summary(spec: tuning.TuneSpec, study) -> None:
    c = tuning.counts(study)
    click.echo(f"\nstudy {spec.study_name}: {c['finished']} finished trials ({c['COMPLETE']} complete, "
               f"{c['PRUNED']} pruned), {c['FAIL']} failed; storage {store.mask_url(spec.storage)}")
    best = tuning.best_trial(study)
    if best is None:
        click.echo("no complete trial yet: no best value")
    else:
        click.echo(f"best val mIoU: {best.value:.4f} (trial {best.number})")
        click.echo("best params: " + "  ".join(f"{k}={v}" for k, v in best.params.items()))
        click.echo(f"best run record: {Path(best.user_attrs.get('run_dir', '')) / 'run.json'}")
    if spec.confirm:  # the decision of --confirm, in the words a reader signs
        for line in (study.user_attrs.get(CONFIRM_ATTR) or {}).get("sentences", []):
            click.echo(line)
    files = store.artifacts(spec.artifacts or store.default_artifacts(spec.results_dir, spec.study_name))
    click.echo(f"trials: {spec.folder / 'trials.csv'}; files: {files.spec}")
    local = None if files.spec.startswith("s3://") else files.spec
    click.echo(f"dashboard: {store.dashboard_command(spec.storage, local)}")


def _write_report(spec: tuning.TuneSpec) -> bool:
    try:
        from ablate.report import write_report  # plotly: imported only once the tune is done

        path = write_report(results_dir=spec.results_dir, study_names=[spec.study_name], storage=spec.storage,
                            artifacts=spec.artifacts)
        click.echo(f"report: {path}")
        return True
    except Exception as exc:  # noqa: BLE001 - the tune's results stand without the report
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"warning: no report written ({type(exc).__name__}{': ' + first if first else ''}); "
                   f"try `ablate report --study-name {spec.study_name}`", err=True)
        return False


def _print_best_checkpoint(spec: tuning.TuneSpec, study) -> None:
    """Where the best trial's checkpoint now is on this machine: fetched from the artifact
    store into results/<study>/checkpoints/<artifact id>/ (`Study.checkpoint_dir`)."""
    best = tuning.best_trial(study)
    if best is None or spec.keep_checkpoints == "none":
        return
    opened = results.open_study(spec.results_dir, spec.study_name, storage=spec.storage, artifacts=spec.artifacts)
    try:
        folder = opened.checkpoint_dir(str(best.number))
    except results.NoCheckpoint:  # e.g. a study resumed with other settings
        return
    click.echo(f"best checkpoint: {folder}  (ablate predict --run {folder} --image IMG)")

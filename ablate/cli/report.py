"""`ablate report`: analyse one or more studies and write the self-contained HTML report."""
from __future__ import annotations

from pathlib import Path

import click

from ablate.cli._options import results_dir_option
from ablate.errors import AblateError


def default_study(results_dir: Path) -> str:
    """The only study under `results_dir`, or the one whose tables changed last."""
    studies = [p.parent for p in results_dir.glob("*/study.json")]
    if not studies:
        raise AblateError(f"no study under {results_dir}/ (no */study.json); run `ablate grid` or `ablate tune` first, "
                          "or pass --results-dir")

    def last_change(folder: Path) -> float:
        return max(p.stat().st_mtime for p in (folder / n for n in ("study.json", "runs.csv", "trials.csv")) if p.exists())

    return max(studies, key=last_change).name


@click.command()
@click.option("--study-name", "study_names", multiple=True, metavar="NAME",
              help="Study to report, repeatable [default: the only, or most recently updated, study in --results-dir].")
@results_dir_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: RESULTS_DIR/<first study>/report.html].")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage to read the grid or tune studies from, on any machine (the storage is the "
                   "record) [default: the one study.json names, when it opens from here].")
@click.option("--artifacts", default=None, metavar="DIR|s3://BUCKET[/PREFIX]",
              help="Artifact store holding the trials' checkpoints, predictions and run records [default: where "
                   "each trial recorded its files].")
def report(study_names: tuple[str, ...], results_dir: Path, out: Path | None, storage: str | None,
           artifacts: str | None) -> None:
    """Write one HTML file (plotly inline, no network needed): overview, grid table with
    confidence intervals, toggle effects, learning curves, per-class IoU, predictions,
    cost Pareto front, tuning plots and failures. With --storage and --study-name it works
    on a machine that ran nothing; the CSV tables are exported under RESULTS_DIR/<study>/."""
    from ablate.report import write_report

    if not study_names and storage is not None:
        raise AblateError("--storage: also pass --study-name NAME (the study to read from it)")
    names = list(study_names) or [default_study(results_dir)]
    path = write_report(results_dir=results_dir, study_names=names, out=out, storage=storage, artifacts=artifacts)
    click.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")

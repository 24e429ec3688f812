"""`ablate train`: one configuration through the engine, one run record."""
from __future__ import annotations

from pathlib import Path

import click

from ablate.cli._options import (checked_option, data_options, execution_options, run_options, stopping_options,
                                 toggle_options, training_options)
from ablate.config import TrainConfig
from ablate.errors import AblateError


@click.command()
@click.option("--model", default="baseline", show_default=True,
              help="baseline | custom | resnet18 | unet, your own callable (called with num_classes and the "
                   "--model-arg values) as MODULE:CALLABLE importable from PYTHONPATH (PYTHONPATH=. for the working "
                   "directory) or as FILE.py:CALLABLE, or smp:ARCHITECTURE/ENCODER (pip install 'ablate[smp]').")
@click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE",
              help="Model constructor argument, repeatable (e.g. base_channels=16, weights=PATH); typed by the "
                   "model's signature.")
@data_options()
@run_options()
@training_options()
@stopping_options()
@checked_option("seed", default=0, show_default=True)
@toggle_options
@execution_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder for run.json and best.pt [default: results/runs/<run_id>].")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path("results/.cache"), show_default=True,
              help="Decoded-dataset cache.")
@click.option("--quiet", is_flag=True, help="Only the final summary.")
def train(model, model_arg, data, image_size, num_classes, ignore_index, val_fraction, epochs, batch_size, lr,
          weight_decay, loss, optimizer, momentum, nesterov, schedule, patience, early_stop_on, min_delta,
          class_weights, seed, scheduler, augment, weighted_loss, device, precision, compile, out, cache_dir, quiet):
    """Train one model and write DIR/run.json (atomically) and DIR/best.pt."""
    from ablate.engine import check_training, fit
    from ablate.models import check_model, parse_model_args

    config = TrainConfig(
        model=model, model_args=parse_model_args(model, list(model_arg)), data=data,
        image_size=image_size or 64, num_classes=num_classes, ignore_index=ignore_index,
        val_fraction=val_fraction, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        loss=loss, optimizer=optimizer, momentum=momentum, nesterov=nesterov, schedule=schedule, scheduler=scheduler,
        augment=augment, weighted_loss=weighted_loss, class_weights=class_weights,
        patience=patience, early_stop_on=early_stop_on, min_delta=min_delta, seed=seed,
        precision=precision, device=device, compile=compile,
    )
    out = out or Path("results") / "runs" / config.run_id
    if out.exists() and not out.is_dir():
        raise AblateError(f"--out {out} is a file; give a folder")
    check_model(config.model, config.model_args)  # e.g. weights offline: one line before the data loads
    check_training(config)  # e.g. --weighted-loss with --loss dice, --nesterov with adamw
    record = fit(config, out_dir=out, quiet=quiet, cache_dir=cache_dir)
    if quiet:
        from ablate.record import describe

        click.echo(describe(record))
    click.echo(f"run record: {out / 'run.json'}")
    if record["status"] == "failed":
        raise SystemExit(1)

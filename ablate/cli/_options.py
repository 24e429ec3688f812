"""Options shared by `train`, `grid` and `tune`, so each flag is declared once."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from ablate.config import CLASS_WEIGHT_SCHEMES, DEVICES, EARLY_STOP_MONITORS, LOSSES, OPTIMIZERS, PRECISIONS, SCHEDULES


def _stack(*decorators: Callable) -> Callable:
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


def data_options(default_data: str | None = "synthetic") -> Callable:
    return _stack(
        click.option("--data", default=default_data, show_default=True,
                     help="'synthetic' (embedded dataset) or a dataset folder: PASCAL VOC, mmseg img_dir/ann_dir, or CamVid."),
        click.option("--image-size", default=None, metavar="H[xW]",
                     help="Working size: one int, 'H W' or 'HxW'; each divisible by 32."),
        click.option("--num-classes", type=int, default=None, help="Number of classes (default: inferred from the training masks)."),
        click.option("--ignore-index", type=int, default=255, show_default=True, help="Void label in the masks (CamVid: 11)."),
        click.option("--val-fraction", type=float, default=None,
                     help="Carve a seeded val split of this fraction from train when the dataset has none."),
    )


def results_dir_option(fn: Callable) -> Callable:
    return click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
                        help="Where studies, run records and the decode cache (.cache/) live.")(fn)


def execution_options(fn: Callable) -> Callable:
    return _stack(
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                     help="auto: bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX, else fp32."),
        click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the model."),
    )(fn)


def toggle_options(fn: Callable) -> Callable:
    return _stack(
        click.option("--scheduler/--no-scheduler", default=False, show_default=True,
                     help="LR schedule per step (shape: --schedule, cosine by default)."),
        click.option("--augment/--no-augment", default=False, show_default=True, help="Flip, rotate ±15°, random resized crop."),
        click.option("--weighted-loss/--no-weighted-loss", default=False, show_default=True,
                     help="Class-weighted loss, weights from the training split (scheme: --class-weights)."),
    )(fn)


def stopping_options(defaults: bool = True) -> Callable:
    """Early stopping and class weighting. `defaults=False` (grid): unset flags leave the study
    file's values alone, so they default to None here."""
    def default(value):
        return value if defaults else None

    return _stack(
        click.option("--patience", type=int, default=default(3), show_default=defaults,
                     help="Early stopping: epochs in a row without improvement of the monitor; 0 disables."),
        click.option("--early-stop-on", type=click.Choice(EARLY_STOP_MONITORS), default=default("miou"),
                     show_default=defaults,
                     help="Monitor: val mIoU (what picks the checkpoint) or the unweighted val loss (the old rule)."),
        click.option("--min-delta", type=float, default=default(0.0), show_default=defaults,
                     help="Early stopping: an improvement must beat the best by more than this."),
        click.option("--class-weights", type=click.Choice(CLASS_WEIGHT_SCHEMES), default=default("inverse"),
                     show_default=defaults,
                     help="Weights when --weighted-loss is on: inverse (1/f, mean 1), median (median(f)/f, SegNet), "
                          "enet (1/ln(1.02+f))."),
    )


def training_options(defaults: bool = True) -> Callable:
    """Loss, optimizer and lr schedule. Plain strings, not click choices: TrainConfig checks
    the names and says in one line which are accepted. `defaults=False`: unset flags are None."""
    def default(value):
        return value if defaults else None

    return _stack(
        click.option("--loss", default=default("ce"), show_default=defaults, metavar="|".join(LOSSES),
                     help="Training loss (the reported val loss stays the unweighted cross-entropy). --weighted-loss "
                          "applies to ce, focal and the ce part of ce+dice; dice and lovasz refuse it."),
        click.option("--optimizer", default=default("adamw"), show_default=defaults, metavar="|".join(OPTIMIZERS)),
        click.option("--momentum", type=float, default=default(0.9), show_default=defaults,
                     help="SGD momentum (AdamW keeps its betas 0.9, 0.999)."),
        click.option("--nesterov/--no-nesterov", default=default(False), show_default=defaults,
                     help="SGD: Nesterov momentum."),
        click.option("--schedule", default=default("cosine"), show_default=defaults, metavar="|".join(SCHEDULES),
                     help="The lr shape when --scheduler is on, per step over the epoch budget: cosine to 0, "
                          "poly (1 - t/T)^0.9, onecycle (peak --lr), none."),
    )


def merge_image_size_args(args: list[str]) -> list[str]:
    """Let `--image-size 64 96` (two tokens) through click as `--image-size 64x96`."""
    out, i = [], 0
    while i < len(args):
        out.append(args[i])
        if args[i] == "--image-size" and i + 2 < len(args) and args[i + 1].isdigit() and args[i + 2].isdigit():
            out.append(f"{args[i + 1]}x{args[i + 2]}")
            i += 3
            continue
        i += 1
    return out



"""Options shared by `train`, `grid` and `tune`, so each flag is declared once. A flag of a
training option is read and checked by its declaration (TrainConfig's field, ablate.options), so
a bad value is the same one line as in a study file: `--lr: expected a number > 0, got 'abc'`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import click

from ablate.config import TRAIN_OPTIONS, TrainConfig
from ablate.options import coerce, flag

_METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT", tuple: "H[xW]"}


class _Checked(click.ParamType):
    """The value of the flag of TrainConfig option `name`, read as ablate.options reads text."""

    def __init__(self, name: str):
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return coerce(TRAIN_OPTIONS[self.name], value, param.opts[0] if param else flag(self.name), text=True)


def checked_option(name: str, **kwargs: Any) -> Callable:
    """`--NAME` (image_size: --image-size) for TrainConfig option `name`; a bad value is an
    AblateError (one line, exit 2) in the same words as a study file's."""
    option = TRAIN_OPTIONS[name]
    metavar = "|".join(option.choices) if option.choices else _METAVARS[option.kinds[0]]
    return click.option(flag(name), type=_Checked(name), metavar=kwargs.pop("metavar", metavar), **kwargs)


def _stack(*decorators: Callable) -> Callable:
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


def _defaults(defaults: bool) -> Callable[[str], Any]:
    """TrainConfig's default of an option; None for all (`defaults=False`: the grid, whose unset
    flags leave the study file's values alone)."""
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return lambda name: fields[name] if defaults else None


def run_options(defaults: bool = True) -> Callable:
    """Epochs, batch size, lr and weight decay. `defaults=False`: unset flags are None."""
    default = _defaults(defaults)
    return _stack(*(checked_option(name, default=default(name), show_default=defaults)
                    for name in ("epochs", "batch_size", "lr", "weight_decay")))


def data_options(default_data: str | None = "synthetic") -> Callable:
    return _stack(
        click.option("--data", default=default_data, show_default=True,
                     help="'synthetic' (embedded dataset) or a dataset folder: PASCAL VOC, mmseg img_dir/ann_dir, or CamVid."),
        checked_option("image_size", default=None, help="Working size: one int, 'H W' or 'HxW'; each divisible by 32."),
        checked_option("num_classes", default=None, help="Number of classes (default: inferred from the training masks)."),
        checked_option("ignore_index", default=255, show_default=True, help="Void label in the masks (CamVid: 11)."),
        checked_option("val_fraction", default=None,
                       help="Carve a seeded val split of this fraction from train when the dataset has none."),
    )


def results_dir_option(fn: Callable) -> Callable:
    return click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
                        help="Where studies, run records and the decode cache (.cache/) live.")(fn)


def execution_options(fn: Callable) -> Callable:
    return _stack(
        checked_option("device", default="auto", show_default=True),
        checked_option("precision", default="auto", show_default=True,
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
    default = _defaults(defaults)

    return _stack(
        checked_option("patience", default=default("patience"), show_default=defaults,
                       help="Early stopping: epochs in a row without improvement of the monitor; 0 disables."),
        checked_option("early_stop_on", default=default("early_stop_on"), show_default=defaults,
                       help="Monitor: val mIoU (what picks the checkpoint) or the unweighted val loss (the old rule)."),
        checked_option("min_delta", default=default("min_delta"), show_default=defaults,
                       help="Early stopping: an improvement must beat the best by more than this."),
        checked_option("class_weights", default=default("class_weights"), show_default=defaults,
                       help="Weights when --weighted-loss is on: inverse (1/f, mean 1), median (median(f)/f, SegNet), "
                            "enet (1/ln(1.02+f))."),
    )


def training_options(defaults: bool = True) -> Callable:
    """Loss, optimizer and lr schedule. `defaults=False`: unset flags are None."""
    default = _defaults(defaults)

    return _stack(
        checked_option("loss", default=default("loss"), show_default=defaults,
                       help="Training loss (the reported val loss stays the unweighted cross-entropy). --weighted-loss "
                            "applies to ce, focal and the ce part of ce+dice; dice and lovasz refuse it."),
        checked_option("optimizer", default=default("optimizer"), show_default=defaults),
        checked_option("momentum", default=default("momentum"), show_default=defaults,
                       help="SGD momentum (AdamW keeps its betas 0.9, 0.999)."),
        click.option("--nesterov/--no-nesterov", default=default("nesterov"), show_default=defaults,
                     help="SGD: Nesterov momentum."),
        checked_option("schedule", default=default("schedule"), show_default=defaults,
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



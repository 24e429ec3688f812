"""`ablate data`: look at what a dataset loads as, or write the synthetic set to disk."""
from __future__ import annotations

from pathlib import Path

import click

from ablate.cli._options import data_options


@click.group()
def data() -> None:
    """Inspect datasets; write the embedded synthetic dataset as a VOC folder."""


@data.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New (or empty) folder to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-classes", type=click.IntRange(2, 255), default=6, show_default=True)
@click.option("--size", type=click.IntRange(32, 1024), default=128, show_default=True, help="Native image size (px).")
def synth(out: Path, seed: int, num_classes: int, size: int) -> None:
    """Write the synthetic dataset as a real PASCAL VOC layout (JPEGs, palette PNG masks)."""
    from ablate.synthetic import write_voc

    root = write_voc(out, num_classes=num_classes, seed=seed, size=size)
    click.echo(f"wrote {root} (use it with --data {out})")


@data.command()
@data_options()
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path("results/.cache"), show_default=True)
def info(data, image_size, num_classes, ignore_index, val_fraction, cache_dir) -> None:
    """Load a dataset (decoding once, then from cache) and print what was found."""
    from ablate.config import parse_image_size
    from ablate.data import load_dataset

    ds = load_dataset(data, image_size=parse_image_size(image_size or 64), num_classes=num_classes,
                      ignore_index=ignore_index, val_fraction=val_fraction, cache_dir=cache_dir)
    click.echo(ds.describe())
    click.echo(f"classes: {', '.join(ds.class_names)}")


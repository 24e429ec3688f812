"""`ablate predict`: segment one image with a trained run (the seed report's Figure 4)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder holding best.pt.")
@click.option("--image", required=True, type=click.Path(path_type=Path), help="Image to segment (any size).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Side-by-side PNG [default: <image stem>_pred.png beside the run].")
def predict(run_dir: Path, image: Path, out: Path | None) -> None:
    """Predict IMAGE with RUN's best checkpoint; write image | mask | overlay and list the classes."""
    from ablate.predict import predict_file

    out = out or run_dir / f"{image.stem}_pred.png"
    names = predict_file(run_dir, image, out)
    click.echo(f"predicted classes: {', '.join(names)}")
    click.echo(f"wrote {out}")

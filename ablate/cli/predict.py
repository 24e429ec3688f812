"""`ablate predict`: segment one image with a trained run (the seed report's Figure 4)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder holding best.pt.")
@click.option("--image", required=True, type=click.Path(path_type=Path), help="Image to segment (any size).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Side-by-side PNG [default: <image stem>_pred.png beside the run].")
@click.option("--model", "named_model", default=None, metavar="MODULE:CALLABLE|FILE.py:CALLABLE",
              help="The run's model when it is your own code: naming it (exactly as the run stored it) lets "
                   "ablate import and run it. Without it, a checkpoint naming user code is refused.")
@click.option("--trust-model-code", is_flag=True,
              help="Import and run whatever user code the checkpoint names as its model (only for checkpoints you trust).")
def predict(run_dir: Path, image: Path, out: Path | None, named_model: str | None, trust_model_code: bool) -> None:
    """Predict IMAGE with RUN's best checkpoint; write image | mask | overlay and list the classes."""
    from ablate.predict import predict_file

    out = out or run_dir / f"{image.stem}_pred.png"
    names = predict_file(run_dir, image, out, named_model=named_model, trust_model_code=trust_model_code)
    click.echo(f"predicted classes: {', '.join(names)}")
    click.echo(f"wrote {out}")

"""The report gallery's val images, and the PNG in which each run stores its model's
predictions of them (`predictions.png`, an artifact of the trial), so a report draws the
gallery without a checkpoint. numpy and PIL only: a grid worker writes it without loading
the analysis stage (pandas)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ablate import _io
from ablate.errors import AblateError

GALLERY_IMAGES = 4  # val images in the report's gallery (and in each run's predictions.png)


def gallery_indices(n_val: int, n_images: int = GALLERY_IMAGES) -> list[int]:
    """The gallery's val images: evenly spaced over the split."""
    return sorted(set(np.linspace(0, n_val - 1, min(n_images, n_val)).round().astype(int).tolist()))


def write_predictions_png(path: Path, masks: list[np.ndarray], ids: list[str]) -> Path:
    """Label masks side by side in one lossless 8-bit PNG, the image ids in its text chunk."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("ablate:ids", json.dumps(list(ids)))
    strip = np.concatenate([np.asarray(m, dtype=np.uint8) for m in masks], axis=1)
    return _io._atomic(path, lambda tmp: Image.fromarray(strip, mode="L").save(tmp, format="PNG", pnginfo=info))


def read_predictions_png(path: Path, what: str) -> tuple[list[str], list[np.ndarray]]:
    """The image ids and masks of a predictions.png; a file that is not one is an error naming `what`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            ids, strip = json.loads(im.text["ablate:ids"]), np.array(im)
    except (OSError, UnidentifiedImageError, KeyError, ValueError) as exc:
        raise AblateError(f"{what}: {path.name} is not a predictions image ({type(exc).__name__}); rerun the cell") from None
    return ids, np.split(strip, len(ids), axis=1) if ids else []

"""`ablate evaluate`: score a folder of predicted index masks against ground truth, with the
same confusion matrix the engine uses, accumulated over the whole folder."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ablate._io import _json_safe
from ablate.errors import AblateError

# Index masks only: "P" stores the class index per pixel (the palette is just display),
# "L" stores it as the grey value. RGB colour masks would need a palette lookup first.
_INDEX_MODES = ("P", "L")


def _png_masks(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise AblateError(f"--{role} directory {folder} does not exist; pass a folder of PNG masks")
    masks: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and path.suffix.lower() == ".png"):
            continue
        if path.stem in masks:
            raise AblateError(f"{path} and {masks[path.stem]} share the stem {path.stem!r}; keep one")
        masks[path.stem] = path
    if not masks:
        raise AblateError(f"--{role} directory {folder} contains no .png masks; point it at the mask folder")
    return masks


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.array(img) if mode in _INDEX_MODES else None
    except Exception as exc:  # PIL raises many types for corrupt files; none is a bug of ours
        raise AblateError(f"cannot read {path} ({type(exc).__name__}: {exc}); re-export it as a PNG") from exc
    if arr is None:
        raise AblateError(
            f"{path} has image mode {mode}; save masks as palette (P) or grayscale (L) PNGs of class indices"
        )
    return arr


def _pairs(pred_masks: dict[str, Path], gt_masks: dict[str, Path]) -> list[tuple[Path, Path]]:
    for stem, path in pred_masks.items():
        if stem not in gt_masks:
            raise AblateError(f"prediction {path} has no ground truth {stem}.png in the --gt folder; add or remove it")
    for stem, path in gt_masks.items():
        if stem not in pred_masks:
            raise AblateError(f"ground truth {path} has no prediction {stem}.png in the --pred folder; add or remove it")
    return [(pred_masks[stem], gt_masks[stem]) for stem in sorted(gt_masks)]


def _check_labels(arr: np.ndarray, path: Path, role: str, num_classes: int, ignore_index: int | None) -> None:
    out_of_range = arr >= num_classes
    if ignore_index is not None:
        out_of_range &= arr != ignore_index
    if out_of_range.any():
        value = int(arr[out_of_range].max())
        allowed = f"0..{num_classes - 1}" + (f" or {ignore_index}" if ignore_index is not None else "")
        raise AblateError(
            f"{role} {path} contains label {value}, but --num-classes is {num_classes} (allowed {allowed}); "
            "fix the mask or raise --num-classes"
        )


@click.command()
@click.option("--pred", "pred_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of predicted index PNG masks.")
@click.option("--gt", "gt_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of ground-truth index PNG masks, paired with --pred by file stem.")
@click.option("--num-classes", required=True, type=click.IntRange(min=1), help="Number of classes K.")
@click.option("--ignore-index", default=255, show_default=True, type=int,
              help="Ground-truth label of void pixels (CamVid: 11); they are not scored.")
def evaluate(pred_dir: Path, gt_dir: Path, num_classes: int, ignore_index: int) -> None:
    """Score predicted masks against ground truth and print one JSON object."""
    import torch

    from ablate.metrics import ConfusionMatrix

    pairs = _pairs(_png_masks(pred_dir, "pred"), _png_masks(gt_dir, "gt"))
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for pred_path, gt_path in pairs:
        pred, gt = _read_mask(pred_path), _read_mask(gt_path)
        if pred.shape != gt.shape:
            raise AblateError(
                f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but ground truth {gt_path} is "
                f"{gt.shape[1]}x{gt.shape[0]} (width x height); predict at the ground-truth resolution"
            )
        _check_labels(pred, pred_path, "prediction", num_classes, None)
        _check_labels(gt, gt_path, "ground truth", num_classes, ignore_index)
        matrix.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))

    result = matrix.compute()
    record = {
        "pixel_acc": result["pixel_acc"],
        "miou": result["miou"],
        "mean_acc": result["mean_acc"],
        "mdice": result["mdice"],
        "class_iou": result["class_iou"],
        "class_acc": result["class_acc"],
        "num_images": len(pairs),
    }
    click.echo(json.dumps(_json_safe(record), indent=2, allow_nan=False))

"""Final metrics at the masks' own resolution: a run's recorded val/test metrics equal what
`ablate evaluate` says about the run's predictions written at native size."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ablate.cli import main
from ablate.config import TrainConfig
from ablate.data import VOID, load_dataset
from ablate.engine import evaluate, fit
from ablate.predict import load_run, predict_split
from ablate.synthetic import voc_palette

MASK_H, MASK_W = 50, 70  # native size, unlike the 32x32 working size
SPLIT_SIZES = {"train": 8, "val": 4, "test": 4}


def _write_voc(root, *, with_val: bool = True) -> None:
    """A tiny VOC2007 tree: bright rectangles of class 1 or 2 on class 0, void around them."""
    rng = np.random.default_rng(0)
    voc = root / "VOC2007"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette(256)
    n = 0
    for split, count in SPLIT_SIZES.items():
        if split == "val" and not with_val:
            continue
        ids = []
        for _ in range(count):
            id_ = f"{n:06d}"
            n += 1
            mask = np.zeros((MASK_H, MASK_W), np.uint8)
            image = rng.integers(0, 60, (MASK_H, MASK_W, 3)).astype(np.uint8)
            for k in (1, 2):
                y, x = rng.integers(0, MASK_H - 15), rng.integers(0, MASK_W - 20)
                h, w = rng.integers(8, 15), rng.integers(10, 20)
                mask[y - 1 if y else 0:y + h + 1, x - 1 if x else 0:x + w + 1] = VOID  # a void rim
                mask[y:y + h, x:x + w] = k
                image[y:y + h, x:x + w, k] = 230
            im = Image.fromarray(mask, mode="P")
            im.putpalette(palette)
            im.save(voc / "SegmentationClass" / f"{id_}.png")
            Image.fromarray(image).save(voc / "JPEGImages" / f"{id_}.png")
            ids.append(id_)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    _write_voc(root)
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(model="baseline", data=str(root), image_size=(32, 32), epochs=3, batch_size=4, lr=3e-3,
                         patience=0, precision="fp32", seed=1)
    record = fit(config, out_dir=out, quiet=True, cache_dir=cache)
    dataset = load_dataset(str(root), image_size=(32, 32), cache_dir=cache)
    return root, out, record, dataset


def _evaluate_cli(pred_dir, gt_dir) -> dict:
    result = CliRunner().invoke(main, ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("split", ["val", "test"])
def test_recorded_metrics_equal_ablate_evaluate_on_native_predictions(voc_run, tmp_path, split):
    root, out, record, dataset = voc_run
    assert record["status"] == "completed"
    assert record["metrics_resolution"] == "native" and record["curves_resolution"] == "working size 32x32"
    model, _ = load_run(out)  # the best checkpoint
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    data_split = dataset.splits[split]
    for id_, mask in zip(data_split.ids, predict_split(model, data_split, batch_size=3)):
        assert tuple(mask.shape) == (MASK_H, MASK_W)
        Image.fromarray(mask.numpy(), mode="L").save(pred_dir / f"{id_}.png")
        shutil.copy(root / "VOC2007" / "SegmentationClass" / f"{id_}.png", gt_dir / f"{id_}.png")  # the source files
    cli = _evaluate_cli(pred_dir, gt_dir)
    recorded = record["metrics"][split]
    for key in ("pixel_acc", "miou", "mean_acc", "mdice"):
        assert recorded[key] == pytest.approx(cli[key], abs=1e-6), key
    for key in ("class_iou", "class_acc"):
        for a, b in zip(recorded[key], cli[key]):
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-6), key


def test_native_loss_is_the_unweighted_ce_of_upsampled_logits(voc_run):
    _, out, record, dataset = voc_run
    model, _ = load_run(out)
    test = dataset.splits["test"]
    with torch.no_grad():
        logits = model(test.images.float() / 255)
    up = torch.nn.functional.interpolate(logits, size=(MASK_H, MASK_W), mode="bilinear", align_corners=False)
    target = torch.stack(test.native_masks).long()
    expected = torch.nn.functional.cross_entropy(up, target, ignore_index=VOID).item()
    assert record["metrics"]["test"]["loss"] == pytest.approx(expected, rel=1e-5)
    # and it is not the working-size number (which the curves keep)
    working = evaluate(model, test, num_classes=3, batch_size=4, precision="fp32")
    assert working["loss"] != pytest.approx(expected, rel=1e-5)


def test_native_masks_are_the_source_files_and_survive_the_cache(tmp_path):
    _write_voc(tmp_path / "data")
    cache = tmp_path / "cache"
    fresh = load_dataset(str(tmp_path / "data"), image_size=(32, 32), cache_dir=cache)
    cached = load_dataset(str(tmp_path / "data"), image_size=(32, 32), cache_dir=cache)
    assert not fresh.from_cache and cached.from_cache
    for ds in (fresh, cached):
        assert ds.splits["train"].native_masks is None  # only val and test need them
        for split in ("val", "test"):
            s = ds.splits[split]
            assert len(s.native_masks) == len(s.ids)
            for id_, mask in zip(s.ids, s.native_masks):
                with Image.open(tmp_path / "data" / "VOC2007" / "SegmentationClass" / f"{id_}.png") as im:
                    assert np.array_equal(mask.numpy(), np.array(im))


def test_a_carved_val_split_keeps_the_native_masks_of_its_images(tmp_path):
    _write_voc(tmp_path / "data", with_val=False)
    ds = load_dataset(str(tmp_path / "data"), image_size=(32, 32), val_fraction=0.25, cache_dir=None)
    val = ds.splits["val"]
    assert len(val) == 2 and ds.splits["train"].native_masks is None
    for id_, mask in zip(val.ids, val.native_masks):
        with Image.open(tmp_path / "data" / "VOC2007" / "SegmentationClass" / f"{id_}.png") as im:
            assert np.array_equal(mask.numpy(), np.array(im))


def test_synthetic_native_masks_are_the_generated_128px_ones(cache_dir):
    ds = load_dataset("synthetic", image_size=(32, 32), cache_dir=cache_dir)
    val = ds.splits["val"]
    native = torch.stack(val.native_masks)
    assert native.shape[-2:] == (128, 128)
    # the working-size masks are these, resized nearest-exact
    down = torch.nn.functional.interpolate(native[:, None].float(), size=(32, 32), mode="nearest-exact")[:, 0]
    assert torch.equal(down.to(torch.uint8), val.masks)

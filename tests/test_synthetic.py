"""Tests for the embedded synthetic dataset: determinism, VOC-style masks, imbalance, layout."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from ablate.errors import AblateError
from ablate.synthetic import (
    SPLIT_SIZES,
    SYNTH_CLASSES,
    VOID,
    class_names,
    generate_split,
    voc_palette,
    write_voc,
)

SIZE = 64  # small renders keep the suite fast; geometry is resolution-independent


@pytest.fixture(scope="module")
def train_split() -> tuple[np.ndarray, np.ndarray]:
    return generate_split("train", size=SIZE, seed=0)


def test_same_seed_gives_identical_arrays():
    a_images, a_masks = generate_split("val", n=6, size=SIZE, seed=3)
    b_images, b_masks = generate_split("val", n=6, size=SIZE, seed=3)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_masks, b_masks)


def test_different_seed_gives_different_arrays():
    a_images, a_masks = generate_split("val", n=4, size=SIZE, seed=0)
    b_images, b_masks = generate_split("val", n=4, size=SIZE, seed=1)
    assert not np.array_equal(a_images, b_images)
    assert not np.array_equal(a_masks, b_masks)


def test_splits_are_different_streams():
    images = {split: generate_split(split, n=4, size=SIZE)[0] for split in SPLIT_SIZES}
    for first in SPLIT_SIZES:
        for second in SPLIT_SIZES:
            if first < second:
                assert not np.array_equal(images[first], images[second]), (first, second)


def test_smaller_n_is_a_prefix():
    images, masks = generate_split("test", n=5, size=SIZE)
    head_images, head_masks = generate_split("test", n=2, size=SIZE)
    np.testing.assert_array_equal(images[:2], head_images)
    np.testing.assert_array_equal(masks[:2], head_masks)


def test_shapes_dtypes_and_values(train_split):
    images, masks = train_split
    assert images.shape == (SPLIT_SIZES["train"], SIZE, SIZE, 3) and images.dtype == np.uint8
    assert masks.shape == (SPLIT_SIZES["train"], SIZE, SIZE) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= set(range(len(SYNTH_CLASSES))) | {VOID}


def test_void_band_separates_every_pair_of_different_labels(train_split):
    _, masks = train_split
    void_fraction = (masks == VOID).mean()
    assert 0.005 < void_fraction < 0.15
    # By construction no two 4-adjacent labelled pixels carry different classes.
    for a, b in ((masks[:, 1:, :], masks[:, :-1, :]), (masks[:, :, 1:], masks[:, :, :-1])):
        labelled = (a != VOID) & (b != VOID)
        assert not np.any(labelled & (a != b))


def test_void_band_scales_with_resolution():
    fractions = [(generate_split("val", n=8, size=s)[1] == VOID).mean() for s in (64, 128)]
    # 1 px wide at 64 px and 2 px wide at 128 px: about the same share of the image.
    assert 0.7 < fractions[0] / fractions[1] < 1.4


def test_class_imbalance(train_split):
    _, masks = train_split
    counts = np.bincount(masks[masks != VOID], minlength=len(SYNTH_CLASSES))
    shares = counts / counts.sum()
    assert shares.argmax() == 0 and shares[0] > 0.5
    rare = SYNTH_CLASSES.index("speck")
    assert 0 < shares[rare] < 0.03
    assert shares[rare] == shares[1:].min()  # the rare class is the rarest object class


@pytest.mark.parametrize("num_classes", [2, 4, 9])
def test_other_class_counts(num_classes):
    _, masks = generate_split("train", n=12, size=SIZE, num_classes=num_classes)
    labels = set(np.unique(masks)) - {VOID}
    assert labels <= set(range(num_classes)) and 0 in labels and len(labels) > 1
    assert len(class_names(num_classes)) == num_classes


def test_class_names():
    assert class_names(6) == list(SYNTH_CLASSES)
    assert class_names(3) == list(SYNTH_CLASSES[:3])
    assert class_names(8)[6:] == ["class_6", "class_7"]
    with pytest.raises(AblateError):
        class_names(1)


def test_voc_palette():
    palette = voc_palette(256)
    assert len(palette) == 768
    assert palette[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    assert palette[15 * 3 : 16 * 3] == [192, 128, 128]  # VOC "person"
    assert palette[255 * 3 :] == [224, 224, 192]


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(AblateError, match="split"):
        generate_split("holdout")
    with pytest.raises(AblateError, match="seed"):
        generate_split("train", n=1, seed=-1)
    with pytest.raises(AblateError, match="num_classes"):
        generate_split("train", n=1, num_classes=256)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_voc(tmp_path_factory.mktemp("synth") / "out", size=32, seed=5)


def test_write_voc_layout_and_ids(voc_root):
    assert voc_root.name == "VOC2007"
    assert (voc_root / "classes.txt").read_text().split() == list(SYNTH_CLASSES)
    jpegs = {p.stem for p in (voc_root / "JPEGImages").glob("*.jpg")}
    pngs = {p.stem for p in (voc_root / "SegmentationClass").glob("*.png")}
    listed = []
    for split, n in SPLIT_SIZES.items():
        ids = (voc_root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids) == n
        listed += ids
    assert len(set(listed)) == len(listed)  # no image in two splits
    assert set(listed) == jpegs == pngs
    # Nothing but the dataset beside it: the temporary folder was renamed away.
    assert [p.name for p in voc_root.parent.parent.iterdir()] == ["out"]


def test_written_masks_are_voc_palette_pngs_equal_to_arrays(voc_root):
    images, masks = generate_split("val", size=32, seed=5)
    for i in (0, len(masks) - 1):
        png = Image.open(voc_root / "SegmentationClass" / f"val_{i:04d}.png")
        assert png.mode == "P"
        assert png.getpalette()[:768] == voc_palette(256)
        np.testing.assert_array_equal(np.asarray(png), masks[i])
        jpeg = np.asarray(Image.open(voc_root / "JPEGImages" / f"val_{i:04d}.jpg").convert("RGB"))
        assert jpeg.shape == images[i].shape
        assert np.abs(jpeg.astype(int) - images[i]).mean() < 6  # lossy (4:4:4, q95), not wrong


def test_write_voc_refuses_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(AblateError, match="not empty"):
        write_voc(tmp_path, size=32)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_write_voc_accepts_empty_existing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    root = write_voc(tmp_path / "empty", size=16, num_classes=3)
    assert root == tmp_path / "empty" / "VOC2007"
    assert (root / "classes.txt").read_text().split() == list(SYNTH_CLASSES[:3])


def test_each_image_comes_from_its_own_random_stream():
    import zlib

    from ablate import synthetic

    images, masks = synthetic.generate_split("val", n=12, size=64)
    assert images.shape == (12, 64, 64, 3) and masks.shape == (12, 64, 64)
    for i in range(12):
        rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(zlib.crc32(b"val"), i)))
        image, mask = synthetic._render(rng, 64, 6)
        assert (images[i] == image).all() and (masks[i] == mask).all()


def _hue_sat_val(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV in [0, 1] of uint8 RGB pixels [..., 3] (colorsys's formulas, vectorised)."""
    rgb = images.astype(np.float64) / 255.0
    top, low = rgb.max(-1), rgb.min(-1)
    span = top - low
    safe = np.where(span > 0, span, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(top == r, ((g - b) / safe) % 6, np.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return np.where(span > 0, hue / 6, 0.0), np.where(top > 0, span / np.where(top > 0, top, 1.0), 0.0), top


def _speck_coloured(images: np.ndarray) -> np.ndarray:
    """Pixels in the specks' colour: saturated, bright cyan (no common class has a hue near it)."""
    hue, sat, val = _hue_sat_val(images)
    return (np.abs(hue - 0.5) < 0.06) & (sat > 0.35) & (val > 0.4)


def test_speck_look_alikes_are_background_and_make_the_rare_class_less_likely_than_not():
    # What the weighted-loss toggle's effect rests on: a pixel that looks like a speck is
    # labelled background more often than speck, so an unweighted loss predicts background
    # there, and a class-weighted one the speck.
    images, masks = generate_split("val", n=40, size=SIZE)
    speck = masks == SYNTH_CLASSES.index("speck")
    looks = _speck_coloured(images) & (masks != VOID)
    labels = np.bincount(masks[looks], minlength=len(SYNTH_CLASSES)) / looks.sum()
    assert 0.2 < labels[SYNTH_CLASSES.index("speck")] < 0.5  # a speck, but less often than not
    assert labels[0] > 0.5  # the look-alikes are background
    assert (looks & speck).sum() / speck.sum() > 0.95  # and every speck looks like one
    # Without the rare class there are no look-alikes either (a few object and background
    # pixels pass the colour test).
    without, _ = generate_split("val", n=40, size=SIZE, num_classes=5)
    assert _speck_coloured(without).mean() < 0.3 * _speck_coloured(images).mean()

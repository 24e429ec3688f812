"""Data stage: layout detection, decoding at the working size, the decode-once cache and
bad-input errors, on tiny datasets written here (plus the shared rocks-voc set).

The fixtures are written at their working size (32x32) wherever a test compares pixel values
or class frequencies, so no resize can blur the hand-computed numbers.
`BAD_INPUTS` is shared with tests/test_cli_data.py, which drives the same cases through the CLI.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from ablate.data import CAMVID_CLASSES, VOC_CLASSES, load_dataset
from ablate.errors import AblateError

SIZE = 32  # native size of the fixtures == working size

# Hand-made masks (32x32) with known pixel counts.
# MASK_A: top half 0 (512 px), bottom-left quarter 1 (256), bottom-right quarter 2 (256).
MASK_A = np.zeros((SIZE, SIZE), np.uint8)
MASK_A[16:, :16] = 1
MASK_A[16:, 16:] = 2
# MASK_B: left half 1 (512), right half void 255 (512).
MASK_B = np.full((SIZE, SIZE), 255, np.uint8)
MASK_B[:, :16] = 1
# train = [A, B, A] -> class 0: 1024, class 1: 256 + 512 + 256 = 1024, class 2: 512 of 2560 labelled px.
SPLIT_MASKS = {"train": [MASK_A, MASK_B, MASK_A], "val": [MASK_A, MASK_B], "test": [MASK_B]}
EXPECTED_FREQUENCY = [0.4, 0.4, 0.2]


# --------------------------------------------------------------------------- fixture writers
def gradient_image(h: int = SIZE, w: int = SIZE, shift: int = 0) -> np.ndarray:
    """R follows x, G follows y, B is flat: smooth (JPEG-friendly) and channel order is visible."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    b = np.full((h, w), 200 - shift % 150)
    return np.stack([x, y, b], -1).round().astype(np.uint8)


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "RGB").save(path, quality=95)
    return path


def write_mask(path: Path, labels: np.ndarray, mode: str = "P") -> Path:
    """An index mask; palette masks get colours that differ from the indices, so a loader
    that read colours instead of indices would fail."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(labels, np.uint8), "L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([(37 * i + 11) % 256 for i in range(768)])
    img.save(path)
    return path


def write_voc(year_dir: Path, split_masks=SPLIT_MASKS, mode: str = "P") -> Path:
    """A VOC year folder: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets lists."""
    sets = year_dir / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for split, masks in split_masks.items():
        ids = [f"{split}_{i}" for i in range(len(masks))]
        for n, (id_, mask) in enumerate(zip(ids, masks)):
            write_image(year_dir / "JPEGImages" / f"{id_}.jpg", gradient_image(*mask.shape, shift=n))
            write_mask(year_dir / "SegmentationClass" / f"{id_}.png", mask, mode)
        # blank lines are noise a list file may carry
        (sets / f"{split}.txt").write_text("\n".join(ids) + "\n\n")
    return year_dir


def write_stem_pairs(image_dir: Path, mask_dir: Path, split: str, masks, mode: str = "L") -> None:
    for n, mask in enumerate(masks):
        write_image(image_dir / f"{split}_{n}.png", gradient_image(*mask.shape, shift=n))
        write_mask(mask_dir / f"{split}_{n}.png", mask, mode)
    mask_dir.mkdir(parents=True, exist_ok=True)


def write_mmseg(root: Path, split_masks=SPLIT_MASKS, mode: str = "L") -> Path:
    for split, masks in split_masks.items():
        write_stem_pairs(root / "img_dir" / split, root / "ann_dir" / split, split, masks, mode)
    return root


def write_camvid(root: Path, split_masks=SPLIT_MASKS, mode: str = "L") -> Path:
    for split, masks in split_masks.items():
        write_stem_pairs(root / split, root / f"{split}annot", split, masks, mode)
    return root


def load(path: Path, cache_dir: Path | None, **kwargs):
    kwargs.setdefault("image_size", (SIZE, SIZE))
    return load_dataset(str(path), cache_dir=cache_dir, **kwargs)


def labels_of(masks: torch.Tensor) -> set[int]:
    return set(masks.unique().tolist())


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize(
    "variant, mode",
    [("devkit", "P"), ("devkit-folder", "L"), ("year-folder", "L"), ("parent-of-year", "P")],
)
def test_voc_layout(tmp_path, variant, mode):
    year = {"devkit": "VOCdevkit/VOC2012", "devkit-folder": "VOCdevkit/VOC2012"}.get(variant, "VOC2007")
    write_voc(tmp_path / "ds" / year, mode=mode)
    data = {
        "devkit": tmp_path / "ds",
        "devkit-folder": tmp_path / "ds" / "VOCdevkit",
        "year-folder": tmp_path / "ds" / "VOC2007",
        "parent-of-year": tmp_path / "ds",
    }[variant]
    ds = load(data, tmp_path / "cache")

    assert ds.layout == "voc"
    assert {name: len(split) for name, split in ds.splits.items()} == {"train": 3, "val": 2, "test": 1}
    assert ds.splits["val"].ids == ["val_0", "val_1"]  # list-file order, blank lines skipped
    assert ds.num_classes == 3  # largest train label 2, void ignored
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    assert ds.class_frequency == pytest.approx(EXPECTED_FREQUENCY)
    for name, masks in SPLIT_MASKS.items():
        split = ds.splits[name]
        assert split.masks.dtype == torch.uint8 and split.masks.shape == (len(masks), SIZE, SIZE)
        assert torch.equal(split.masks, torch.from_numpy(np.stack(masks)))  # indices, not palette colours
        assert labels_of(split.masks) <= {0, 1, 2, 255}
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(masks), 3, SIZE, SIZE)
    # CHW, RGB order, pixels close to what was written (JPEG is lossy)
    written = torch.from_numpy(gradient_image(shift=1)).permute(2, 0, 1).float()
    assert (ds.splits["train"].images[1].float() - written).abs().mean() < 4


def test_voc_with_21_classes_uses_voc_names(tmp_path):
    mask = MASK_A.copy()
    mask[:4, :4] = 20  # 16 px of class 20
    write_voc(tmp_path / "VOC2012", {"train": [mask], "val": [MASK_A]})
    ds = load(tmp_path / "VOC2012", tmp_path / "cache")
    assert ds.num_classes == 21
    assert ds.class_names == list(VOC_CLASSES)
    assert ds.class_names[15] == "person"
    assert len(ds.class_frequency) == 21
    assert ds.class_frequency[20] == pytest.approx(16 / 1024)
    assert ds.class_frequency[0] == pytest.approx((512 - 16) / 1024)
    assert "test" not in ds.splits


def test_mmseg_layout_without_test_split(tmp_path):
    write_mmseg(tmp_path / "ds", {"train": SPLIT_MASKS["train"], "val": SPLIT_MASKS["val"]})
    (tmp_path / "ds" / "classes.txt").write_text("rock\nsand\n\nwater\n")
    ds = load(tmp_path / "ds", tmp_path / "cache")
    assert ds.layout == "mmseg"
    assert {name: len(split) for name, split in ds.splits.items()} == {"train": 3, "val": 2}
    assert "test" not in ds.splits
    assert "no test split" in ds.describe()
    assert ds.num_classes == 3
    assert ds.class_names == ["rock", "sand", "water"]
    assert ds.class_frequency == pytest.approx(EXPECTED_FREQUENCY)
    assert torch.equal(ds.splits["train"].masks, torch.from_numpy(np.stack(SPLIT_MASKS["train"])))
    assert torch.equal(ds.splits["train"].images[0], torch.from_numpy(gradient_image()).permute(2, 0, 1))  # PNG: exact


def camvid_mask() -> np.ndarray:
    """Column c holds label c % 12, with 11 as CamVid's void label. Over 32 columns labels
    0..7 get 3 columns each, 8..10 and void 11 get 2 each: 960 labelled px per mask."""
    return np.tile(np.arange(SIZE) % 12, (SIZE, 1)).astype(np.uint8)


def test_camvid_layout_maps_void_11_to_255(tmp_path):
    masks = {"train": [camvid_mask()] * 2, "val": [camvid_mask()], "test": [camvid_mask()] * 3}
    write_camvid(tmp_path / "camvid", masks)
    ds = load(tmp_path / "camvid", tmp_path / "cache", ignore_index=11)
    assert ds.layout == "camvid"
    assert {name: len(split) for name, split in ds.splits.items()} == {"train": 2, "val": 1, "test": 3}
    assert ds.num_classes == 11
    assert ds.ignore_index == 11
    assert ds.class_names == list(CAMVID_CLASSES)  # the SegNet CamVid layout's 11 classes, in label order
    assert ds.class_names[0] == "Sky" and ds.class_names[10] == "Bicyclist"
    expected = np.where(camvid_mask() == 11, 255, camvid_mask())
    for split in ds.splits.values():
        assert labels_of(split.masks) == set(range(11)) | {255}
        assert all(torch.equal(m, torch.from_numpy(expected)) for m in split.masks)
    assert ds.class_frequency == pytest.approx([96 / 960] * 8 + [64 / 960] * 3)


def test_camvid_void_label_counts_as_a_class_without_ignore_index(tmp_path):
    write_camvid(tmp_path / "camvid", {"train": [camvid_mask()], "val": [camvid_mask()]})
    ds = load(tmp_path / "camvid", tmp_path / "cache")  # ignore_index defaults to 255
    assert ds.num_classes == 12
    assert 255 not in labels_of(ds.splits["train"].masks)
    assert ds.class_names == [f"class_{k}" for k in range(12)]  # not CamVid's 11: no names guessed


def test_camvid_classes_txt_wins_over_the_camvid_names(tmp_path):
    write_camvid(tmp_path / "camvid", {"train": [camvid_mask()], "val": [camvid_mask()]})
    names = [f"mine_{k}" for k in range(11)] + ["void"]
    (tmp_path / "camvid" / "classes.txt").write_text("\n".join(names) + "\n")
    ds = load(tmp_path / "camvid", tmp_path / "cache", ignore_index=11)
    assert ds.num_classes == 11
    assert ds.class_names == names[:11]


def test_eleven_classes_in_another_layout_get_no_camvid_names(tmp_path):
    masks = {"train": [camvid_mask()], "val": [camvid_mask()]}
    write_mmseg(tmp_path / "mmseg", masks)
    write_voc(tmp_path / "VOC2012", masks)
    for root in (tmp_path / "mmseg", tmp_path / "VOC2012"):
        ds = load(root, tmp_path / "cache", ignore_index=11)
        assert ds.num_classes == 11
        assert ds.class_names == [f"class_{k}" for k in range(11)]


def test_given_num_classes_above_the_largest_label(tmp_path):
    write_mmseg(tmp_path / "ds", {"train": SPLIT_MASKS["train"], "val": SPLIT_MASKS["val"]})
    ds = load(tmp_path / "ds", tmp_path / "cache", num_classes=5)
    assert ds.num_classes == 5
    assert ds.class_names == [f"class_{k}" for k in range(5)]
    assert ds.class_frequency == pytest.approx(EXPECTED_FREQUENCY + [0.0, 0.0])


# --------------------------------------------------------------------------- rocks-voc
def _list_ids(rocks: Path, split: str) -> list[str]:
    text = (rocks / "VOC2007" / "ImageSets" / "Segmentation" / f"{split}.txt").read_text()
    return [line.split()[0] for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rocks(rocks_voc, cache_dir):
    return load_dataset(str(rocks_voc), image_size=(64, 64), cache_dir=cache_dir)


def test_rocks_voc_counts_match_the_list_files(rocks, rocks_voc):
    assert rocks.layout == "voc"
    sizes = {name: len(split) for name, split in rocks.splits.items()}
    assert sizes == {split: len(_list_ids(rocks_voc, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 707, "val": 23, "test": 26}  # the shipped lists (its README says 22/25)
    for name, split in rocks.splits.items():
        assert split.ids == _list_ids(rocks_voc, name)
        assert split.images.shape == (sizes[name], 3, 64, 64)


def test_rocks_voc_classes_and_frequencies(rocks):
    assert rocks.num_classes == 4
    assert rocks.class_names == ["class_0", "class_1", "class_2", "class_3"]
    for split in rocks.splits.values():
        assert labels_of(split.masks) <= {0, 1, 2, 3}  # no void in this set
    freq = rocks.class_frequency
    assert sum(freq) == pytest.approx(1.0)
    assert freq[2] == pytest.approx(0.82, abs=0.02)
    assert freq[3] == pytest.approx(0.025, abs=0.01)


# --------------------------------------------------------------------------- decode-once cache
@pytest.fixture
def count_opens(monkeypatch):
    """Count PIL.Image.open calls (the loader decodes in threads; list.append is atomic)."""
    opened: list[str] = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def test_second_load_comes_from_cache_without_opening_a_file(tmp_path, count_opens, monkeypatch):
    write_voc(tmp_path / "VOC2007")
    first = load(tmp_path / "VOC2007", tmp_path / "cache")
    assert not first.from_cache
    assert len(count_opens) == 2 * 6  # every image and mask decoded exactly once
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    count_opens.clear()
    second = load(tmp_path / "VOC2007", tmp_path / "cache")
    assert second.from_cache
    assert count_opens == []
    assert "cache" in second.describe()
    assert second.summary() == first.summary()
    for name in first.splits:
        assert torch.equal(second.splits[name].images, first.splits[name].images)
        assert torch.equal(second.splits[name].masks, first.splits[name].masks)
        assert second.splits[name].ids == first.splits[name].ids

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached load opened an image file")

    monkeypatch.setattr(Image, "open", no_decoding)
    assert load(tmp_path / "VOC2007", tmp_path / "cache").from_cache


def test_changed_mtime_invalidates_the_cache(tmp_path, count_opens):
    write_voc(tmp_path / "VOC2007")
    load(tmp_path / "VOC2007", tmp_path / "cache")
    mask = tmp_path / "VOC2007" / "SegmentationClass" / "train_0.png"
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, new mtime
    count_opens.clear()
    again = load(tmp_path / "VOC2007", tmp_path / "cache")
    assert not again.from_cache
    assert len(count_opens) == 2 * 6


def test_changed_size_invalidates_the_cache(tmp_path):
    write_voc(tmp_path / "VOC2007")
    load(tmp_path / "VOC2007", tmp_path / "cache")
    mask = tmp_path / "VOC2007" / "SegmentationClass" / "train_0.png"
    st = mask.stat()
    write_mask(mask, np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3)  # noisier: a different file size
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the size tells
    assert mask.stat().st_size != st.st_size
    again = load(tmp_path / "VOC2007", tmp_path / "cache")
    assert not again.from_cache
    assert torch.equal(again.splits["train"].masks[0], torch.from_numpy(np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3).byte())


def test_each_image_size_has_its_own_cache_entry(tmp_path):
    write_voc(tmp_path / "VOC2007")
    small = load(tmp_path / "VOC2007", tmp_path / "cache", image_size=(32, 32))
    large = load(tmp_path / "VOC2007", tmp_path / "cache", image_size=(64, 96))
    assert not small.from_cache and not large.from_cache
    assert large.splits["train"].images.shape == (3, 3, 64, 96)
    assert large.splits["train"].masks.shape == (3, 64, 96)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    again_small = load(tmp_path / "VOC2007", tmp_path / "cache", image_size=(32, 32))
    again_large = load(tmp_path / "VOC2007", tmp_path / "cache", image_size=(64, 96))
    assert again_small.from_cache and again_small.splits["train"].images.shape[-2:] == (32, 32)
    assert again_large.from_cache and again_large.image_size == (64, 96)


# --------------------------------------------------------------------------- working size
def _single_pair_dataset(root: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    write_stem_pairs(root / "train", root / "trainannot", "train", [mask])
    write_stem_pairs(root / "val", root / "valannot", "val", [mask])
    for split in ("train", "val"):  # replace the gradient with the test pattern (PNG: lossless)
        Image.fromarray(image, "RGB").save(root / split / f"{split}_0.png")
    return root


@pytest.mark.parametrize(
    "pattern, native, size, expected",
    [
        # 1-px checkerboard halved: every output pixel averages black and white.
        ("checkerboard", 64, 32, 127.5),
        # A white line every 4th column, quartered: an antialiased filter averages it to 255/4;
        # point-sampled bilinear (or nearest) lands between or on the black columns and gives 0.
        ("lines", 128, 32, 63.75),
    ],
)
def test_images_are_resized_bilinear_with_antialias(tmp_path, pattern, native, size, expected):
    yy, xx = np.mgrid[:native, :native]
    on = (xx + yy) % 2 == 0 if pattern == "checkerboard" else xx % 4 == 0
    image = np.repeat((on * 255).astype(np.uint8)[..., None], 3, -1)
    root = _single_pair_dataset(tmp_path / "ds", image, np.zeros((native, native), np.uint8))
    ds = load(root, tmp_path / "cache", image_size=(size, size))
    out = ds.splits["train"].images[0].float()
    assert out.shape == (3, size, size)
    # borders see a clipped filter; the interior must be uniformly the average
    interior = out[:, 2:-2, 2:-2]
    assert (interior - expected).abs().max() <= 2, interior.unique()


def test_masks_are_resized_nearest(tmp_path):
    rng = np.random.default_rng(0)
    blocks = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), size=(SIZE, SIZE))
    mask = blocks.repeat(2, 0).repeat(2, 1)  # 64x64, constant 2x2 blocks
    root = _single_pair_dataset(tmp_path / "ds", gradient_image(64, 64), mask)
    ds = load(root, tmp_path / "cache", image_size=(SIZE, SIZE))
    out = ds.splits["train"].masks[0]
    assert labels_of(out) <= {0, 1, 2, 3, 255}  # an interpolating resize would invent labels
    assert torch.equal(out, torch.from_numpy(blocks))


# --------------------------------------------------------------------------- --val-fraction
def _indexed_train_only(root: Path, n: int = 8) -> Path:
    """mmseg train split only; image i is flat grey 20*i and its mask is all label i % 3,
    so a carved split can be checked for images, masks and ids staying aligned."""
    for i in range(n):
        write_image(root / "img_dir" / "train" / f"im{i}.png", np.full((SIZE, SIZE, 3), 20 * i, np.uint8))
        write_mask(root / "ann_dir" / "train" / f"im{i}.png", np.full((SIZE, SIZE), i % 3, np.uint8), "L")
    return root


def test_val_fraction_carves_a_seeded_val_split(tmp_path):
    root = _indexed_train_only(tmp_path / "ds")
    ds = load(root, tmp_path / "cache", val_fraction=0.25)
    train, val = ds.splits["train"], ds.splits["val"]
    assert (len(train), len(val)) == (6, 2)
    assert set(train.ids).isdisjoint(val.ids)
    assert set(train.ids) | set(val.ids) == {f"im{i}" for i in range(8)}
    for split in (train, val):
        for id_, image, mask in zip(split.ids, split.images, split.masks):
            i = int(id_[2:])
            assert int(image.float().mean()) == 20 * i
            assert labels_of(mask) == {i % 3}
    again = load(root, None, val_fraction=0.25)  # decoded again, not cached
    assert not again.from_cache
    assert again.splits["val"].ids == val.ids and again.splits["train"].ids == train.ids


def test_missing_val_split_needs_val_fraction(tmp_path):
    root = _indexed_train_only(tmp_path / "ds")
    with pytest.raises(AblateError, match="--val-fraction") as info:
        load(root, tmp_path / "cache")
    assert "no val split" in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_val_fraction_outside_zero_one_is_an_error(tmp_path, fraction):
    root = _indexed_train_only(tmp_path / "ds")
    with pytest.raises(AblateError, match="--val-fraction"):
        load(root, tmp_path / "cache", val_fraction=fraction)


def test_val_fraction_leaving_no_training_image_is_an_error(tmp_path):
    root = _indexed_train_only(tmp_path / "ds", n=2)
    with pytest.raises(AblateError, match="--val-fraction 0.9 leaves no training images"):
        load(root, tmp_path / "cache", val_fraction=0.9)


# --------------------------------------------------------------------------- bad input
@dataclass(frozen=True)
class BadInput:
    """One broken dataset or option: `build(tmp_path)` writes the data and returns the --data
    path and the strings the error message must contain."""

    build: Callable[[Path], tuple[Path, list[str]]]
    options: dict = field(default_factory=dict)  # load_dataset keywords; test_cli_data maps them to flags


def _voc(tmp: Path, split_masks=SPLIT_MASKS) -> Path:
    return write_voc(tmp / "ds" / "VOC2007", split_masks)


def _missing_path(tmp):
    return tmp / "nope", ["--data", str(tmp / "nope")]


def _unrecognized(tmp):
    write_image(tmp / "ds" / "images" / "a.jpg", gradient_image())
    return tmp / "ds", ["unrecognized dataset layout", "accepted layouts", "PASCAL VOC", "mmsegmentation", "CamVid"]


def _id_without_image(tmp):
    year = _voc(tmp)
    write_mask(year / "SegmentationClass" / "ghost.png", MASK_A)
    with open(year / "ImageSets" / "Segmentation" / "train.txt", "a") as f:
        f.write("ghost\n")
    return tmp / "ds", ["train.txt", "'ghost'", "no image"]


def _id_without_mask(tmp):
    year = _voc(tmp)
    write_image(year / "JPEGImages" / "ghost.jpg", gradient_image())
    with open(year / "ImageSets" / "Segmentation" / "val.txt", "a") as f:
        f.write("ghost\n")
    return tmp / "ds", ["val.txt", "ghost.png", "no mask"]


def _image_without_mask(tmp):
    root = write_mmseg(tmp / "ds")
    write_image(root / "img_dir" / "val" / "extra.png", gradient_image())
    return root, ["extra.png", "no mask"]


def _size_mismatch(tmp):
    year = _voc(tmp)
    write_mask(year / "SegmentationClass" / "train_1.png", np.zeros((16, 24), np.uint8))
    return tmp / "ds", ["train_1.png", "24x16"]


def _label_above_given_k(tmp):
    val = MASK_A.copy()
    val[0, 0] = 7
    _voc(tmp, {"train": [MASK_A], "val": [MASK_B, val]})
    return tmp / "ds", ["val_1.png", "label 7", "--num-classes 3"]


def _label_above_inferred_k(tmp):
    test = MASK_A.copy()
    test[5, 5] = 9
    _voc(tmp, {"train": [MASK_A], "val": [MASK_A], "test": [test]})
    return tmp / "ds", ["test_0.png", "label 9"]


def _garbage_image(tmp):
    year = _voc(tmp)
    (year / "JPEGImages" / "train_2.jpg").write_bytes(b"\x00not a jpeg at all" * 20)
    return tmp / "ds", ["train_2.jpg", "cannot read image"]


def _truncated_image(tmp):
    year = _voc(tmp)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), np.uint8)).save(buf, "JPEG")
    (year / "JPEGImages" / "val_0.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return tmp / "ds", ["val_0.jpg", "cannot read image"]


def _garbage_mask(tmp):
    year = _voc(tmp)
    (year / "SegmentationClass" / "train_0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return tmp / "ds", ["train_0.png", "cannot read mask"]


def _colour_mask(tmp):
    year = _voc(tmp)
    Image.fromarray(gradient_image()).save(year / "SegmentationClass" / "val_1.png")
    return tmp / "ds", ["val_1.png", "not an index mask"]


def _empty_list_file(tmp):
    year = _voc(tmp)
    (year / "ImageSets" / "Segmentation" / "train.txt").write_text("\n")
    return tmp / "ds", ["train split", "empty"]


def _empty_folder(tmp):
    root = write_camvid(tmp / "ds", {"train": SPLIT_MASKS["train"]})
    (root / "val").mkdir()
    (root / "valannot").mkdir()
    return root, ["val split", "empty"]


def _all_void(tmp):
    void = np.full((SIZE, SIZE), 255, np.uint8)
    _voc(tmp, {"train": [void, void], "val": [MASK_A]})
    return tmp / "ds", ["ignore label", "--num-classes"]


def _short_classes_file(tmp):
    root = write_mmseg(tmp / "ds")
    (root / "classes.txt").write_text("rock\nsand\n")
    return root, ["classes.txt", "2 class names", "3 classes"]


def _with_stray(mask: np.ndarray, value: int) -> np.ndarray:
    """`mask` with a 4x4 patch of `value` in its corner."""
    out = mask.copy()
    out[:4, :4] = value
    return out


def _stray_label(tmp):
    # 0..2 in every mask, and a 4x4 patch of 200 (neither a class nor void 255) in one training mask
    root = write_mmseg(tmp / "ds", {"train": [MASK_A, _with_stray(MASK_A, 200), MASK_A], "val": [MASK_A, MASK_B]})
    return root, [f"{root}: 1 of 5 masks holds label 200 outside labels 0..2", "none holds 3..199",
                  "ann_dir/train/train_1.png;", "--ignore-index 200", "--num-classes 201"]


def _stray_label_with_classes_file(tmp):
    root, _ = _stray_label(tmp)
    (root / "classes.txt").write_text("rock\nsand\nwater\n")
    return root, ["1 of 5 masks holds label 200 outside labels 0..2, the 3 class names of classes.txt",
                  "ann_dir/train/train_1.png;", "--ignore-index 200", "add the missing names"]


def _gap_in_the_labels(tmp):
    # 0..2 and 5 but never 3 or 4: sparse classes must be declared (--num-classes 6)
    sparse = _with_stray(MASK_A, 5)
    root = write_mmseg(tmp / "ds", {"train": [sparse, sparse, MASK_A, sparse, sparse], "val": [sparse]})
    return root, ["5 of 6 masks hold label 5 outside labels 0..2", "(none holds 3..4)",
                  "ann_dir/train/train_0.png, ann_dir/train/train_1.png, ann_dir/train/train_3.png and 2 more;",
                  "--num-classes 6", "--ignore-index 5"]


def _ok_voc(needles):
    return lambda tmp: (_voc(tmp).parent, needles)


BAD_INPUTS: dict[str, BadInput] = {
    "missing path": BadInput(_missing_path),
    "unrecognized layout": BadInput(_unrecognized),
    "split id without image": BadInput(_id_without_image),
    "split id without mask": BadInput(_id_without_mask),
    "image without mask": BadInput(_image_without_mask),
    "image/mask size mismatch": BadInput(_size_mismatch),
    "label >= given num_classes": BadInput(_label_above_given_k, {"num_classes": 3}),
    "label >= inferred num_classes": BadInput(_label_above_inferred_k),
    "garbage image": BadInput(_garbage_image),
    "truncated image": BadInput(_truncated_image),
    "garbage mask": BadInput(_garbage_mask),
    "colour mask": BadInput(_colour_mask),
    "empty split list": BadInput(_empty_list_file),
    "empty split folder": BadInput(_empty_folder),
    "all-void training masks": BadInput(_all_void),
    "classes.txt too short": BadInput(_short_classes_file),
    "stray label, classes inferred": BadInput(_stray_label),
    "stray label, classes.txt": BadInput(_stray_label_with_classes_file),
    "gap in the labels": BadInput(_gap_in_the_labels),
    "image size not divisible by 32": BadInput(_ok_voc(["--image-size", "divisible by 32", "48x64"]), {"image_size": (48, 64)}),
    "zero image size": BadInput(_ok_voc(["--image-size", "positive"]), {"image_size": (0, 64)}),
    "negative image size": BadInput(_ok_voc(["--image-size", "positive", "-32"]), {"image_size": (-32, -32)}),
    "zero num_classes": BadInput(_ok_voc(["--num-classes: expected an integer >= 1", "got 0"]), {"num_classes": 0}),
    "negative num_classes": BadInput(_ok_voc(["--num-classes: expected an integer >= 1", "got -2"]), {"num_classes": -2}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_ablate_error_naming_the_culprit(tmp_path, case):
    bad = BAD_INPUTS[case]
    data, needles = bad.build(tmp_path)
    options = {"image_size": (64, 64), **bad.options}
    with pytest.raises(AblateError) as info:
        load_dataset(str(data), cache_dir=tmp_path / "cache", **options)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing cached


# --------------------------------------------------------------------------- the class set
def test_a_stray_label_is_one_line_naming_the_mask_the_value_and_the_fixes(tmp_path):
    root, _ = _stray_label(tmp_path)
    with pytest.raises(AblateError) as info:
        load(root, tmp_path / "cache")
    assert str(info.value) == (
        f"{root}: 1 of 5 masks holds label 200 outside labels 0..2, the classes the training masks use from 0 "
        "without a gap (none holds 3..199): ann_dir/train/train_1.png; if 200 is void pass --ignore-index 200, "
        "if it is a class pass --num-classes 201, else fix the mask")
    assert not (tmp_path / "cache").exists()


def test_a_stray_label_in_val_is_named_too(tmp_path):
    root = write_mmseg(tmp_path / "ds", {"train": [MASK_A], "val": [MASK_A, _with_stray(MASK_B, 200)]})
    with pytest.raises(AblateError, match=r"1 of 3 masks holds label 200 .*: ann_dir/val/val_1\.png; "):
        load(root, tmp_path / "cache")


@pytest.mark.parametrize("options, k", [({"ignore_index": 200}, 3), ({"num_classes": 201}, 201)])
def test_a_stray_label_declared_void_or_a_class_loads(tmp_path, options, k):
    # no 255 here: with --ignore-index 200 a 255 would be a label, and too large
    root = write_mmseg(tmp_path / "ds", {"train": [MASK_A, _with_stray(MASK_A, 200)], "val": [MASK_A]})
    ds = load(root, tmp_path / "cache", **options)
    assert ds.num_classes == k
    patch = ds.splits["train"].masks[1, :4, :4]
    assert set(patch.unique().tolist()) == ({255} if "ignore_index" in options else {200})


def test_sparse_classes_load_once_declared(tmp_path):
    root, _ = _gap_in_the_labels(tmp_path)
    ds = load(root, tmp_path / "cache", num_classes=6)
    assert ds.num_classes == 6
    assert ds.class_frequency[3] == ds.class_frequency[4] == 0.0 and ds.class_frequency[5] > 0


def test_a_rare_class_that_continues_the_run_is_a_class(tmp_path):
    # label 3 in one mask of four, right after 0..2: a rare class, not a stray
    root = write_mmseg(tmp_path / "ds", {"train": [MASK_A, _with_stray(MASK_A, 3), MASK_A], "val": [MASK_A]})
    assert load(root, tmp_path / "cache").num_classes == 4


def test_classes_txt_bounds_the_labels_and_the_masks_set_the_count(tmp_path):
    # 4 names; the training masks use 0..2 and only val holds 3: within classes.txt, so not refused
    root = write_mmseg(tmp_path / "ds", {"train": [MASK_A], "val": [_with_stray(MASK_A, 3)]})
    (root / "classes.txt").write_text("rock\nsand\nwater\nsky\n")
    ds = load(root, tmp_path / "cache")
    assert ds.num_classes == 4 and ds.class_names == ["rock", "sand", "water", "sky"]
    # a trailing name no mask uses (CamVid's "void", mapped to 255 by --ignore-index) adds no class
    (root / "classes.txt").write_text("rock\nsand\nwater\nsky\nvoid\n")
    ds = load(root, tmp_path / "cache")
    assert ds.num_classes == 4 and ds.class_names == ["rock", "sand", "water", "sky"]

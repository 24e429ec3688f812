"""Data stage: detect a dataset layout, decode every image and mask once into uint8 tensors
at the working size, validate them, and cache the result on disk.

Internally void is always 255 (a source's own ignore label, e.g. CamVid's 11, is mapped to
it), images are uint8 [N, 3, H, W] and masks uint8 [N, H, W]. The val and test splits also
keep every mask at its own (native) resolution, for the final metrics.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ablate import _io
from ablate.config import check_data_options
from ablate.errors import AblateError
from ablate.labels import VOID, check_labels, class_set, held_labels, read_names, shown

SPLITS = ("train", "val", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CACHE_VERSION = "5"  # 3: native-resolution val/test masks; 4: the class-set check (ablate.labels); 5: CamVid names
VAL_SPLIT_SEED = 0  # fixed, so every seed of a grid is scored on the same carved-out val set
LAYOUTS = (
    "PASCAL VOC (VOCdevkit/ or VOC2007|VOC2012 with JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)",
    "mmsegmentation (img_dir/{train,val,test}/ and ann_dir/{train,val,test}/)",
    "SegNet/CamVid ({train,val,test}/ and {train,val,test}annot/)",
)
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
# The SegNet CamVid layout's 11 classes, in label order (its label 11 is void: --ignore-index 11).
CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
    "Bicyclist",
)


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    masks: torch.Tensor  # uint8 [N, H, W], VOID = 255
    ids: list[str]
    # each mask at the resolution the dataset gives it (uint8 [h_i, w_i], VOID = 255; sizes may
    # differ): kept for val and test, where the final metrics are computed; None for train
    native_masks: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def scored_natively(splits: dict[str, Split]) -> bool:
    """Whether final metrics are scored on the masks' own resolution: when every split but
    train kept them (a Dataset built by hand may not: then at the working size)."""
    return all(s.native_masks is not None for name, s in splits.items() if name != "train")


@dataclass
class Dataset:
    name: str  # "synthetic" or the folder given
    layout: str  # synthetic | voc | mmseg | camvid
    image_size: tuple[int, int]
    num_classes: int
    class_names: list[str]
    ignore_index: int  # the source's void label (mapped to 255 here)
    splits: dict[str, Split]
    fingerprint: str  # hash of the source files (paths, sizes, mtimes) or generator version
    class_frequency: list[float] = field(default_factory=list)  # train pixels per class, void excluded
    from_cache: bool = False
    load_seconds: float = 0.0

    def summary(self) -> dict:
        """What a run record says about its data."""
        return {
            "name": self.name,
            "layout": self.layout,
            "fingerprint": self.fingerprint,
            "image_size": list(self.image_size),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "ignore_index": self.ignore_index,
            "sizes": {name: len(split) for name, split in self.splits.items()},
            "class_frequency": self.class_frequency,
            # per split, fraction of non-void pixels of each class in the masks its final metrics
            # are scored on (val and test: the native ones where kept, as `engine.fit` scores
            # them); the val one sets the "did not learn" bar (the majority class's share and an
            # all-majority mIoU), which a model predicting only the majority class must not pass
            "split_class_frequency": self.scored_frequency,
        }

    @functools.cached_property
    def scored_frequency(self) -> dict[str, list[float]]:
        """Split name -> class shares of the masks its final metrics are scored on (computed
        once: every run record carries the summary)."""
        native = scored_natively(self.splits)
        return {name: class_frequency(split.native_masks if native and name != "train" else [split.masks],
                                      self.num_classes).tolist()
                for name, split in self.splits.items()}

    def describe(self) -> str:
        sizes = ", ".join(f"{name} {len(s)}" for name, s in self.splits.items())
        if "test" not in self.splits:
            sizes += " (no test split: test metrics will be absent)"
        freq = ", ".join(f"{n} {f:.1%}" for n, f in zip(self.class_names, self.class_frequency))
        source = "cache" if self.from_cache else "decoded"
        return (
            f"data: {self.name} [{self.layout}] {sizes}; {self.image_size[0]}x{self.image_size[1]} px; "
            f"{self.num_classes} classes; {source} in {self.load_seconds:.1f}s\n"
            f"class pixel frequency (train): {freq}"
        )


# --------------------------------------------------------------------------- layouts
@dataclass
class _Source:
    layout: str
    root: Path
    pairs: dict[str, list[tuple[str, Path, Path]]]  # split -> [(id, image, mask)]
    class_names_file: Path | None


def detect_layout(path: Path) -> _Source:
    """Find which of the supported layouts `path` is, and list its (image, mask) pairs."""
    if not path.exists():
        raise AblateError(f"--data: path not found: {path} (give a dataset folder or 'synthetic')")
    if not path.is_dir():
        raise AblateError(f"--data: {path} is not a folder (give a dataset folder or 'synthetic')")
    voc = _voc_root(path)
    if voc is not None:
        return _Source("voc", voc, _voc_pairs(voc), _classes_file(voc, voc.parent, path))
    if (path / "img_dir").is_dir() and (path / "ann_dir").is_dir():
        pairs = {s: _stem_pairs(path / "img_dir" / s, path / "ann_dir" / s) for s in SPLITS if (path / "img_dir" / s).is_dir()}
        return _Source("mmseg", path, pairs, _classes_file(path))
    if (path / "train").is_dir() and (path / "trainannot").is_dir():
        pairs = {s: _stem_pairs(path / s, path / f"{s}annot") for s in SPLITS if (path / s).is_dir()}
        return _Source("camvid", path, pairs, _classes_file(path))
    raise AblateError(f"--data: unrecognized dataset layout in {path}; accepted layouts: " + "; ".join(LAYOUTS))


def _voc_root(path: Path) -> Path | None:
    def is_voc(p: Path) -> bool:
        return (p / "JPEGImages").is_dir() and (p / "SegmentationClass").is_dir()

    if is_voc(path):
        return path
    base = path / "VOCdevkit" if (path / "VOCdevkit").is_dir() else path
    years = sorted(p for p in base.glob("VOC20*") if is_voc(p))
    if len(years) > 1:
        raise AblateError(f"--data: {base} holds several VOC years ({', '.join(p.name for p in years)}); point --data at one of them")
    return years[0] if years else None


def _voc_pairs(root: Path) -> dict[str, list[tuple[str, Path, Path]]]:
    sets = root / "ImageSets" / "Segmentation"
    if not sets.is_dir():
        raise AblateError(f"--data: {sets} is missing; a VOC dataset needs ImageSets/Segmentation/train.txt and val.txt")
    pairs = {}
    for split in SPLITS:
        list_file = sets / f"{split}.txt"
        if not list_file.is_file():
            continue
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        rows = []
        for id_ in ids:
            image = _find_image(root / "JPEGImages", id_)
            mask = root / "SegmentationClass" / f"{id_}.png"
            if image is None:
                raise AblateError(f"{list_file}: id '{id_}' has no image in {root / 'JPEGImages'}; fix the list or add the image")
            if not mask.is_file():
                raise AblateError(f"{list_file}: id '{id_}' has no mask {mask}; fix the list or add the mask")
            rows.append((id_, image, mask))
        pairs[split] = rows
    return pairs


def _find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _stem_pairs(image_dir: Path, mask_dir: Path) -> list[tuple[str, Path, Path]]:
    if not mask_dir.is_dir():
        raise AblateError(f"--data: {image_dir} has no mask folder {mask_dir}; add it or remove the split")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    for stem in sorted(set(images) - set(masks)):
        raise AblateError(f"{images[stem]}: no mask with the same name in {mask_dir}; add the mask or remove the image")
    for stem in sorted(set(masks) - set(images)):
        raise AblateError(f"{masks[stem]}: no image with the same name in {image_dir}; add the image or remove the mask")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _classes_file(*roots: Path) -> Path | None:
    for root in roots:
        if (root / "classes.txt").is_file():
            return root / "classes.txt"
    return None


# --------------------------------------------------------------------------- decoding
def _decode_image(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = size
    try:
        with Image.open(path) as im:
            native = im.size  # (W, H)
            im.draft("RGB", (w, h))  # JPEG: let libjpeg decode at a reduced scale when it can
            im = im.convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR, reducing_gap=None)
            return np.asarray(im, dtype=np.uint8), native
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise AblateError(f"{path}: cannot read image ({exc}); replace or remove the file") from None


def _decode_mask(path: Path, size: tuple[int, int], ignore_index: int) -> tuple[np.ndarray, np.ndarray, frozenset[int]]:
    """The mask at the working size and at its own size (void mapped to VOID in both), and the
    non-void labels it holds (for the class-set check, which must name the file)."""
    h, w = size
    try:
        with Image.open(path) as im:
            native = im.size
            if im.mode not in ("P", "L", "I", "I;16"):
                raise AblateError(f"{path}: mask mode {im.mode} is not an index mask; save class indices as a palette (P) or grayscale (L) PNG")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise AblateError(f"{path}: cannot read mask ({exc}); replace or remove the file") from None
    # P and L masks are uint8: a bincount is a single pass, where np.unique would sort every pixel
    held = np.flatnonzero(np.bincount(arr.ravel(), minlength=256)) if arr.dtype == np.uint8 else np.unique(arr)
    labels = frozenset(int(v) for v in held if v != ignore_index)
    if labels and max(labels) > 254:
        raise AblateError(f"{path}: mask label {max(labels)} is too large (labels must be < 255)")
    native = np.where(arr == ignore_index, VOID, arr).astype(np.uint8)
    out = native
    if out.shape != (h, w):
        out = np.asarray(Image.fromarray(native).resize((w, h), Image.NEAREST))
    return out, native, labels


def _decode_split(rows: list[tuple[str, Path, Path]], size: tuple[int, int], ignore_index: int,
                  keep_native: bool) -> tuple[Split, list[tuple[Path, frozenset[int]]]]:
    def one(row):
        id_, image_path, mask_path = row
        image, image_native = _decode_image(image_path, size)
        mask, native, labels = _decode_mask(mask_path, size, ignore_index)
        mask_native = (native.shape[1], native.shape[0])
        if image_native != mask_native:
            raise AblateError(
                f"{mask_path}: mask is {mask_native[0]}x{mask_native[1]} but its image {image_path.name} is "
                f"{image_native[0]}x{image_native[1]}; masks must match their images"
            )
        return image, mask, labels, torch.from_numpy(native) if keep_native else None

    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        decoded = list(pool.map(one, rows))
    images = torch.from_numpy(np.stack([d[0] for d in decoded])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([d[1] for d in decoded]))
    labels = [(row[2], d[2]) for row, d in zip(rows, decoded)]
    native = [d[3] for d in decoded] if keep_native else None
    return Split(images, masks, [row[0] for row in rows], native), labels


# --------------------------------------------------------------------------- public API
def load_dataset(
    data: str = "synthetic",
    *,
    image_size: tuple[int, int] = (64, 64),
    num_classes: int | None = None,
    ignore_index: int = 255,
    val_fraction: float | None = None,
    cache_dir: str | os.PathLike | None = "results/.cache",
) -> Dataset:
    """Load a dataset once into memory, from the on-disk cache when the files have not changed."""
    start = time.perf_counter()
    check_data_options(image_size, num_classes, val_fraction)
    source = None if data == "synthetic" else detect_layout(Path(data))
    identity = _hash(_source_key(source, with_mtimes=False))
    cache_key = _hash([CACHE_VERSION, _source_key(source, with_mtimes=True), list(image_size), num_classes,
                       ignore_index, val_fraction])
    cache_path = Path(cache_dir) / f"{cache_key}.pt" if cache_dir is not None else None

    if cache_path is not None and cache_path.is_file():
        dataset = _read_cache(cache_path)
        dataset.name = data  # the same files may be reached by another path
    else:
        dataset = _build(data, source, image_size, num_classes, ignore_index, val_fraction, identity)
        if cache_path is not None:
            _write_cache(cache_path, dataset)
    dataset.load_seconds = time.perf_counter() - start
    return dataset


def fingerprint(data: str) -> str:
    """A dataset's identity without decoding anything: the generator version for `synthetic`,
    else the layout, relative paths and sizes of its files and its classes.txt. Modification
    times are left out, so a copy on another machine keeps the same identity (and the same grid
    cell ids); they are part of the cache key instead, so an edited file is decoded again."""
    return _hash(_source_key(None if data == "synthetic" else detect_layout(Path(data)), with_mtimes=False))


def _hash(key) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _source_key(source: "_Source | None", *, with_mtimes: bool):
    return _synthetic_key() if source is None else _file_key(source, with_mtimes=with_mtimes)


def _synthetic_key() -> dict:
    from ablate import synthetic

    return {"synthetic": synthetic.GENERATOR_VERSION, "sizes": synthetic.SPLIT_SIZES, "native": synthetic.NATIVE_SIZE}


def _file_key(source: _Source, *, with_mtimes: bool) -> dict:
    files = []
    for split, rows in sorted(source.pairs.items()):
        for id_, image, mask in rows:
            for p in (image, mask):
                st = p.stat()
                entry = (split, str(p.relative_to(source.root)), st.st_size)
                files.append(entry + (st.st_mtime_ns,) if with_mtimes else entry)
    names = source.class_names_file.read_text() if source.class_names_file else None
    return {"layout": source.layout, "files": files, "classes": names}


def _build(data, source, image_size, num_classes, ignore_index, val_fraction, fingerprint) -> Dataset:
    if source is None:
        splits, layout, names_file = _synthetic_splits(image_size), "synthetic", None
        mask_labels = {"train": [(id_, held_labels(m)) for id_, m in zip(splits["train"].ids, splits["train"].masks)]}
    else:
        splits, mask_labels, layout, names_file = {}, {}, source.layout, source.class_names_file
        for split, rows in source.pairs.items():
            if not rows:
                raise AblateError(f"--data: the {split} split of {data} is empty; add images or remove the split")
            # train keeps native masks only when val is to be carved out of it
            keep_native = split != "train" or "val" not in source.pairs
            splits[split], held_by_mask = _decode_split(rows, image_size, ignore_index, keep_native)
            mask_labels[split] = [(shown(path, Path(data)), held) for path, held in held_by_mask]
    if "train" not in splits:
        raise AblateError(f"--data: {data} has no train split")
    if "val" not in splits:
        if val_fraction is None:
            raise AblateError(f"--data: {data} has no val split; add one or pass --val-fraction 0.1 to carve it from train")
        splits["train"], splits["val"] = _carve_val(splits["train"], val_fraction)
    splits["train"].native_masks = None
    splits = {name: splits[name] for name in SPLITS if name in splits}

    train_labels = frozenset().union(*(held for _, held in mask_labels["train"]))
    if num_classes is None and not train_labels:
        raise AblateError(
            f"--data: every training mask pixel of {data} is the ignore label {ignore_index}, so the number of "
            f"classes cannot be inferred; check --ignore-index or pass --num-classes"
        )
    classes = class_set(layout, num_classes, names_file, train_labels, Path(data))
    masks = [m for split in mask_labels.values() for m in split]
    check_labels(data, masks, classes)
    k = max(max(held, default=-1) for _, held in masks) + 1 if classes.count_from_masks else classes.limit
    names = _class_names(layout, k, names_file)
    return Dataset(
        name=data, layout=layout, image_size=tuple(image_size), num_classes=k, class_names=names,
        ignore_index=ignore_index, splits=splits, fingerprint=fingerprint,
        class_frequency=class_frequency([splits["train"].masks], k).tolist(),
    )


def _synthetic_splits(image_size: tuple[int, int]) -> dict[str, Split]:
    from ablate import synthetic

    rendered = {split: synthetic.generate_split(split) for split in SPLITS}
    splits = {}
    for split, (images, masks) in rendered.items():
        images_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        masks_t = torch.from_numpy(masks)
        native = list(masks_t.unbind(0)) if split != "train" else None  # generated at synthetic.NATIVE_SIZE
        splits[split] = Split(*resize_batch(images_t, masks_t, image_size), [f"{split}_{i:04d}" for i in range(len(images))],
                              native)
    return splits


def resize_batch(images: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images bilinear with antialias, masks nearest."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images, masks
    resized = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    images = resized.round_().clamp_(0, 255).to(torch.uint8)
    masks = torch.nn.functional.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(torch.uint8)
    return images, masks


def _carve_val(train: Split, fraction: float) -> tuple[Split, Split]:
    n = len(train)
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise AblateError(f"--val-fraction {fraction} leaves no training images out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values

    def take(idx):
        native = [train.native_masks[i] for i in idx.tolist()] if train.native_masks is not None else None
        return Split(train.images[idx], train.masks[idx], [train.ids[i] for i in idx.tolist()], native)

    return take(train_idx), take(val_idx)


def _class_names(layout: str, k: int, names_file: Path | None) -> list[str]:
    """classes.txt's names; else the known benchmark's where the layout and the class count are
    its own (VOC's 21, the SegNet CamVid layout's 11); else `class_<k>`."""
    if names_file is not None:
        names = read_names(names_file)
        if len(names) < k:
            # only --num-classes can ask for more: without it, classes.txt sets k (labels.class_set)
            raise AblateError(f"{names_file}: lists {len(names)} class names but --num-classes is {k}; add the missing "
                              f"names or pass --num-classes {len(names)}")
        return names[:k]
    if layout == "synthetic":
        from ablate import synthetic

        return synthetic.class_names(k)
    if layout == "voc" and k == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    if layout == "camvid" and k == len(CAMVID_CLASSES):
        return list(CAMVID_CLASSES)
    return [f"class_{i}" for i in range(k)]


def class_frequency(masks: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Fraction of non-void pixels of each class over uint8 mask tensors (native masks differ
    in size: counted one by one, never copied into one wide tensor)."""
    counts = sum(torch.bincount(m.flatten(), minlength=256).double() for m in masks)[:num_classes]
    return counts / counts.sum().clamp(min=1)


# --------------------------------------------------------------------------- cache
def _write_cache(path: Path, ds: Dataset) -> None:
    blob = {
        "meta": json.dumps({
            "name": ds.name, "layout": ds.layout, "image_size": list(ds.image_size), "num_classes": ds.num_classes,
            "class_names": ds.class_names, "ignore_index": ds.ignore_index, "fingerprint": ds.fingerprint,
            "class_frequency": ds.class_frequency, "ids": {k: s.ids for k, s in ds.splits.items()},
        }),
        "tensors": {k: {"images": s.images, "masks": s.masks, **({"native_masks": s.native_masks} if s.native_masks else {})}
                    for k, s in ds.splits.items()},
    }
    _io.torch_save(path, blob)


def _read_cache(path: Path) -> Dataset:
    blob = torch.load(path, weights_only=True)
    meta = json.loads(blob["meta"])
    splits = {k: Split(t["images"], t["masks"], meta["ids"][k], t.get("native_masks")) for k, t in blob["tensors"].items()}
    return Dataset(
        name=meta["name"], layout=meta["layout"], image_size=tuple(meta["image_size"]), num_classes=meta["num_classes"],
        class_names=meta["class_names"], ignore_index=meta["ignore_index"], splits=splits,
        fingerprint=meta["fingerprint"], class_frequency=meta["class_frequency"], from_cache=True,
    )

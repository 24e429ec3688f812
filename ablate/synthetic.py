"""Data stage, embedded dataset: a deterministic synthetic segmentation set in VOC layout.

Sized for a first run on a laptop CPU (`ablate grid`, studies/quick.toml): an 8-wide U-Net
learns it at 32 px in a few hundred steps, and the default study's toggles have effects large
and consistent enough over seeds to be decided at 3 seeds.

Each image is a muted, unevenly lit background with at most one soft-edged distractor patch,
overlapped by three to five large hard-edged textured objects whose hue tells their class
(disc, square, stripe, blob). The rare class, speck, is a small bright cyan sphere (1 to 3 of
them in three images out of four: 1.5% of the train split's labelled pixels), and every image also holds up to
four speck look-alikes drawn the same way, in the same layer, but labelled background: a pixel
that looks like a speck is a speck a little less often than not (45% of such pixels in the
train split). A loss that weighs every pixel alike therefore (almost) never predicts the
class, since background is the likelier label wherever a speck could be; a class-weighted loss
does predict it, finds the real specks and pays with the look-alikes. Measured in the default
study: speck IoU 0.00-0.17 (mean 0.02) without class weights, 0.31-0.42 with them, and test
mIoU +0.048 for the weighted-loss toggle with a seed-to-seed SD of 0.004 — the same on every
seed because it is what a trained model does, not how far training got.

Masks follow VOC: class indices, a 255 void band on every boundary between two objects or an
object and the background, saved as palette PNGs. All geometry lives in unit coordinates, so
a scene rendered at 64 px is the 128 px scene at half resolution.

The loader (`ablate.data`) reads the written layout and looks for `classes.txt` in the
VOC year folder (`<out>/VOC2007/classes.txt`, written here) or in its parent.
"""
from __future__ import annotations

import colorsys
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ablate.errors import AblateError

# Bump whenever the generated pixels, masks or layout change: caches key on it.
GENERATOR_VERSION = "3"

SYNTH_CLASSES: tuple[str, ...] = ("background", "disc", "square", "stripe", "blob", "speck")
NATIVE_SIZE = 128
# A small train split keeps an epoch cheap; test (the headline metric) is twice val, so that
# its mIoU varies less from seed to seed.
SPLIT_SIZES: dict[str, int] = {"train": 160, "val": 48, "test": 96}
VOID = 255

# Object styles, indexed by class - 1. Hues are in [0, 1); the rare style is last, with a hue
# no common class is near, so only its look-alikes make it hard.
_STYLES = ("disc", "square", "stripe", "blob", "speck")
_HUES = (0.0, 0.62, 0.33, 0.12, 0.5)
_OBJECTS_PER_IMAGE = (3, 5)  # inclusive range of large objects per image
_OBJECT_SCALE = 1.8  # large objects' size relative to version 2's (fewer, larger objects: learnable at 32 px)
_SPECK_P = 0.75  # chance an image holds real specks (only when the rare class exists)
_SPECKS_PER_IMAGE = (1, 3)  # inclusive range of real specks in an image that holds them
_LOOKALIKES_PER_IMAGE = (0, 4)  # inclusive range of speck look-alikes (labelled background) per image
_SPECK_RADIUS = (0.08, 0.11)  # unit radius of a speck and of a look-alike: ~3 px at 32 px
_DISTRACTORS = (0, 1)  # inclusive range of soft distractor patches per image
_NOISE_SD = (4.0, 8.0)  # pixel noise SD range (of 255)


def class_names(num_classes: int) -> list[str]:
    """Human-readable names: the built-in names first, then `class_<k>`."""
    _check_num_classes(num_classes)
    return [SYNTH_CLASSES[k] if k < len(SYNTH_CLASSES) else f"class_{k}" for k in range(num_classes)]


def voc_palette(n: int = 256) -> list[int]:
    """The standard PASCAL VOC colour map as a flat [r, g, b, ...] list (index 255 = (224, 224, 192))."""
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def generate_split(
    split: str,
    *,
    n: int | None = None,
    size: int = NATIVE_SIZE,
    num_classes: int = 6,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, H, W, 3] and masks uint8 [N, H, W] (0..K-1, 255 void) of one split.

    Image i depends only on (seed, split, i, size, num_classes): splits are independent
    streams, and a smaller `n` yields a prefix of a larger one.
    """
    if split not in SPLIT_SIZES:
        raise AblateError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_SIZES)}")
    _check_num_classes(num_classes)
    if size < 16:
        raise AblateError(f"synthetic image size must be at least 16 px, got {size}")
    n = SPLIT_SIZES[split] if n is None else n
    if n < 0:
        raise AblateError(f"number of images must be >= 0, got {n}")
    if seed < 0:
        raise AblateError(f"seed must be >= 0, got {seed}")
    return _render_images((zlib.crc32(split.encode("utf-8")), seed, size, num_classes), np.arange(n))


def _render_images(job: tuple[int, int, int, int], indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks number `indices` of a split (`job`: split key, seed, size, classes)."""
    split_key, seed, size, num_classes = job
    images = np.empty((len(indices), size, size, 3), np.uint8)
    masks = np.empty((len(indices), size, size), np.uint8)
    for j, i in enumerate(indices):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, int(i))))
        images[j], masks[j] = _render(rng, size, num_classes)
    return images, masks


def write_voc(
    out_dir: str | os.PathLike, *, num_classes: int = 6, seed: int = 0, size: int = NATIVE_SIZE
) -> Path:
    """Write all splits as `out_dir/VOC2007/{JPEGImages,SegmentationClass,ImageSets/Segmentation}`.

    Also writes `VOC2007/classes.txt` (one name per line). Refuses a non-empty `out_dir`;
    everything is written to a temporary sibling folder first and renamed into place, so
    an interrupted run leaves nothing half-written. Returns the `VOC2007` folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AblateError(f"{out_dir} already exists and is not empty; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
    try:
        year = tmp / "VOC2007"
        jpeg_dir, mask_dir = year / "JPEGImages", year / "SegmentationClass"
        sets_dir = year / "ImageSets" / "Segmentation"
        for folder in (jpeg_dir, mask_dir, sets_dir):
            folder.mkdir(parents=True)
        palette = voc_palette(256)
        for split in SPLIT_SIZES:
            images, masks = generate_split(split, size=size, num_classes=num_classes, seed=seed)
            ids = [f"{split}_{i:04d}" for i in range(len(images))]
            for image_id, image, mask in zip(ids, images, masks):
                Image.fromarray(image, "RGB").save(jpeg_dir / f"{image_id}.jpg", quality=95, subsampling=0)
                png = Image.fromarray(mask, "L").convert("P")
                png.putpalette(palette)
                png.save(mask_dir / f"{image_id}.png")
            (sets_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        (year / "classes.txt").write_text("\n".join(class_names(num_classes)) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "VOC2007"


# --------------------------------------------------------------------------- rendering


def _check_num_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= 255:
        raise AblateError(f"num_classes must be between 2 and 255 (255 is void), got {num_classes}")


def _render(rng: np.random.Generator, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (float work, uint8 out) and its mask with the void band."""
    image = _background(rng, size)
    instances = np.zeros((size, size), np.int32)  # 0 = background, j = j-th object drawn
    classes = [0]
    for j, (cls, style) in enumerate(_scene(rng, num_classes), start=1):
        window, mask = _paint(rng, image, _class_hue(cls) if cls else _HUES[-1], style, size)
        instances[window][mask] = j if cls else 0  # a look-alike (class 0) is background
        classes.append(cls)

    # Uneven lighting and sensor noise, applied over everything.
    yy, xx = _unit_grid(size, slice(0, size), slice(0, size))
    gx, gy = rng.uniform(-0.2, 0.2, 2)
    image *= (1.0 + gx * (xx - 0.5) + gy * (yy - 0.5))[..., None]
    image += rng.normal(0.0, rng.uniform(*_NOISE_SD), image.shape)
    mask = np.asarray(classes, np.uint8)[instances]
    mask[_boundary_band(instances, width=max(1, round(2 * size / NATIVE_SIZE)))] = VOID
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def _paint(rng: np.random.Generator, image: np.ndarray, hue: float, style: str,
           size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Paint one textured object of `style` in (about) `hue` into `image`; its window and mask."""
    rgb = _object_colour(rng, hue, style)
    window, mask, texture = _shape(rng, style, size)
    contrast = rng.uniform(0.35, 0.8)
    shade = rgb * (1.0 - contrast / 2 + contrast * texture[..., None])
    image[window][mask] = shade[mask]
    return window, mask


def _scene(rng: np.random.Generator, num_classes: int) -> list[tuple[int, str]]:
    """(class, style) per object in painter's order: the specks and their look-alikes (class 0)
    first, shuffled together, so that nothing but their number tells them apart, then the
    large objects.

    Class 5 is the rare speck; with fewer than six classes there is none (and no look-alike),
    and classes beyond six are common ones.
    """
    rare = 5 if num_classes > 5 else None
    common = [k for k in range(1, num_classes) if k != rare]
    picks = rng.choice(common, rng.integers(*_OBJECTS_PER_IMAGE, endpoint=True))
    objects = [(int(k), _style(int(k))) for k in picks]
    if rare is None:
        return objects
    real = int(rng.integers(*_SPECKS_PER_IMAGE, endpoint=True)) if rng.random() < _SPECK_P else 0
    fake = int(rng.integers(*_LOOKALIKES_PER_IMAGE, endpoint=True))
    specks = [(rare, "speck")] * real + [(0, "speck")] * fake
    rng.shuffle(specks)
    return specks + objects


def _style(cls: int) -> str:
    # Classes beyond the built-in five reuse the four common styles with their own hue.
    return _STYLES[cls - 1] if cls <= len(_STYLES) else _STYLES[(cls - 1) % 4]


def _class_hue(cls: int) -> float:
    if cls <= len(_HUES):
        return _HUES[cls - 1]
    return (0.5 + cls * 0.618034) % 1.0


def _object_colour(rng: np.random.Generator, hue: float, style: str) -> np.ndarray:
    hue = (hue + rng.uniform(-0.04, 0.04)) % 1.0
    sat = rng.uniform(0.45, 0.9)
    val = rng.uniform(0.6, 1.0) if style == "speck" else rng.uniform(0.45, 0.9)
    return np.asarray(colorsys.hsv_to_rgb(hue, sat, val)) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted low-frequency colour noise, fine grain, and soft distractor patches."""
    base = np.asarray(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.7))) * 255
    image = base * (0.75 + 0.5 * _value_noise(rng, size, size, cells=int(rng.integers(2, 6)), channels=3))
    image += 25.0 * (_value_noise(rng, size, size, cells=max(2, size // 6), channels=1) - 0.5)
    yy, xx = _unit_grid(size, slice(0, size), slice(0, size))
    for _ in range(int(rng.integers(*_DISTRACTORS, endpoint=True))):
        # A soft-edged ellipse textured like an object class, but blended, not pasted:
        # hue and texture alone are not enough, the crisp edge and contrast matter too.
        cy, cx = rng.uniform(0.0, 1.0, 2)
        a, b = rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.3)
        theta = rng.uniform(0, np.pi)
        u, v = _rotate(xx - cx, yy - cy, theta)
        alpha = rng.uniform(0.25, 0.55) * np.exp(-((u / a) ** 2 + (v / b) ** 2) * 2.0)
        style = _STYLES[int(rng.integers(0, 4))]
        hue = _HUES[int(rng.integers(0, 4))] if rng.random() < 0.5 else rng.random()
        colour = np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.2, 0.6), rng.uniform(0.4, 0.8))) * 255
        texture = _texture(rng, style, u, v, a)
        patch = colour * (0.7 + 0.6 * texture[..., None])
        image = image * (1 - alpha[..., None]) + patch * alpha[..., None]
    return image


def _shape(
    rng: np.random.Generator, style: str, size: int
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Pixel window, boolean mask within it, and texture in [0, 1] of one object."""
    theta = rng.uniform(0, np.pi)
    k = _OBJECT_SCALE
    if style == "disc":
        a = rng.uniform(0.07, 0.2) * k
        axes, extent = (a, a * rng.uniform(0.75, 1.0)), a
    elif style == "square":
        a = rng.uniform(0.07, 0.18) * k
        axes, extent = (a, a * rng.uniform(0.7, 1.0)), a * np.sqrt(2)
    elif style == "stripe":
        a = rng.uniform(0.15, 0.4) * k
        axes, extent = (a, rng.uniform(0.035, 0.07) * k), a * 1.02
    elif style == "blob":
        a = rng.uniform(0.08, 0.2) * k
        harmonics = [(h, rng.uniform(0, 0.18), rng.uniform(0, 2 * np.pi)) for h in (2, 3, 4)]
        axes, extent = (a, a), a * (1 + sum(h[1] for h in harmonics))
    else:  # speck
        a = rng.uniform(*_SPECK_RADIUS)
        axes, extent = (a, a), a
    # Objects near the edge get cut by the frame, as in photos.
    cy, cx = rng.uniform(0.05, 0.95, 2)
    window = (_span(cy, extent, size), _span(cx, extent, size))
    yy, xx = _unit_grid(size, *window)
    u, v = _rotate(xx - cx, yy - cy, theta)
    a, b = axes
    if style in ("disc", "speck"):
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    elif style in ("square", "stripe"):
        mask = (np.abs(u) <= a) & (np.abs(v) <= b)
    else:
        phi = np.arctan2(v, u)
        radius = a * (1 + sum(amp * np.cos(k * phi + phase) for k, amp, phase in harmonics))
        mask = np.hypot(u, v) <= radius
    return window, mask, _texture(rng, style, u, v, a)


def _texture(rng: np.random.Generator, style: str, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Per-style texture in [0, 1] in the object's own (rotated) coordinates."""
    if style == "disc":  # concentric rings
        period, phase = rng.uniform(0.05, 0.08), rng.uniform(0, 2 * np.pi)
        return 0.5 + 0.5 * np.cos(2 * np.pi * np.hypot(u, v) / period + phase)
    if style == "square":  # checkerboard
        cell = rng.uniform(0.035, 0.06)
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float64)
    if style == "stripe":  # bars across the long axis
        period, phase = rng.uniform(0.05, 0.08), rng.uniform(0, 2 * np.pi)
        return 0.5 + 0.5 * np.cos(2 * np.pi * u / period + phase)
    if style == "blob":  # mottled
        return _value_noise(rng, *u.shape, cells=max(2, round(scale / 0.02)), channels=1)[..., 0]
    return np.clip(1.0 - np.hypot(u, v) / scale, 0.0, 1.0)  # speck: bright centre


def _value_noise(rng: np.random.Generator, h: int, w: int, *, cells: int, channels: int) -> np.ndarray:
    """Smooth noise in [0, 1], shape [h, w, channels]: a random lattice, smoothstep-interpolated."""
    lattice = rng.random((cells + 1, cells + 1, channels))
    ys = (np.arange(h) + 0.5) * cells / h
    xs = (np.arange(w) + 0.5) * cells / w
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = ys - y0, xs - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None, None], (fx * fx * (3 - 2 * fx))[None, :, None]
    top = lattice[y0][:, x0] * (1 - fx) + lattice[y0][:, x0 + 1] * fx
    bottom = lattice[y0 + 1][:, x0] * (1 - fx) + lattice[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _boundary_band(instances: np.ndarray, *, width: int) -> np.ndarray:
    """A band `width` px wide straddling every boundary between two instances.

    A pixel is void when a pixel of another instance lies within `width // 2` px before
    it or `width - width // 2` px after it (per axis), so an odd width stays one-sided
    and every pair of 4-adjacent pixels from different instances has a void member.
    """
    before, after = width // 2, width - width // 2
    padded = np.pad(instances, ((before, after), (before, after)), mode="edge")
    h, w = instances.shape
    band = np.zeros((h, w), bool)
    for dy in range(width + 1):
        for dx in range(width + 1):
            band |= padded[dy : dy + h, dx : dx + w] != instances
    return band


def _unit_grid(size: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1] of a window, as broadcastable column/row vectors."""
    yy = (np.arange(rows.start, rows.stop) + 0.5)[:, None] / size
    xx = (np.arange(cols.start, cols.stop) + 0.5)[None, :] / size
    return yy, xx


def _span(centre: float, extent: float, size: int) -> slice:
    lo = int(np.clip(np.floor((centre - extent) * size), 0, size - 1))
    hi = int(np.clip(np.ceil((centre + extent) * size) + 1, lo + 1, size))
    return slice(lo, hi)


def _rotate(dx: np.ndarray, dy: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(theta), np.sin(theta)
    return c * dx + s * dy, -s * dx + c * dy

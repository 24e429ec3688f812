"""Augmentation: the batched v2 transform reproduces torchvision's per-sample
flip → rotate → resized-crop chain on tv_tensors, and composes like any v2 transform."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from ablate.data import VOID
from ablate.transforms import AugmentSpec, RandomFlipRotateCrop, affine_matrix, augment_batch, warp_images, warp_masks


def _sample(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth image (so two bilinear resamplings stay close to one) and blocky labels."""
    g = torch.Generator().manual_seed(seed)
    image = F.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g) * 255, size=(h, w), mode="bicubic",
                          align_corners=False).clamp(0, 255).round().to(torch.uint8)
    labels = F.interpolate(torch.randint(0, 4, (1, 1, h // 8, w // 8), generator=g).float(), size=(h, w),
                           mode="nearest")[:, 0].to(torch.uint8)
    return image, labels


def _torchvision_chain(image, mask, *, flip, angle, top, left, height, width):
    """The per-sample reference: torchvision v2 kernels on tv_tensors, one after the other."""
    img, msk = tv_tensors.Image(image[0]), tv_tensors.Mask(mask)
    if flip:
        img, msk = TF.horizontal_flip(img), TF.horizontal_flip(msk)
    img = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=0)
    msk = TF.rotate(msk, angle, interpolation=InterpolationMode.NEAREST, fill=VOID)
    size = list(image.shape[-2:])
    img = TF.resized_crop(img, top, left, height, width, size, interpolation=InterpolationMode.BILINEAR)
    # Masks: crop, then resize with pixel-centre nearest (NEAREST_EXACT). `resized_crop` on a
    # Mask always uses legacy NEAREST, which samples half a pixel up-left of the centre.
    msk = TF.resize(TF.crop(msk, top, left, height, width), size, interpolation=InterpolationMode.NEAREST_EXACT)
    return img.as_subclass(torch.Tensor)[None], msk.as_subclass(torch.Tensor)


def _ours(image, mask, *, flip, angle, top, left, height, width):
    h, w = image.shape[-2:]
    theta = affine_matrix(
        flip=torch.tensor([flip]), angle=torch.tensor([float(angle)]),
        crop_w=torch.tensor([width / w]), crop_h=torch.tensor([height / h]),
        crop_cx=torch.tensor([(left + width / 2) / w * 2 - 1]), crop_cy=torch.tensor([(top + height / 2) / h * 2 - 1]),
        height=h, width=w)
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    return warp_images(image, grid), warp_masks(mask, grid)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    both = (a != VOID) & (b != VOID)
    return ((a == b) & both).sum().item() / both.sum().item()


CASES = [
    dict(flip=False, angle=12.0, top=8, left=4, height=40, width=48),
    dict(flip=True, angle=-9.0, top=0, left=10, height=48, width=44),
    dict(flip=True, angle=15.0, top=12, left=12, height=36, width=36),
]
SIZES = [(64, 64), (48, 80)]  # non-square: rotation must be isotropic in pixels


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("case", CASES)
def test_rotation_alone_is_exactly_v2_rotate(case, h, w):
    image, mask = _sample(h, w)
    whole = {**case, "flip": False, "top": 0, "left": 0, "height": h, "width": w}
    ref_image, ref_mask = _torchvision_chain(image, mask, **whole)
    out_image, out_mask = _ours(image, mask, **whole)
    assert (ref_mask == VOID).any()
    assert torch.equal(out_mask, ref_mask)  # same labels, same void corners, pixel for pixel
    scored = out_mask != VOID
    assert (out_image.float() - ref_image.float()).abs().mean(1)[scored].mean() < 1.5
    _, wrong = _ours(image, mask, **{**whole, "angle": -case["angle"]})
    assert _agreement(wrong, ref_mask) < 0.9  # the comparison would catch a reversed angle


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("case", CASES)
def test_flip_and_crop_alone_are_exactly_v2(case, h, w):
    image, mask = _sample(h, w)
    case = {**case, "angle": 0.0, "height": min(case["height"], h)}
    ref_image, ref_mask = _torchvision_chain(image, mask, **case)
    out_image, out_mask = _ours(image, mask, **case)
    assert torch.equal(out_mask, ref_mask)
    diff = (out_image.float() - ref_image.float()).abs()
    # Rounding only, except on the outermost pixels: resizing the cut-out clamps at its
    # edge, one warp of the whole image reads the real pixels just outside the box.
    assert diff[..., 1:-1, 1:-1].max() <= 1
    assert diff.mean() < 0.5
    _, unflipped = _ours(image, mask, **{**case, "flip": not case["flip"]})
    assert _agreement(unflipped, ref_mask) < 0.9


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("case", CASES)
def test_one_warp_matches_the_whole_v2_chain(case, h, w):
    image, mask = _sample(h, w)
    case = {**case, "height": min(case["height"], h)}
    ref_image, ref_mask = _torchvision_chain(image, mask, **case)
    out_image, out_mask = _ours(image, mask, **case)
    # The chain resamples twice (rotate, then resize), we once: labels and void agree except
    # on the rims of label/void regions, where two nearest lookups in a row can land on the
    # neighbour (and on the frame: a region just outside the cut-out can show in its last row).
    assert (out_mask == ref_mask).float().mean() > 0.93
    edge = F.max_pool2d(_boundary(ref_mask)[:, None].float(), 5, stride=1, padding=2)[:, 0].bool()
    assert not ((out_mask != ref_mask) & ~edge).any()
    both = (out_mask != VOID) & (ref_mask != VOID)
    assert (out_image.float() - ref_image.float()).abs().mean(1)[both].mean() < 3.0


def _boundary(m: torch.Tensor) -> torch.Tensor:
    """Pixels on a label boundary or on the frame."""
    edge = torch.zeros_like(m, dtype=torch.bool)
    edge[:, [0, -1], :] = True
    edge[:, :, [0, -1]] = True
    dy, dx = m[:, 1:, :] != m[:, :-1, :], m[:, :, 1:] != m[:, :, :-1]
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    return edge


def test_transform_is_a_v2_transform_on_tv_tensors_and_composes():
    images, masks = torch.cat([_sample(32, 32, s)[0] for s in range(4)]), torch.cat([_sample(32, 32, s)[1] for s in range(4)])
    pipeline = v2.Compose([RandomFlipRotateCrop(torch.Generator().manual_seed(0)),
                           v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])
    out_images, out_masks, meta = pipeline(tv_tensors.Image(images), tv_tensors.Mask(masks), {"id": 7})
    assert isinstance(out_images, tv_tensors.Image) and isinstance(out_masks, tv_tensors.Mask)
    assert out_images.dtype == torch.float32 and out_images.max() <= 1.0
    assert out_masks.dtype == torch.uint8 and out_masks.shape == masks.shape
    assert meta == {"id": 7}  # non-tensor inputs pass through
    # Each sample gets its own geometry: no two masks moved the same way.
    moved = [out_masks[i] for i in range(4)]
    assert all(not torch.equal(moved[i], moved[j]) for i in range(4) for j in range(i + 1, 4))


def test_identity_spec_leaves_the_batch_unchanged():
    images, masks = _sample(32, 48)
    spec = AugmentSpec(flip_p=0.0, max_rotation=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out_images, out_masks = RandomFlipRotateCrop(torch.Generator().manual_seed(0), spec)(
        tv_tensors.Image(images), tv_tensors.Mask(masks))
    assert torch.equal(out_images.as_subclass(torch.Tensor), images)
    assert torch.equal(out_masks.as_subclass(torch.Tensor), masks)


# --------------------------------------------------------------------------- the batched transform in training
def _label_image(n=8, size=64, seed=0):
    """Images whose pixel value encodes their label, so alignment can be checked after warping."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (n, 1, 8, 8), generator=g).float()
    labels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].to(torch.uint8)
    images = (labels.long() * 60 + 20).to(torch.uint8)[:, None].repeat(1, 3, 1, 1)
    return images, labels


@pytest.mark.parametrize("seed", range(4))
def test_augment_changes_batch_but_keeps_masks_aligned(seed):
    images, masks = _label_image(seed=seed)
    out_images, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(seed))
    assert not torch.equal(out_images, images)
    assert not torch.equal(out_masks, masks)
    decoded = ((out_images[:, 0].float() - 20) / 60).round()
    mismatch = (decoded != out_masks.float()) & (out_masks != VOID)
    # Bilinear image vs nearest mask may disagree only on the rims of label regions: every
    # mismatch must lie within 2 px (the crop enlarges up to 1.41x) of a mask boundary or of
    # the frame (a region just outside the crop can bleed into the last pixel row).
    m = out_masks.long()
    edge = torch.zeros_like(m, dtype=torch.bool)
    edge[:, [0, -1], :] = True
    edge[:, :, [0, -1]] = True
    edge[:, 1:, :] |= m[:, 1:, :] != m[:, :-1, :]
    edge[:, :-1, :] |= m[:, 1:, :] != m[:, :-1, :]
    edge[:, :, 1:] |= m[:, :, 1:] != m[:, :, :-1]
    edge[:, :, :-1] |= m[:, :, 1:] != m[:, :, :-1]
    near_edge = torch.nn.functional.max_pool2d(edge[:, None].float(), 5, stride=1, padding=2)[:, 0].bool()
    assert mismatch.any()  # the check below is not vacuous
    assert not (mismatch & ~near_edge).any()
    assert set(out_masks.unique().tolist()) <= {0, 1, 2, 3, VOID}


def test_augment_rotation_fills_masks_with_void_and_is_seeded():
    images, masks = _label_image(n=16)
    a = augment_batch(images, masks, torch.Generator().manual_seed(3))
    b = augment_batch(images, masks, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (a[1] == VOID).any()  # rotated corners are void, never a class


def test_augment_flip_only_mirrors_exactly():
    images, masks = _label_image(n=32)
    spec = AugmentSpec(flip_p=0.5, max_rotation=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out_images, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(0), spec)
    flipped = [torch.equal(out_masks[i], masks[i].flip(-1)) for i in range(32)]
    same = [torch.equal(out_masks[i], masks[i]) for i in range(32)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 4 < sum(flipped) < 28  # about half are flipped

"""Transforms stage: joint image+mask augmentation on decoded uint8 batches, drawn from a
seeded generator so runs repeat.

Flip, rotation and random resized crop are composed into one affine map per sample and
applied to the whole batch with a single `grid_sample` (bilinear for images, nearest for
masks; uncovered mask pixels become void, so the border-replicated image there is never
scored). That is the same geometry as torchvision's
RandomHorizontalFlip → RandomRotation → RandomResizedCrop chain (the crop only ever
enlarges, so no antialiasing is lost), at a few percent of a training step instead of a
per-sample Python loop. It runs on whatever device the batch is on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ablate.data import VOID


@dataclass(frozen=True)
class AugmentSpec:
    flip_p: float = 0.5  # horizontal flip probability
    max_rotation: float = 15.0  # degrees, uniform in [-max, +max]; uncovered mask pixels become void
    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction of the random resized crop (<= 1: no downscaling)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, spec: AugmentSpec = AugmentSpec()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment uint8 images [N,3,H,W] and masks [N,H,W] with the same random geometry per sample."""
    n, _, h, w = images.shape
    theta = sample_affine(n, h, w, generator, spec).to(images.device)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    out_images = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Shift labels by one so that zero padding marks "outside the source image" → void.
    shifted = F.grid_sample(masks[:, None].float() + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]
    out_masks = torch.where(shifted == 0, torch.full_like(shifted, VOID), shifted - 1)
    return out_images.round_().clamp_(0, 255).to(torch.uint8), out_masks.to(torch.uint8)


def sample_affine(n: int, h: int, w: int, generator: torch.Generator, spec: AugmentSpec = AugmentSpec()) -> torch.Tensor:
    """[N, 2, 3] maps from output to source coordinates (normalised, align_corners=False)."""
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    flip = torch.where(u[:, 0] < spec.flip_p, -1.0, 1.0)
    angle = torch.deg2rad((2 * u[:, 1] - 1) * spec.max_rotation)
    # RandomResizedCrop's parameter rule (area fraction and log-uniform aspect ratio), one draw.
    area = spec.crop_scale[0] + u[:, 2] * (spec.crop_scale[1] - spec.crop_scale[0])
    log_lo, log_hi = math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])
    ratio = torch.exp(log_lo + u[:, 3] * (log_hi - log_lo))
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (2 * u[:, 4] - 1) * (1 - sx)  # crop centre, keeping the box inside the image
    cy = (2 * u[:, 5] - 1) * (1 - sy)
    # Rotation about the centre in pixel units (normalised coordinates are anisotropic when h != w).
    cos, sin = torch.cos(angle), torch.sin(angle)
    r00, r01, r10, r11 = cos, -sin * h / w, sin * w / h, cos
    # source = Flip · Rot · (Crop · out):  Crop = [[sx, 0, cx], [0, sy, cy]]
    theta = torch.stack([
        torch.stack([flip * r00 * sx, flip * r01 * sy, flip * (r00 * cx + r01 * cy)], dim=1),
        torch.stack([r10 * sx, r11 * sy, r10 * cx + r11 * cy], dim=1),
    ], dim=1)
    return theta.float()

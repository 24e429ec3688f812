"""Model stage: U-Net (Ronneberger et al., seed Table 3) with BN and a width multiplier."""

from __future__ import annotations

import torch
from torch import nn

from ablate.errors import AblateError
from ablate.models._blocks import ConvBNReLU, Normalize
from ablate.models._registry import register_model


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ConvBNReLU(in_channels, out_channels, 3), ConvBNReLU(out_channels, out_channels, 3))


class UNet(nn.Module):
    """Double conv3×3-BN-ReLU blocks at widths base×(1, 2, 4, 8, 16), 4 max-pool downs,
    ConvT 2×2 s2 ups concatenated with the matching skip, 1×1 classifier (base → K)."""

    def __init__(self, num_classes: int, *, base_channels: int = 64):
        super().__init__()
        if base_channels < 1:
            raise AblateError(f"model 'unet': base_channels must be an integer >= 1, got {base_channels}")
        widths = [base_channels * m for m in (1, 2, 4, 8, 16)]
        self.normalize = Normalize()
        self.pool = nn.MaxPool2d(2, 2)
        self.down = nn.ModuleList(
            _double_conv(c_in, c_out) for c_in, c_out in zip([3, *widths], widths))
        deep_to_shallow = widths[::-1]
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
            for c_in, c_out in zip(deep_to_shallow, deep_to_shallow[1:]))
        # Input channels are doubled by the skip concatenation.
        self.merge = nn.ModuleList(
            _double_conv(2 * c_out, c_out) for c_out in deep_to_shallow[1:])
        self.classifier = nn.Conv2d(base_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up, merge in zip(self.up, self.merge):
            skip = skips.pop()
            # output_size restores odd sizes the floor-mode pool rounded down.
            x = merge(torch.cat([skip, up(x, output_size=skip.shape[-2:])], dim=1))
        return self.classifier(x)


@register_model
def unet(num_classes: int, *, base_channels: int = 64) -> nn.Module:
    return UNet(num_classes, base_channels=base_channels)

"""Model stage: the seed report's baseline, a plain 5-level conv/deconv encoder-decoder."""

from __future__ import annotations

import torch
from torch import nn

from ablate.models._blocks import ConvBNReLU, DeconvBNReLU, Normalize, mirrored_forward, xavier_init_
from ablate.models._registry import register_model

ENCODER_WIDTHS = (3, 32, 64, 128, 256, 512)
DECODER_WIDTHS = (512, 512, 256, 128, 64, 32)


class BaselineNet(nn.Module):
    """5 × [Conv3×3 s2 → ReLU → BN] down, 5 × [ConvT3×3 s2 → ReLU → BN] up, 1×1 classifier."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.normalize = Normalize()
        # The seed applies ReLU before BN; kept to stay faithful to the reported baseline.
        self.encoder = nn.ModuleList(
            ConvBNReLU(c_in, c_out, 3, stride=2, relu_before_bn=True)
            for c_in, c_out in zip(ENCODER_WIDTHS, ENCODER_WIDTHS[1:]))
        # conv_grad: a faster CPU backward for these layers (see ConvTranspose2dConvGrad).
        self.decoder = nn.ModuleList(
            DeconvBNReLU(c_in, c_out, 3, relu_before_bn=True, conv_grad=True)
            for c_in, c_out in zip(DECODER_WIDTHS, DECODER_WIDTHS[1:]))
        self.classifier = nn.Conv2d(DECODER_WIDTHS[-1], num_classes, 1)
        xavier_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(mirrored_forward(self.normalize(x), self.encoder, self.decoder))


@register_model
def baseline(num_classes: int) -> nn.Module:
    return BaselineNet(num_classes)

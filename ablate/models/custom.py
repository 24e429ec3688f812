"""Model stage: the seed's custom network (Table 1), a conv/max-pool encoder to 1024
channels and a mirrored deconv/max-unpool decoder, with tunable kernel sizes."""

from __future__ import annotations

import torch
from torch import nn

from ablate.errors import AblateError
from ablate.models._blocks import ConvBNReLU, DeconvBNReLU, Normalize, mirrored_forward, xavier_init_
from ablate.models._registry import register_model


def _pool() -> nn.MaxPool2d:
    # ceil_mode keeps every stage at size S -> ceil(S/2), so a 1×1 map stays 1×1 instead of
    # vanishing (at 64 px the bottleneck is already 1×1 after the second pool).
    return nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)


class CustomNet(nn.Module):
    """Table 1 with its typos fixed: conv(3→32, first_kernel) → conv(32→64) → pool →
    conv(64→128) → conv(128→256) → pool → conv(256→512) → conv(512→1024), every conv stride 2;
    the decoder mirrors it (deconv 1024→512→256, unpool, 256→128→64, unpool, 64→32→32)
    and each stage restores the exact size its mirror consumed, so the logits always have
    the input size."""

    def __init__(self, num_classes: int, *, first_kernel: int = 11, encoder_kernel: int = 3,
                 decoder_kernel: int = 3):
        super().__init__()
        for arg, k in (("first_kernel", first_kernel), ("encoder_kernel", encoder_kernel),
                       ("decoder_kernel", decoder_kernel)):
            if k < 1 or k % 2 == 0:
                raise AblateError(f"model 'custom': {arg} must be an odd integer >= 1, got {k}")
        enc, dec = encoder_kernel, decoder_kernel
        self.normalize = Normalize()
        self.encoder = nn.ModuleList([
            ConvBNReLU(3, 32, first_kernel, stride=2),
            ConvBNReLU(32, 64, enc, stride=2),
            _pool(),
            ConvBNReLU(64, 128, enc, stride=2),
            ConvBNReLU(128, 256, enc, stride=2),
            _pool(),
            ConvBNReLU(256, 512, enc, stride=2),
            ConvBNReLU(512, 1024, enc, stride=2),
        ])
        self.decoder = nn.ModuleList([
            DeconvBNReLU(1024, 512, dec),
            DeconvBNReLU(512, 256, dec),
            nn.MaxUnpool2d(2, 2),
            DeconvBNReLU(256, 128, dec),
            DeconvBNReLU(128, 64, dec),
            nn.MaxUnpool2d(2, 2),
            DeconvBNReLU(64, 32, dec),
            DeconvBNReLU(32, 32, dec),
        ])
        self.classifier = nn.Conv2d(32, num_classes, 1)
        xavier_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(mirrored_forward(self.normalize(x), self.encoder, self.decoder))


@register_model
def custom(num_classes: int, *, first_kernel: int = 11, encoder_kernel: int = 3,
           decoder_kernel: int = 3) -> nn.Module:
    return CustomNet(num_classes, first_kernel=first_kernel, encoder_kernel=encoder_kernel,
                     decoder_kernel=decoder_kernel)

"""Model stage: the building blocks every architecture shares (conv/deconv blocks, input
normalisation, Xavier init, the mirrored encoder-decoder forward)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ablate._bf16 import is_thin

# ImageNet statistics: the ResNet-18 weights expect them, and using them everywhere means
# every model sees the same input convention (float images in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Map float images in [0, 1] to ImageNet-normalised inputs with fixed buffers."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        # Non-persistent: constants, not learned state, so they stay out of checkpoints.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _norm_act(out_channels: int, relu_before_bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return layers[::-1] if relu_before_bn else layers


class ConvBNReLU(nn.Sequential):
    """Conv (padding k//2, so stride 2 maps size S to ceil(S/2) for any odd k) + BN + ReLU.

    `relu_before_bn` gives the seed baseline's Conv → ReLU → BN order. The conv carries a
    bias only then; directly followed by BN a bias is redundant.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 *, relu_before_bn: bool = False):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2, bias=relu_before_bn)
        super().__init__(conv, *_norm_act(out_channels, relu_before_bn))


class _ConvTransposeConvGrad(torch.autograd.Function):
    """conv_transpose2d whose backward is written with the ordinary conv ops: the input
    gradient of a transposed conv is conv2d(grad, W), and its weight gradient is the
    weight gradient of that conv2d with `grad` as input and `x` as output gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]  # need_b is False for bias=None
        grad_x = F.conv2d(grad, weight, None, ctx.stride, ctx.padding) if need_x else None
        grad_w = (torch.nn.grad.conv2d_weight(grad, weight.shape, x, ctx.stride, ctx.padding)
                  if need_w else None)
        grad_b = grad.sum((0, 2, 3)) if need_b else None
        return grad_x, grad_w, grad_b, None, None, None


class ConvTranspose2dConvGrad(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters, same state_dict) that on the CPU takes its
    gradients from the conv ops instead of oneDNN's transposed-conv backward.

    Only the baseline uses it, because only there was it consistently faster
    (`benchmarks/deconv_grad.py`, 128 px, batch 16, interleaved rounds): baseline training
    steps 1.05-1.16x in fp32 on a 2-core Xeon without native bf16 and 1.06x in bf16 on an
    AVX512-BF16 EPYC; custom swung between 0.94x and 1.18x from run to run, resnet18 and
    unet stayed at 0.97-1.02x. Off the CPU it is the stock layer.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            raise ValueError("ConvTranspose2dConvGrad supports groups=1, dilation=1, zero padding only")

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or is_thin(x):  # thin: see ablate._bf16
            return super().forward(x, output_size)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):
            # What autocast does for the stock layer: run the op in the autocast dtype.
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _ConvTransposeConvGrad.apply(x, weight, bias, self.stride, self.padding, output_padding)


class DeconvBNReLU(nn.Sequential):
    """Stride-2 ConvTranspose (padding k//2) + BN + ReLU that doubles the spatial size.

    With an odd kernel the transposed conv yields 2H-1 or 2H pixels (output padding 0 or 1),
    so passing `output_size` restores exactly the size the mirrored encoder stage consumed;
    without it the block doubles (output padding 1). `conv_grad` picks
    ConvTranspose2dConvGrad for the transposed conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 *, relu_before_bn: bool = False, conv_grad: bool = False):
        layer = ConvTranspose2dConvGrad if conv_grad else nn.ConvTranspose2d
        deconv = layer(in_channels, out_channels, kernel_size, stride=2,
                       padding=kernel_size // 2, output_padding=1, bias=relu_before_bn)
        super().__init__(deconv, *_norm_act(out_channels, relu_before_bn))

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        x = self[0](x, output_size=output_size)
        for layer in list(self)[1:]:
            x = layer(x)
        return x


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform init for every conv/deconv weight in `module`, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def mirrored_forward(x: torch.Tensor, encoder: nn.ModuleList, decoder: nn.ModuleList) -> torch.Tensor:
    """Run `encoder`, then `decoder` in mirror order: decoder stage i restores the exact
    spatial size that encoder stage -1-i received, and a MaxUnpool2d stage reuses the
    indices of its mirrored MaxPool2d (which must have `return_indices=True`).

    Because every stage maps size S to ceil(S/2) and back exactly, the output has the input
    size for any input size and any odd kernel — no final crop or interpolation needed.
    """
    if len(encoder) != len(decoder):
        raise ValueError(f"encoder has {len(encoder)} stages but decoder has {len(decoder)}")
    sizes: list[torch.Size] = []
    pool_indices: list[torch.Tensor] = []
    for stage in encoder:
        sizes.append(x.shape[-2:])
        if isinstance(stage, nn.MaxPool2d):
            x, indices = stage(x)
            pool_indices.append(indices)
        else:
            x = stage(x)
    for stage in decoder:
        size = sizes.pop()
        if isinstance(stage, nn.MaxUnpool2d):
            x = stage(x, pool_indices.pop(), output_size=size)
        else:
            x = stage(x, output_size=size)
    return x

"""Engine helper: bf16 training on the CPU without oneDNN's wrong weight gradients on maps
one pixel wide.

oneDNN's bf16 convolution weight gradient (oneDNN 3.12 in torch 2.14.1; its AMX kernel, and
also its AVX512-BF16 and AVX512 ones when `ONEDNN_MAX_CPU_ISA` caps the ISA) leaves
unwritten the gradient entries of the kernel taps that see only padding when the input is
one pixel wide and the stride in that direction is 2: they hold whatever the memory held
before, 1e20-1e37 or NaN once the allocator hands out reused memory. Transposed convolutions
of such inputs are hit the same way. Measured on an Intel Xeon with AMX
(`tests/test_bf16.py` reproduces it): the seed's custom net at 64 px has two such
convolutions (its 1x1 bottleneck), and every one of its cells in the default grid ended
"non-finite loss" within its first 9 steps; with finite garbage a run would train on a
wrong gradient without any sign. fp32 on the same shapes is right (checked against fp64).

So, while a model trains in bf16 on the CPU, every 2-D convolution or transposed
convolution whose input is one pixel high or wide runs in fp32 and hands its output on in
bf16, as autocast would (`thin_maps_in_fp32`): the maps are a pixel wide, so it costs
nothing measurable. It applies to every model (the built-ins, torchvision's, smp's, a
user's), since it watches the functions, not the modules.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONVOLUTIONS = frozenset({F.conv2d, F.conv_transpose2d, torch.conv2d, torch.conv_transpose2d})


def is_thin(x: torch.Tensor) -> bool:
    """A CPU feature map (N, C, H, W) one pixel high or wide: oneDNN's bf16 weight gradient
    of a convolution over it may be wrong."""
    return x.device.type == "cpu" and x.dim() == 4 and min(x.shape[-2:]) == 1


def _fp32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


class _ThinMapsInFP32(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else kwargs.get("input")
        if func in _CONVOLUTIONS and isinstance(x, torch.Tensor) and is_thin(x) \
                and (x.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu")):
            # the dtype autocast (or the bf16 input) would have given the output
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
            with torch.autocast("cpu", enabled=False):
                out = func(*map(_fp32, args), **{k: _fp32(v) for k, v in kwargs.items()})
            return out.to(dtype)  # its gradients come from the fp32 convolution
        return func(*args, **kwargs)


@contextlib.contextmanager
def thin_maps_in_fp32(enabled: bool = True) -> Iterator[None]:
    """Within it (a bf16 training step's forward on the CPU), convolutions of one-pixel-wide
    maps run in fp32, and so do their gradients."""
    if not enabled:
        yield
        return
    with _ThinMapsInFP32():
        yield

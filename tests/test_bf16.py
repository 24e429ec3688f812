"""bf16 training on the CPU: convolutions over one-pixel-wide maps run in fp32 (ablate._bf16),
because oneDNN's bf16 weight gradient there can be garbage (seen on an Intel Xeon with AMX).

Where oneDNN is right, the gradient checks below pass with or without the guard; on the
machines where it is wrong (this project's CI machine among them), they fail without it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablate._bf16 import is_thin, thin_maps_in_fp32
from ablate.config import TrainConfig
from ablate.data import load_dataset
from ablate.engine import fit
from ablate.models._blocks import ConvTranspose2dConvGrad


def _dirty_memory() -> None:
    """Hand the allocator NaN-filled blocks to reuse: oneDNN's unwritten entries show them."""
    junk = [torch.full((n,), float("nan"), dtype=torch.bfloat16) for n in (1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20)]
    del junk


@pytest.fixture
def one_thread():
    """One torch thread, as a grid worker has (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# (input height, width, kernel, stride, transposed): every thin shape that gave a wrong
# gradient on the Xeon with AMX, and a few wide ones
SHAPES = [(1, 1, 3, 2, False), (1, 1, 5, 2, False), (3, 1, 3, 2, False), (4, 1, 5, 2, False), (5, 1, 11, 2, False),
          (1, 1, 3, (1, 2), False), (2, 1, 3, 2, True), (4, 1, 3, 2, True), (3, 1, 7, 2, True),
          (4, 4, 3, 2, False), (4, 4, 3, 2, True)]


@pytest.mark.parametrize("h,w,k,stride,transposed", SHAPES)
def test_bf16_weight_and_input_gradients_of_thin_maps_match_fp32_under_the_guard(h, w, k, stride, transposed,
                                                                                 one_thread):
    torch.manual_seed(0)
    x = torch.randn(16, 64, h, w)
    weight = torch.randn(64, 64, k, k) * 0.05
    grads = {}
    for precision in ("fp32", "bf16"):
        for _ in range(3):  # a wrong entry depends on what the memory held: try a few times
            _dirty_memory()
            xx = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
            ww = weight.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"), \
                    thin_maps_in_fp32(precision == "bf16"):
                y = (F.conv_transpose2d(xx, ww, None, stride, k // 2, 1) if transposed
                     else F.conv2d(xx, ww, None, stride, k // 2))
            torch.manual_seed(1)
            y.float().backward(torch.randn(y.shape))
            grads.setdefault(precision, []).append((xx.grad, ww.grad))
    ref_x, ref_w = grads["fp32"][0]
    for gx, gw in grads["bf16"]:
        assert torch.isfinite(gw).all() and torch.isfinite(gx).all()
        assert (gw - ref_w).abs().max() <= 0.02 * ref_w.abs().max()
        assert (gx - ref_x).abs().max() <= 0.02 * ref_x.abs().max()


def _ran_in_fp32(y: torch.Tensor) -> bool:
    """Whether `y` is a convolution's fp32 output cast to the autocast dtype by the guard (the
    graph: the cast back, then the convolution), not a convolution's own bf16 output."""
    return y.grad_fn.name() == "ToCopyBackward0" and "Convolution" in y.grad_fn.next_functions[0][0].name()


def test_only_the_thin_convolutions_run_in_fp32_and_their_outputs_stay_bf16():
    thin, wide = torch.randn(2, 8, 1, 1), torch.randn(2, 8, 4, 4)
    conv, deconv = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1,
                                                                               output_padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16), thin_maps_in_fp32():
        for layer in (conv, deconv):
            y = layer(thin)
            assert y.dtype == torch.bfloat16 and _ran_in_fp32(y)  # what autocast hands on, computed in fp32
            y = layer(wide)
            assert y.dtype == torch.bfloat16 and not _ran_in_fp32(y)
        y = F.conv2d(input=thin, weight=conv.weight, stride=2, padding=1)  # passed by keyword: guarded too
        assert y.dtype == torch.bfloat16 and _ran_in_fp32(y)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # outside the guard: autocast's own bf16 convolution
        assert not _ran_in_fp32(conv(thin))
    with thin_maps_in_fp32():  # fp32 training: nothing to change
        y = conv(thin)
        assert y.dtype == torch.float32 and y.grad_fn.name().startswith("Convolution")
    block = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)).to(torch.bfloat16)
    with thin_maps_in_fp32():  # a bf16 model without autocast: its next layer still gets bf16
        assert block(thin.to(torch.bfloat16)).dtype == torch.bfloat16
    assert is_thin(torch.zeros(1, 1, 1, 7)) and is_thin(torch.zeros(1, 1, 7, 1)) and not is_thin(torch.zeros(1, 1, 2, 2))


def test_the_conv_gradient_deconv_takes_the_stock_path_on_thin_maps():
    """ConvTranspose2dConvGrad computes its own gradients with bf16 convolutions: on a thin
    map it hands over to the stock layer, which the guard runs in fp32."""
    layer = ConvTranspose2dConvGrad(8, 8, 3, stride=2, padding=1, output_padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16), thin_maps_in_fp32():
        assert _ran_in_fp32(layer(torch.randn(2, 8, 1, 1)))
        assert layer(torch.randn(2, 8, 4, 4)).grad_fn.name() == "_ConvTransposeConvGradBackward"


@pytest.fixture(scope="module")
def synthetic32(cache_dir):
    return load_dataset("synthetic", image_size=(32, 32), cache_dir=cache_dir)


def test_the_custom_net_trains_in_bf16_as_in_fp32(synthetic32):
    """custom at 32 px has 1x1 maps from its fifth convolution on: in bf16 it failed with a
    non-finite loss within an epoch on the Xeon with AMX; now it follows the fp32 run."""
    losses = {}
    for precision in ("fp32", "bf16"):
        record = fit(TrainConfig(model="custom", data="synthetic", image_size=(32, 32), batch_size=16, epochs=1,
                                 patience=0, precision=precision), synthetic32, quiet=True)
        assert record["status"] == "completed", record.get("failure_reason")
        losses[precision] = record["curves"][0]["train_loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.05)

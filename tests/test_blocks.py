"""Tests for the shared blocks: ConvTranspose2dConvGrad must be nn.ConvTranspose2d with
another backward, so every output and gradient is compared with the stock layer's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ablate.models import create_model
from ablate.models._blocks import ConvTranspose2dConvGrad


def _pair(kernel: int, bias: bool, dtype=torch.float64):
    torch.manual_seed(0)
    stock = nn.ConvTranspose2d(5, 4, kernel, stride=2, padding=kernel // 2, output_padding=1 if kernel % 2 else 0,
                               bias=bias).to(dtype)
    ours = ConvTranspose2dConvGrad(5, 4, kernel, stride=2, padding=kernel // 2,
                                   output_padding=1 if kernel % 2 else 0, bias=bias).to(dtype)
    ours.load_state_dict(stock.state_dict())
    if bias:  # a non-zero bias, so a missing or wrong bias term cannot hide
        with torch.no_grad():
            stock.bias.uniform_(-1, 1)
            ours.bias.copy_(stock.bias)
    return stock, ours


def _grads(layer: nn.Module, x: torch.Tensor, grad_out_seed: int, output_size=None):
    x = x.detach().clone().requires_grad_(True)
    y = layer(x, output_size=output_size)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=torch.float64).to(y.dtype)
    y.backward(g.contiguous(memory_format=torch.channels_last) if y.is_contiguous(
        memory_format=torch.channels_last) else g)
    grads = {"x": x.grad, "weight": layer.weight.grad}
    if layer.bias is not None:
        grads["bias"] = layer.bias.grad
    return y.detach(), grads


# A 2x2 stride-2 deconv has one output size; odd kernels can give 2H-1 or 2H.
SHAPES = [(2, None)] + [(k, size) for k in (1, 3, 5) for size in (None, (13, 11), (14, 12))]


@pytest.mark.parametrize("kernel,output_size", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_equal_the_stock_layer(kernel, bias, output_size):
    stock, ours = _pair(kernel, bias)
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64)
    y_stock, g_stock = _grads(stock, x, 1, output_size)
    y_ours, g_ours = _grads(ours, x, 1, output_size)
    assert y_ours.shape == y_stock.shape
    torch.testing.assert_close(y_ours, y_stock)
    assert g_ours.keys() == g_stock.keys()
    for name in g_stock:
        torch.testing.assert_close(g_ours[name], g_stock[name], msg=name)


def test_channels_last_float32_with_onednn_matches():
    stock, ours = _pair(3, True, torch.float32)
    x = torch.randn(4, 5, 16, 16).contiguous(memory_format=torch.channels_last)
    y_stock, g_stock = _grads(stock, x, 2)
    y_ours, g_ours = _grads(ours, x, 2)
    torch.testing.assert_close(y_ours, y_stock, rtol=1e-4, atol=1e-4)
    for name in g_stock:
        torch.testing.assert_close(g_ours[name], g_stock[name], rtol=1e-4, atol=1e-4, msg=name)


def test_bf16_autocast_runs_in_bf16_like_the_stock_layer():
    stock, ours = _pair(3, True, torch.float32)
    x = torch.randn(4, 5, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_stock, g_stock = _grads(stock, x, 3)
        y_ours, g_ours = _grads(ours, x, 3)
    assert y_ours.dtype == y_stock.dtype == torch.bfloat16
    # Parameters keep fp32 gradients (autocast casts a copy), as for the stock layer.
    assert g_ours["weight"].dtype == g_stock["weight"].dtype == torch.float32
    torch.testing.assert_close(y_ours.float(), y_stock.float(), rtol=2e-2, atol=2e-2)
    for name in g_stock:
        torch.testing.assert_close(g_ours[name].float(), g_stock[name].float(), rtol=3e-2, atol=3e-2, msg=name)


def test_frozen_weight_gets_no_gradient_but_input_does():
    stock, ours = _pair(3, True)
    for layer in (stock, ours):
        layer.requires_grad_(False)
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    _, g_stock = _grads(stock, x, 4)
    _, g_ours = _grads(ours, x, 4)
    assert g_ours["weight"] is None and g_ours["bias"] is None
    torch.testing.assert_close(g_ours["x"], g_stock["x"])


def test_state_dicts_are_interchangeable():
    stock, ours = _pair(3, True)
    assert stock.state_dict().keys() == ours.state_dict().keys()
    fresh = nn.ConvTranspose2d(5, 4, 3, stride=2, padding=1, output_padding=1).to(torch.float64)
    fresh.load_state_dict(ours.state_dict())  # strict
    torch.testing.assert_close(fresh.weight, stock.weight)


def test_unsupported_configurations_are_refused():
    with pytest.raises(ValueError, match="groups=1"):
        ConvTranspose2dConvGrad(4, 4, 3, stride=2, groups=2)
    with pytest.raises(ValueError, match="dilation=1"):
        ConvTranspose2dConvGrad(4, 4, 3, stride=2, dilation=2)


def test_baseline_trains_exactly_like_it_does_with_stock_deconvs():
    torch.manual_seed(0)
    ours = create_model("baseline", 3).double()
    stock = copy.deepcopy(ours)
    swapped = 0
    for module in stock.modules():
        if type(module) is ConvTranspose2dConvGrad:
            module.__class__ = nn.ConvTranspose2d
            swapped += 1
    assert swapped == 5  # all five decoder stages use it
    x = torch.rand(2, 3, 37, 45, dtype=torch.float64)  # odd sizes exercise output_size
    target = torch.randint(0, 3, (2, 37, 45))
    for model in (ours, stock):
        nn.functional.cross_entropy(model(x), target).backward()
    for (name, p_ours), (_, p_stock) in zip(ours.named_parameters(), stock.named_parameters()):
        torch.testing.assert_close(p_ours.grad, p_stock.grad, msg=name)

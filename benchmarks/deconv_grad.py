"""Stock nn.ConvTranspose2d vs ConvTranspose2dConvGrad (same layer, gradients from the conv
ops), side by side in one process: for each model, two copies with the same weights, one
with every transposed conv stock and one with every transposed conv swapped, trained in
interleaved rounds (stock, swapped, stock, ...) on pre-made tensors with the optimizer and
precision of `ablate train`. Prints the best and the median round of each and the speed-up.

This is the measurement behind which models use the swapped layer (only the baseline):

    python benchmarks/deconv_grad.py --image-size 128 --batch-size 16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from torch import nn

from ablate.engine import make_optimizer, resolve_precision
from ablate.models import create_model
from ablate.models._blocks import ConvTranspose2dConvGrad
from ablate.record import device_name
from throughput import MODELS, train_step  # the sibling script: same models, same step


def with_layer(model: nn.Module, layer: type[nn.ConvTranspose2d]) -> nn.Module:
    """A copy of `model` whose transposed convs are all `layer` (same parameters)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            module.__class__ = layer
    return model


def step_seconds(model, optimizer, x, y, precision: str, steps: int) -> float:
    times = []
    for _ in range(steps + 1):  # the first step of a round warms the caches
        start = time.perf_counter()
        train_step(model, x, y, optimizer, precision)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round; each round keeps its fastest")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precision", default="auto", help="auto|fp32|bf16")
    args = parser.parse_args(argv)

    device = torch.device("cpu")  # the swapped layer only differs on the CPU
    precision = resolve_precision(args.precision, device)
    print(f"{device_name(device)}, {torch.get_num_threads()} threads, "
          f"precision {precision}, {args.image_size} px, batch {args.batch_size}, {args.rounds} rounds")
    header = f"{'model':10} {'stock img/s':>16} {'conv-grad img/s':>16} {'speed-up':>16}"
    print(header + "\n" + " " * 10 + f" {'best / median':>16} {'best / median':>16} {'best / median':>16}")
    print("-" * len(header))
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (args.batch_size, args.image_size, args.image_size))
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = create_model(name, 4, **MODELS[name])
        runs = {}
        for label, layer in (("stock", nn.ConvTranspose2d), ("conv-grad", ConvTranspose2dConvGrad)):
            model = with_layer(base, layer).to(memory_format=torch.channels_last).train()
            runs[label] = (model, make_optimizer(model, lr=1e-3, weight_decay=1e-4), [])
        for _ in range(args.rounds):
            for model, optimizer, times in runs.values():
                times.append(step_seconds(model, optimizer, x, y, precision, args.steps))
        stock, ours = runs["stock"][2], runs["conv-grad"][2]

        def rate(times, pick):
            return args.batch_size / pick(times)

        print(f"{name:10} {rate(stock, min):7.1f} / {rate(stock, statistics.median):6.1f} "
              f"{rate(ours, min):7.1f} / {rate(ours, statistics.median):6.1f} "
              f"{min(stock) / min(ours):7.2f}x / {statistics.median(stock) / statistics.median(ours):5.2f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

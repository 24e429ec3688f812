"""Does bf16 autocast train as well as fp32? Same config, seed and epochs, both precisions,
side by side: val mIoU, the gap, and training img/s.

    python benchmarks/precision.py --models baseline,unet --epochs 8 --image-size 64
"""
from __future__ import annotations

import argparse
import sys

from ablate.config import TrainConfig
from ablate.data import load_dataset
from ablate.engine import fit

MODEL_ARGS = {"unet": {"base_channels": 16}, "resnet18": {"weights": "none", "freeze_encoder": False}}  # offline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--models", default="baseline,custom,resnet18,unet")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2, help="average over seeds 0..N-1 (runs differ by chance too)")
    parser.add_argument("--cache-dir", default="results/.cache")
    args = parser.parse_args(argv)
    size = (args.image_size, args.image_size)
    dataset = load_dataset(args.data, image_size=size, cache_dir=args.cache_dir)
    print(f"{args.data}, {size[0]} px, {args.epochs} epochs (no early stopping), batch {args.batch_size}, mean over {args.seeds} seed(s)")
    print(f"{'model':10} {'fp32 mIoU':>10} {'bf16 mIoU':>10} {'|gap|':>7} {'fp32 img/s':>11} {'bf16 img/s':>11} {'speed-up':>9}")
    worst = 0.0
    for model in args.models.split(","):
        result = {}
        for precision in ("fp32", "bf16"):
            mious, speeds = [], []
            for seed in range(args.seeds):
                config = TrainConfig(model=model, model_args=MODEL_ARGS.get(model, {}), data=args.data, image_size=size,
                                     epochs=args.epochs, batch_size=args.batch_size, patience=0, seed=seed,
                                     precision=precision, device="cpu")
                record = fit(config, dataset, quiet=True)
                mious.append(record["metrics"]["val"]["miou"])
                speeds.append(record["timing"]["images_per_second"])
            result[precision] = (sum(mious) / len(mious), sum(speeds) / len(speeds))
        gap = abs(result["fp32"][0] - result["bf16"][0])
        worst = max(worst, gap)
        print(f"{model:10} {result['fp32'][0]:10.4f} {result['bf16'][0]:10.4f} {gap:7.4f} {result['fp32'][1]:11.1f} "
              f"{result['bf16'][1]:11.1f} {result['bf16'][1] / result['fp32'][1]:8.2f}x", flush=True)
    print(f"largest |bf16 - fp32| val mIoU gap: {worst:.4f} (goal <= 0.01)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

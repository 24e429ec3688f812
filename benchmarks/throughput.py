"""Training throughput, side by side in one process, for each model:

  (a) compute only: forward+backward+step on pre-made tensors, same precision, memory
      format and optimizer (fused AdamW) as (b) — the ceiling;
  (b) ablate's training path: `engine.train_one_epoch` on the decoded, cached dataset with
      augmentation on and the default precision;
  (c) a naive seed-style loop: a torchvision Dataset that opens the PIL files and applies
      per-sample v2 transforms every epoch, NCHW float32, default DataLoader, default AdamW.

Prints img/s and the ratios b/a (goal >= 0.95) and b/c (goal >= 2.5). The three are
measured in interleaved rounds (a, b, c, a, b, c, ...) and each column keeps its best
round, so a burst of load on a shared machine does not land on one column only.

b/c mostly measures the precision gap: the data path is nearly free (b/a ~ 1), so b/c is
about a/c. On a CPU with native bf16 (AVX512-BF16 or AMX) (a) and (b) run bf16 and (c)
fp32; on one without, `auto` picks fp32 for all three and a/c is only what channels_last
buys over NCHW plus the naive loop's decode/transform time. The header says which.

    python benchmarks/throughput.py --data ../shared/data/rocks-voc --image-size 128 --batch-size 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ablate.data import VOID, Split, detect_layout, load_dataset
from ablate.engine import cpu_has_native_bf16, make_optimizer, resolve_device, resolve_precision, train_one_epoch
from ablate.losses import make_loss
from ablate.models import create_model
from ablate.record import device_name

# resnet18 as the quick study runs it: random init, encoder trained (its default, ImageNet
# weights, needs torchvision's cache or the network).
MODELS = {"baseline": {}, "custom": {}, "resnet18": {"weights": "none", "freeze_encoder": False},
          "unet": {"base_channels": 16}}


def train_step(model, x, y, optimizer, precision) -> None:
    """Forward, loss, backward and step on pre-made tensors, as the engine does them."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, ignore_index=VOID)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def compute_only(model, x, y, optimizer, precision, steps):
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            _sync(x.device)
            start = time.perf_counter()
        train_step(model, x, y, optimizer, precision)
    _sync(x.device)
    return steps * x.shape[0] / (time.perf_counter() - start)


def ablate_path(model, split, optimizer, precision, batch_size):
    generator = torch.Generator().manual_seed(0)
    warm = Split(split.images[: 2 * batch_size], split.masks[: 2 * batch_size], split.ids[: 2 * batch_size])
    train_one_epoch(model, warm, optimizer=optimizer, scheduler=None, loss_fn=make_loss("ce"), batch_size=batch_size,
                    generator=generator, augment=True, precision=precision, epoch=0)
    stats = train_one_epoch(model, split, optimizer=optimizer, scheduler=None, loss_fn=make_loss("ce"), batch_size=batch_size,
                            generator=generator, augment=True, precision=precision, epoch=1)
    return stats["images"] / stats["seconds"]


class NaiveDataset(torch.utils.data.Dataset):
    """What the seed notebook did: open files and transform each sample, every epoch."""

    def __init__(self, rows, size):
        self.rows = rows
        self.transform = v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(15, fill={tv_tensors.Image: 0, tv_tensors.Mask: VOID}),
            v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        ])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        _, image_path, mask_path = self.rows[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(image_path).convert("RGB")))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(mask_path)))[None])
        image, mask = self.transform(image, mask)
        return image, mask[0]


def naive_loop(model, rows, size, batch_size, device):
    loader = torch.utils.data.DataLoader(NaiveDataset(rows, size), batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 2:
            _sync(device)
            start, seen = time.perf_counter(), 0
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y, ignore_index=VOID)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(x)
    _sync(device)
    return seen / (time.perf_counter() - start)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/rocks-voc"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=256, help="training images timed per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each column keeps its best")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--cache-dir", default="results/.cache")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    size = (args.image_size, args.image_size)
    dataset = load_dataset(args.data, image_size=size, cache_dir=args.cache_dir)
    n = min(args.images, len(dataset.splits["train"]))
    if n < 3 * args.batch_size:  # the naive loop times from its third batch on
        print(f"throughput.py: --images/--batch-size: {n} training images make fewer than 3 batches of "
              f"{args.batch_size}; use --images >= {3 * args.batch_size} or a smaller --batch-size", file=sys.stderr)
        return 2
    train = dataset.splits["train"]
    split = Split(train.images[:n].to(device), train.masks[:n].to(device), train.ids[:n])
    rows = detect_layout(Path(args.data)).pairs["train"][:n]
    k = dataset.num_classes
    print(f"device {device} ({torch.get_num_threads()} threads), precision {precision}, {size[0]} px, "
          f"batch {args.batch_size}, {n} images per measurement, best of {args.rounds} rounds, torch {torch.__version__}")
    hardware = device_name(device)
    if device.type == "cpu":
        # The ratios depend on this: without native bf16, (a) and (b) run fp32 like (c).
        hardware += f"; native bf16 (AVX512-BF16/AMX): {'yes' if cpu_has_native_bf16() else 'no'}"
    print(hardware)
    header = f"{'model':10} {'(a) compute':>12} {'(b) ablate':>11} {'(c) naive':>10} {'b/a':>6} {'b/c':>6}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name, k, **MODELS[name]).to(device, memory_format=torch.channels_last)
        optimizer = make_optimizer(model, lr=1e-3, weight_decay=1e-4)  # what engine.fit uses
        x = torch.rand(args.batch_size, 3, *size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, k, (args.batch_size, *size), device=device)
        steps = max(1, n // args.batch_size)
        naive_model = create_model(name, k, **MODELS[name]).to(device)
        a = b = c = 0.0
        for _ in range(args.rounds):
            a = max(a, compute_only(model.train(), x, y, optimizer, precision, steps))
            b = max(b, ablate_path(model, split, optimizer, precision, args.batch_size))
            c = max(c, naive_loop(naive_model, rows, size, args.batch_size, device))
        print(f"{name:10} {a:12.1f} {b:11.1f} {c:10.1f} {b / a:6.2f} {b / c:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

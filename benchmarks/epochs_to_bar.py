"""How many epochs does each architecture need before it clears the learning bar, and what
does an epoch cost? A lower bound on the wall time of a grid in which every cell learns.

For each model, one cell (toggles off, seed 0) of the default study's settings (its
[model_train.MODEL] and [model_args.MODEL] tables; --image-size overrides the size) trains
for up to --max-epochs with early stopping off, on one thread. Per epoch the working-size val
curve is judged against the bar of `benchmarks/learning_bar.py` (val mIoU >= 2 x the
all-majority mIoU and val pixel accuracy above the majority share). Printed per model: the
first epoch that clears the bar, CPU seconds per epoch (process time: training, validation and
the epoch's bookkeeping, so the figure holds on a loaded machine), and cells x epochs x seconds:
what that architecture's cells need at least (a toggle-off cell is the easiest of its 8:
augmentation and weighted loss slow learning down in every run measured). The sum divided by
the cores is a lower bound on the wall time of a grid where every cell learns.

    python benchmarks/epochs_to_bar.py                      # every model of studies/quick.toml
    python benchmarks/epochs_to_bar.py --models resnet18 --max-epochs 30
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ablate import grid as grids
from ablate.data import fingerprint, load_dataset
from ablate.engine import cpu_has_native_bf16, fit
from ablate.record import device_name
from ablate.stats import majority_bar
from ablate.workers import cores

REPO = Path(__file__).resolve().parent.parent


def first_passing_epoch(curves: list[dict], bar: dict) -> int | None:
    for row in curves:
        miou, acc = row.get("val_miou"), row.get("val_pixel_acc")
        if miou is not None and acc is not None and miou >= 2 * bar["miou"] and acc > bar["pixel_acc"]:
            return row["epoch"]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=REPO / "studies" / "quick.toml")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--max-epochs", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=None, help="Override every model's working size.")
    parser.add_argument("--budget-seconds", type=float, default=240.0, help="Wall-time goal to compare with [240].")
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = grids.read_grid_study(args.study)
    models = args.models or list(study.models)
    cells = grids.expand(study, fingerprint(study.train.data), grids.resolve_execution(study.train))
    seeds = len({c.config.seed for c in cells})
    print(f"{device_name(torch.device('cpu'))}; {cores()} cores; native bf16: {cpu_has_native_bf16()}; "
          f"1 thread per run; study {args.study.name}; up to {args.max_epochs} epochs", flush=True)
    print(f"{'model':<9} {'size':>5} {'batch':>5} {'lr':>7} {'epoch':>5} {'val mIoU':>8} {'floor':>6} {'s/epoch':>7} "
          f"{'cells x s':>9}  curve (val mIoU per epoch)")
    total = 0.0
    for model in models:
        cfg = grids.model_config(study, model).replace(epochs=args.max_epochs, patience=0, seed=0,
                                                       scheduler=False, augment=False, weighted_loss=False)
        if args.image_size:
            cfg = cfg.replace(image_size=(args.image_size, args.image_size))
        dataset = load_dataset(cfg.data, image_size=cfg.image_size, cache_dir=REPO / "results" / ".cache")
        start = time.process_time()
        record = fit(cfg, dataset, quiet=True)
        per_epoch = (time.process_time() - start) / max(1, len(record["curves"]))
        bar = majority_bar(record["dataset"])
        epoch = first_passing_epoch(record["curves"], bar)
        cells_per_model = sum(c.config.model == model for c in cells) // seeds  # its settings, one seed
        need = cells_per_model * (epoch or args.max_epochs) * per_epoch
        total += need
        curve = " ".join(f"{c['val_miou']:.2f}" for c in record["curves"])
        print(f"{model:<9} {cfg.image_size[0]:>5} {cfg.batch_size:>5} {cfg.lr:>7.0e} "
              f"{epoch if epoch else '>' + str(args.max_epochs):>5} "
              f"{record['curves'][-1]['val_miou']:8.3f} {2 * bar['miou']:6.3f} {per_epoch:7.1f} "
              f"{('' if epoch else '>') + f'{need:.0f}':>9}  {curve}", flush=True)
    print(f"\nlower bound for every cell to learn: {total:.0f} core-seconds = {total / cores():.0f} s wall on {cores()} "
          f"cores at perfect parallelism, excluding start-up and evaluation overhead; goal {args.budget_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

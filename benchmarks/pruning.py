"""Does pruning pay? The same search (model, space, data, seed, sampler seed, trial count) run
twice through `ablate.tune`, once with a pruner and once without, then compared:

    total epochs trained, wall time and best val mIoU of each, and their ratios.

Goal: the pruned search reaches a best val mIoU within 0.01 of the unpruned one while
training at most 1/3 of its epochs.

    .venv/bin/python benchmarks/pruning.py --n-trials 20 --epochs 6
    .venv/bin/python benchmarks/pruning.py --n-trials 4 --epochs 2 --image-size 32   # smoke test

Each invocation works in a fresh folder (results/bench-pruning/<time>/ by default), so both
searches start empty; the studies stay there for optuna-dashboard.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ablate import tune as tuning
from ablate.config import TrainConfig, parse_image_size

GOAL_BEST_GAP = 0.01
GOAL_EPOCH_RATIO = 1 / 3


def run_search(*, name: str, pruner: str, args: argparse.Namespace, folder: Path) -> dict:
    base = TrainConfig(model=args.model, data=args.data, image_size=parse_image_size(args.image_size),
                       epochs=args.epochs, patience=args.patience, seed=args.seed)
    space = tuning.default_space(args.model)
    if args.study:
        _, overrides = tuning.read_study_file(args.study)
        space, fixed = tuning.apply_overrides(args.model, space, overrides)
        base = tuning.config_for(base, fixed)
    spec = tuning.TuneSpec(study_name=name, storage=f"sqlite:///{folder}/{name}.db", results_dir=folder, space=space,
                           base=base, n_trials=args.n_trials, pruner=pruner, sampler=args.sampler,
                           cache_dir=Path(args.cache_dir))
    print(f"\n== {name}: {args.model}, {args.n_trials} trials of at most {args.epochs} epochs, pruner {pruner}", flush=True)
    start = time.perf_counter()
    study = tuning.tune(spec, echo=lambda line: print(line, flush=True))
    wall = time.perf_counter() - start
    counts = tuning.counts(study)
    best = tuning.best_trial(study)
    return {
        "search": name, "trials": len(study.trials), "complete": counts["COMPLETE"], "pruned": counts["PRUNED"],
        "failed": counts["FAIL"], "epochs": sum(t.user_attrs.get("epochs_run") or 0 for t in study.trials),
        "wall": wall, "best": best.value if best else float("nan"),
    }


def report(pruned: dict, unpruned: dict) -> str:
    head = f"{'search':<12} {'trials':>6} {'complete':>8} {'pruned':>6} {'failed':>6} {'epochs':>6} {'wall s':>8}  best val mIoU"
    lines = [head, "-" * len(head)]
    for row in (pruned, unpruned):
        lines.append(f"{row['search']:<12} {row['trials']:>6} {row['complete']:>8} {row['pruned']:>6} {row['failed']:>6} "
                     f"{row['epochs']:>6} {row['wall']:>8.1f}  {row['best']:.4f}")
    epoch_ratio = pruned["epochs"] / max(unpruned["epochs"], 1)
    wall_ratio = pruned["wall"] / max(unpruned["wall"], 1e-9)
    gap = pruned["best"] - unpruned["best"]
    met = gap >= -GOAL_BEST_GAP and epoch_ratio <= GOAL_EPOCH_RATIO
    lines += [
        f"ratio {pruned['search']} / {unpruned['search']}: epochs {epoch_ratio:.2f}, wall time {wall_ratio:.2f}; "
        f"best val mIoU difference {gap:+.4f}",
        f"goal (best within {GOAL_BEST_GAP} of unpruned, epochs <= 1/3): {'met' if met else 'NOT met'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="custom")
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="max epochs per trial")
    parser.add_argument("--patience", type=int, default=3, help="early stopping on val loss (both searches)")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--image-size", default="64")
    parser.add_argument("--seed", type=int, default=0, help="training seed and sampler seed of both searches")
    parser.add_argument("--sampler", choices=tuning.SAMPLERS, default="tpe")
    parser.add_argument("--pruner", choices=[p for p in tuning.PRUNERS if p != "none"], default="hyperband")
    parser.add_argument("--study", default=None, help="a study TOML whose [tune] table narrows the space")
    parser.add_argument("--out", default=None, help="working folder [default: results/bench-pruning/<time>]")
    parser.add_argument("--cache-dir", default="results/.cache")
    args = parser.parse_args()

    folder = Path(args.out or Path("results") / "bench-pruning" / time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    pruned = run_search(name=args.pruner, pruner=args.pruner, args=args, folder=folder)
    unpruned = run_search(name="none", pruner="none", args=args, folder=folder)
    print(f"\npruning benchmark: {args.model}, data {args.data}, {args.image_size} px, {args.n_trials} trials, "
          f"<= {args.epochs} epochs, seed {args.seed}, sampler {args.sampler}; studies in {folder}")
    print(report(pruned, unpruned))


if __name__ == "__main__":
    main()

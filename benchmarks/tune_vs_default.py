"""Is tuning ever worse than not tuning? On real data (rocks-voc), the configuration a user runs
without tuning is trained once, then `ablate tune` searches for a fixed wall-time budget
(`--timeout`) from it, as a study file whose [train] and [model_args.MODEL] hold that
configuration makes it do (its default trial). The default configuration is issue 24's plain
one (U-Net 16 wide, lr 1e-3, batch 8, weight decay 1e-4, no toggles); `--start ''` uses the
tuner's own defaults instead (TrainConfig's, and unet's width 64 clipped into the space: 32,
the space's slowest corner). Prints both val mIoUs and their test mIoUs, the search's trial
counts and wall times, the machine, and whether

    tuner best val mIoU >= the default configuration's val mIoU      (the goal)

which holds by construction when the tuner's first trial (the default configuration, same seed)
reproduces the lone run: the script says whether it did.

    .venv/bin/python benchmarks/tune_vs_default.py                       # ~20 min on 2 busy cores
    .venv/bin/python benchmarks/tune_vs_default.py --budget 1500 --epochs 30 --image-size 128x160

Each invocation works in a fresh folder (results/bench-tune-vs-default/<time>/ by default).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from grid_overhead import machine  # the machine line every benchmark prints

from ablate import tune as tuning
from ablate.config import TOGGLES

REPO = Path(__file__).resolve().parents[1]
PLAIN = "lr=1e-3,batch_size=8,weight_decay=1e-4,base_channels=16"  # issue 24's plain U-Net configuration


def resolve(args: argparse.Namespace, folder: Path) -> tuning.TuneSpec:
    """The tune `ablate tune --model M --data D --image-size S --epochs E --timeout B` resolves to."""
    flags = {"model": args.model, "data": args.data, "image_size": args.image_size, "epochs": args.epochs,
             "timeout": args.budget, "n_trials": args.max_trials, "seed": args.seed, "precision": "auto",
             "device": "auto", "compile": False, "ignore_index": 255, **{t: False for t in TOGGLES}}
    spec = tuning.resolve_spec(flags, given=set(flags), study_file=None, workers=args.workers, storage=None,
                               results_dir=folder)
    return dataclasses.replace(spec, start=parse_start(args.start))


def parse_start(text: str) -> dict:
    """'lr=1e-3,batch_size=8' -> {'lr': 0.001, 'batch_size': 8} (a study file's values for trial 0)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {key.strip(): float(value) if "." in value or "e" in value else int(value) for key, value in pairs}


def run_default(spec: tuning.TuneSpec, dataset) -> dict:
    """The default configuration, trained once as `ablate train` would (no pruning)."""
    from ablate.engine import fit

    params, notes = tuning.default_trial(spec.space, spec.base, spec.start)
    config = tuning.config_for(spec.base, params)
    print(f"\n== default configuration (trained once): {tuning.describe_params(params)}", flush=True)
    for note in notes:
        print(f"note: {note}", flush=True)
    start = time.perf_counter()
    record = fit(config, dataset, quiet=True, cache_dir=spec.cache_dir, checkpoint=False)
    return {"val": record["metrics"]["val"]["miou"], "test": (record["metrics"].get("test") or {}).get("miou"),
            "wall": time.perf_counter() - start, "epochs": record["stopped_epoch"], "params": params}


def run_tuner(spec: tuning.TuneSpec, dataset) -> dict:
    print(f"\n== ablate tune: {spec.base.model}, at most {spec.base.epochs} epochs per trial, --timeout {spec.timeout:g}",
          flush=True)
    start = time.perf_counter()
    study = tuning.tune(spec, echo=lambda line: print(line, flush=True))
    wall = time.perf_counter() - start
    best, counts = tuning.best_trial(study), tuning.counts(study)
    first = study.trials[0]
    return {"val": best.value, "test": best.user_attrs.get("test_miou"), "wall": wall, "number": best.number,
            "params": best.params, "complete": counts["COMPLETE"], "pruned": counts["PRUNED"], "failed": counts["FAIL"],
            "first_val": first.value if first.state.name == "COMPLETE" else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "rocks-voc"))
    parser.add_argument("--model", default="unet")
    parser.add_argument("--image-size", default="32")
    parser.add_argument("--epochs", type=int, default=6, help="max epochs per run")
    parser.add_argument("--budget", type=float, default=600.0, help="the tuner's --timeout in seconds [600]")
    parser.add_argument("--max-trials", type=int, default=1000, help="--n-trials: high, so the budget ends the search")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", default=PLAIN, help=f"the default configuration's searched values [{PLAIN}]")
    parser.add_argument("--out", default=None, help="working folder [default: results/bench-tune-vs-default/<time>]")
    args = parser.parse_args()

    folder = Path(args.out or REPO / "results" / "bench-tune-vs-default" / time.strftime("%Y%m%d-%H%M%S"))
    spec = resolve(args, folder)
    print(machine(), flush=True)
    dataset = tuning.load_dataset_for(spec)
    default = run_default(spec, dataset)
    tuned = run_tuner(spec, dataset)
    print(f"\ntune vs default: {args.model} on {args.data}, {args.image_size} px, <= {args.epochs} epochs, "
          f"seed {args.seed}, --timeout {args.budget:g} s, {args.workers} worker(s), --start {args.start!r}; "
          f"study in {folder}")
    print(machine())
    print(f"default     val mIoU {default['val']:.4f}  test mIoU {default['test']:.4f}  "
          f"{default['epochs']} epochs  {default['wall']:.0f} s  {tuning.describe_params(default['params'])}")
    print(f"tuner best  val mIoU {tuned['val']:.4f}  test mIoU {tuned['test']:.4f}  trial {tuned['number']}  "
          f"{tuned['complete']} complete, {tuned['pruned']} pruned, {tuned['failed']} failed  {tuned['wall']:.0f} s  "
          f"{tuning.describe_params(tuned['params'])}")
    same = tuned["first_val"] is not None and abs(tuned["first_val"] - default["val"]) < 1e-9
    print(f"the tuner's first trial reproduced the default run: {'yes' if same else 'no'} "
          f"(val mIoU {tuned['first_val']})")
    met = tuned["val"] >= default["val"]
    print(f"goal (tuner best val mIoU >= default's): {'met' if met else 'NOT met'} ({tuned['val'] - default['val']:+.4f})")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())

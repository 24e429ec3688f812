"""Did every cell of a grid learn? Per cell: val mIoU against twice an all-majority
prediction's mIoU, and val pixel accuracy against the majority class's share, both from
the val split's class frequencies in the cell's own run record (its image size's).

    python benchmarks/learning_bar.py                     # time `ablate grid` (default study) in a
                                                          # fresh results dir, then the table
    python benchmarks/learning_bar.py --results-dir results --study-name quick --no-run
    python benchmarks/learning_bar.py -- --study studies/quick.toml --seeds 2   # args for ablate grid

Exit status 1 when a cell misses the bar (or did not complete).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bar:
    majority_share: float  # val pixels of the most frequent class (void excluded)
    majority_miou: float  # mIoU of predicting that class everywhere: share / classes present

    @property
    def miou_floor(self) -> float:
        return 2 * self.majority_miou


def learning_bar(val_frequency: list[float]) -> Bar:
    """The bar from the val split's per-class pixel fractions (the all-majority prediction's
    scores as `ablate.stats.majority_bar` computes them for the report's flags)."""
    from ablate.stats import majority_bar

    base = majority_bar({"split_class_frequency": {"val": val_frequency}})
    if base is None:
        raise ValueError("the val split has no labelled pixels")
    return Bar(majority_share=base["pixel_acc"], majority_miou=base["miou"])


def passes(bar: Bar, *, val_miou: float | None, val_pixel_acc: float | None) -> bool:
    """mIoU at least twice the all-majority mIoU and pixel accuracy above the majority share."""
    if val_miou is None or val_pixel_acc is None or val_miou != val_miou or val_pixel_acc != val_pixel_acc:
        return False
    return val_miou >= bar.miou_floor and val_pixel_acc > bar.majority_share


def cell_table(results_dir: Path, study_name: str) -> list[dict]:
    """One row per cell of the study's runs.csv, with its bar and verdict."""
    import pandas as pd

    folder = Path(results_dir) / study_name
    runs = pd.read_csv(folder / "runs.csv")
    rows = []
    for _, run in runs.iterrows():
        run_dir = run.get("run_dir")  # the attempt that speaks for the cell (runs/<cell_id>/<trial>/)
        record_file = folder / (run_dir if isinstance(run_dir, str) else f"runs/{run['cell_id']}") / "run.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        dataset = record.get("dataset") or {}
        val = (record.get("metrics") or {}).get("val") or {}
        frequency = (dataset.get("split_class_frequency") or {}).get("val")
        bar = learning_bar(frequency) if frequency else None
        miou, acc = val.get("miou"), val.get("pixel_acc")
        rows.append({
            "model": run["model"], "toggles": run["toggles"], "seed": int(run["seed"]), "status": run["status"],
            "image_size": "x".join(map(str, dataset.get("image_size") or [])), "val_miou": miou,
            "val_pixel_acc": acc, "miou_floor": bar.miou_floor if bar else None,
            "acc_floor": bar.majority_share if bar else None, "best_epoch": record.get("best_epoch"),
            "epochs": (record.get("config") or {}).get("epochs"),
            "seconds": (record.get("timing") or {}).get("seconds"),
            "passes": bool(bar) and run["status"] == "completed" and passes(bar, val_miou=miou, val_pixel_acc=acc),
        })
    return rows


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def print_table(rows: list[dict]) -> None:
    width = max([7] + [len(r["toggles"]) for r in rows])
    print(f"{'model':<8}  {'toggles':<{width}}  {'seed':>4}  {'size':>7}  {'val mIoU':>8}  {'>= floor':>8}  "
          f"{'val acc':>7}  {'> share':>7}  {'best/ep':>7}  {'seconds':>7}  bar")
    for r in rows:
        print(f"{r['model']:<8}  {r['toggles']:<{width}}  {r['seed']:>4}  {r['image_size']:>7}  {_num(r['val_miou']):>8}  "
              f"{_num(r['miou_floor']):>8}  {_num(r['val_pixel_acc']):>7}  {_num(r['acc_floor']):>7}  "
              f"{str(r['best_epoch']) + '/' + str(r['epochs']):>7}  {_num(r['seconds'], 1):>7}  "
              f"{'pass' if r['passes'] else 'FAIL' if r['status'] == 'completed' else r['status']}")
    passed = sum(r["passes"] for r in rows)
    seconds = sum(r["seconds"] or 0.0 for r in rows)
    unfinished = sum(r["status"] != "completed" for r in rows)
    print(f"\n{passed}/{len(rows)} cells pass" + (f" ({unfinished} not completed)" if unfinished else "") + "; per-model: " + ", ".join(
        f"{m} {sum(r['passes'] for r in rows if r['model'] == m)}/{sum(r['model'] == m for r in rows)}"
        for m in dict.fromkeys(r["model"] for r in rows)) + f"; training seconds summed over cells: {seconds:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=None, help="[default: a fresh temporary folder]")
    parser.add_argument("--study-name", default="quick")
    parser.add_argument("--no-run", action="store_true", help="Only read an existing study's tables.")
    parser.add_argument("grid_args", nargs="*", help="Passed to `ablate grid` (after --).")
    args = parser.parse_args()
    results = args.results_dir or Path(tempfile.mkdtemp(prefix="learning-bar-"))
    if not args.no_run:
        command = [sys.executable, "-m", "ablate", "grid", "--results-dir", str(results), *args.grid_args]
        print("$ " + " ".join(command), flush=True)
        start = time.perf_counter()
        proc = subprocess.run(command)
        wall = time.perf_counter() - start
        print(f"\nablate grid: exit {proc.returncode}, {wall:.0f} s wall\n", flush=True)
    rows = cell_table(results, args.study_name)
    print_table(rows)
    return 0 if rows and all(r["passes"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

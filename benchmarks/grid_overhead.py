"""Where does a grid's wall time go, and how should a machine's cores be split?

Runs the same `ablate grid` twice, side by side in one invocation, each in a fresh results
folder: one worker process with every core as torch threads, and `--workers auto` (here: one
process per core, one thread each). For each it prints

  wall          seconds from the command's start to its exit (start-up, dataset synthesis,
                claiming, tables and checkpoint writes included)
  cells         the cells' own seconds (each run record's timing: model build, training,
                validation, final metrics), summed, divided by the worker count
  share         cells / wall: the part of the wall time the workers spent inside cells (goal >= 0.92)
  report s      of the wall, the seconds the grid spent writing report.html at the end (from the
                times its "results:" and "report:" lines were printed); "share w/o report" leaves them out
  checkpoints   bytes of the checkpoints the grid left: best.pt artifacts still in the artifact
                store plus any *.pt under the study folder (the dataset cache is not counted)

and where the rest of the wall time went, from the trials' start and completion times:

  start s       command start -> the first trial claimed (imports, study, data, worker start-up)
  in-trial s    per worker, a trial's span (claim -> complete) minus its cell's seconds: the
                gallery predictions, the checkpoint write and upload, the storage writes
  idle s        per worker, the rest between the first claim and the last completion (waiting
                for a claim, a later worker's own start-up, the tail where one worker has no
                cell left)
  end s         the last completion -> the command's exit (tables, report, exit)

cells + start + in-trial + idle + end = wall when no cell was retried (a failed attempt's
seconds are not in runs.csv, so they count as idle).

and the wall-time ratio of the two arrangements.

    python benchmarks/grid_overhead.py                                  # the default study
    python benchmarks/grid_overhead.py -- --study studies/quick.toml --models unet   # args for ablate grid
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine() -> str:
    import torch

    from ablate.engine import cpu_has_native_bf16
    from ablate.record import device_name
    from ablate.workers import cores

    return (f"{device_name(torch.device('cpu'))}; {cores()} cores; native bf16: {cpu_has_native_bf16()}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads by default); python {platform.python_version()}")


def run_grid(label: str, workers: str, grid_args: list[str], *, study_name: str) -> dict:
    results = Path(tempfile.mkdtemp(prefix=f"grid-overhead-{label}-"))
    command = [sys.executable, "-m", "ablate", "grid", "--results-dir", str(results), "--workers", workers, *grid_args]
    print("$ " + " ".join(command), flush=True)
    started, start = time.time(), time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [(time.perf_counter() - start, line) for line in proc.stdout]  # (when it was printed, the line)
    proc.wait()
    wall = time.perf_counter() - start
    stdout = "".join(line for _, line in lines)
    used = _workers_used(stdout)
    runs = list(csv.DictReader((results / study_name / "runs.csv").open()))
    seconds = sum(float(r["seconds"]) for r in runs if r.get("seconds"))
    return {"label": label, "exit": proc.returncode, "wall": wall, "cells": seconds / used, "workers": used,
            "runs": len(runs), "report": _report_seconds(lines), "checkpoints": _checkpoint_bytes(results, study_name),
            "folder": results, **_phases(results, study_name, started, wall, used, runs)}


def _phases(results: Path, study_name: str, started: float, wall: float, workers: int, runs: list[dict]) -> dict:
    """Start, in-trial overhead, idle and end seconds (see the module docstring), from the
    trials' datetime_start/datetime_complete (this machine's clock, like `started`)."""
    from ablate import grid as grids

    url = json.loads((results / study_name / "study.json").read_text())["storage"]
    spans = [(t.datetime_start.timestamp() - started, t.datetime_complete.timestamp() - started,
              float(t.user_attrs.get("seconds") or 0.0), t.number)
             for t in grids.GridStorage(url, study_name).trials() if t.datetime_start and t.datetime_complete]
    if not spans:  # no trial finished: nothing to split (the exit column says why)
        return {"start": wall, "in_trial": 0.0, "idle": 0.0, "end": 0.0}
    kept = {int(r["trial_number"]) for r in runs if r.get("trial_number")}
    first, last = min(a for a, _, _, _ in spans), max(b for _, b, _, _ in spans)
    in_trial = sum(b - a - s for a, b, s, _ in spans) / workers
    cells = sum(s for _, _, s, n in spans if n in kept or not kept) / workers  # the runs.csv rows' seconds
    return {"start": first, "in_trial": in_trial, "idle": (last - first) - cells - in_trial, "end": wall - last}


def _report_seconds(lines: list[tuple[float, str]]) -> float:
    when = {key: t for t, line in lines for key in ("results:", "report:") if line.startswith(key)}
    return when["report:"] - when["results:"] if len(when) == 2 else 0.0


def _checkpoint_bytes(results: Path, study_name: str) -> int:
    from ablate import grid as grids
    from ablate import store

    folder = results / study_name
    url = json.loads((folder / "study.json").read_text())["storage"]
    artifacts = folder / store.ARTIFACT_DIR
    ids = {store.artifact_ids(t.system_attrs).get("best.pt") for t in grids.GridStorage(url, study_name).trials()}
    stored = sum((artifacts / aid).stat().st_size for aid in ids if aid and (artifacts / aid).is_file())
    return stored + sum(p.stat().st_size for p in folder.rglob("*.pt"))


def _workers_used(stdout: str) -> int:
    """The worker count the grid announced ("study quick: ..., 2 workers; storage ...")."""
    found = re.search(r"(\d+) workers?;", stdout)
    if not found:
        raise SystemExit(f"grid_overhead.py: `ablate grid` did not say how many workers it ran:\n{stdout[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study-name", default="quick", help="The study's name (as in its TOML) [quick].")
    parser.add_argument("grid_args", nargs="*", help="Passed to `ablate grid` (after --).")
    args = parser.parse_args()
    print(machine(), flush=True)
    rows = [run_grid("one-process", "1", args.grid_args, study_name=args.study_name),
            run_grid("auto", "auto", args.grid_args, study_name=args.study_name)]
    print(f"\n{'arrangement':<12} {'workers':>7} {'runs':>4} {'exit':>4} {'wall s':>7} {'cells s':>7} {'share':>6} "
          f"{'report s':>8} {'share w/o report':>16} {'checkpoints':>11}")
    for r in rows:
        print(f"{r['label']:<12} {r['workers']:>7} {r['runs']:>4} {r['exit']:>4} {r['wall']:7.1f} {r['cells']:7.1f} "
              f"{r['cells'] / r['wall']:6.1%} {r['report']:8.1f} {r['cells'] / (r['wall'] - r['report']):16.1%} "
              f"{r['checkpoints'] / 1e6:9.1f} MB")
    one, auto = rows
    print(f"\n{'arrangement':<12} {'start s':>7} {'in-trial s':>10} {'idle s':>6} {'end s':>5}   (the wall's other seconds)")
    for r in rows:
        print(f"{r['label']:<12} {r['start']:7.1f} {r['in_trial']:10.1f} {r['idle']:6.1f} {r['end']:5.1f}")
    print(f"\nwall one-process / auto: {one['wall'] / auto['wall']:.2f}x; results left in {one['folder']} and {auto['folder']}")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

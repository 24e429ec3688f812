"""Do five of the grid's speed mechanisms earn their place (STYLE.md habit 13: keep one only
where it saves >= 5% of a real workload's wall time)?

Each mechanism's own seconds are measured directly, side by side in one invocation, and
divided by the wall time of two workloads:

  default   `ablate grid` with no arguments (studies/quick.toml: 4 architectures x 8 toggle
            settings, 1 seed, synthetic data, --workers auto = 2 one-thread workers on 2 cores).
            Its wall: --default-wall, else docs/measurements.md's 215 s (machine C, 2-core AMD
            EPYC without BF16, fresh clone, idle), or measured once here with --measure-walls.
  rocks-voc the same 8 toggle settings of a 16-wide U-Net on rocks-voc at 128 px, 2 workers.
            Too long to run here: its wall is SCALED from one measured 2-epoch run
            (`ablate train ... --epochs 2`, one thread as a grid worker has): 8 cells x the
            study's epochs x the training seconds per epoch / 2 workers (training passes
            only, so a lower bound), unless --real-wall gives it.

Every saving is taken at its upper end (the most a mechanism can save) and every wall at its
lower end, so a "delete" verdict holds even where the measurement errs:

  finish_together  the grid's claim path (cell_states, expected_seconds, longest_first) replayed
                   on 2 simulated workers, `finish_together` vs the plain longest-first pick
                   (`waiting[0]`); saving = the difference of the makespans. Repeats: the
                   nominal cell seconds, then draws with --jitter relative noise per cell.
  forked render    the default study's three synthetic splits by `synthetic.generate_split`
                   (forked helpers) vs `synthetic._render_images` over all indices in this
                   process (the serial path; the arrays are checked identical). Paid once per
                   grid, in the parent, before the first cell; none for rocks-voc.
  report pre-warm  in a fresh process holding what the grid's parent holds (torch, the grid
                   command), the seconds of `from ablate import report` + `report.warm_up()`:
                   the most the pre-warm can take off the end of a grid.
  fast_exit        a fresh process with torch + ablate.engine (a worker), and one with the
                   grid command and the report as well (the parent): seconds from its last
                   line to its exit, normal exit minus `workers.fast_exit(0)`. A grid waits for
                   two such exits: the last worker's and its own.
  keeps_checkpoint `_io.torch_save` of each architecture's checkpoint (its state_dict at the
                   study's model args), `store.attach` into an Optuna FileSystemArtifactStore,
                   unlink: seconds x the runs that skip it (default: 27 of 32, as measured,
                   "5 of 32 runs wrote one"; rocks-voc: 7 of 8) / 2 workers; and the disk.

    python benchmarks/mechanisms.py                        # ~6 min on 2 idle cores (the rocks-voc run: most of it)
    python benchmarks/mechanisms.py --measure-walls        # also one default grid (~4 min more)
    python benchmarks/mechanisms.py --real-wall 1200 --repeats 3
"""
from __future__ import annotations

import argparse
import csv
import datetime
import heapq
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch  # before the rendering is timed: the grid's parent has torch loaded when it forks
from optuna.trial import FrozenTrial, TrialState

from ablate import grid as grids

REPO = Path(__file__).resolve().parent.parent
ROCKS = REPO.parent / "shared" / "data" / "rocks-voc"
KEEP_SHARE = 0.05  # the rule: keep what saves at least this share of either workload's wall
WORKERS = 2  # --workers auto on 2 cores, both workloads

# The default grid's wall and cells on machine C (docs/measurements.md: `/usr/bin/time ablate grid`
# from a fresh clone, idle; and benchmarks/grid_overhead.py's cells' own seconds per worker).
DOCS_DEFAULT_WALL = 215.0
DOCS_CELL_SECONDS_PER_WORKER = 236.2
# One thread's seconds per epoch on machine C (studies/quick.toml, from benchmarks/epochs_to_bar.py):
# the cells' relative lengths, scaled so that they add up to the measured cells' seconds.
DOCS_EPOCH_SECONDS = {"unet": 2.0, "baseline": 3.1, "custom": 4.2, "resnet18": 6.7}
DEFAULT_SKIPS = 27  # runs of the default grid that write no checkpoint (measured: 5 of 32 wrote one)
ROCKS_SKIPS = 7  # of the rocks-voc workload's 8 cells: all but one
ROCKS_MODEL_ARGS = {"base_channels": 16}


class Row(NamedTuple):
    name: str
    default: list[float]  # seconds saved of the default grid's wall, one per repeat
    rocks: list[float]  # the same for the rocks-voc workload
    note: str


def machine() -> str:
    from ablate.engine import cpu_has_native_bf16
    from ablate.record import device_name
    from ablate.workers import cores

    return (f"{device_name(torch.device('cpu'))}; {cores()} cores; native bf16: {cpu_has_native_bf16()}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads by default); "
            f"python {platform.python_version()}; load average {os.getloadavg()[0]:.1f}")


# --------------------------------------------------------------------------- 1. finish_together
def simulate(cells: list, seconds: dict[str, float], pick: Callable, *, max_retries: int) -> tuple[float, float]:
    """(makespan, gap between the workers' last completions) of `cells` whose runs take
    `seconds[cell_id]`, on WORKERS workers that claim as `GridStorage.claim` does (the cells'
    states and expected seconds from the trials so far, waiting cells longest first), `pick`
    choosing among the waiting ones. Trials are built as the storage would hold them."""
    base = datetime.datetime(2000, 1, 1)
    briefs = [c.brief() for c in cells]
    trials: list[FrozenTrial] = []
    free = [(0.0, w) for w in range(WORKERS)]  # (when the worker is next free, worker)
    running: dict[int, int] = {}  # worker -> index of its trial
    last: dict[int, float] = {}
    while free:
        now, w = heapq.heappop(free)
        if w in running:  # its cell is done
            t = trials[running.pop(w)]
            trials[t.number] = _trial(t.number, TrialState.COMPLETE, t.datetime_start, base + datetime.timedelta(seconds=now),
                                      {**t.user_attrs, "seconds": seconds[t.user_attrs["cell_id"]]})
            last[w] = now
        states = grids.cell_states(briefs, trials, max_retries)
        expected = grids.expected_seconds(cells, trials)
        waiting = [c for c in grids.longest_first(cells, trials) if states[c.cell_id].waiting]
        if not waiting:
            continue
        cell = pick(waiting, expected, states, base + datetime.timedelta(seconds=now))
        trials.append(_trial(len(trials), TrialState.RUNNING, base + datetime.timedelta(seconds=now), None,
                             {"cell_id": cell.cell_id, "stopped_epoch": cell.config.epochs}))
        running[w] = len(trials) - 1
        heapq.heappush(free, (now + seconds[cell.cell_id], w))
    return max(last.values()), max(last.values()) - min(last.values())


def _trial(number: int, state: TrialState, start, complete, user_attrs: dict) -> FrozenTrial:
    return FrozenTrial(number=number, state=state, value=0.0 if state == TrialState.COMPLETE else None,
                       datetime_start=start, datetime_complete=complete, params={}, distributions={},
                       user_attrs=user_attrs, system_attrs={}, intermediate_values={}, trial_id=number)


def _longest_first_pick(waiting, expected, states, now):
    return waiting[0]


def _finish_together_pick(waiting, expected, states, now):
    return grids.finish_together(waiting, expected, states, now=now)


def tail_savings(cells: list, nominal: dict[str, float], *, draws: int, jitter: float, max_retries: int,
                 seed: int = 0) -> tuple[list[float], list[float], list[float]]:
    """Per draw (the nominal seconds first, then each cell x exp(N(0, jitter))): the makespan
    saved by finish_together, and the gap between the last completions under each policy."""
    rng = np.random.default_rng(seed)
    saved, gap_lpt, gap_ft = [], [], []
    for d in range(draws):
        noise = np.ones(len(cells)) if d == 0 else np.exp(rng.normal(0.0, jitter, len(cells)))
        secs = {c.cell_id: nominal[c.cell_id] * float(f) for c, f in zip(cells, noise)}
        span_lpt, g_lpt = simulate(cells, secs, _longest_first_pick, max_retries=max_retries)
        span_ft, g_ft = simulate(cells, secs, _finish_together_pick, max_retries=max_retries)
        saved.append(span_lpt - span_ft)
        gap_lpt.append(g_lpt)
        gap_ft.append(g_ft)
    return saved, gap_lpt, gap_ft


def default_cell_seconds(cells: list, runs_csv: Path | None) -> tuple[dict[str, float], str]:
    """Each default cell's seconds: from a default grid's runs.csv (by model and toggles), else
    epochs x DOCS_EPOCH_SECONDS scaled to the cells' measured seconds on machine C."""
    if runs_csv is not None:
        rows = {(r["model"], r["toggles"]): float(r["seconds"]) for r in csv.DictReader(runs_csv.open()) if r.get("seconds")}
        return {c.cell_id: rows[(c.config.model, c.toggles)] for c in cells}, f"measured, {runs_csv}"
    raw = {c.cell_id: c.config.epochs * DOCS_EPOCH_SECONDS[c.config.model] for c in cells}
    scale = WORKERS * DOCS_CELL_SECONDS_PER_WORKER / sum(raw.values())
    return ({k: v * scale for k, v in raw.items()},
            f"machine C: epochs x s/epoch of studies/quick.toml, x{scale:.2f} to the measured "
            f"{WORKERS} x {DOCS_CELL_SECONDS_PER_WORKER} s of cells")


def rocks_cells() -> list:
    """The rocks-voc workload's 8 cells: unet-16, 128 px, the study's toggle settings."""
    rocks = grids.read_grid_study(overrides={"models": "unet", "data": str(ROCKS), "image_size": "128",
                                             "model_arg": [f"unet.{k}={v}" for k, v in ROCKS_MODEL_ARGS.items()]})
    return grids.expand(rocks, "rocks-voc")


def measure_finish_together(study, default_seconds: dict[str, float], rocks_cell_seconds: float, *, draws: int,
                            jitter: float) -> tuple[Row, str]:
    cells = grids.expand(study, "synthetic")
    saved, g_lpt, g_ft = tail_savings(cells, default_seconds, draws=draws, jitter=jitter, max_retries=study.max_retries)
    rocks = rocks_cells()
    r_saved, _, _ = tail_savings(rocks, {c.cell_id: rocks_cell_seconds for c in rocks}, draws=draws, jitter=jitter,
                                 max_retries=study.max_retries)
    detail = (f"gap between the workers' last completions, default grid, median of {draws} draws: "
              f"{statistics.median(g_lpt):.1f} s longest-first, {statistics.median(g_ft):.1f} s finish_together")
    return Row("finish_together", saved, r_saved, "simulated makespan difference"), detail


# --------------------------------------------------------------------------- 2. forked rendering
def measure_rendering(repeats: int) -> tuple[Row, str]:
    from ablate import synthetic

    splits = synthetic.SPLIT_SIZES
    forked, serial, same, processes = [], [], True, set()
    for r in range(repeats):
        runs = {}
        for way in (("forked", "serial") if r % 2 == 0 else ("serial", "forked")):
            start = time.perf_counter()
            if way == "forked":
                processes |= {synthetic._processes(n) for n in splits.values()}  # 1 if a thread of ours runs
                out = {s: synthetic.generate_split(s) for s in splits}
            else:  # generate_split's own job tuple (default seed 0, native size, 6 classes), in this process
                out = {s: synthetic._render_images((zlib.crc32(s.encode("utf-8")), 0, synthetic.NATIVE_SIZE, 6),
                                                   np.arange(n)) for s, n in splits.items()}
            (forked if way == "forked" else serial).append(time.perf_counter() - start)
            runs[way] = out
        same &= all(np.array_equal(a, b) for s in splits for a, b in zip(runs["forked"][s], runs["serial"][s]))
    saved = [s - f for s, f in zip(serial, forked)]
    detail = (f"rendering {dict(splits)}: serial {_span(serial)} s, forked {_span(forked)} s "
              f"(processes per split: {sorted(processes)}); arrays identical: {same}")
    return Row("forked synthetic rendering", saved, [0.0] * repeats, "once per grid; none on rocks-voc"), detail


# --------------------------------------------------------------------------- 3. report pre-warm
WARM_SCRIPT = """
import json, os, time
import torch, ablate.data, ablate.grid.command  # what the grid's parent holds when it warms the report
t0 = time.perf_counter()
from ablate import report as report_stage
t1 = time.perf_counter()
report_stage.warm_up()
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "warm_up": t2 - t1}), flush=True)
os._exit(0)
"""


def measure_warm_up(repeats: int) -> tuple[Row, str]:
    parts = [json.loads(_python(WARM_SCRIPT).splitlines()[-1]) for _ in range(repeats)]
    saved = [p["import"] + p["warm_up"] for p in parts]
    detail = (f"report pre-warm in a fresh process: import {_span([p['import'] for p in parts])} s + "
              f"warm_up() {_span([p['warm_up'] for p in parts])} s")
    return Row("report pre-warm", saved, saved, "at most: runs beside the last cells"), detail


# --------------------------------------------------------------------------- 4. fast_exit
EXIT_SCRIPT = """
import sys, time
import torch, ablate.engine
from ablate import workers
if sys.argv[2] == "parent":  # the grid command at its end: the report written too
    import ablate.grid.command
    from ablate import report
    report.warm_up()
print(time.time(), flush=True)
if sys.argv[1] == "fast":
    workers.fast_exit(0)
"""


def _exit_seconds(how: str, who: str) -> float:
    """Seconds from a fresh process's last line to its exit, as its parent sees it."""
    proc = subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT, how, who], cwd=REPO, stdout=subprocess.PIPE, text=True)
    stamp = float(proc.stdout.readline())
    proc.stdout.read()
    proc.wait()
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"mechanisms.py: the {how} exit of a {who} process failed ({proc.returncode})")
    return end - stamp


def measure_fast_exit(repeats: int) -> tuple[Row, str]:
    teardown = {(how, who): [] for how in ("normal", "fast") for who in ("worker", "parent")}
    for r in range(repeats):
        for how in (("normal", "fast") if r % 2 == 0 else ("fast", "normal")):
            for who in ("worker", "parent"):
                teardown[how, who].append(_exit_seconds(how, who))
    saved = [sum(teardown["normal", who][r] - teardown["fast", who][r] for who in ("worker", "parent"))
             for r in range(repeats)]
    detail = "exit seconds: " + "; ".join(f"{who} {how} {_span(teardown[how, who])}"
                                          for who in ("worker", "parent") for how in ("normal", "fast"))
    return Row("fast_exit", saved, saved, "last worker + parent"), detail


# --------------------------------------------------------------------------- 5. keeps_checkpoint
def checkpoint_cost(model: str, num_classes: int, model_args: dict, image_size: tuple, folder: Path,
                    repeats: int) -> tuple[list[float], int]:
    """Seconds (per repeat) of what a run that keeps its checkpoint does and one that skips it
    does not: write best.pt as `records.write` does, attach it to the trial as `store.attach_run`
    does, remove the local copy; and its size in bytes."""
    import optuna

    from ablate import _io, store
    from ablate.models import create_model

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    net = create_model(model, num_classes=num_classes, **model_args)
    state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}  # the engine's best state
    storage = optuna.storages.InMemoryStorage()
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], f"ckpt-{model}")
    artifacts = store.artifacts(folder / "artifacts")
    seconds, size = [], 0
    for r in range(repeats):
        trial_id = storage.create_new_trial(study_id)
        path = folder / f"{model}-{r}" / "best.pt"
        start = time.perf_counter()
        _io.torch_save(path, {"model_state": state, "config": {"model": model, "model_args": model_args},
                              "num_classes": num_classes, "class_names": [f"class_{k}" for k in range(num_classes)],
                              "image_size": list(image_size)})
        size = path.stat().st_size
        store.attach(storage, trial_id, artifacts.store, path)
        path.unlink()
        seconds.append(time.perf_counter() - start)
    shutil.rmtree(folder / "artifacts", ignore_errors=True)  # a few hundred MB: not kept past the measurement
    return seconds, size


def measure_checkpoints(study, rocks_classes: int, folder: Path, repeats: int) -> tuple[Row, str]:
    per_model = {}
    for model in study.models:
        config = grids.model_config(study, model)
        per_model[model] = checkpoint_cost(model, 6, dict(config.model_args), config.image_size, folder, repeats)
    # the 27 skips: 7 of each architecture's 8 runs, 6 of the cheapest (it wrote the fifth checkpoint)
    cheapest = min(per_model, key=lambda m: statistics.median(per_model[m][0]))
    skips = {m: 7 if m != cheapest else 6 for m in per_model}
    assert sum(skips.values()) == DEFAULT_SKIPS
    default = [sum(skips[m] * per_model[m][0][r] for m in per_model) / WORKERS for r in range(repeats)]
    rocks_s, rocks_size = checkpoint_cost("unet", rocks_classes, ROCKS_MODEL_ARGS, (128, 128), folder, repeats)
    rocks = [ROCKS_SKIPS * s / WORKERS for s in rocks_s]
    disk = sum(skips[m] * per_model[m][1] for m in per_model)
    detail = ("checkpoint write + upload per run: " +
              ", ".join(f"{m} {_span(s)} s ({b / 1e6:.1f} MB)" for m, (s, b) in per_model.items()) +
              f"; rocks-voc unet-16 {_span(rocks_s)} s ({rocks_size / 1e6:.1f} MB). Disk not written (peak: "
              f"prune_checkpoints leaves the same files either way): default {disk / 1e6:.0f} MB ({DEFAULT_SKIPS} runs), "
              f"rocks-voc {ROCKS_SKIPS * rocks_size / 1e6:.1f} MB ({ROCKS_SKIPS} runs)")
    return Row("keeps_checkpoint", default, rocks, f"{DEFAULT_SKIPS}/32 and {ROCKS_SKIPS}/8 skips, / {WORKERS} workers"), detail


# --------------------------------------------------------------------------- the walls
def measure_default_wall(folder: Path) -> tuple[float, Path]:
    """One `ablate grid` with no arguments: its wall seconds and its runs.csv."""
    command = [sys.executable, "-m", "ablate", "grid", "--results-dir", str(folder / "grid")]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mechanisms.py: `ablate grid` exited {done.returncode}")
    return wall, folder / "grid" / "quick" / "runs.csv"


def measure_rocks_epoch(folder: Path) -> tuple[float, dict]:
    """Training seconds per epoch (mean of the curves' rows) of one unet-16 run on rocks-voc at
    128 px, 2 epochs, one thread (a grid worker's share); and its record."""
    out = folder / "rocks-run"
    command = [sys.executable, "-m", "ablate", "train", "--model", "unet", "--model-arg", "base_channels=16",
               "--data", str(ROCKS), "--image-size", "128", "--epochs", "2", "--out", str(out),
               "--cache-dir", str(folder / "cache"), "--quiet"]
    print("$ OMP_NUM_THREADS=1 " + " ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"mechanisms.py: `ablate train` on rocks-voc exited {done.returncode}")
    record = json.loads((out / "run.json").read_text())
    return statistics.mean(c["seconds"] for c in record["curves"]), record


def _rocks_classes(folder: Path) -> int:
    from ablate.data import load_dataset

    return load_dataset(str(ROCKS), image_size=(128, 128), cache_dir=folder / "cache").num_classes


# --------------------------------------------------------------------------- helpers and main
def _python(script: str) -> str:
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True, text=True).stdout


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}/{statistics.median(values):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure-walls", action="store_true", help="Run the default grid once for its wall "
                        "and its cells' seconds (minutes).")
    parser.add_argument("--default-wall", type=float, help=f"The default grid's wall seconds [{DOCS_DEFAULT_WALL}: "
                        "docs/measurements.md, machine C].")
    parser.add_argument("--real-wall", type=float, help="The rocks-voc workload's wall seconds [scaled from a "
                        "measured 2-epoch run].")
    parser.add_argument("--cells-from", type=Path, help="A default grid's runs.csv: its cells' seconds for the "
                        "finish_together simulation [machine C's, from the docs].")
    parser.add_argument("--real-epochs", type=int, help="Epochs per rocks-voc cell [the study's unet epochs].")
    parser.add_argument("--repeats", type=int, default=5, help="Repeats of each timing [5].")
    parser.add_argument("--draws", type=int, default=21, help="Cell-time draws of the finish_together simulation [21].")
    parser.add_argument("--jitter", type=float, default=0.05, help="Relative noise of a cell's seconds in the "
                        "simulation draws [0.05].")
    args = parser.parse_args()
    if not ROCKS.is_dir():
        raise SystemExit(f"mechanisms.py: {ROCKS} not found (the rocks-voc dataset)")

    print(machine(), flush=True)
    study = grids.read_grid_study()
    folder = Path(tempfile.mkdtemp(prefix="mechanisms-"))
    try:
        rendering = measure_rendering(args.repeats)  # first: no thread of ours running yet when it forks
        cells_from = args.cells_from
        if args.measure_walls:
            default_wall, cells_from = measure_default_wall(folder)
            default_source = "measured here, one run"
        elif args.default_wall is not None:
            default_wall, default_source = args.default_wall, "--default-wall"
        else:
            default_wall, default_source = DOCS_DEFAULT_WALL, "docs/measurements.md, machine C (2-core AMD EPYC w/o BF16), idle"
        epochs = args.real_epochs or grids.model_config(study, "unet").epochs
        if args.real_wall is None:
            per_epoch, record = measure_rocks_epoch(folder)
            rocks_classes = record["dataset"]["num_classes"]
            real_wall = 8 * epochs * per_epoch / WORKERS
            real_source = (f"SCALED: 8 cells x {epochs} epochs x {per_epoch:.1f} s/epoch (measured, 2 epochs, "
                           f"{record['environment']['threads']} thread, training passes only) / {WORKERS} workers")
        else:
            real_wall, real_source, rocks_classes = args.real_wall, "--real-wall", _rocks_classes(folder)
        default_seconds, cells_source = default_cell_seconds(grids.expand(study, "synthetic"), cells_from)
        rows_details = [
            measure_finish_together(study, default_seconds, real_wall * WORKERS / 8, draws=args.draws, jitter=args.jitter),
            rendering,
            measure_warm_up(args.repeats),
            measure_fast_exit(args.repeats),
            measure_checkpoints(study, rocks_classes, folder, args.repeats),
        ]
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\nwalls: default grid {default_wall:.0f} s ({default_source}); rocks-voc {real_wall:.0f} s ({real_source})")
    print(f"default grid's cell seconds for the simulation: {cells_source}")
    print(f"repeats: {args.repeats} per timing, {args.draws} draws (jitter {args.jitter:.0%}) per simulation; "
          "min/median; % from the median (max over repeats in brackets); keep: >= 5% of either wall\n")
    print(f"{'mechanism':<27} {'default s min/med':>17} {'% default':>15} {'rocks-voc s min/med':>19} "
          f"{'% rocks-voc':>15}  keep?  how")
    for row, _ in rows_details:
        shares = [(statistics.median(v) / wall, max(v) / wall) for v, wall in ((row.default, default_wall),
                                                                               (row.rocks, real_wall))]
        keep = any(med >= KEEP_SHARE for med, _ in shares)
        print(f"{row.name:<27} {_span(row.default):>17} {shares[0][0]:>6.2%} [{shares[0][1]:>5.2%}] "
              f"{_span(row.rocks):>19} {shares[1][0]:>6.2%} [{shares[1][1]:>5.2%}]  {'yes' if keep else 'no':<5}  {row.note}")
    print()
    for _, detail in rows_details:
        print(f"- {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

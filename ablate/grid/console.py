"""Grid stage, what `ablate grid` and `ablate status` print: a line (or a bar step) per finished
cell, the dry-run listing of the cells, the summary table and the study's progress."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import click
from tqdm import tqdm

from ablate import store, workers
from ablate.grid.claims import GridStorage, Progress, progress
from ablate.grid.definition import Cell, design_lines, settings
from ablate.grid.run import CellResult
from ablate.analysis.sequential import summary_lines
from ablate.seedplan import STAGES_ATTR, SeedPlan, open_cells
from ablate.grid.study import GridStudy
from ablate.grid.tables import write_tables
from ablate.results import CellState, cell_states


class CellPrinter:
    """A tqdm bar over cells on a terminal, else one line per finished cell; refreshes the
    tables after every cell. `[n/N]` counts the cells finished before this command, those its
    workers finished (one step per line, so two cells ending together never print the same
    n), and those other machines finished meanwhile (read from the storage)."""

    def __init__(self, gs: GridStorage, briefs: list[dict], results_dir: Path, max_retries: int, initial: int,
                 plan: SeedPlan | None = None):
        self.gs, self.all_briefs, self.results_dir, self.max_retries = gs, briefs, results_dir, max_retries
        self.plan = plan
        self.briefs = gs.open_briefs(briefs, plan)
        self.looks = self._looks(gs.study_attrs() or {})
        self.tty = sys.stdout.isatty()
        self.bar = tqdm(total=len(briefs), initial=initial, unit="cell", desc="grid", file=sys.stdout,
                        disable=not self.tty, dynamic_ncols=True)
        self.before = {cid for cid, st in self._states().items() if st.status in ("completed", "failed")}
        self.here: set[str] = set()  # cells this command's workers finished
        self.node = workers.identity()["node"]

    def _states(self) -> dict[str, CellState]:
        return cell_states(self.briefs, self.gs.trials(), self.max_retries)

    def _looks(self, attrs: dict) -> dict[str, int]:
        return {m: len(r.get("looks") or []) for m, r in (attrs.get(STAGES_ATTR) or {}).items()}

    def _stage_lines(self) -> list[str]:
        """A line per architecture whose stage was decided since the last cell (sequential seeds)."""
        if self.plan is None:
            return []
        attrs = self.gs.study_attrs() or {}
        looks = self._looks(attrs)
        new = [m for m, k in looks.items() if k != self.looks.get(m, 0)]
        self.looks = looks
        self.briefs = open_cells(self.all_briefs, attrs, self.plan)
        self.bar.total = len(self.briefs)
        return [f"stage: {line}" for line in summary_lines(attrs) if line.split(":")[0] in new]

    def __call__(self, result: CellResult) -> None:
        stage_lines = self._stage_lines()
        states = self._states()
        if result.status == "completed" or states[result.cell_id].status == "failed":  # a retry is not done yet
            self.here.add(result.cell_id)
        elsewhere = {cid for cid, st in states.items() if st.status in ("completed", "failed") and st.trial is not None
                     and (st.trial.user_attrs.get("worker") or {}).get("node") != self.node}
        done = len(self.before | self.here | elsewhere)
        if result.status == "completed":
            what = f"val mIoU {_num(result.val_miou)} test {_num(result.test_miou)}"
        else:
            what = f"FAILED ({result.failure_reason})"
        line = f"[{done}/{len(self.briefs)}] {result.label}: {what} ({result.seconds:.0f}s)"
        for text in [line, *stage_lines]:
            if self.tty:
                self.bar.n = done
                self.bar.refresh()
                self.bar.write(text)
            else:
                click.echo(text)
        quietly(lambda: write_tables(self.gs, self.results_dir))

    def close(self) -> None:
        self.bar.close()


def quietly(fn: Callable[[], object]) -> None:
    """Run a table refresh; a failure is a warning: it must not stop the grid (the final one reports)."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        click.echo(f"warning: tables not refreshed ({type(exc).__name__}: {exc})", err=True)


def print_start(study: GridStudy, cells: list[Cell], start: Progress, url: str, dataset) -> None:
    """The first lines of a run: the study's shape and progress, its workers and storage, the data."""
    click.echo(f"study {study.name}: {_shape(study, cells)}, {start.completed} done, {start.pending} to run; "
               f"{_plural(study.workers, 'worker')}; storage {store.mask_url(url)}")
    click.echo(dataset.describe())


def print_dry_run(study: GridStudy, cells: list[Cell], trials: list, url: str, exists: bool,
                  attrs: dict | None = None) -> None:
    """`--dry-run`: the study's shape and progress, its design, then one line per cell with its
    status (with sequential seeds: the cells open now, `attrs` being the stored study's)."""
    shape = _shape(study, cells)
    if study.sequential is not None:
        opened = {c["cell_id"] for c in open_cells([c.brief() for c in cells], attrs or {}, study.sequential)}
        cells = [c for c in cells if c.cell_id in opened]
    briefs = [c.brief() for c in cells]
    states = cell_states(briefs, trials, study.max_retries)
    p = progress(briefs, trials, study.max_retries)
    click.echo(f"study {study.name}: {shape}; {p.completed} done, {p.pending} pending"
               + (f", {p.running} running" if p.running else "") + (f", {p.failed} failed" if p.failed else ""))
    click.echo(f"storage: {store.mask_url(url)}" + ("" if exists else " (not created yet)"))
    for line in design_lines(study) + ([study.sequential.text() + "; later stages add seeds only to architectures "
                                        "with an undecided effect"] if study.sequential else []):
        click.echo(line)
    names = [c.factors for c in cells[:1]][0] if cells else ()
    columns = [("toggles", lambda c: c.toggles)] if study.toggles or not names else []
    columns += [(k, lambda c, k=k: c.levels[k]) for k in names]
    widths = [max(len(h), *(len(f(c)) for c in cells)) for h, f in columns]
    click.echo(f"{'cell_id':<12}  {'model':<8}  " + "  ".join(f"{h:<{w}}" for (h, _), w in zip(columns, widths))
               + f"  {'seed':>4}  status")
    for cell in cells:
        status = states[cell.cell_id].status
        click.echo(f"{cell.cell_id:<12}  {cell.config.model:<8}  "
                   + "  ".join(f"{f(cell):<{w}}" for (_, f), w in zip(columns, widths))
                   + f"  {cell.config.seed:>4}  {'pending' if status == 'retry' else status}")


def print_summary(summary_csv: Path) -> None:
    """summary.csv as a table on the console: each setting's n and mean ± sd of val and test mIoU."""
    import pandas as pd  # the final table only: a dry run never pays for pandas

    table = pd.read_csv(summary_csv)
    if table.empty:
        click.echo("\nno completed cells")
        return
    table["setting"] = [_setting(t, f) for t, f in zip(table["toggles"], table.get("factors", [None] * len(table)))]
    width = max(7, table["setting"].str.len().max())
    click.echo(f"\n{'model':<8}  {'setting':<{width}}  {'n':>2}  {'val mIoU':<15}  test mIoU")
    for _, row in table.iterrows():
        click.echo(f"{row['model']:<8}  {row['setting']:<{width}}  {int(row['n']):>2}  "
                   f"{_mean_std(row['val_miou_mean'], row['val_miou_std']):<15}  "
                   f"{_mean_std(row['test_miou_mean'], row['test_miou_std'])}")


def print_status(name: str, url: str, p: Progress, stages: list[str] | None = None) -> None:
    """`ablate status`: done / running / failed / pending and the compute time of a grid study;
    with sequential seeds, each architecture's stage (`analysis.sequential.summary_lines`)."""
    click.echo(f"study {name} ({store.mask_url(url)}): {p.cells} cells" + (" open so far" if stages else ""))
    click.echo(f"  done {p.completed}, running {p.running}, failed {p.failed}, pending {p.pending}")
    click.echo(f"  elapsed compute {_duration(p.compute_seconds)}")
    for line in stages or []:
        click.echo(f"  {line}")
    for label, reason in p.failed_cells:
        click.echo(f"  failed: {label}: {reason}")


def _setting(toggles: str, factors) -> str:
    """'scheduler', or with other factors 'loss=dice optimizer=sgd' (toggles first when on)."""
    words = " ".join(f"{k}={v}" for k, v in json.loads(factors).items()) if isinstance(factors, str) and factors else ""
    if not words:
        return toggles
    return words if toggles == "none" else f"{toggles} {words}"


def _shape(study: GridStudy, cells: list[Cell]) -> str:
    """'8 cells (2 models x 4 toggle settings x 1 seed)'."""
    n = len(settings(study))
    what = "toggle setting" if study.design == "full" and not any(len(v) > 1 for v in study.factors.values()) else "setting"
    if study.sequential is not None:
        plan = study.sequential
        return (f"{len(settings(study)) * len(study.models) * plan.min}-{len(cells)} cells "
                f"({_plural(len(study.models), 'model')} x {_plural(n, what)} x {plan.min} to {plan.max} seeds, "
                "added in stages)")
    return (f"{len(cells)} cells ({_plural(len(study.models), 'model')} x {_plural(n, what)}"
            f" x {_plural(len(study.seeds), 'seed')})")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _mean_std(mean, std) -> str:
    return _num(mean) + ("" if std != std else f" ± {std:.3f}")


def _num(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

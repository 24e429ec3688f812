"""Run record stage: the JSON that every other part (grid, tuner, analysis, report) reads,
written atomically beside the best checkpoint."""
from __future__ import annotations

import functools
import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ablate import _io
from ablate.config import TrainConfig
from ablate.errors import AblateError

if TYPE_CHECKING:  # torch is imported where a record is built: reading records (tables, report) needs no torch
    import torch

RECORD_FILE = "run.json"
CHECKPOINT_FILE = "best.pt"
METRIC_KEYS = ("loss", "pixel_acc", "miou", "mean_acc", "mdice", "class_iou", "class_acc")


def build(*, config: TrainConfig, dataset, metrics: dict, curves: list[dict], best_epoch: int | None,
          stopped_epoch: int, status: str, failure_reason: str | None, precision: str, device: torch.device,
          weights_source: str | None, seconds: float, images_per_second: float,
          early_stopping: dict | None = None, resolution: dict | None = None) -> dict:
    """`early_stopping`: what was monitored and how the run ended (engine.EarlyStopping.summary);
    `resolution`: where the per-epoch curves and the final metrics (loss included) were scored,
    e.g. {"curves_resolution": "working size 64x64", "metrics_resolution": "native"}."""
    return {
        "run_id": config.run_id,
        "config": config.to_dict(),
        "dataset": dataset.summary(),
        "metrics": {split: {k: m[k] for k in METRIC_KEYS} for split, m in metrics.items()},
        "curves": curves,
        "best_epoch": best_epoch,
        "stopped_epoch": stopped_epoch,
        "early_stopping": early_stopping,
        **(resolution or {}),
        "timing": {"seconds": seconds, "images_per_second": images_per_second},
        "environment": environment(device, precision),
        "weights": weights_source,
        "status": status,
        "failure_reason": failure_reason,
        "traceback": None,
    }


def failed(config: TrainConfig, *, reason: str, tb: str | None) -> dict:
    """The record of a run that crashed before it could produce metrics."""
    return {
        "run_id": config.run_id, "config": config.to_dict(), "dataset": None, "metrics": {}, "curves": [],
        "best_epoch": None, "stopped_epoch": 0, "early_stopping": None, "curves_resolution": None,
        "metrics_resolution": None, "timing": {"seconds": 0.0, "images_per_second": 0.0},
        "environment": None, "weights": None, "status": "failed", "failure_reason": reason, "traceback": tb,
    }


def write(out_dir: str | Path, record: dict, state: dict | None) -> Path:
    """Checkpoint first, record last: a run.json on disk means the run is complete."""
    out = Path(out_dir)
    if state is not None:
        _io.torch_save(out / CHECKPOINT_FILE, {
            "model_state": state, "config": record["config"], "num_classes": record["dataset"]["num_classes"],
            "class_names": record["dataset"]["class_names"], "image_size": record["dataset"]["image_size"],
        })
    return _io.write_json(out / RECORD_FILE, record)


def read(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / RECORD_FILE).read_text())


def summary(record: dict) -> dict:
    """The flat, scalar view of a record: one row of runs.csv / Optuna user attributes."""
    cfg, metrics = record["config"], record.get("metrics") or {}
    row = {
        "run_id": record["run_id"], "model": cfg["model"], "seed": cfg["seed"],
        "scheduler": cfg["scheduler"], "augment": cfg["augment"], "weighted_loss": cfg["weighted_loss"],
        "status": record["status"], "failure_reason": record.get("failure_reason"),
        "best_epoch": record.get("best_epoch"), "stopped_epoch": record.get("stopped_epoch"),
        "max_epochs": cfg.get("epochs"), **_stop_flags(record),
        "seconds": record["timing"]["seconds"], "images_per_second": record["timing"]["images_per_second"],
        "precision": (record.get("environment") or {}).get("precision"),
    }
    for split in ("val", "test"):
        for key in ("loss", "pixel_acc", "miou", "mean_acc", "mdice"):
            row[f"{split}_{key}"] = (metrics.get(split) or {}).get(key)
    return row


def completed_miou(record: dict) -> float | None:
    """A completed run's val mIoU when it is a number: what the grid and the tuner finish a
    trial with and keep checkpoints by; None for a failed or pruned run, or a NaN mIoU."""
    value = ((record.get("metrics") or {}).get("val") or {}).get("miou")
    ok = record.get("status") == "completed" and value is not None and math.isfinite(value)
    return float(value) if ok else None


def run_flags(record: dict, summary: dict) -> dict:
    """A run's learning flags (see `ablate.stats.did_not_learn`), and `flags` in words for the
    dashboard: did not learn, still improving (best epoch = last), early-stopped. A grid trial
    stores them beside its `summary`; the runs table recomputes them for a study whose trials
    predate that (`results.runs_table`)."""
    from ablate import stats

    m = (record.get("metrics") or {}).get("val") or {}
    bar = stats.majority_bar(record.get("dataset"))
    dnl = stats.did_not_learn(m.get("pixel_acc"), m.get("miou"), bar) if record.get("status") == "completed" else None
    words = [w for w, on in (("did not learn", dnl), ("still improving: budget-limited", summary.get("best_is_last")),
                             ("early-stopped", summary.get("early_stopped"))) if on]
    if record.get("status") == "completed" and bar is None:
        words.append("did-not-learn bar unknown")
    return {"did_not_learn": dnl, "flags": "; ".join(words)}


def _stop_flags(record: dict) -> dict:
    """Whether a finished run stopped before its epoch budget, and whether its best epoch was
    the last one it trained (still improving: the budget, not the toggle, may decide it)."""
    best, stopped, budget = record.get("best_epoch"), record.get("stopped_epoch"), record["config"].get("epochs")
    if record.get("status") != "completed" or not best or not stopped:
        return {"early_stopped": None, "best_is_last": None}
    return {"early_stopped": bool(budget and stopped < budget), "best_is_last": best == stopped}


def describe(record: dict) -> str:
    lines = [f"run {record['run_id']}: {record['status']}"
             + (f" ({record['failure_reason']})" if record.get("failure_reason") else "")]
    for split, m in (record.get("metrics") or {}).items():
        lines.append(f"  {split}: mIoU {_fmt(m['miou'])}  pixel acc {_fmt(m['pixel_acc'])}  "
                     f"mean acc {_fmt(m['mean_acc'])}  loss {_fmt(m['loss'])}")
    t, stop = record["timing"], record.get("early_stopping") or {}
    early = (f" (early: no {stop['monitor']} gain in {stop['patience']} epochs)" if stop.get("stopped_early") else "")
    where = f"; metrics at {record['metrics_resolution']} resolution" if record.get("metrics_resolution") else ""
    lines.append(f"  best epoch {record.get('best_epoch')}, stopped at {record.get('stopped_epoch')}{early}{where}; "
                 f"{t['seconds']:.1f}s, {t['images_per_second']:.1f} img/s")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.4f}"


def environment(device: torch.device, precision: str) -> dict:
    import torch
    import torchvision

    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
        "platform": platform.platform(), "device": str(device), "device_name": device_name(device),
        "threads": torch.get_num_threads(), "precision": precision, "git_sha": git_sha(),
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()


@functools.cache
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@functools.cache
def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --------------------------------------------------------------------------- in the storage
RECORD_ATTR = "record"  # the whole record as one trial user attribute (a JSON object) ...
PARTS_ATTR = "record_parts"  # ... or, when large, as this many JSON-text parts record_0, record_1, ...
# Optuna keeps a user attribute as JSON text: unbounded in PostgreSQL and SQLite, a TEXT column
# (64 KiB) in MySQL. An ASCII-only part of 16000 characters stays under 32 KiB as JSON even if
# every character needed escaping.
PART_CHARS = 16000


def to_attrs(record: dict) -> dict[str, object]:
    """A run record as trial user attributes: {'record': {...}} when its JSON fits one MySQL
    TEXT value, else {'record_parts': n, 'record_0': '...', ...} (JSON text split in order)."""
    text = json.dumps(_io._json_safe(record), sort_keys=True, ensure_ascii=True, allow_nan=False,
                      separators=(",", ":"))
    if len(text) <= PART_CHARS:
        return {RECORD_ATTR: json.loads(text)}
    parts = [text[i:i + PART_CHARS] for i in range(0, len(text), PART_CHARS)]
    return {PARTS_ATTR: len(parts), **{f"record_{i}": p for i, p in enumerate(parts)}}


def from_attrs(attrs: dict, where: str) -> dict | None:
    """The run record kept in a trial's user attributes (`to_attrs`); None when the trial has
    none. A damaged one is an error naming `where` (the trial), never skipped."""
    if RECORD_ATTR in attrs:
        record = attrs[RECORD_ATTR]
        if not isinstance(record, dict) or "config" not in record or "status" not in record:
            raise AblateError(f"{where}: user attribute {RECORD_ATTR!r} is not a run record; rerun the cell")
        return record
    if PARTS_ATTR not in attrs:
        return None
    n = attrs[PARTS_ATTR]
    missing = [f"record_{i}" for i in range(n if isinstance(n, int) else 0) if not isinstance(attrs.get(f"record_{i}"), str)]
    if not isinstance(n, int) or n < 1 or missing:
        raise AblateError(f"{where}: run record incomplete in the storage (missing {', '.join(missing) or PARTS_ATTR}); "
                          "rerun the cell")
    try:
        record = json.loads("".join(attrs[f"record_{i}"] for i in range(n)))
    except ValueError as exc:
        raise AblateError(f"{where}: corrupted run record in the storage ({exc}); rerun the cell") from None
    if not isinstance(record, dict) or "config" not in record:
        raise AblateError(f"{where}: the stored run record is not a run record; rerun the cell")
    return record

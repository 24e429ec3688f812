"""Engine stage: the one training code path. `fit` = seeded set-up, then
`train_one_epoch` + `evaluate` per epoch, early stopping on val mIoU (or val loss), best
checkpoint by val mIoU, final metrics with that checkpoint at the masks' own resolution, and a
run record. The grid and the tuner only build a `TrainConfig` and call `fit`.
"""
from __future__ import annotations

import copy
import functools
import math
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ablate import record as records
from ablate._bf16 import thin_maps_in_fp32
from ablate.config import TrainConfig
from ablate.data import VOID, Dataset, Split, load_dataset, scored_natively
from ablate.errors import AblateError
from ablate.metrics import ConfusionMatrix
from ablate.losses import Loss, make_loss
from ablate.models import create_model, model_identity
from ablate.optim import check_optimizer, make_optimizer, make_schedule
from ablate.predict import native_logits

EpochCallback = Callable[[int, dict], None]


class Pruned(Exception):
    """Raised by an `on_epoch` callback to end a run early (the tuner's pruning signal)."""


class _NonFinite(Exception):
    pass


# --------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AblateError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPUs where bf16 autocast is faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_weights(frequency: list[float], scheme: str = "inverse") -> torch.Tensor:
    """Loss weights from the training split's class pixel shares f_c (void excluded).

    Classes absent from the split (f_c = 0) get weight 0 in every scheme.
    - "inverse": 1 / f_c, scaled to mean 1 over the present classes (the seed report's).
    - "median": median(f) / f_c, median over the present classes (SegNet's median-frequency
      balancing; f_c here is the split-wide share, not SegNet's share within the images that
      contain c). Not rescaled: the median class gets weight 1.
    - "enet": 1 / ln(1.02 + f_c) (ENet, Paszke et al. 2016). Not rescaled: weights lie in
      (1.42, 50.5).
    """
    freq = torch.tensor(frequency, dtype=torch.float64)
    present = freq > 0
    weights = torch.zeros_like(freq)
    if not present.any():
        return weights.float()
    f = freq[present]
    if scheme == "inverse":
        weights[present] = (1.0 / f) / (1.0 / f).mean()
    elif scheme == "median":
        weights[present] = float(np.median(f.numpy())) / f
    elif scheme == "enet":
        weights[present] = 1.0 / torch.log(1.02 + f)
    else:
        raise AblateError(f"--class-weights must be one of inverse, median, enet, got {scheme!r}")
    return weights.float()


class EarlyStopping:
    """Stop once `patience` epochs in a row brought no improvement of the monitored value
    (0 disables). An improvement beats the best so far by more than `min_delta`: higher for
    mode "max" (val mIoU), lower for mode "min" (val loss). A NaN (e.g. an mIoU with no class
    present) never improves, so it counts as a stale epoch."""

    MONITORS = {"miou": ("val_miou", "max"), "loss": ("val_loss", "min")}

    def __init__(self, patience: int, *, mode: str = "max", min_delta: float = 0.0, monitor: str = "val_miou") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience, self.mode, self.min_delta, self.monitor = patience, mode, float(min_delta), monitor
        self.best = -math.inf if mode == "max" else math.inf
        self.stale, self.stopped = 0, False

    @classmethod
    def for_config(cls, config: TrainConfig) -> "EarlyStopping":
        monitor, mode = cls.MONITORS[config.early_stop_on]
        return cls(config.patience, mode=mode, min_delta=config.min_delta, monitor=monitor)

    @property
    def key(self) -> str:
        """The key of `evaluate`'s result that is monitored ("miou" or "loss")."""
        return self.monitor.removeprefix("val_")

    def improves(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def step(self, value: float) -> bool:
        """Feed one epoch's value; True when training should stop."""
        if self.improves(value):
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        self.stopped = bool(self.patience) and self.stale >= self.patience
        return self.stopped

    def summary(self, *, stopped_epoch: int, budget: int, best_epoch: int, completed: bool, lr_at_stop: float) -> dict:
        """What the run record says about early stopping. `stopped_early` only when the stopper
        ended a completed run before its epoch budget; `best_is_last`: the best (checkpoint)
        epoch was the last one trained."""
        return {
            "monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta,
            "stopped_early": bool(completed and self.stopped and stopped_epoch < budget),
            "stopped_epoch": stopped_epoch, "best_is_last": bool(best_epoch) and best_epoch == stopped_epoch,
            "lr_at_stop": lr_at_stop,
        }


# --------------------------------------------------------------------------- loops
def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def _to_input(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 batch → float [0, 1] channels_last model input. With a generator the batch is
    augmented on the way, after the float conversion (one pass less than warping uint8 and
    converting, and no rounding back to 8 bits)."""
    images = images.float().div_(255.0)
    if generator is not None:
        # Imported here: torchvision's v2 transforms import torch._dynamo (2.6 s of a core), which
        # a process that only checks a study against the engine's rules does not need. A worker
        # server has it preloaded (`workers.PRELOAD`).
        from ablate.transforms import augment_batch

        images, masks = augment_batch(images, masks, generator)
    return images.contiguous(memory_format=torch.channels_last), masks


def train_one_epoch(
    model: torch.nn.Module,
    split: Split,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: Loss,
    batch_size: int,
    generator: torch.Generator,
    augment: bool,
    precision: str,
    epoch: int,
    progress: bool = False,
) -> dict:
    """One pass over the training split; returns mean training loss, images, seconds and the
    lr of its first and last optimizer steps."""
    model.train()
    device = next(model.parameters()).device
    first_lr = last_lr = optimizer.param_groups[0]["lr"]
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    batches = _batches(len(split), batch_size, generator)
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress, file=sys.stdout)
    for step, idx in enumerate(bar, start=1):
        images, masks = split.images[idx].to(device, non_blocking=True), split.masks[idx].to(device, non_blocking=True)
        images, masks = _to_input(images, masks, generator if augment else None)
        bf16 = precision == "bf16"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), thin_maps_in_fp32(bf16 and device.type == "cpu"):
            logits = model(images)
        loss = loss_fn(logits, masks)
        if not torch.isfinite(loss):
            raise _NonFinite(f"non-finite loss at epoch {epoch} step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        last_lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    return {"train_loss": total_loss / max(seen, 1), "images": seen, "seconds": time.perf_counter() - start,
            "first_lr": first_lr, "last_lr": last_lr}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, split: Split, *, num_classes: int, batch_size: int, precision: str,
             native: bool = False) -> dict:
    """Unweighted CE over non-void pixels and confusion-matrix metrics over the whole split, at
    the working size, or with `native` at each mask's own resolution (logits upsampled
    bilinearly to it before the loss and the argmax; the split must keep native masks)."""
    model.eval()
    if native:
        pairs = native_logits(model, split, batch_size=batch_size, precision=precision)
    else:
        pairs = _working_size_logits(model, split, batch_size=batch_size, precision=precision)
    cm = ConfusionMatrix(num_classes, ignore_index=VOID)
    loss_sum, pixels = 0.0, 0
    for logits, masks in pairs:
        masks = masks.long()
        loss_sum += F.cross_entropy(logits, masks, ignore_index=VOID, reduction="sum").item()
        pixels += int((masks != VOID).sum())
        cm.update(logits.argmax(1), masks)
    return {"loss": loss_sum / max(pixels, 1), **cm.compute()}


def _working_size_logits(model: torch.nn.Module, split: Split, *, batch_size: int, precision: str):
    device = next(model.parameters()).device
    for idx in _batches(len(split), batch_size, None):
        images, masks = _to_input(split.images[idx].to(device, non_blocking=True),
                                  split.masks[idx].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
        yield logits.float(), masks


# --------------------------------------------------------------------------- fit
def fit(
    config: TrainConfig,
    dataset: Dataset | None = None,
    *,
    out_dir: str | Path | None = None,
    on_epoch: EpochCallback | None = None,
    on_model: Callable[[torch.nn.Module], None] | None = None,
    checkpoint: bool | Callable[[dict], bool] = True,
    progress: bool | None = None,
    quiet: bool = False,
    cache_dir: str | Path | None = "results/.cache",
) -> dict:
    """Train one configuration; return its run record (and write it to `out_dir` if given).

    The training loss is `config.loss` (ablate.losses; the weighted-loss toggle's class weights
    go to ce, focal and the ce part of ce+dice; dice and lovasz refuse them), the optimizer
    `config.optimizer` (ablate.optim). With the `scheduler` toggle on, the lr follows
    `config.schedule` per step over the epoch budget (epochs x steps per epoch; onecycle peaks
    at `lr`), so a run that stops early ends part-way along it; the record says where
    (early_stopping.lr_at_stop). Early stopping watches val mIoU (config.early_stop_on = "miou",
    the quantity that also picks the checkpoint) or the val loss ("loss"). The val loss is the
    unweighted cross-entropy whatever the training loss (the seed report's yardstick). Per-epoch
    val curves are scored at the working size; the final val and test metrics come from the
    best checkpoint, scored at each mask's own resolution (logits upsampled bilinearly, as
    `ablate predict` does).

    `on_epoch(epoch, metrics)` is called after each epoch's validation; raising `Pruned` there
    ends the run with status "pruned". A non-finite loss ends it with status "failed".
    `on_model(model)` is called once for a completed run, with the model holding the best
    checkpoint's weights (in eval mode), before the record is written: e.g. to draw the
    report gallery's predictions without loading the checkpoint back.

    With `out_dir`, the record goes to run.json there and the best checkpoint to best.pt:
    always, never, or when `checkpoint(record)` says so (the grid and the tuner write only
    the checkpoints that `--keep-checkpoints` may keep).
    """
    import ablate.transforms  # noqa: F401 - torchvision (2.6 s once per process) before the run's clock starts

    start = time.perf_counter()
    if progress is None:
        progress = not quiet and sys.stdout.isatty()
    dataset = dataset if dataset is not None else _load(config, cache_dir, quiet)
    run = _set_up(config, dataset)
    history = _History(lr_at_stop=config.lr)
    try:
        for epoch in range(1, config.epochs + 1):
            val = _epoch(run, config, epoch, history, progress=progress, quiet=quiet)
            if on_epoch is not None:
                on_epoch(epoch, {**val, "epoch": epoch, "train_loss": history.curves[-1]["train_loss"]})
            if run.stopper.step(val[run.stopper.key]) and epoch < config.epochs:
                break
    except Pruned as exc:
        history.status, history.reason = "pruned", str(exc) or f"pruned at epoch {len(history.curves)}"
    except _NonFinite as exc:
        history.status, history.reason = "failed", str(exc)

    metrics, resolution = _final_metrics(run.model, run.net, history.best_state, run.splits, run.evaluator,
                                         test=history.status == "completed")
    record = _record(config, dataset, run, history, metrics, resolution, seconds=time.perf_counter() - start)
    if on_model is not None and history.status == "completed" and history.best_state is not None:
        on_model(run.model.eval())
    if out_dir is not None:
        keep = checkpoint(record) if callable(checkpoint) else checkpoint
        records.write(out_dir, record, history.best_state if keep else None)
    if not quiet:
        print(records.describe(record))
    return record


@dataclass
class _Run:
    """Everything an epoch needs, built once by `_set_up`."""
    model: torch.nn.Module  # the module whose state is checkpointed
    net: torch.nn.Module  # what runs: the model, or its torch.compile wrapper
    splits: dict[str, Split]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss: Loss
    generator: torch.Generator  # shuffling and augmentation
    evaluator: Callable[..., dict]
    stopper: EarlyStopping
    precision: str
    device: torch.device
    weights_source: str | None


@dataclass
class _History:
    """What the epochs produced so far, and how the run ended."""
    lr_at_stop: float
    curves: list[dict] = field(default_factory=list)
    best_miou: float = -math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    status: str = "completed"
    reason: str | None = None
    train_images: int = 0
    train_seconds: float = 0.0


def _set_up(config: TrainConfig, dataset: Dataset) -> _Run:
    """Seeded model, optimizer, schedule, loss and evaluator on the resolved device."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    seed_everything(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = create_model(config.model, dataset.num_classes, **config.model_args)
    weights_source = getattr(model, "weights_source", None)
    model = model.to(device, memory_format=torch.channels_last)
    splits = {name: _on_device(split, device) for name, split in dataset.splits.items()}
    optimizer = _optimizer(model, config)
    steps_per_epoch = math.ceil(len(splits["train"]) / config.batch_size)
    scheduler = make_schedule(optimizer, config.schedule, total_steps=config.epochs * steps_per_epoch) \
        if config.scheduler else None
    weight = (class_weights(dataset.class_frequency, scheme=config.class_weights).to(device)
              if config.weighted_loss else None)
    evaluator = functools.partial(evaluate, num_classes=dataset.num_classes, batch_size=config.batch_size,
                                  precision=precision)
    return _Run(model=model, net=torch.compile(model) if config.compile else model, splits=splits,
                optimizer=optimizer, scheduler=scheduler, loss=make_loss(config.loss, weight=weight, ignore_index=VOID),
                generator=torch.Generator().manual_seed(config.seed), evaluator=evaluator,
                stopper=EarlyStopping.for_config(config), precision=precision, device=device,
                weights_source=weights_source)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return make_optimizer(model, name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                          momentum=config.momentum, nesterov=config.nesterov)


def check_training(config: TrainConfig) -> None:
    """Refuse, before any data loads, the choices that TrainConfig accepts one by one but the
    engine cannot combine: class weights with dice or lovasz, nesterov without sgd."""
    make_loss(config.loss, weight=torch.ones(1) if config.weighted_loss else None)
    check_optimizer(config.optimizer, momentum=config.momentum, nesterov=config.nesterov)


def _epoch(run: _Run, config: TrainConfig, epoch: int, history: _History, *, progress: bool, quiet: bool) -> dict:
    """Train and validate one epoch; update the curves and the best checkpoint; return val."""
    stats = train_one_epoch(
        run.net, run.splits["train"], optimizer=run.optimizer, scheduler=run.scheduler, loss_fn=run.loss,
        batch_size=config.batch_size, generator=run.generator, augment=config.augment,
        precision=run.precision, epoch=epoch, progress=progress,
    )
    history.train_images += stats["images"]
    history.train_seconds += stats["seconds"]
    val = run.evaluator(run.net, run.splits["val"])
    history.curves.append(_curve_row(epoch, stats, val, config, quiet))
    history.lr_at_stop = stats["last_lr"]
    if _score(val["miou"]) > history.best_miou:
        history.best_miou, history.best_epoch, history.best_state = _score(val["miou"]), epoch, _cpu_state(run.model)
    if not math.isfinite(val["loss"]):
        raise _NonFinite(f"non-finite val loss at epoch {epoch}")
    return val


def _record(config: TrainConfig, dataset: Dataset, run: _Run, history: _History, metrics: dict,
            resolution: str, *, seconds: float) -> dict:
    stopped = len(history.curves)
    completed = history.status == "completed"
    record = records.build(
        config=config, dataset=dataset, metrics=metrics, curves=history.curves, best_epoch=history.best_epoch or None,
        stopped_epoch=stopped, status=history.status, failure_reason=history.reason, precision=run.precision,
        device=run.device, weights_source=run.weights_source, seconds=seconds,
        images_per_second=history.train_images / history.train_seconds if history.train_seconds else 0.0,
        early_stopping=run.stopper.summary(stopped_epoch=stopped, budget=config.epochs, best_epoch=history.best_epoch,
                                           completed=completed, lr_at_stop=history.lr_at_stop),
        resolution={"curves_resolution": _working(config.image_size), "metrics_resolution": resolution},
    )
    # what the model name stands for: an import path with its module's sha256 prefix, smp's
    # architecture/encoder/weights, or a registered model's arguments with defaults filled in
    record["model_identity"] = model_identity(config.model, config.model_args)
    return record


def fit_safely(config: TrainConfig, dataset: Dataset | None = None, **kwargs) -> dict:
    """`fit`, but an unexpected exception becomes a failed record with a short traceback
    (the grid and the tuner must survive one bad cell). Ctrl-C still propagates."""
    try:
        return fit(config, dataset, **kwargs)
    except (KeyboardInterrupt, AblateError):
        raise
    except Exception as exc:  # noqa: BLE001 - recorded, not swallowed
        oom = isinstance(exc, torch.OutOfMemoryError)
        reason = f"oom at batch size {config.batch_size}" if oom else f"{type(exc).__name__}: {exc}"
        record = records.failed(config, reason=reason, tb=traceback.format_exc(limit=-6))
        if kwargs.get("out_dir") is not None:
            records.write(kwargs["out_dir"], record, None)
        return record


def _load(config: TrainConfig, cache_dir: str | Path | None, quiet: bool) -> Dataset:
    dataset = load_dataset(config.data, image_size=config.image_size, num_classes=config.num_classes,
                           ignore_index=config.ignore_index, val_fraction=config.val_fraction, cache_dir=cache_dir)
    if not quiet:
        print(dataset.describe())
    return dataset


def _curve_row(epoch: int, stats: dict, val: dict, config: TrainConfig, quiet: bool) -> dict:
    """One epoch's row of the curves (val at the working size), printed unless quiet."""
    if not quiet:
        print(f"epoch {epoch}/{config.epochs}  train_loss {stats['train_loss']:.4f}  val_loss {val['loss']:.4f}  "
              f"val_miou {val['miou']:.4f}  val_acc {val['pixel_acc']:.4f}  ({stats['seconds']:.1f}s)", flush=True)
    return {"epoch": epoch, "train_loss": stats["train_loss"], "val_loss": val["loss"], "val_miou": val["miou"],
            "val_pixel_acc": val["pixel_acc"], "lr": stats["first_lr"], "last_lr": stats["last_lr"],
            "seconds": stats["seconds"]}


def _final_metrics(model, net, state, splits: dict[str, Split], evaluator, *, test: bool) -> tuple[dict, str]:
    """Val (and, for a completed run, test) metrics of the best checkpoint, at the masks' own
    resolution when the dataset keeps them (a Dataset built by hand may not: working size)."""
    if state is None:
        return {}, "none"
    model.load_state_dict(state)
    native = scored_natively(splits)
    names = ["val", "test"] if test and "test" in splits else ["val"]
    metrics = {name: evaluator(net, splits[name], native=native) for name in names}
    return metrics, "native" if native else _working(tuple(splits["val"].images.shape[-2:]))


def _working(size) -> str:
    return f"working size {size[0]}x{size[1]}"


def _cpu_state(model: torch.nn.Module) -> dict:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


def _score(miou: float) -> float:
    return miou if miou == miou else -math.inf  # NaN (no class present) never wins


def _on_device(split: Split, device: torch.device) -> Split:
    if device.type != "cuda":
        return split
    # The decoded dataset is small: copy it to the GPU once (pinned, non-blocking).
    return Split(split.images.pin_memory().to(device, non_blocking=True),
                 split.masks.pin_memory().to(device, non_blocking=True), split.ids,
                 None if split.native_masks is None else [m.to(device) for m in split.native_masks])

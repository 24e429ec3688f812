"""The one typed configuration of a training run; its canonical hash is the run's identity."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ablate.errors import AblateError

TOGGLES = ("scheduler", "augment", "weighted_loss")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
EARLY_STOP_MONITORS = ("miou", "loss")
CLASS_WEIGHT_SCHEMES = ("inverse", "median", "enet")
# mirrors of ablate.losses.LOSSES and ablate.optim.OPTIMIZERS / SCHEDULES (config stays torch-free;
# tests/test_optim.py and tests/test_losses.py check they agree)
LOSSES = ("ce", "dice", "focal", "lovasz", "ce+dice")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("none", "cosine", "poly", "onecycle")

# Fields that say *where/how fast* a run executes, not *what* it computes: they are saved in
# the record but left out of the run id, so a grid resumed on another machine keeps its ids.
OPERATIONAL_FIELDS = ("device", "compile")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "baseline"  # registry name: baseline | custom | resnet18 | unet
    model_args: dict[str, Any] = field(default_factory=dict)  # typed kwargs for create_model
    data: str = "synthetic"  # "synthetic" or a dataset folder (VOC, img_dir/ann_dir, CamVid)
    image_size: tuple[int, int] = (64, 64)  # working size (H, W); each divisible by 32
    num_classes: int | None = None  # None: inferred from the training masks
    ignore_index: int = 255  # void label in the source masks (CamVid: 11)
    val_fraction: float | None = None  # carve val from train when the dataset has no val split
    epochs: int = 10  # maximum epochs (early stopping may end sooner)
    batch_size: int = 16
    lr: float = 1e-3  # learning rate (peak, when the scheduler is on)
    weight_decay: float = 1e-4  # decoupled (AdamW) or L2 (SGD) weight decay
    optimizer: str = "adamw"  # adamw | sgd (momentum below)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD: Nesterov momentum
    loss: str = "ce"  # training loss: ce | dice | focal | lovasz | ce+dice (class weights apply to ce/focal)
    # toggle: cosine annealing from lr to 0, stepped per iteration, over the run's epoch budget
    # (epochs x steps per epoch); a run that stops early ends above 0 (record: early_stopping.lr_at_stop)
    scheduler: bool = False
    schedule: str = "cosine"  # the lr shape when `scheduler` is on: cosine | poly (power 0.9) | onecycle | none
    augment: bool = False  # toggle: flip, rotate ±15° (void fill), random resized crop
    weighted_loss: bool = False  # toggle: class-weighted training loss, weights from the training split
    # weighting scheme when weighted_loss is on (void excluded, absent classes 0): "inverse" 1/f_c
    # scaled to mean 1 over present classes; "median" median(f)/f_c (SegNet) and "enet"
    # 1/ln(1.02 + f_c) (ENet) as published, not rescaled
    class_weights: str = "inverse"
    patience: int = 3  # early stopping: epochs in a row without improvement of the monitor; 0 disables
    early_stop_on: str = "miou"  # monitor: "miou" (val mIoU, what picks the checkpoint) or "loss" (unweighted val CE)
    min_delta: float = 0.0  # early stopping: an improvement must beat the best by more than this
    seed: int = 0  # seeds python, numpy, torch, shuffling and augmentation
    precision: str = "auto"  # auto | fp32 | bf16 (auto: bf16 where the hardware has it)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the model

    def __post_init__(self) -> None:
        check_data_options(self.image_size, self.num_classes, self.val_fraction)
        _positive("--epochs", self.epochs)
        _positive("--batch-size", self.batch_size)
        if not self.lr > 0:
            raise AblateError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise AblateError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.patience < 0:
            raise AblateError(f"--patience must be >= 0 (0 disables early stopping), got {self.patience}")
        if self.early_stop_on not in EARLY_STOP_MONITORS:
            raise AblateError(f"--early-stop-on must be one of {', '.join(EARLY_STOP_MONITORS)}, got {self.early_stop_on!r}")
        if isinstance(self.min_delta, bool) or not (isinstance(self.min_delta, (int, float)) and self.min_delta >= 0):
            raise AblateError(f"--min-delta must be a number >= 0, got {self.min_delta!r}")
        for option, value, known in (("--optimizer", self.optimizer, OPTIMIZERS), ("--loss", self.loss, LOSSES),
                                     ("--schedule", self.schedule, SCHEDULES)):
            if value not in known:
                raise AblateError(f"{option} must be one of {', '.join(known)}, got {value!r}")
        if isinstance(self.momentum, bool) or not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise AblateError(f"--momentum must be a number in [0, 1), got {self.momentum!r}")
        if self.class_weights not in CLASS_WEIGHT_SCHEMES:
            raise AblateError(f"--class-weights must be one of {', '.join(CLASS_WEIGHT_SCHEMES)}, got {self.class_weights!r}")
        if self.precision not in PRECISIONS:
            raise AblateError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise AblateError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["model_args"] = dict(sorted(self.model_args.items()))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AblateError(f"unknown config key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
        d = dict(d)
        if "image_size" in d:
            d["image_size"] = parse_image_size(d["image_size"])
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """The fields that decide what the run computes. Model arguments are resolved by
        the model: defaults filled in, a weights file named by its sha256 prefix (never its
        path), so the same configuration has one id on every machine."""
        from ablate.models import model_identity  # models import torch; config stays light

        d = self.to_dict()
        for name in OPERATIONAL_FIELDS:
            d.pop(name)
        d["model_args"] = model_identity(self.model, self.model_args)
        return d

    @property
    def run_id(self) -> str:
        return stable_hash(self.identity())

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-able object that is independent of key order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def parse_image_size(value: Any) -> tuple[int, int]:
    """Accept 64, "64", (64, 96), [64, 96] or "64 96" / "64x96"."""
    if isinstance(value, str):
        parts = value.replace("x", " ").replace(",", " ").split()
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        sizes = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise AblateError(f"--image-size expects one or two integers, got {value!r}") from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2:
        raise AblateError(f"--image-size expects one or two integers, got {value!r}")
    return sizes[0], sizes[1]


def check_image_size(size: tuple[int, int]) -> None:
    """Every architecture downsamples by 32: the working size must be a positive multiple of 32."""
    h, w = size
    _positive("--image-size", h)
    _positive("--image-size", w)
    if h % 32 or w % 32:
        raise AblateError(f"--image-size must be divisible by 32, got {h}x{w}; try {_round32(h)}x{_round32(w)}")


def check_data_options(image_size: tuple[int, int], num_classes: int | None, val_fraction: float | None) -> None:
    """The dataset options, checked the same way by a run's config and by the data loader."""
    check_image_size(image_size)
    if num_classes is not None:
        _positive("--num-classes", num_classes)
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise AblateError(f"--val-fraction must be in (0, 1), got {val_fraction}")


def _positive(option: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise AblateError(f"{option} must be a positive integer, got {value!r}")


def _round32(x: int) -> int:
    return max(32, 32 * round(x / 32))

"""The one typed configuration of a training run; its canonical hash is the run's identity."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ablate.options import CELL, STUDY, TOGGLE, Option, coerce, declared, flag, option, unknown_key

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
    """Every option declares what a valid value is (ablate.options): a study file, a flag,
    --factor and the tuner are checked against these declarations, in one wording."""
    model: str = option("baseline", scope=CELL)  # registry name: baseline | custom | resnet18 | unet
    model_args: dict[str, Any] = option(factory=dict, scope=CELL)  # typed kwargs for create_model
    data: str = option("synthetic", scope=STUDY)  # "synthetic" or a dataset folder (VOC, img_dir/ann_dir, CamVid)
    image_size: tuple[int, int] = option((64, 64), ge=1, step=32)  # working size (H, W); each divisible by 32
    num_classes: int | None = option(None, ge=1, scope=STUDY)  # None: inferred from the training masks
    ignore_index: int = option(255, scope=STUDY)  # void label in the source masks (CamVid: 11)
    # carve val from train when the dataset has no val split
    val_fraction: float | None = option(None, gt=0, lt=1, scope=STUDY)
    epochs: int = option(10, ge=1)  # maximum epochs (early stopping may end sooner)
    batch_size: int = option(16, ge=1)
    lr: float = option(1e-3, gt=0)  # learning rate (peak, when the scheduler is on)
    weight_decay: float = option(1e-4, ge=0)  # decoupled (AdamW) or L2 (SGD) weight decay
    optimizer: str = option("adamw", choices=OPTIMIZERS)  # adamw | sgd (momentum below)
    momentum: float = option(0.9, ge=0, lt=1)  # SGD momentum
    nesterov: bool = option(False)  # SGD: Nesterov momentum
    # training loss: ce | dice | focal | lovasz | ce+dice (class weights apply to ce/focal)
    loss: str = option("ce", choices=LOSSES)
    # toggle: cosine annealing from lr to 0, stepped per iteration, over the run's epoch budget
    # (epochs x steps per epoch); a run that stops early ends above 0 (record: early_stopping.lr_at_stop)
    scheduler: bool = option(False, scope=TOGGLE)
    # the lr shape when `scheduler` is on: cosine | poly (power 0.9) | onecycle | none
    schedule: str = option("cosine", choices=SCHEDULES)
    augment: bool = option(False, scope=TOGGLE)  # toggle: flip, rotate ±15° (void fill), random resized crop
    # toggle: class-weighted training loss, weights from the training split
    weighted_loss: bool = option(False, scope=TOGGLE)
    # weighting scheme when weighted_loss is on (void excluded, absent classes 0): "inverse" 1/f_c
    # scaled to mean 1 over present classes; "median" median(f)/f_c (SegNet) and "enet"
    # 1/ln(1.02 + f_c) (ENet) as published, not rescaled
    class_weights: str = option("inverse", choices=CLASS_WEIGHT_SCHEMES)
    patience: int = option(3, ge=0)  # early stopping: epochs in a row without improvement of the monitor; 0 disables
    # monitor: "miou" (val mIoU, what picks the checkpoint) or "loss" (unweighted val CE)
    early_stop_on: str = option("miou", choices=EARLY_STOP_MONITORS)
    min_delta: float = option(0.0, ge=0)  # early stopping: an improvement must beat the best by more than this
    seed: int = option(0, scope=CELL)  # seeds python, numpy, torch, shuffling and augmentation
    # auto | fp32 | bf16 (auto: bf16 where the hardware has it)
    precision: str = option("auto", choices=PRECISIONS, scope=STUDY)
    device: str = option("auto", choices=DEVICES, scope=STUDY)  # auto | cpu | cuda
    compile: bool = option(False, scope=STUDY)  # torch.compile the model

    def __post_init__(self) -> None:
        """Every field checked against its option, named by its flag (--lr: expected ...), and
        kept in its canonical type: an image size (H, W), a float where a number goes."""
        for name, declared_option in TRAIN_OPTIONS.items():
            object.__setattr__(self, name, coerce(declared_option, getattr(self, name), flag(name)))

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
            raise unknown_key("run config", unknown[0], sorted(known))
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


TRAIN_OPTIONS: dict[str, Option] = declared(TrainConfig)  # field -> what a valid value is


def option_for(name: str, model: str | None = None) -> Option:
    """The option `name`: a TrainConfig field, else an argument of `model` (what the tuner's
    space and --model-arg check values against)."""
    if name in TRAIN_OPTIONS:
        return TRAIN_OPTIONS[name]
    from ablate.models import model_option  # models import torch; config stays light

    return model_option(model, name)


def parse_image_size(value: Any, label: str = "--image-size") -> tuple[int, int]:
    """64, "64", "64x96" (or "64 96", "64,96"), [64] and [64, 96] as (H, W), each positive and
    divisible by 32; anything else is one line naming `label` (the flag, or the study-file key)."""
    return coerce(TRAIN_OPTIONS["image_size"], value, label, text=True)


def check_data_options(image_size: tuple[int, int], num_classes: int | None, val_fraction: float | None) -> None:
    """The dataset options, checked the same way by a run's config and by the data loader."""
    for name, value in (("image_size", image_size), ("num_classes", num_classes), ("val_fraction", val_fraction)):
        coerce(TRAIN_OPTIONS[name], value, flag(name))

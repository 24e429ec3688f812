"""Model stage: architectures from elsewhere, named like registered ones.

- `mypkg.nets:build` — a user's callable, imported from the working directory or PYTHONPATH,
  called as `build(num_classes, **model_args)` and returning an nn.Module (the registry reads
  its options from the signature). Its identity is the import path plus a hash of the
  module's source file, so editing the file makes new cells.
- `smp:Unet/resnet34` — a segmentation-models-pytorch architecture and encoder (the optional
  extra `pip install 'ablate[smp]'`). Encoder weights are explicit like our resnet18's:
  `weights = "none"` (the default, offline) or `"imagenet"` (downloaded by smp when online).
  Wrapped to keep our models' contract: images in [0, 1] normalised inside (ImageNet mean and
  std, what smp's encoders were trained on), any input size (padded to a multiple of the
  encoder's stride, logits cropped back), logits [N, num_classes, H, W].
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ablate.errors import AblateError
from ablate.models._blocks import Normalize

SMP_PREFIX = "smp:"
SMP_INSTALL = "pip install 'ablate[smp]'"
SMP_WEIGHTS = ("none", "imagenet")


@dataclass(frozen=True)
class ExternalModel:
    name: str  # as the user wrote it
    build: Callable[..., nn.Module]  # (num_classes, **model_args) -> module
    identity: dict[str, Any]  # what enters the run id besides the name
    # {option: (annotation, default)} for smp; None: read from the callable's signature
    params: dict[str, tuple[Any, Any]] | None = field(default=None)


def is_external(name: str) -> bool:
    return name.startswith(SMP_PREFIX) or ":" in name


def resolve(name: str) -> ExternalModel:
    return _smp(name) if name.startswith(SMP_PREFIX) else _import_path(name)


# --------------------------------------------------------------------------- import paths
def _import_path(name: str) -> ExternalModel:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in [*module_name.split("."), *attr.split(".")]):
        raise AblateError(f"model {name!r}: write an import path as MODULE:CALLABLE, e.g. mypkg.nets:build")
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # "importable from the working directory", as with `python -m`
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - an import runs user code: any error means "cannot import"
        raise AblateError(f"model {name}: cannot import {module_name} ({type(exc).__name__}: {exc}); "
                          "run from the folder that holds it or add that folder to PYTHONPATH") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise AblateError(f"model {name}: module {module_name} ({getattr(module, '__file__', '?')}) "
                              f"has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise AblateError(f"model {name}: {attr} is a {type(target).__name__}, not a callable "
                          "taking num_classes and keyword arguments")
    source = getattr(module, "__file__", None)
    digest = _sha256(Path(source)) if source else None
    return ExternalModel(name, target, {"import_path": name, "module_sha256": digest})


def _sha256(path: Path) -> str:
    from ablate.models.resnet18 import file_sha256

    return file_sha256(path)[:16]


# --------------------------------------------------------------------------- smp
def _smp(name: str) -> ExternalModel:
    spec = name[len(SMP_PREFIX):]
    arch, slash, encoder = spec.partition("/")
    if not arch or not slash or not encoder:
        raise AblateError(f"model {name!r}: write smp:ARCHITECTURE/ENCODER, e.g. smp:Unet/resnet34")
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise AblateError(f"model {name}: segmentation-models-pytorch is not installed; {SMP_INSTALL} adds it") from None
    known = {cls.__name__.lower(): cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}
    if arch.lower() not in known:
        raise AblateError(f"model {name}: smp has no architecture {arch!r}; choose from: "
                          f"{', '.join(sorted(set(known.values())))}")
    if encoder not in smp.encoders.get_encoder_names():
        raise AblateError(f"model {name}: smp has no encoder {encoder!r} (e.g. resnet18, resnet34, efficientnet-b0; "
                          "see smp.encoders.get_encoder_names())")

    def build(num_classes: int, *, weights: str = "none", **kwargs: Any) -> nn.Module:
        if weights not in SMP_WEIGHTS:
            raise AblateError(f"model {name}: weights must be one of {', '.join(SMP_WEIGHTS)}, got {weights!r}")
        try:
            net = smp.create_model(known[arch.lower()], encoder_name=encoder,
                                   encoder_weights=None if weights == "none" else weights,
                                   classes=num_classes, **kwargs)
            return SmpNet(net, weights_source=f"smp {known[arch.lower()]}/{encoder} encoder weights {weights}")
        except OSError as exc:  # the download of pretrained encoder weights failed
            raise AblateError(f"model {name}: could not fetch {weights} weights for encoder {encoder} "
                              f"({type(exc).__name__}: {exc}); connect once so smp caches them, or use weights=none") from None
        except (TypeError, ValueError, KeyError) as exc:
            raise AblateError(f"model {name}: {exc}") from None

    version = getattr(smp, "__version__", "?")
    return ExternalModel(name, build, {"smp": version, "architecture": known[arch.lower()], "encoder": encoder},
                         params={"weights": (str, "none")})


class SmpNet(nn.Module):
    """An smp model behind our contract: normalise, pad to the encoder's output stride (a
    U-Net's skips need sizes divisible by it; replicate padding, no artificial edge), crop."""

    def __init__(self, net: nn.Module, *, weights_source: str) -> None:
        super().__init__()
        self.normalize, self.net, self.weights_source = Normalize(), net, weights_source
        self.stride = int(getattr(net.encoder, "output_stride", 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        x = self.normalize(x)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.net(x)[..., :h, :w]

"""Model stage: architectures from elsewhere, named like registered ones.

- `mypkg.nets:build` — a user's callable, imported from sys.path as Python set it (PYTHONPATH;
  the working directory only where Python puts it there, as `python -m` does), or
  `path/to/nets.py:build` — the same from the file named. Called as
  `build(num_classes, **model_args)` and returning an nn.Module (the registry reads its
  options from the signature). Its identity is the name plus a hash of the module's source
  file, so editing the file makes new cells. Nothing here adds to sys.path: a module is
  found only where the user's environment says, never because of the folder ablate runs in
  (a checkpoint's config must not be able to name a file that happens to lie there).
- `smp:Unet/resnet34` — a segmentation-models-pytorch architecture and encoder (the optional
  extra `pip install 'ablate[smp]'`). Encoder weights are explicit like our resnet18's:
  `weights = "none"` (the default, offline) or `"imagenet"` (downloaded by smp when online).
  Wrapped to keep our models' contract: images in [0, 1] normalised inside (ImageNet mean and
  std, what smp's encoders were trained on), any input size (padded to a multiple of the
  encoder's stride, logits cropped back), logits [N, num_classes, H, W].
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ablate._io import file_sha256
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


def user_code(name: str) -> str | None:
    """The module or file whose code model `name` imports and runs ("mypkg.nets",
    "nets/my.py"); None for names that run no user code: a registered model, or smp (a
    package the user installed, which runs only its own code)."""
    if not is_external(name) or name.startswith(SMP_PREFIX):
        return None
    return name.rpartition(":")[0]


def resolve(name: str) -> ExternalModel:
    return _smp(name) if name.startswith(SMP_PREFIX) else _import_path(name)


# --------------------------------------------------------------------------- import paths
_NAME_HINT = "write MODULE:CALLABLE or FILE.py:CALLABLE, e.g. mypkg.nets:build or nets.py:build"
_PATH_HINT = ("add the folder that holds it to PYTHONPATH (PYTHONPATH=. for the working directory) "
              "or name its file, e.g. nets.py:build")


def _dotted(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _import_path(name: str) -> ExternalModel:
    # rpartition: a file's path may hold a colon (a drive letter), a callable's name never does
    where, _, attr = name.rpartition(":")
    from_file = where.endswith(".py")
    if not where or not _dotted(attr) or not (from_file or _dotted(where)):
        raise AblateError(f"model {name!r}: {_NAME_HINT}")
    module = _load_file(name, Path(where)) if from_file else _import_module(name, where)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise AblateError(f"model {name}: module {where} ({getattr(module, '__file__', '?')}) "
                              f"has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise AblateError(f"model {name}: {attr} is a {type(target).__name__}, not a callable "
                          "taking num_classes and keyword arguments")
    source = getattr(module, "__file__", None)
    digest = _sha256(Path(source)) if source else None
    return ExternalModel(name, target, {"import_path": name, "module_sha256": digest})


def _import_module(name: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - an import runs user code: any error means "cannot import"
        raise AblateError(f"model {name}: cannot import {module_name} ({type(exc).__name__}: {exc}); "
                          f"{_PATH_HINT}") from None


def _load_file(name: str, path: Path) -> ModuleType:
    """The module in file `path`, imported under its stem (a spawned grid worker loads the
    same file by the same name). Its folder is not added to sys.path: a sibling module it
    imports must be on PYTHONPATH, as for any script."""
    if not path.is_file():
        raise AblateError(f"model {name}: no file {path}; give the path of the .py file that defines the model")
    stem = path.stem
    if not stem.isidentifier():
        raise AblateError(f"model {name}: {path.name} is not a module name; rename it to letters, digits and _")
    loaded = sys.modules.get(stem)
    if loaded is not None:
        if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path.resolve():
            return loaded
        raise AblateError(f"model {name}: a module named {stem} is already imported "
                          f"({getattr(loaded, '__file__', None) or 'built in'}); rename {path}")
    spec = importlib.util.spec_from_file_location(stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module  # a dataclass in the file looks its module up there while it executes
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code: any error means "cannot import"
        del sys.modules[stem]
        raise AblateError(f"model {name}: cannot import {path} ({type(exc).__name__}: {exc})") from None
    return module


def _sha256(path: Path) -> str:
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

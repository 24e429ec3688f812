"""Model stage: transfer learning from a torchvision ResNet-18 body (frozen by default)
with a 5-level deconv decoder; weights come only from a local file, never the network."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from ablate.errors import AblateError
from ablate.models._blocks import DeconvBNReLU, Normalize, mirrored_forward, xavier_init_
from ablate.models._registry import register_model

# The file name torchvision gives ResNet18_Weights.IMAGENET1K_V1 in its hub cache.
CACHE_FILE = "resnet18-f37072fd.pth"
RANDOM_INIT = "none (random init)"
DECODER_WIDTHS = (512, 512, 256, 128, 64, 32)


def cached_weights_path() -> Path:
    """Where torchvision would have cached the ImageNet ResNet-18 weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CACHE_FILE


def _load_resnet18(weights: str | None) -> tuple[torchvision.models.ResNet, str]:
    """A torchvision ResNet-18 with weights from `weights`, else the cache, else random."""
    net = torchvision.models.resnet18(weights=None)
    if weights is None:
        cached = cached_weights_path()
        if not cached.is_file():
            return net, RANDOM_INIT
        path = cached
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise AblateError(f"weights file not found: {path}")
    not_resnet = f"{path} is not a torchvision ResNet-18 state_dict"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise AblateError(f"{not_resnet} (could not read it: {exc.__class__.__name__})") from exc
    if not isinstance(state, dict):
        raise AblateError(f"{not_resnet} (it holds a {type(state).__name__})")
    # The fc head is discarded, so a body fine-tuned with another head is still accepted.
    body = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
    net.fc = nn.Identity()
    problem = _state_dict_mismatch(net.state_dict(), body)
    if problem:
        raise AblateError(f"{not_resnet} ({problem})")
    net.load_state_dict(body)
    return net, str(path)


def _state_dict_mismatch(expected: dict, given: dict) -> str:
    """A short description of how `given` differs from `expected`, or '' if it fits."""
    # Checkpoints older than BN's step counter lack it; BatchNorm fills it in on load.
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    wrong_shape = [k for k in expected if k in given
                   and getattr(given[k], "shape", None) != expected[k].shape]
    problems = [f"{len(keys)} {what}, e.g. {keys[0]!r}" for keys, what in (
        (missing, "missing keys"), (unexpected, "unexpected keys"), (wrong_shape, "tensors of the wrong shape"))
        if keys]
    return "; ".join(problems)


class ResNet18Seg(nn.Module):
    """ResNet-18 without avgpool/fc (5 stride-2 stages, 512 ch at 1/32) → 5 × deconv-BN-ReLU
    512→512→256→128→64→32 → 1×1 classifier."""

    def __init__(self, num_classes: int, *, freeze_encoder: bool = True, weights: str | None = None):
        super().__init__()
        net, self.weights_source = _load_resnet18(weights)
        self.freeze_encoder = freeze_encoder
        self.normalize = Normalize()
        # Grouped so each stage halves the size once; the decoder mirrors them.
        self.encoder = nn.ModuleList([
            nn.Sequential(net.conv1, net.bn1, net.relu),
            nn.Sequential(net.maxpool, net.layer1),
            net.layer2,
            net.layer3,
            net.layer4,
        ])
        self.decoder = nn.ModuleList(
            DeconvBNReLU(c_in, c_out, 3) for c_in, c_out in zip(DECODER_WIDTHS, DECODER_WIDTHS[1:]))
        self.classifier = nn.Conv2d(DECODER_WIDTHS[-1], num_classes, 1)
        xavier_init_(self.decoder)
        xavier_init_(self.classifier)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> ResNet18Seg:
        super().train(mode)
        # A frozen encoder must also keep its BN running statistics fixed.
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(mirrored_forward(self.normalize(x), self.encoder, self.decoder))


@register_model
def resnet18(num_classes: int, *, freeze_encoder: bool = True, weights: str | None = None) -> nn.Module:
    return ResNet18Seg(num_classes, freeze_encoder=freeze_encoder, weights=weights)

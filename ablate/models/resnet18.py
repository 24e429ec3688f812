"""Model stage: transfer learning from a torchvision ResNet-18 body (frozen by default)
with a 5-level deconv decoder.

The encoder's weights are explicit (`weights=`): `imagenet` (torchvision's
ResNet18_Weights.IMAGENET1K_V1 through its standard hub cache, downloaded only when not
cached), `none` (random init; then the encoder must train) or the path of a state_dict file.
Nothing is ever silently replaced by random weights. A run's identity names the weights by
content (`weights_identity`: a file's sha256 prefix, never its path) and the model says
which weights ran (`weights_source`, `weights_sha256`).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
from pathlib import Path

import torch
from torch import nn

from ablate._io import file_sha256
from ablate.errors import AblateError
from ablate.models._blocks import DeconvBNReLU, Normalize, mirrored_forward, xavier_init_
from ablate.models._registry import register_check, register_identity, register_model

# torchvision is imported only where its ResNet-18 is built or its weights downloaded: importing
# it imports torch._dynamo (2.6 s of a core), which a process that only checks a study, loads
# data or writes a report does not need.
IMAGENET = "imagenet"
NO_WEIGHTS = "none"
# torchvision's ResNet18_Weights.IMAGENET1K_V1: its name and download address, and the file name
# its hub cache gives it (tests/test_models.py checks them against the installed torchvision).
IMAGENET_WEIGHTS_NAME = "IMAGENET1K_V1"
IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
CACHE_FILE = os.path.basename(IMAGENET_URL)
RANDOM_INIT = "none (random init)"
SHA_PREFIX = 8  # hex digits of a weights file's sha256 in identities and records
# Per socket operation while downloading: an online user's download proceeds, a network
# that drops packets fails within this instead of hanging.
DOWNLOAD_TIMEOUT_S = 30.0
DECODER_WIDTHS = (512, 512, 256, 128, 64, 32)


def cached_weights_path() -> Path:
    """Where torchvision's hub cache keeps IMAGENET1K_V1 ($TORCH_HOME/hub/checkpoints/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CACHE_FILE


def _weights_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise AblateError(f"weights file not found: {path} (weights= takes {IMAGENET}, {NO_WEIGHTS} or a file)")
    return path


def weights_identity(weights: str) -> str:
    """What `weights` means for a run's identity: 'imagenet:IMAGENET1K_V1', 'none', or
    'sha256:<prefix>' of the file (so the same file under two home folders is one run, and
    a changed file is a new one)."""
    if weights == IMAGENET:
        return f"{IMAGENET}:{IMAGENET_WEIGHTS_NAME}"
    if weights == NO_WEIGHTS:
        return NO_WEIGHTS
    return f"sha256:{file_sha256(_weights_file(weights))[:SHA_PREFIX]}"


def _download_imagenet(progress: bool) -> None:
    """Fetch IMAGENET1K_V1 into the hub cache with torchvision's own mechanism
    (`weights.get_state_dict`, which verifies the hash prefix in the file name on download).
    Offline: one line naming the file to place, and the `none` alternative."""
    from torchvision.models import ResNet18_Weights

    cached = cached_weights_path()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    said = io.StringIO()  # torch.hub announces the download on stdout; keep stdout for results
    try:
        with contextlib.redirect_stdout(said):
            ResNet18_Weights[IMAGENET_WEIGHTS_NAME].get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError, timeouts, HTTP errors; RuntimeError: bad hash
        reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()[0]
        raise AblateError(
            f"resnet18 weights={IMAGENET}: cannot download {IMAGENET_URL} ({reason}); place that file at "
            f"{cached} (or set TORCH_HOME), or pass weights={NO_WEIGHTS} with freeze_encoder=false") from None
    finally:
        socket.setdefaulttimeout(previous)
    if said.getvalue().strip():
        print(said.getvalue().strip(), file=sys.stderr)


def _load_resnet18(weights: str, *, progress: bool = True) -> tuple[nn.Module, str, str | None]:
    """A torchvision ResNet-18 body (fc removed) with `weights`; also says which weights ran
    and their sha256."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    if weights == NO_WEIGHTS:
        return net, RANDOM_INIT, None
    if weights == IMAGENET:
        path = cached_weights_path()
        if not path.is_file():  # the cache first: no network unless the file is missing
            _download_imagenet(progress)
    else:
        path = _weights_file(weights)
    # torch.hub reads a cached file with torch.load and no hash check (the hash is verified
    # only on download); reading it here the same way adds the checks below.
    not_resnet = f"{path} is not a torchvision ResNet-18 state_dict"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise AblateError(f"{not_resnet} (could not read it: {exc.__class__.__name__})") from exc
    if not isinstance(state, dict):
        raise AblateError(f"{not_resnet} (it holds a {type(state).__name__})")
    # The fc head is discarded, so a body fine-tuned with another head is still accepted.
    body = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
    problem = _state_dict_mismatch(net.state_dict(), body)
    if problem:
        raise AblateError(f"{not_resnet} ({problem})")
    net.load_state_dict(body)
    sha = file_sha256(path)
    if weights == IMAGENET:
        return net, f"{IMAGENET} ({IMAGENET_WEIGHTS_NAME}, sha256 {sha[:SHA_PREFIX]})", sha
    return net, f"file {path} (sha256 {sha[:SHA_PREFIX]})", sha


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

    def __init__(self, num_classes: int, *, freeze_encoder: bool = True, weights: str = IMAGENET):
        super().__init__()
        _check_args({"freeze_encoder": freeze_encoder, "weights": weights})
        net, self.weights_source, self.weights_sha256 = _load_resnet18(weights)
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
def resnet18(num_classes: int, *, freeze_encoder: bool = True, weights: str = IMAGENET) -> nn.Module:
    """weights: 'imagenet' (torchvision IMAGENET1K_V1), 'none' (random init) or a state_dict file."""
    return ResNet18Seg(num_classes, freeze_encoder=freeze_encoder, weights=weights)


def _check_args(args: dict) -> bool:
    """What a build would refuse that needs no build; True when the weights (a file, imagenet)
    are left to check by building on the meta device."""
    if args["freeze_encoder"] and args["weights"] == NO_WEIGHTS:
        raise AblateError(f"model 'resnet18': freeze_encoder=true with weights={NO_WEIGHTS} would train a "
                          "decoder on random features; pass freeze_encoder=false, or weights=imagenet or a file")
    return args["weights"] != NO_WEIGHTS


register_identity("resnet18", lambda args: {**args, "weights": weights_identity(args["weights"])})
register_check("resnet18", _check_args)

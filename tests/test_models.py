"""Tests for the model stage: every registered model, the registry, and override parsing."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import sys

import pytest
import torch
import torchvision
from torch import nn

from ablate.errors import AblateError
from ablate.models import _registry, create_model, list_models, model_params, parse_model_args, register_model
from ablate.config import TrainConfig
from ablate.models import model_identity
from ablate.models import resnet18 as resnet18_module
from ablate._io import file_sha256
from ablate.models.resnet18 import CACHE_FILE, RANDOM_INIT

NUM_CLASSES = 3
# Narrower variants where a model offers a width knob, to keep the suite fast on 2 cores;
# resnet18 from random weights (its default, imagenet, may need the network).
FAST_ARGS = {"unet": {"base_channels": 8}, "resnet18": {"weights": "none", "freeze_encoder": False}}


@pytest.fixture(autouse=True, scope="module")
def plain_cpu_kernels():
    """oneDNN compiles a kernel for each new conv shape; this suite meets dozens of shapes
    once each, so the plain kernels halve its run time. Shapes and gradients don't change."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = enabled


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """Point torch.hub at an empty folder so no test depends on (or writes to) the real cache."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    return hub


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup fails at once, as offline (and no test downloads 45 MB when online);
    the list records the hosts asked for."""
    asked = []

    def offline(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    return asked


# Models from elsewhere go through the same registry-driven tests: a user's module by import
# path (written to a temporary folder on sys.path by `external_models`) and smp's U-Net (skipped
# when the extra is not installed).
USER_MODULE = "abl_test_usernet"
USER_NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, width):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.body(x))


def build(num_classes, *, width: int = 4, note=None, scale=1.0):
    return Net(num_classes, width)


def needs_depth(num_classes, depth):
    return Net(num_classes, depth)


def not_a_module(num_classes):
    return "a string"
"""
EXTERNAL = [pytest.param(f"{USER_MODULE}:build", id="import-path"), pytest.param("smp:Unet/resnet18", id="smp-unet")]


@pytest.fixture(scope="module")
def external_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("usernets")
    (folder / f"{USER_MODULE}.py").write_text(USER_NET)
    sys.path.insert(0, str(folder))
    yield folder / f"{USER_MODULE}.py"
    sys.path.remove(str(folder))
    sys.modules.pop(USER_MODULE, None)
    for name in [n for n in _registry._RESOLVED if n.startswith(USER_MODULE)]:
        del _registry._RESOLVED[name]


@pytest.fixture
def model_name(request, external_models):
    if request.param.startswith("smp:"):
        pytest.importorskip("segmentation_models_pytorch")
    return request.param


def _images(n: int, h: int, w: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, 3, h, w)


def test_list_models_is_sorted_and_complete():
    assert list_models() == ["baseline", "custom", "resnet18", "unet"]


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
@pytest.mark.parametrize("model_name", list_models() + EXTERNAL, indirect=True)
def test_forward_backward(model_name, size):
    name = model_name
    model = create_model(name, NUM_CLASSES, **FAST_ARGS.get(name, {})).train()
    logits = model(_images(2, *size))
    assert logits.shape == (2, NUM_CLASSES, *size)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.randint(0, NUM_CLASSES, (2, *size))).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    head = model.net.segmentation_head[0] if name.startswith("smp:") else model.classifier
    assert head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_name", list_models() + EXTERNAL + [
    pytest.param("smp:FPN/resnet18", id="smp-fpn"),  # smp's Unet takes any size; FPN needs a multiple of 32
    pytest.param("smp:DeepLabV3Plus/resnet18", id="smp-deeplabv3plus")], indirect=True)  # of 16
def test_output_matches_any_input_size(model_name):
    # The decoders restore each mirrored stage's exact size, so odd sizes work too (smp's are
    # padded to the encoder's stride and cropped back).
    name = model_name
    model = create_model(name, NUM_CLASSES, **FAST_ARGS.get(name, {})).eval()
    with torch.no_grad():
        assert model(_images(1, 33, 47)).shape == (1, NUM_CLASSES, 33, 47)


TUNER_KERNELS = list(itertools.product((3, 5, 7, 9, 11), (3, 5, 7), (3, 5, 7)))
EXTREME_KERNELS = [(1, 1, 1), (11, 11, 11), (1, 11, 1), (11, 1, 11)]


@pytest.mark.parametrize("first,encoder,decoder", TUNER_KERNELS + EXTREME_KERNELS)
def test_custom_kernel_sizes_keep_input_size(first, encoder, decoder):
    model = create_model("custom", NUM_CLASSES, first_kernel=first, encoder_kernel=encoder,
                         decoder_kernel=decoder).eval()
    with torch.no_grad():
        assert model(_images(1, 64, 64)).shape == (1, NUM_CLASSES, 64, 64)


def test_custom_kernel_sizes_are_used():
    model = create_model("custom", NUM_CLASSES, first_kernel=5, encoder_kernel=7, decoder_kernel=9)
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    deconvs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 7, 7, 7, 7, 7, 1]  # 1×1 classifier last
    assert {d.kernel_size[0] for d in deconvs} == {9}


@pytest.mark.parametrize("arg,value", [("first_kernel", 4), ("encoder_kernel", 0), ("decoder_kernel", -3)])
def test_custom_rejects_even_or_nonpositive_kernels(arg, value):
    with pytest.raises(AblateError, match=f"{arg} must be an odd integer >= 1, got {value}"):
        create_model("custom", NUM_CLASSES, **{arg: value})


def test_unet_rejects_zero_width():
    with pytest.raises(AblateError, match="base_channels must be an integer >= 1, got 0"):
        create_model("unet", NUM_CLASSES, base_channels=0)


# --- resnet18: freezing and weights -------------------------------------------------

def _encoder_bn_stats(model: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


def _marked_state_dict() -> dict[str, torch.Tensor]:
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"].fill_(0.125)
    state["layer4.1.bn2.running_mean"].fill_(-3.0)
    return state


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(_marked_state_dict(), path)
    return path


def test_resnet18_frozen_encoder_stays_fixed_in_train_mode(weights_file):
    model = create_model("resnet18", NUM_CLASSES, weights=str(weights_file)).train()
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert not model.encoder.training and model.decoder.training
    before = _encoder_bn_stats(model)
    model(_images(2, 64, 64))
    assert all(torch.equal(a, b) for a, b in zip(before, _encoder_bn_stats(model)))


def test_resnet18_unfrozen_encoder_trains():
    model = create_model("resnet18", NUM_CLASSES, weights="none", freeze_encoder=False).train()
    assert model.weights_source == RANDOM_INIT and model.weights_sha256 is None
    assert all(p.requires_grad for p in model.encoder.parameters())
    before = _encoder_bn_stats(model)
    model(_images(2, 64, 64))
    assert not all(torch.equal(a, b) for a, b in zip(before, _encoder_bn_stats(model)))


def test_resnet18_refuses_a_frozen_random_encoder():
    with pytest.raises(AblateError, match="freeze_encoder=true with weights=none would train a decoder on random"):
        create_model("resnet18", NUM_CLASSES, weights="none")
    with pytest.raises(AblateError, match="freeze_encoder=true with weights=none"):
        create_model("resnet18", NUM_CLASSES, weights="none", freeze_encoder=True)


def test_resnet18_loads_weights_file(weights_file):
    model = create_model("resnet18", NUM_CLASSES, weights=str(weights_file))
    import hashlib

    sha = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert model.weights_sha256 == sha
    assert model.weights_source == f"file {weights_file} (sha256 {sha[:8]})"
    assert torch.all(model.encoder[0][0].weight == 0.125)
    assert torch.all(model.encoder[4][1].bn2.running_mean == -3.0)


def test_resnet18_imagenet_offline_and_not_cached_is_one_line_naming_the_cache_file(empty_hub_cache, no_network):
    with pytest.raises(AblateError) as err:
        create_model("resnet18", NUM_CLASSES, weights="imagenet")
    message = str(err.value)
    assert "\n" not in message and len(no_network) == 1  # it did try, once (the host, or a proxy)
    assert str(empty_hub_cache / "checkpoints" / CACHE_FILE) in message
    assert "weights=none with freeze_encoder=false" in message
    # The default is imagenet too.
    with pytest.raises(AblateError, match="cannot download"):
        create_model("resnet18", NUM_CLASSES)


def test_resnet18_imagenet_reads_torchvisions_cache_without_the_network(empty_hub_cache, no_network):
    cached = empty_hub_cache / "checkpoints" / CACHE_FILE
    cached.parent.mkdir(parents=True)
    # Like the real cached file, which predates BN's num_batches_tracked buffers. Its
    # content is not ImageNet's: torch.hub checks the hash only when it downloads.
    state = {k: v for k, v in _marked_state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, cached)
    model = create_model("resnet18", NUM_CLASSES)
    sha = file_sha256(cached)
    assert model.weights_source == f"imagenet (IMAGENET1K_V1, sha256 {sha[:8]})" and model.weights_sha256 == sha
    assert torch.all(model.encoder[0][0].weight == 0.125)
    assert no_network == []


def test_weights_identity_is_the_content_not_the_path(tmp_path, weights_file):
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    home_a.mkdir()
    home_b.mkdir()
    (home_a / "w.pth").write_bytes(weights_file.read_bytes())
    (home_b / "other-name.pth").write_bytes(weights_file.read_bytes())

    def run_id(path) -> str:
        return TrainConfig(model="resnet18", model_args={"weights": str(path)}).run_id

    assert run_id(home_a / "w.pth") == run_id(home_b / "other-name.pth")
    identity = TrainConfig(model="resnet18", model_args={"weights": str(home_a / "w.pth")}).identity()
    assert identity["model_args"] == {"freeze_encoder": True, "weights": f"sha256:{file_sha256(weights_file)[:8]}"}
    assert str(tmp_path) not in str(identity)
    before = run_id(home_b / "other-name.pth")
    state = _marked_state_dict()
    state["conv1.weight"].fill_(0.5)
    torch.save(state, home_b / "other-name.pth")  # a changed file: a new run
    assert run_id(home_b / "other-name.pth") != before
    with pytest.raises(AblateError, match="weights file not found"):
        run_id(tmp_path / "gone.pth")


def test_identity_fills_in_model_defaults():
    assert model_identity("resnet18", {}) == {"freeze_encoder": True, "weights": "imagenet:IMAGENET1K_V1"}
    assert model_identity("resnet18", {"weights": "imagenet"}) == model_identity("resnet18", {})
    assert model_identity("resnet18", {"weights": "none", "freeze_encoder": False}) == {
        "freeze_encoder": False, "weights": "none"}
    assert model_identity("unet", {}) == {"base_channels": 64}
    explicit = TrainConfig(model="unet", model_args={"base_channels": 64})
    assert explicit.run_id == TrainConfig(model="unet").run_id != TrainConfig(model="unet", model_args={"base_channels": 8}).run_id
    assert TrainConfig(model="baseline").identity()["model_args"] == {}


def test_resnet18_missing_weights_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(AblateError, match=f"weights file not found: {path}"):
        create_model("resnet18", NUM_CLASSES, weights=str(path))


@pytest.mark.parametrize("corrupt", ["wrong_shape", "wrong_keys", "not_a_dict", "not_torch"])
def test_resnet18_rejects_foreign_weights(tmp_path, corrupt):
    path = tmp_path / "bad.pth"
    state = _marked_state_dict()
    if corrupt == "wrong_shape":
        state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
        torch.save(state, path)
    elif corrupt == "wrong_keys":
        torch.save({"encoder.weight": torch.zeros(1)}, path)
    elif corrupt == "not_a_dict":
        torch.save([torch.zeros(1)], path)
    else:
        path.write_text("not a checkpoint")
    with pytest.raises(AblateError, match=f"{path} is not a torchvision ResNet-18 state_dict"):
        create_model("resnet18", NUM_CLASSES, weights=str(path))


def test_resnet18_accepts_a_different_fc_head(tmp_path):
    state = _marked_state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)
    torch.save(state, tmp_path / "ft.pth")
    model = create_model("resnet18", NUM_CLASSES, weights=str(tmp_path / "ft.pth"))
    assert torch.all(model.encoder[0][0].weight == 0.125)


# --- registry and create_model ------------------------------------------------------

def test_model_params_come_from_the_signature():
    assert model_params("unet") == {"base_channels": (int, 64)}
    assert model_params("custom") == {"first_kernel": (int, 11), "encoder_kernel": (int, 3),
                                      "decoder_kernel": (int, 3)}
    assert model_params("resnet18") == {"freeze_encoder": (bool, True), "weights": (str, "imagenet")}
    assert model_params("baseline") == {}


def test_create_model_unknown_name():
    with pytest.raises(AblateError) as err:
        create_model("x", NUM_CLASSES)
    assert str(err.value) == ("unknown model 'x'; choose from: baseline, custom, resnet18, unet "
                              "(or an import path MODULE:CALLABLE, or smp:ARCHITECTURE/ENCODER)")


def test_create_model_unknown_kwarg_lists_accepted():
    with pytest.raises(AblateError, match="'foo'; accepted: first_kernel, encoder_kernel, decoder_kernel"):
        create_model("custom", NUM_CLASSES, foo=1)
    with pytest.raises(AblateError, match="'foo'; accepted: none"):
        create_model("baseline", NUM_CLASSES, foo=1)


@pytest.mark.parametrize("name,kwargs,needle", [
    ("unet", {"base_channels": "16"}, "^model 'unet': base_channels: expected an integer, got '16'$"),
    ("unet", {"base_channels": True}, "^model 'unet': base_channels: expected an integer, got True$"),
    ("custom", {"first_kernel": 3.0}, "^model 'custom': first_kernel: expected an integer, got 3.0$"),
    ("resnet18", {"freeze_encoder": 1}, r"^model 'resnet18': freeze_encoder: expected true or false \(on/off, yes/no, 1/0\), "
                                        "got 1$"),
    ("resnet18", {"weights": 5}, "^model 'resnet18': weights: expected a string, got 5$"),
    ("resnet18", {"weights": None}, "^model 'resnet18': weights: expected a string, got None$"),
])
def test_create_model_wrong_type(name, kwargs, needle):
    with pytest.raises(AblateError, match=needle):
        create_model(name, NUM_CLASSES, **kwargs)


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True])
def test_create_model_bad_num_classes(num_classes):
    with pytest.raises(AblateError, match=f"^model 'baseline': num_classes: expected an integer >= 1, got {num_classes!r}$"):
        create_model("baseline", num_classes)


def test_duplicate_registration_raises():
    def unet(num_classes: int) -> nn.Module:
        return nn.Identity()
    with pytest.raises(ValueError, match="'unet' is already registered"):
        register_model(unet)
    assert list_models() == ["baseline", "custom", "resnet18", "unet"]


def test_registering_a_model_makes_it_creatable(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    monkeypatch.setattr(_registry, "_PARAMS", dict(_registry._PARAMS))

    @register_model
    def tiny(num_classes: int, *, width: int = 4) -> nn.Module:
        return nn.Conv2d(3, num_classes, 1, bias=width > 0)

    assert "tiny" in list_models()
    assert model_params("tiny") == {"width": (int, 4)}
    assert create_model("tiny", 2, **parse_model_args("tiny", ["width=0"])).bias is None


def test_check_model_builds_ablates_own_models_on_meta_and_other_registered_ones_for_real(monkeypatch):
    """The input check builds ablate's own models on the meta device (no weights allocated),
    which refuses the same bad arguments a real build does; a model registered from elsewhere
    may read values while it initialises, so it is built for real."""
    import torch

    from ablate.models import check_model

    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    monkeypatch.setattr(_registry, "_PARAMS", dict(_registry._PARAMS))
    devices = []

    @register_model
    def reads_its_weights(num_classes: int, *, width: int = 4) -> nn.Module:
        conv = nn.Conv2d(3, num_classes, 1)
        devices.append(conv.weight.device.type)
        float(conv.weight.detach().abs().max())  # a value: impossible on meta
        return conv

    check_model("reads_its_weights", {"width": 2})
    assert devices == ["cpu"]
    built = []
    real_unet = _registry._MODELS["unet"]
    monkeypatch.setitem(_registry._MODELS, "unet", lambda *a, **k: built.append(torch.empty(1).device.type) or real_unet(*a, **k))
    _registry._MODELS["unet"].__module__ = real_unet.__module__
    check_model("unet", {"base_channels": 4})
    assert built == ["meta"]
    with pytest.raises(AblateError, match="base_channels"):
        check_model("unet", {"base_channels": 0})
    assert torch.empty(1).device.type == "cpu"  # the default device is back


def test_register_rejects_untyped_or_positional_options(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))

    def positional(num_classes: int, width: int = 4) -> nn.Module:
        return nn.Identity()

    def untyped(num_classes: int, *, width=4) -> nn.Module:
        return nn.Identity()

    for fn in (positional, untyped):
        with pytest.raises(TypeError, match="width"):
            register_model(fn)


# --- parse_model_args ---------------------------------------------------------------

def test_parse_model_args_types_values():
    assert parse_model_args("unet", ["base_channels=16"]) == {"base_channels": 16}
    assert parse_model_args("resnet18", ["freeze_encoder=false", "weights=/p/x.pth"]) == {
        "freeze_encoder": False, "weights": "/p/x.pth"}
    assert parse_model_args("resnet18", ["weights=none"]) == {"weights": "none"}
    assert parse_model_args("resnet18", ["weights=imagenet"]) == {"weights": "imagenet"}
    assert parse_model_args("resnet18", ["weights=a=b.pth"]) == {"weights": "a=b.pth"}
    assert parse_model_args("custom", []) == {}
    for text, value in [("true", True), ("1", True), ("YES", True), ("False", False), ("0", False), ("no", False)]:
        assert parse_model_args("resnet18", [f"freeze_encoder={text}"]) == {"freeze_encoder": value}


@pytest.mark.parametrize("name,pairs,message", [
    ("unet", ["base_channels"],
     "--model-arg: expected [MODEL.]KEY=VALUE (e.g. unet.base_channels=16), got 'base_channels'"),
    ("unet", ["=3"], "--model-arg: expected [MODEL.]KEY=VALUE (e.g. unet.base_channels=16), got '=3'"),
    ("unet", ["width=3"], "--model-arg: unknown key 'width'; accepted: base_channels"),
    ("unet", ["base_channels=abc"], "--model-arg base_channels: expected an integer, got 'abc'"),
    ("unet", ["base_channels=1.5"], "--model-arg base_channels: expected an integer, got '1.5'"),
    ("unet", ["unet.base_channels=1.5"], "--model-arg unet.base_channels: expected an integer, got '1.5'"),
    ("unet", ["resnet18.weights=none"], "--model-arg: unknown key 'resnet18.weights'; accepted: base_channels"),
    ("resnet18", ["freeze_encoder=maybe"],
     "--model-arg freeze_encoder: expected true or false (on/off, yes/no, 1/0), got 'maybe'"),
    ("unet", ["base_channels=8", "base_channels=16"], "--model-arg base_channels: given twice"),
    ("vgg", ["a=1"], "unknown model 'vgg'; choose from: baseline, custom, resnet18, unet "
                     "(or an import path MODULE:CALLABLE, or smp:ARCHITECTURE/ENCODER)"),
])
def test_parse_model_args_errors(name, pairs, message):
    with pytest.raises(AblateError) as err:
        parse_model_args(name, pairs)
    assert str(err.value) == message


# --- models from elsewhere through the registry ------------------------------------------

def test_an_import_path_model_has_its_signature_as_options(external_models):
    name = f"{USER_MODULE}:build"
    assert model_params(name) == {"width": (int, 4), "note": (str | None, None), "scale": (float, 1.0)}
    assert parse_model_args(name, ["width=6", "scale=2", "note=none"]) == {"width": 6, "scale": 2.0, "note": None}
    assert create_model(name, NUM_CLASSES, width=6).classifier.in_channels == 6
    with pytest.raises(AblateError, match=f"model '{name}': unknown key 'depth'; accepted: width, note, scale"):
        create_model(name, NUM_CLASSES, depth=2)
    with pytest.raises(AblateError, match="width: expected an integer, got '6'"):
        create_model(name, NUM_CLASSES, width="6")


def test_an_import_path_identity_is_the_path_the_file_hash_and_the_filled_in_args(external_models):
    name = f"{USER_MODULE}:build"
    sha = hashlib.sha256(external_models.read_bytes()).hexdigest()[:16]
    assert model_identity(name, {"width": 6}) == {"import_path": name, "module_sha256": sha, "note": None,
                                                  "scale": 1.0, "width": 6}
    assert TrainConfig(model=name, model_args={"width": 4}).run_id == TrainConfig(model=name).run_id
    assert TrainConfig(model=name, model_args={"width": 6}).run_id != TrainConfig(model=name).run_id


@pytest.mark.parametrize("suffix, message", [
    ("needs_depth", "argument 'depth' needs a default"),
    ("not_a_module", "returned a str, not a torch.nn.Module"),
])
def test_an_import_path_that_cannot_be_a_model_is_one_line(external_models, suffix, message):
    with pytest.raises(AblateError, match=message) as err:
        create_model(f"{USER_MODULE}:{suffix}", NUM_CLASSES)
    assert "\n" not in str(err.value)


def test_check_model_name_prefixes_the_label(external_models):
    from ablate.models import check_model_name

    check_model_name(f"{USER_MODULE}:build", "study.toml: models")  # importable: no error
    with pytest.raises(AblateError) as err:
        check_model_name("vgg", "study.toml: models")
    assert str(err.value).startswith("study.toml: models: unknown model 'vgg'; choose from: baseline")
    with pytest.raises(AblateError, match="^study.toml: models: model nope_abl.x:build: cannot import nope_abl.x"):
        check_model_name("nope_abl.x:build", "study.toml: models")


def test_smp_identity_names_architecture_encoder_and_weights():
    smp = pytest.importorskip("segmentation_models_pytorch")
    assert model_params("smp:FPN/resnet18") == {"weights": (str, "none")}
    assert model_identity("smp:FPN/resnet18", {}) == {"architecture": "FPN", "encoder": "resnet18",
                                                      "smp": smp.__version__, "weights": "none"}
    assert TrainConfig(model="smp:FPN/resnet18").run_id != TrainConfig(model="smp:FPN/resnet34").run_id


def test_resnet18_names_torchvisions_imagenet_weights_without_importing_torchvision():
    """The weights' name, address and cache file are spelled out so that checking a study needs
    no torchvision import; they must be torchvision's own."""
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    assert (resnet18_module.IMAGENET_WEIGHTS_NAME, resnet18_module.IMAGENET_URL) == (weights.name, weights.url)
    assert resnet18_module.CACHE_FILE == os.path.basename(weights.url) == "resnet18-f37072fd.pth"


def test_check_model_builds_resnet18_only_when_its_weights_need_reading(tmp_path, monkeypatch):
    """Random weights: nothing a build could refuse beyond the frozen-random combination, so no
    build (none of torchvision's ResNet); a weights file or imagenet: built on meta as before."""
    from ablate.models import check_model

    built = []
    real = resnet18_module._load_resnet18
    monkeypatch.setattr(resnet18_module, "_load_resnet18", lambda weights, **kw: built.append(weights) or real(weights, **kw))
    check_model("resnet18", {"weights": "none", "freeze_encoder": False})
    assert built == []
    with pytest.raises(AblateError, match="model 'resnet18': unknown key 'width'"):
        check_model("resnet18", {"weights": "none", "freeze_encoder": False, "width": 2})
    with pytest.raises(AblateError, match="freeze_encoder=true with weights=none"):
        check_model("resnet18", {"weights": "none"})
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(AblateError, match="is not a torchvision ResNet-18 state_dict"):
        check_model("resnet18", {"weights": str(bad), "freeze_encoder": False})
    assert built == [str(bad)]

"""resnet18's explicit weights through the real commands: `imagenet` offline and not cached
is one line and exit 2 before anything is trained or written; a state_dict at torchvision's
cache path is what `imagenet` loads (and the record names it with its sha256 prefix); a
frozen random encoder is refused. No test here touches the network: name lookups fail."""
from __future__ import annotations

import hashlib
import json
import socket

import pytest
import torch
import torchvision
from click.testing import CliRunner

from ablate.cli import main

TINY = ["--data", "synthetic", "--epochs", "1", "--image-size", "32", "--batch-size", "32", "--precision", "fp32"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty TORCH_HOME and no name resolution: the machine of a user who is offline."""
    asked = []

    def no_dns(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() follows TORCH_HOME
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return asked


def _train(tmp_path, cache_dir, *args: str):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--model", "resnet18", *TINY, "--out", str(out),
                                       "--cache-dir", str(cache_dir), *args])
    return result, out


def test_imagenet_offline_without_the_cache_is_one_line_and_exit_2(tmp_path, cache_dir, offline):
    result, out = _train(tmp_path, cache_dir, "--model-arg", "weights=imagenet")
    assert result.exit_code == 2, result.output
    cache_file = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
    assert str(cache_file) in result.output and "weights=none with freeze_encoder=false" in result.output
    assert "Traceback" not in result.output and not out.exists()
    assert len(offline) == 1  # it asked once (for the host, or a proxy), then gave up
    # The default is imagenet, so the plain command says the same.
    default, _ = _train(tmp_path, cache_dir)
    assert default.exit_code == 2 and str(cache_file) in default.output


def test_a_state_dict_at_the_cache_path_is_what_imagenet_loads(tmp_path, cache_dir, offline):
    cache_file = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cache_file.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), cache_file)  # random, but a valid state_dict
    sha = hashlib.sha256(cache_file.read_bytes()).hexdigest()
    result, out = _train(tmp_path, cache_dir, "--model-arg", "weights=imagenet", "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["weights"] == f"imagenet (IMAGENET1K_V1, sha256 {sha[:8]})"
    assert record["status"] == "completed" and offline == []  # cached: no download tried
    # The frozen encoder kept the cached weights; the checkpoint holds them.
    state = torch.load(out / "best.pt", weights_only=True)["model_state"]
    assert torch.equal(state["encoder.0.0.weight"], torch.load(cache_file, weights_only=True)["conv1.weight"])


def test_a_weights_file_is_recorded_with_its_sha256_and_none_as_random_init(tmp_path, cache_dir, offline):
    path = tmp_path / "mine.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    result, out = _train(tmp_path, cache_dir, "--model-arg", f"weights={path}", "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["weights"] == f"file {path} (sha256 {sha[:8]})"
    result, out = _train(tmp_path / "b", cache_dir, "--model-arg", "weights=none", "--model-arg",
                         "freeze_encoder=false", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["weights"] == "none (random init)"


def test_a_frozen_random_encoder_is_refused(tmp_path, cache_dir, offline):
    result, out = _train(tmp_path, cache_dir, "--model-arg", "weights=none")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert "freeze_encoder=true with weights=none would train a decoder on random features" in result.output
    assert not out.exists() and offline == []


def test_the_grid_refuses_imagenet_offline_before_creating_anything(tmp_path, offline):
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["grid", "--models", "resnet18", "--model-arg", "resnet18.weights=imagenet",
                                       "--results-dir", str(results), "--no-report"])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert "model resnet18: resnet18 weights=imagenet: cannot download" in result.stderr
    assert not results.exists()


@pytest.mark.parametrize("model_args", [{"weights": "imagenet"}, {"weights": "none", "freeze_encoder": False}])
def test_a_resnet18_checkpoint_loads_offline_whatever_weights_it_started_from(tmp_path, monkeypatch, model_args):
    # the report's gallery, the grid's predictions.png and `ablate predict` rebuild the model around
    # the checkpoint: its start weights must not be looked up (an ImageNet start offline, no cache)
    import torch

    from ablate import _io
    from ablate.models import create_model
    from ablate.predict import load_run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    trained = create_model("resnet18", 3, weights="none", freeze_encoder=False)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in trained.state_dict().items()}
    _io.torch_save(tmp_path / "run" / "best.pt", {"model_state": state, "num_classes": 3,
                                                   "config": {"model": "resnet18", "model_args": model_args}})
    model, _ = load_run(tmp_path / "run")
    loaded = model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())

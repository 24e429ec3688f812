"""Architectures from elsewhere: a user's callable by import path, and smp architectures."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from ablate.errors import AblateError
from ablate.models._external import is_external, resolve

MODULE = textwrap.dedent("""
    from torch import nn

    def build(num_classes, *, width=4):
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, num_classes, 1))

    not_callable = 3
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"usernets_{abs(hash(tmp_path)) % 10**8}"
    path = tmp_path / f"{name}.py"
    path.write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # as PYTHONPATH=<folder> would
    yield name, path
    sys.modules.pop(name, None)


@pytest.fixture
def outside_sys_path(tmp_path, monkeypatch):
    """A working directory that holds a module, with neither it nor "" on sys.path (as under
    the `ablate` console script)."""
    name = f"cwdnets_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield name, tmp_path / f"{name}.py"
    sys.modules.pop(name, None)


def test_import_path_builds_and_hashes_its_file(user_module):
    name, path = user_module
    model = resolve(f"{name}:build")
    net = model.build(5, width=6)
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 5, 32, 32)
    assert net[0].out_channels == 6
    assert model.identity["import_path"] == f"{name}:build"
    first = model.identity["module_sha256"]
    assert len(first) == 16
    path.write_text(MODULE + "\n# edited\n")
    sys.modules.pop(name)
    assert resolve(f"{name}:build").identity["module_sha256"] != first


def test_resolving_leaves_sys_path_alone(user_module, monkeypatch):
    name, path = user_module
    (path.parent / "elsewhere").mkdir()
    monkeypatch.chdir(path.parent / "elsewhere")  # a working directory not on sys.path already
    before = list(sys.path)
    resolve(f"{name}:build")
    assert sys.path == before


def test_the_working_directory_is_not_searched_and_the_error_says_how(outside_sys_path):
    name, _ = outside_sys_path
    before = list(sys.path)
    with pytest.raises(AblateError, match=rf"cannot import {name} \(ModuleNotFoundError.*PYTHONPATH=\. .*nets\.py:build"):
        resolve(f"{name}:build")
    assert sys.path == before and name not in sys.modules


def test_a_file_path_builds_hashes_and_leaves_sys_path_alone(outside_sys_path):
    name, path = outside_sys_path
    before = list(sys.path)
    for spelled in (f"{path.name}:build", f"{path}:build"):  # relative to the working directory, or absolute
        model = resolve(spelled)
        assert model.build(3)(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)
        assert model.identity["import_path"] == spelled and len(model.identity["module_sha256"]) == 16
    assert sys.path == before


@pytest.mark.parametrize("spelled, match", [
    ("missing_abl.py:build", "no file missing_abl.py"),
    ("{path}:missing", "has no attribute 'missing'"),
])
def test_file_path_errors_name_what_is_wrong(outside_sys_path, spelled, match):
    _, path = outside_sys_path
    with pytest.raises(AblateError, match=match):
        resolve(spelled.format(path=path))


@pytest.mark.parametrize("suffix, match", [
    ("missing", "has no attribute 'missing'"),
    ("not_callable", "not_callable is a int, not a callable"),
])
def test_import_path_errors_name_what_is_wrong(user_module, suffix, match):
    name, _ = user_module
    with pytest.raises(AblateError, match=match):
        resolve(f"{name}:{suffix}")


def test_unimportable_module_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AblateError, match=r"cannot import no_such_pkg_xyz.nets \(ModuleNotFoundError.*PYTHONPATH") as info:
        resolve("no_such_pkg_xyz.nets:build")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["nets:", ":build", "my-pkg:build", "smp:Unet", "smp:/resnet18"])
def test_malformed_names_are_refused(name):
    with pytest.raises(AblateError, match="write"):
        resolve(name)


def test_names_that_are_external():
    assert is_external("smp:Unet/resnet18") and is_external("pkg.mod:fn")
    assert not is_external("unet")


def test_without_smp_the_error_says_which_pip_command_adds_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import now raises ImportError
    with pytest.raises(AblateError, match=r"segmentation-models-pytorch is not installed; pip install 'ablate\[smp\]'"):
        resolve("smp:Unet/resnet18")



def _need_smp():
    return pytest.importorskip("segmentation_models_pytorch")


def test_smp_unet_builds_offline_at_input_size():
    _need_smp()
    model = resolve("smp:Unet/resnet18")
    assert model.identity["architecture"] == "Unet" and model.identity["encoder"] == "resnet18"
    net = model.build(4)  # weights none: nothing downloaded
    assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 4, 64, 96)


@pytest.mark.parametrize("name, match", [
    ("smp:Unett/resnet18", "no architecture 'Unett'; choose from: .*DeepLabV3Plus.*Unet"),
    ("smp:Unet/resnet19", "no encoder 'resnet19'"),
])
def test_smp_unknown_names(name, match):
    _need_smp()
    with pytest.raises(AblateError, match=match):
        resolve(name)


def test_smp_weights_must_be_explicit_choices():
    _need_smp()
    with pytest.raises(AblateError, match="weights must be one of none, imagenet"):
        resolve("smp:FPN/resnet18").build(3, weights="random")

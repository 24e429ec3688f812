"""Loading a run runs no code the user did not name: a checkpoint whose config names a user
module (`evilmod:build`, or a file `evilmod.py:build`) is refused by `ablate predict` unless
the command line names that model (`--model`) or trusts it (`--trust-model-code`); the
checkpoint file itself is read with weights_only, so unpickling runs nothing either.
The planted module writes PWNED beside itself when imported: its absence is the proof."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ablate.cli import main
from ablate.errors import AblateError
from ablate.models import _registry, create_model
from ablate.predict import load_run

REPO = Path(__file__).resolve().parents[1]
EVIL = textwrap.dedent("""
    from pathlib import Path
    from torch import nn

    Path(__file__).with_name("PWNED").write_text("imported")

    def build(num_classes):
        return nn.Conv2d(3, num_classes, 1)
""")


def _checkpoint(folder: Path, model: str, state: dict, **extra) -> None:
    """A best.pt as `ablate train` writes it (record.write), for a 2-class model at 32 px."""
    torch.save({"model_state": state, "config": {"model": model, "model_args": {}}, "num_classes": 2,
                "class_names": ["background", "thing"], "image_size": [32, 32], **extra}, folder / "best.pt")


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A folder holding evilmod.py, an image, and a checkpoint naming evilmod (weights of a
    1x1 conv, made without importing it). Yields the folder; forgets the module afterwards."""
    (tmp_path / "evilmod.py").write_text(EVIL)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setattr(_registry, "_RESOLVED", {})
    yield tmp_path
    sys.modules.pop("evilmod", None)


def _python_m_ablate(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # `python -m` puts the working directory on sys.path: evilmod is importable, only the policy stops it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "ablate", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_python_m_ablate_predict_refuses_a_checkpoint_naming_a_module_in_its_folder(planted):
    _checkpoint(planted, "evilmod:build", torch.nn.Conv2d(3, 2, 1).state_dict())
    done = _python_m_ablate(["predict", "--run", ".", "--image", "x.png"], planted)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == ("error: best.pt: its model evilmod:build is code from evilmod, which ablate runs "
                                   "only when you name it: pass --model evilmod:build (the same model) "
                                   "or --trust-model-code")
    assert not (planted / "PWNED").exists() and not (planted / "x_pred.png").exists()


@pytest.mark.parametrize("allow", [["--trust-model-code"], ["--model", "evilmod:build"]])
def test_python_m_ablate_predict_runs_the_module_the_user_named(planted, allow):
    _checkpoint(planted, "evilmod:build", torch.nn.Conv2d(3, 2, 1).state_dict())
    done = _python_m_ablate(["predict", "--run", ".", "--image", "x.png", *allow], planted)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (planted / "PWNED").exists() and (planted / "x_pred.png").exists()


@pytest.mark.parametrize("spelling", ["module", "file"])
def test_cli_predict_needs_the_same_model_named(planted, monkeypatch, spelling):
    if spelling == "module":
        monkeypatch.syspath_prepend(str(planted))  # importable in this process: only the policy stops it
    model = "evilmod:build" if spelling == "module" else f"{planted / 'evilmod.py'}:build"
    _checkpoint(planted, model, torch.nn.Conv2d(3, 2, 1).state_dict())
    predict = ["predict", "--run", str(planted), "--image", str(planted / "x.png")]

    refused = CliRunner().invoke(main, predict)
    assert refused.exit_code == 2, refused.output
    module = model.rpartition(":")[0]
    assert refused.output.strip() == (f"error: {planted / 'best.pt'}: its model {model} is code from {module}, which "
                                      f"ablate runs only when you name it: pass --model {model} (the same model) "
                                      "or --trust-model-code")
    other = CliRunner().invoke(main, [*predict, "--model", "baseline"])
    assert other.exit_code == 2 and f"holds model {model}; pass --model {model}" in other.output
    assert len(other.output.strip().splitlines()) == 1
    assert not (planted / "PWNED").exists()

    named = CliRunner().invoke(main, [*predict, "--model", model])
    assert named.exit_code == 0, named.output
    assert (planted / "PWNED").exists()


def test_a_builtin_model_loads_without_flags(tmp_path):
    torch.manual_seed(0)
    _checkpoint(tmp_path, "baseline", create_model("baseline", 2).state_dict())
    model, ckpt = load_run(tmp_path)
    assert ckpt["config"]["model"] == "baseline" and not model.training


def test_unpickling_a_checkpoint_runs_no_code(tmp_path):
    pwned = tmp_path / "PWNED"

    class Touch:  # unpickled by calling Path.touch(pwned), were arbitrary objects allowed
        def __reduce__(self):
            return Path.touch, (pwned,)

    _checkpoint(tmp_path, "baseline", create_model("baseline", 2).state_dict(), payload=Touch())
    with pytest.raises(AblateError, match="cannot load checkpoint"):
        load_run(tmp_path)
    assert not pwned.exists()

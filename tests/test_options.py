"""One way to declare and check options (ablate.options): the same mistake reads as the same
sentence from a study file ([train], [model_train.MODEL], [factors], [model_args.MODEL]), from
--factor, from --model-arg, from a flag and from the Python API, each naming its source; and the
declarations themselves (rules in words, reading text and typed values, image sizes, ranges)."""
from __future__ import annotations

import math
import re

import pytest
from click.testing import CliRunner

from ablate.cli import main
from ablate.config import TrainConfig
from ablate.errors import AblateError


def _grid(tmp_path, *args):
    return CliRunner().invoke(main, ["grid", "--models", "unet", "--toggles", "none", "--dry-run",
                                     "--results-dir", str(tmp_path / "results"), *map(str, args)])


def _train(tmp_path, *args):
    return CliRunner().invoke(main, ["train", "--data", "synthetic", "--epochs", "1", "--image-size", "32",
                                     "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                                     *map(str, args)])


def _error(result) -> str:
    """The one line a bad input prints (exit 2, nothing written), without 'error: '."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0][len("error: "):]


def _python_error(fn, *args, **kwargs) -> str:
    with pytest.raises(AblateError) as err:
        fn(*args, **kwargs)
    return str(err.value)


def _study_errors(tmp_path, key: str, toml_value: str) -> dict[str, str]:
    """Source -> the line printed for `key = toml_value` in each table of a study file."""
    study = tmp_path / "s.toml"
    out = {}
    for table, line in (("train", f"{key} = {toml_value}"), ("model_train.unet", f"{key} = {toml_value}"),
                        ("factors", f"{key} = [{toml_value}]")):
        study.write_text(f'models = ["unet"]\n[{table}]\n{line}\n')
        out[f"{study}: line 3, column 1: {table}.{key}"] = _error(_grid(tmp_path, "--study", study))
    return out


@pytest.mark.parametrize("key, text, toml_value, python_value, sentence", [
    ("min_delta", "abc", '"abc"', "abc", "expected a number >= 0, got 'abc'"),
    ("min_delta", "-1", "-1", -1, "expected a number >= 0, got -1.0"),
    ("early_stop_on", "acc", '"acc"', "acc", "expected one of miou, loss, got 'acc'"),
    ("lr", "0", "0", 0, "expected a number > 0, got 0.0"),
])
def test_a_bad_training_value_is_one_sentence_from_every_source(tmp_path, key, text, toml_value, python_value,
                                                               sentence):
    flag = "--" + key.replace("_", "-")
    printed = [*_study_errors(tmp_path, key, toml_value).items(),
               (f"--factor {key}", _error(_grid(tmp_path, "--factor", f"{key}={text}"))),
               (flag, _error(_grid(tmp_path, flag, text))),
               (flag, _error(_train(tmp_path, flag, text))),
               (flag, _python_error(TrainConfig, **{key: python_value}))]
    assert len(printed) == 7
    for source, line in printed:
        assert line == f"{source}: {sentence}"
    assert not (tmp_path / "results").exists() and not (tmp_path / "out").exists()


def test_a_bad_learning_rate_given_as_text_is_refused_before_anything_runs(tmp_path):
    assert _error(_train(tmp_path, "--lr", "abc")) == "--lr: expected a number > 0, got 'abc'"
    assert _error(_grid(tmp_path, "--factor", "lr=1e-3,abc")) == "--factor lr: expected a number > 0, got 'abc'"


def test_a_bad_model_argument_is_one_sentence_from_the_file_and_every_model_arg(tmp_path):
    sentence = "expected an integer, got 'abc'"
    study = tmp_path / "s.toml"
    study.write_text('models = ["unet"]\n[model_args.unet]\nbase_channels = "abc"\n')
    from ablate.models import create_model

    printed = [
        (f"{study}: line 3, column 1: model_args.unet.base_channels", _error(_grid(tmp_path, "--study", study))),
        ("--model-arg unet.base_channels", _error(_grid(tmp_path, "--model-arg", "unet.base_channels=abc"))),
        ("--model-arg base_channels", _error(_grid(tmp_path, "--model-arg", "base_channels=abc"))),
        ("--model-arg base_channels", _error(_train(tmp_path, "--model", "unet", "--model-arg", "base_channels=abc"))),
        ("model 'unet': base_channels", _python_error(create_model, "unet", 2, base_channels="abc")),
    ]
    for source, line in printed:
        assert line == f"{source}: {sentence}"


def test_an_unknown_key_is_one_sentence_from_every_source(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('models = ["unet"]\n[train]\nepoch = 3\n')
    lines = [_error(_grid(tmp_path, "--study", study)), _error(_grid(tmp_path, "--factor", "epoch=1,2")),
             _error(_grid(tmp_path, "--model-arg", "width=3")),
             _error(_train(tmp_path, "--model", "unet", "--model-arg", "width=3")),
             _python_error(TrainConfig.from_dict, {"epoch": 3})]
    shape = re.compile(r"^(.+): unknown key '([a-z_.]+)'; accepted: ([a-z_, .]+)(; .*)?$")
    assert [shape.match(line).groups()[:2] for line in lines] == [
        (f"{study}: line 3, column 1", "train.epoch"), ("--factor", "epoch"), ("--model-arg", "width"),
        ("--model-arg", "width"), ("run config", "epoch")], lines
    assert all("epochs" in shape.match(line)[3] for line in (lines[0], lines[1], lines[4]))
    assert shape.match(lines[2])[3] == shape.match(lines[3])[3] == "base_channels"
    two_models = _error(_grid(tmp_path, "--models", "unet,resnet18", "--model-arg", "width=3"))
    assert two_models == "--model-arg: unknown key 'width'; accepted: unet.base_channels, resnet18.freeze_encoder, " \
                         "resnet18.weights"


# --------------------------------------------------------------------------- the declarations
def test_rules_in_words():
    from ablate.options import Option

    assert Option(int, ge=1).rule == "an integer >= 1"
    assert Option(float, gt=0).rule == "a number > 0"
    assert Option(float, ge=0, lt=1).rule == "a number in [0, 1)"
    assert Option(float, gt=0, lt=1, optional=True).rule == "a number in (0, 1) or none"
    assert Option(int, ge=1, also=("auto",)).rule == "'auto' or an integer >= 1"
    assert Option(str, choices=("ce", "dice")).rule == "one of ce, dice"
    assert Option(bool).rule == "true or false (on/off, yes/no, 1/0)"
    assert Option((int, str)).rule == "an integer or a string"
    assert Option(tuple, ge=1, step=32).rule == "an integer or HEIGHTxWIDTH, each positive and divisible by 32 (64 or 64x96)"


@pytest.mark.parametrize("option, value, text, read", [
    ("float", 1, False, 1.0),  # a study file's integer where a number goes
    ("float", "1e-3", True, 1e-3),
    ("int", " 8 ", True, 8),
    ("bool", "on", False, True),  # a study file writes toggles on/off
    ("bool", "No", True, False),
    ("optional", "none", True, None),
    ("optional", None, False, None),
    ("size", 64, False, (64, 64)),
    ("size", [64, 96], False, (64, 96)),
    ("size", "64x96", True, (64, 96)),
    ("size", "64 96", True, (64, 96)),
    ("size", "64,96", False, (64, 96)),
])
def test_values_are_read_as_their_kind(option, value, text, read):
    from ablate.options import Option, coerce

    options = {"float": Option(float, gt=0), "int": Option(int), "bool": Option(bool), "size": Option(tuple, step=32),
               "optional": Option(int, optional=True)}
    assert coerce(options[option], value, "k", text=text) == read
    assert type(coerce(options[option], value, "k", text=text)) is type(read)


@pytest.mark.parametrize("option, value, text", [
    ("float", "1e-3", False),  # a TOML string is not a number; a command line's text is
    ("float", True, False),
    ("float", "nan", True),
    ("float", math.inf, False),
    ("int", "1.5", True),
    ("int", True, False),
    ("int", 2.0, False),
    ("bool", 1, False),
    ("bool", "maybe", True),
    ("str", 5, False),
    ("required", None, False),
    ("required", "none", True),
    ("size", "64x", True),
    ("size", "7x9x3", True),
    ("size", [64, 96, 128], False),
    ("size", 64.0, False),
])
def test_values_of_the_wrong_kind_are_one_line_naming_the_source(option, value, text):
    from ablate.options import Option, coerce

    options = {"float": Option(float), "int": Option(int), "bool": Option(bool), "str": Option(str),
               "required": Option(int), "size": Option(tuple, step=32)}
    assert _python_error(coerce, options[option], value, "SOURCE", text=text) == (
        f"SOURCE: expected {options[option].rule}, got {value!r}")


def test_an_image_size_out_of_step_says_what_to_try():
    from ablate.options import Option, coerce

    size = Option(tuple, ge=1, step=32)
    with pytest.raises(AblateError, match=r": expected .*, got 48x100; try 64x96$"):
        coerce(size, "48x100", "--image-size", text=True)
    with pytest.raises(AblateError, match=r", got 0x64$"):  # not positive: nothing to try
        coerce(size, [0, 64], "train.image_size")


def test_a_searched_range_is_two_valid_values_low_first():
    from ablate.config import option_for
    from ablate.options import coerce_range

    assert coerce_range(option_for("lr"), [1e-4, 1e-2], "[tune] lr") == (1e-4, 1e-2)
    assert coerce_range(option_for("batch_size"), [8, 32], "[tune] batch_size") == (8, 32)
    for values, message in [([0, 1e-2], "[tune] lr: expected a number > 0, got 0.0"),
                            ([1e-2, 1e-4], "[tune] lr: expected a range [low, high] with low < high, got [0.01, 0.0001]"),
                            ([1e-3], "[tune] lr: expected a range [low, high], got [0.001]")]:
        assert _python_error(coerce_range, option_for("lr"), values, "[tune] lr") == message


def test_an_option_is_a_config_field_or_a_model_argument():
    from ablate.config import TRAIN_OPTIONS, option_for

    assert option_for("lr") is TRAIN_OPTIONS["lr"]
    assert option_for("base_channels", "unet").kind is int
    assert option_for("freeze_encoder", "resnet18").kind is bool
    assert _python_error(option_for, "width", "unet") == "model 'unet': unknown key 'width'; accepted: base_channels"


def test_every_training_flag_is_read_by_its_declaration():
    """A flag of a TrainConfig option is its option's type (no click.INT or Choice of its own),
    so a bad value is an AblateError in the one wording."""
    from ablate.cli import train as train_command
    from ablate.config import TRAIN_OPTIONS

    checked = {p.name for p in train_command.train.params if type(p.type).__name__ == "_Checked"}
    flags = {p.name for p in train_command.train.params  # (--model and --data: any name, checked where it is used)
             if p.name in TRAIN_OPTIONS and not p.is_flag and TRAIN_OPTIONS[p.name].rule != "a string"}
    assert flags == checked and {"lr", "epochs", "image_size", "loss", "device", "min_delta"} <= checked


@pytest.mark.parametrize("text, keys, at", [
    ('name = "s"\n[train]\nepochs = 3\n  lr = 0\n', ("train", "lr"), (4, 3)),
    ('name = "s"\n[train]\nepochs = 3\n', ("train", "lr"), (2, 1)),  # not written: its table
    ('train.lr = 0\n', ("train", "lr"), (1, 1)),
    ('[model_args]\nunet = { base_channels = "x" }\n', ("model_args", "unet", "base_channels"), (2, 1)),
    ('[model_train.vit]\nlr = 1\n', ("model_train",), (1, 1)),
    ('[model_args."pkg.mod:build"]\nwidth = 1\n', ("model_args", "pkg.mod:build", "width"), (2, 1)),
    ('description = """\nlr = 3\n"""\n[train]\nlr = 0\n', ("train", "lr"), (5, 1)),
    ('seeds = 3\n', ("train", "lr"), None),
])
def test_a_key_is_found_where_the_file_writes_it(text, keys, at):
    from ablate.studyfile import locate

    assert locate(text, keys) == at

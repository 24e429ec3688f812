"""Factors beyond the toggles: [factors] and --factor parsed and typed against TrainConfig, every
bad input refused with one line naming the key (exit 2 from the CLI, nothing written), the
cells and labels of full, fractional and one-at-a-time designs, the dashboard's parameters,
and planted effects recovered from synthetic results through the analysis."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ablate import analysis, results
from ablate import grid as grids
from ablate.cli import main
from ablate.config import TOGGLES
from ablate.errors import AblateError

REPO = Path(__file__).resolve().parents[1]
EXEC = {"device": "cpu", "precision": "fp32"}
LOSSES = ["ce", "dice", "focal", "ce+dice"]


def _study(raw: dict, **overrides):
    return grids.build_study({"models": ["baseline"], **raw}, where="s.toml", overrides=overrides)


# --------------------------------------------------------------------------- parsing
def test_factors_are_typed_against_the_training_options():
    s = _study({"factors": {"loss": ["ce", "dice"], "lr": [1, 3e-4], "image_size": [64, [64, 96]],
                            "nesterov": [False, True], "epochs": [2]}})
    assert s.factors == {"loss": ("ce", "dice"), "lr": (1.0, 3e-4), "image_size": ((64, 64), (64, 96)),
                         "nesterov": (False, True), "epochs": (2,)}
    assert isinstance(s.factors["lr"][0], float)
    assert s.toggles == ()  # a study that declares factors switches no toggle unless it says so
    # epochs has one level: fixed for every cell, not a factor of the design
    assert list(grids.varying_factors(s)) == ["loss", "lr", "image_size", "nesterov"]
    cells = grids.expand(s, "fp", EXEC)
    assert len(cells) == 16 and {c.config.epochs for c in cells} == {2}
    assert {c.config.image_size for c in cells} == {(64, 64), (64, 96)}
    assert cells[1].levels == {"loss": "ce", "lr": "1.0", "image_size": "64", "nesterov": "on"}
    assert cells[2].levels["image_size"] == "64x96"
    assert _study({"factors": {"nesterov": ["off", "on"]}}).factors == {"nesterov": (False, True)}


def test_factor_flags_are_typed_and_replace_the_file_entry():
    s = _study({"factors": {"loss": ["ce", "dice"], "optimizer": ["adamw", "sgd"]}},
               factor=["loss=dice,focal", "lr=1e-3,3e-4", "nesterov=off,on", "image_size=64,64x96"])
    assert s.factors == {"loss": ("dice", "focal"), "optimizer": ("adamw", "sgd"), "lr": (1e-3, 3e-4),
                         "nesterov": (False, True), "image_size": ((64, 64), (64, 96))}


def test_a_toggle_given_off_and_on_is_a_toggle_and_one_level_fixes_it():
    s = _study({"factors": {"augment": ["off", "on"], "weighted_loss": [True], "loss": ["ce", "dice"]}})
    assert s.toggles == ("augment",) and s.factors == {"weighted_loss": (True,), "loss": ("ce", "dice")}
    cells = grids.expand(s, "fp", EXEC)
    assert [(c.config.augment, c.config.loss) for c in cells] == [(False, "ce"), (False, "dice"), (True, "ce"),
                                                                 (True, "dice")]
    assert all(c.config.weighted_loss for c in cells)
    assert cells[3].label == "baseline augment+weighted_loss loss=dice seed 0"


FACTORS = ("image_size, epochs, batch_size, lr, weight_decay, optimizer, momentum, nesterov, loss, scheduler, schedule, "
           "augment, weighted_loss, class_weights, patience, early_stop_on, min_delta")
ONE_PER_STUDY = ("; models, model_args and seeds are set at the top level, and data, num_classes, ignore_index, "
                 "val_fraction, precision, device and compile are one per study")
SIZE = "expected an integer or HEIGHTxWIDTH, each positive and divisible by 32 (64 or 64x96), got"
LOSS_NAMES = "one of ce, dice, focal, lovasz, ce+dice"


@pytest.mark.parametrize("raw, flags, message", [
    ({"factors": {"los": ["ce"]}}, (), f"s.toml: unknown key 'factors.los'; accepted: {FACTORS}"),
    ({"factors": {"data": ["synthetic"]}}, (), f"s.toml: unknown key 'factors.data'; accepted: {FACTORS}{ONE_PER_STUDY}"),
    ({"factors": {"seed": [1, 2]}}, (), f"s.toml: unknown key 'factors.seed'; accepted: {FACTORS}{ONE_PER_STUDY}"),
    ({"factors": {"loss": ["ce", "bogus"]}}, (), f"s.toml: factors.loss: expected {LOSS_NAMES}, got 'bogus'"),
    ({"factors": {"optimizer": ["adamw", "adam"]}}, (), "s.toml: factors.optimizer: expected one of adamw, sgd, got 'adam'"),
    ({"factors": {"lr": [1e-3, "fast"]}}, (), "s.toml: factors.lr: expected a number > 0, got 'fast'"),
    ({"factors": {"lr": ["1e-3"]}}, (), "s.toml: factors.lr: expected a number > 0, got '1e-3'"),  # a TOML string
    ({"factors": {"epochs": [2, 2.5]}}, (), "s.toml: factors.epochs: expected an integer >= 1, got 2.5"),
    ({"factors": {"lr": [1e-3, -1.0]}}, (), "s.toml: factors.lr: expected a number > 0, got -1.0"),
    ({"factors": {"image_size": [64, 50]}}, (), f"s.toml: factors.image_size: {SIZE} 50; try 64"),
    ({"factors": {"image_size": [64, [64, "x"]]}}, (), f"s.toml: factors.image_size: {SIZE} [64, 'x']"),
    ({"factors": {"loss": []}}, (), 's.toml: factors.loss: expected at least one level, e.g. loss = ["ce", "dice"]'),
    ({"factors": {"loss": "ce"}}, (), 's.toml: factors.loss: expected a list of levels, e.g. loss = ["ce", "dice"], '
                                      "got 'ce'"),
    ({"factors": {"loss": ["ce", "dice", "ce"]}}, (), "s.toml: factors.loss: levels repeat in ['ce', 'dice', 'ce']"),
    ({"factors": {"lr": [1e-3, 0.001]}}, (), "s.toml: factors.lr: levels repeat"),
    ({"factors": {"augment": ["on", "off"]}}, (), "s.toml: factors.augment: a toggle's levels are off and on, off first"),
    ({"factors": {"augment": ["maybe"]}}, (), "s.toml: factors.augment: expected true or false (on/off, yes/no, 1/0), "
                                              "got 'maybe'"),
    ({"toggles": ["augment"], "factors": {"augment": ["off", "on"]}}, (), "factors.augment: augment is also in toggles"),
    ({}, ("loss=ce", "loss=dice"), "--factor loss: given twice; list every level in one --factor loss=A,B"),
    ({}, ("loss",), "--factor: expected KEY=LEVEL,LEVEL,... (e.g. loss=ce,dice), got 'loss'"),
    ({}, ("lr=fast",), "--factor lr: expected a number > 0, got 'fast'"),
    ({}, ("lr=1e-3,0",), "--factor lr: expected a number > 0, got 0.0"),
    ({}, ("nesterov=maybe",), "--factor nesterov: expected true or false (on/off, yes/no, 1/0), got 'maybe'"),
    ({}, ("image_size=64,50",), f"--factor image_size: {SIZE} 50; try 64"),
    ({}, ("foo=1",), f"--factor: unknown key 'foo'; accepted: {FACTORS}"),
    ({}, ("seed=1,2",), f"--factor: unknown key 'seed'; accepted: {FACTORS}{ONE_PER_STUDY}"),
])
def test_bad_factor_input_is_one_line_naming_the_key(raw, flags, message):
    with pytest.raises(AblateError, match=re.escape(message)) as err:
        _study(raw, factor=list(flags))
    assert "\n" not in str(err.value)


def test_a_flag_and_a_factor_for_the_same_option_are_refused():
    with pytest.raises(AblateError, match=r"factors\.lr: --lr also sets lr"):
        _study({"factors": {"lr": [1e-3, 3e-4]}}, lr=1e-2)


@pytest.mark.parametrize("raw, match", [
    ({"design": "fractional", "factors": {"loss": LOSSES, "optimizer": ["adamw", "sgd"]}},
     r"design: a fractional design needs two-level factors; loss has 4 levels"),
    ({"design": "fractional", "factors": {"optimizer": ["adamw", "sgd"], "nesterov": [False, True]}},
     r"design: design = \"fractional\" needs 4 to 11 two-level factors, got 2"),
    ({"design": "half", "factors": {"loss": ["ce"]}},
     r"^s\.toml: design: expected one of full, fractional, one-at-a-time, got 'half'$"),
    ({"design": "one-at-a-time", "factors": {"loss": ["ce"]}}, r"one-at-a-time needs at least one factor"),
])
def test_bad_designs_are_refused(raw, match):
    with pytest.raises(AblateError, match=match):
        _study(raw)


def test_bad_factor_file_exits_2_naming_the_key_and_writes_nothing(tmp_path):
    study = tmp_path / "bad.toml"
    study.write_text('models = ["baseline"]\n[factors]\nloss = ["ce", "hinge"]\n')
    results = tmp_path / "results"
    out = CliRunner().invoke(main, ["grid", "--study", str(study), "--results-dir", str(results)])
    assert out.exit_code == 2, out.output
    assert out.output.strip().count("\n") == 0, out.output
    assert f"{study}: line 3, column 1: factors.loss: expected {LOSS_NAMES}, got 'hinge'" in out.output
    assert "Traceback" not in out.output and not results.exists()
    flag = CliRunner().invoke(main, ["grid", "--models", "baseline", "--factor", "optimzer=sgd", "--results-dir",
                                     str(results)])
    assert flag.exit_code == 2 and "--factor: unknown key 'optimzer'" in flag.output and not results.exists()
    empty = CliRunner().invoke(main, ["grid", "--models", "baseline", "--factor", "loss=", "--results-dir", str(results)])
    assert empty.exit_code == 2 and "--factor loss: expected at least one level" in empty.output and not results.exists()


# --------------------------------------------------------------------------- designs → cells
def test_two_factor_full_design_cells_labels_and_identity():
    s = grids.read_grid_study(REPO / "studies" / "losses.toml")
    assert s.models == ("unet",) and s.toggles == () and s.seeds == (0, 1, 2)
    cells = grids.expand(s, "fp", EXEC)
    assert len(cells) == 24 and len({c.cell_id for c in cells}) == 24
    first = cells[:8]
    assert [(c.config.loss, c.config.optimizer) for c in first] == [(lo, o) for lo in LOSSES for o in ("adamw", "sgd")]
    assert all(c.config.seed == 0 for c in first) and {c.config.seed for c in cells[8:16]} == {1}
    assert first[3].label == "unet none loss=dice optimizer=sgd seed 0"
    brief = first[3].brief()
    assert brief["factors"] == {"loss": "dice", "optimizer": "sgd"}
    assert brief["design"] == {"kind": "full", "levels": {"loss": LOSSES, "optimizer": ["adamw", "sgd"]}}
    assert grids.trial_label("unet", brief["toggles"], 0, brief["factors"]) == "unet · loss=dice optimizer=sgd · s0"
    # identity: the same cells from flags; a changed factor set is another grid
    same = grids.build_study({"models": ["unet"], "train": {"image_size": 64, "epochs": 4, "batch_size": 8, "lr": 1e-2,
                                                            "patience": 0}, "model_args": {"unet": {"base_channels": 8}}},
                             where="x", overrides={"factor": ["loss=ce,dice,focal,ce+dice", "optimizer=adamw,sgd"],
                                                   "seeds": 3, "name": "losses"})
    assert [c.cell_id for c in grids.expand(same, "fp", EXEC)] == [c.cell_id for c in cells]
    grid = grids.definition(s, "fp", EXEC)
    assert grid["factors"] == {"loss": LOSSES, "optimizer": ["adamw", "sgd"]}
    attrs = {"kind": "grid", "grid": grid, "grid_hash": grids.stable_hash(grid)}
    grids.check_same_grid("losses", attrs, grid, "sqlite:///x.db")  # the same grid passes
    fewer = grids.build_study({"models": ["unet"], "factors": {"loss": ["ce", "dice"], "optimizer": ["adamw", "sgd"]}},
                              where="x", overrides={})
    with pytest.raises(AblateError, match=r"differs in: .*factors"):
        grids.check_same_grid("losses", attrs, grids.definition(fewer, "fp", EXEC), "sqlite:///x.db")


def test_the_default_study_keeps_its_definition_without_factors():
    s = grids.read_grid_study()
    assert s.factors == {} and s.design == "full" and s.toggles == ("scheduler", "augment", "weighted_loss")
    cells = grids.expand(s, "fp", EXEC)
    assert len(cells) == 8 * len(s.seeds) and all("factors" not in c.brief() and "design" not in c.brief() for c in cells)
    assert not {"factors", "design"} & set(grids.definition(s, "fp", EXEC))
    assert cells[1].label == "unet weighted_loss seed 0"  # labels as before: toggles only


FIVE = {"toggles": ["scheduler", "augment", "weighted_loss"], "design": "fractional",
        "factors": {"optimizer": ["adamw", "sgd"], "loss": ["ce", "focal"]}}


def test_fractional_five_factors_run_sixteen_cells_with_their_alias_structure():
    s = _study(FIVE, seeds=2)
    cells = grids.expand(s, "fp", EXEC)
    assert len(cells) == 32 and len({c.cell_id for c in cells}) == 32  # 16 settings x 2 seeds
    settings = [(c.config.scheduler, c.config.augment, c.config.weighted_loss, c.config.optimizer, c.config.loss)
                for c in cells[:16]]
    assert len(set(settings)) == 16
    # I = ABCDE: every run has an even number of factors at their first level (E = ABCD)
    assert all(sum(not v if isinstance(v, bool) else v in ("adamw", "ce") for v in st) % 2 == 0 for st in settings)
    lines = grids.design_lines(s)
    assert lines[0] == ("design: fractional, 16 of 32 settings of scheduler (2 levels: off, on) x augment (2 levels: "
                        "off, on) x weighted_loss (2 levels: off, on) x optimizer (2 levels: adamw, sgd) x loss "
                        "(2 levels: ce, focal)")
    assert "generators: E = ABCD" in lines and "defining relation: I = ABCDE" in lines
    assert "  AB = CDE" in lines and not any(re.match(r"  [A-E] =", line) for line in lines)  # mains: no short alias
    assert grids.definition(s, "fp", EXEC)["design"]["lines"] == lines  # stored with the definition


# Per-(setting, seed) measurement noise, SD ≈ 0.006: a fixed table read cyclically and centred per setting over
# the seeds, so planted effects are estimated exactly while the per-seed effects vary. (NOISE, a seed offset shared
# by every cell, cancels in every paired effect: alone it makes every seed give the same effect, which is not
# replication and carries no verdict.)
OFFSETS = (0.004, -0.007, 0.009, -0.002, 0.006, -0.009, 0.001, 0.008, -0.005, 0.003, -0.006, 0.007, -0.003)


def _jitter(setting: int, seed_index: int, n_seeds: int) -> float:
    raw = [OFFSETS[(5 * setting + 3 * s) % len(OFFSETS)] for s in range(n_seeds)]
    return raw[seed_index] - sum(raw) / n_seeds


def _synthetic_runs(cells, value, *, noise: bool = False) -> pd.DataFrame:
    """Runs of these cells as runs.csv holds them, with test mIoU = value(config) (`noise`: plus
    `_jitter` of the cell's setting, numbered in order of appearance, and seed)."""
    settings: list[str] = []
    seeds = sorted({c.config.seed for c in cells})
    rows = []
    for c in cells:
        b = c.brief()
        y = value(c.config)
        if noise:
            key = json.dumps([b["model"], [b[t] for t in TOGGLES], b.get("factors")], sort_keys=True)
            settings += [key] if key not in settings else []
            y += _jitter(settings.index(key), seeds.index(c.config.seed), len(seeds))
        rows.append({**b, "model_args": json.dumps(b["model_args"]), "factors": json.dumps(b.get("factors") or {}),
                     "design": json.dumps(b.get("design")) if b.get("design") else None, "status": "completed",
                     "val_miou": y - 0.01, "test_miou": y, "val_pixel_acc": 0.9, "test_pixel_acc": 0.9,
                     "seconds": 1.0, "images_per_second": 10.0})
    return analysis.with_cells(pd.DataFrame(rows))


NOISE = {0: 0.013, 1: -0.021, 2: 0.004, 3: 0.017}


def test_planted_main_effect_is_recovered_from_a_fractional_design():
    s = _study(FIVE, seeds=4)
    runs = _synthetic_runs(grids.expand(s, "fp", EXEC), lambda c: 0.4 + NOISE[c.seed] + 0.04 * (c.optimizer == "sgd")
                           + 0.002 * c.seed * c.augment, noise=True)
    effects = analysis.factorial_effects(runs, metrics=("test_miou",)).set_index("effect")
    assert len(effects) == 5 + 10  # resolution V: the two-way interactions are estimable too
    sgd = effects.loc["optimizer = sgd vs adamw"]
    assert sgd["estimate"] == pytest.approx(0.04) and sgd["verdict"] == "helps"
    assert sgd["aliases"] == "scheduler×augment×weighted_loss×loss"  # resolution V: a four-factor alias, named
    assert sgd["ci_low"] > 0.03 and sgd["p_value"] <= sgd["threshold"] == pytest.approx(0.05 / 5)
    assert sgd["sentence"].startswith("baseline: optimizer = sgd vs adamw raises test mIoU, averaged over the other "
                                      "factors; aliased with scheduler×augment×weighted_loss×loss: +0.040 [95% CI ")
    # augment adds 0.002 per seed number: 0, 0.002, 0.004, 0.006 → +0.003, well inside ±δ = 0.01
    aug = effects.loc["augment"]
    assert aug["estimate"] == pytest.approx(0.002 * 1.5) and aug["verdict"] == "no effect larger than δ"
    assert -0.01 < aug["ci_low"] < 0 < aug["ci_high"] < 0.01
    assert aug["threshold_equiv"] == pytest.approx(0.05 / 5) and aug["p_equiv"] <= aug["threshold_equiv"] < aug["p_value"]
    assert effects.loc["scheduler × augment", "aliases"] == "weighted_loss×optimizer×loss"
    others = effects.drop(index=["optimizer = sgd vs adamw", "augment"])
    assert np.allclose(others["estimate"], 0, atol=1e-12)
    assert not set(others["verdict"]) & {"helps", "hurts"}  # nothing planted, nothing claimed
    assert set(others.loc[others["kind"] == "interaction", "verdict"]) == {"estimate only"}
    assert set(effects.loc[effects["kind"] == "main", "family_size"]) == {5}
    assert set(effects["design"]) == {"fractional"}


def test_one_at_a_time_cells_labels_and_effects():
    s = _study({"design": "one-at-a-time", "factors": {"loss": LOSSES, "optimizer": ["adamw", "sgd"]}}, seeds=3)
    cells = grids.expand(s, "fp", EXEC)
    assert [(c.config.loss, c.config.optimizer) for c in cells[:5]] == [
        ("ce", "adamw"), ("dice", "adamw"), ("focal", "adamw"), ("ce+dice", "adamw"), ("ce", "sgd")]
    assert len(cells) == 15 and "cannot see interactions" in grids.design_lines(s)[1]
    runs = _synthetic_runs(cells, lambda c: 0.4 + NOISE[c.seed] - 0.05 * (c.loss == "focal"), noise=True)
    effects = analysis.factorial_effects(runs, metrics=("test_miou",)).set_index("effect")
    assert list(effects.index) == ["loss = dice vs ce", "loss = focal vs ce", "loss = ce+dice vs ce",
                                   "optimizer = sgd vs adamw"]
    assert set(effects["kind"]) == {"main"}  # no interaction: the design cannot see one
    focal = effects.loc["loss = focal vs ce"]
    assert focal["estimate"] == pytest.approx(-0.05) and focal["ci_high"] < 0
    assert focal["verdict"] == "hurts" and focal["family_size"] == 4
    assert focal["p_value"] <= focal["threshold"] == pytest.approx(0.05 / 4)
    assert focal["sentence"].startswith("baseline: loss = focal vs ce lowers test mIoU, at the reference setting of "
                                        "the other factors: -0.050 [95% CI ")
    # dice does nothing, but 3 seeds of noise cannot fit it inside ±δ yet
    assert effects.loc["loss = dice vs ce", "verdict"] == "inconclusive"
    assert effects.loc["loss = dice vs ce", "ci_low"] < 0 < effects.loc["loss = dice vs ce", "ci_high"]
    study = results.Study(name="oat", folder=Path("."), kind="grid", meta={}, table=pd.DataFrame())
    found = analysis.findings(study, analysis.with_flags(runs, None))
    assert found.design == [analysis.ONE_AT_A_TIME_NOTE] and "cannot see interactions" in found.design[0]


def test_dry_run_of_the_losses_study_lists_eight_cells_by_three_seeds(tmp_path):
    results = tmp_path / "results"
    out = CliRunner().invoke(main, ["grid", "--study", str(REPO / "studies" / "losses.toml"), "--seeds", "3",
                                    "--dry-run", "--results-dir", str(results)])
    assert out.exit_code == 0, out.output
    assert "study losses: 24 cells (1 model x 8 settings x 3 seeds); 0 done, 24 pending" in out.stdout
    assert ("design: full factorial, 8 settings of loss (4 levels: ce, dice, focal, ce+dice) x optimizer "
            "(2 levels: adamw, sgd)") in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"[0-9a-f]{12} ", line)]
    assert len(rows) == 24 and len({r[0] for r in rows}) == 24
    assert {(r[2], r[3]) for r in rows} == {(lo, o) for lo in LOSSES for o in ("adamw", "sgd")}
    assert sorted(int(r[4]) for r in rows) == [0] * 8 + [1] * 8 + [2] * 8
    assert not results.exists()


def test_fractional_dry_run_prints_generators_and_aliases(tmp_path):
    out = CliRunner().invoke(main, ["grid", "--models", "baseline", "--toggles", "scheduler,augment,weighted_loss",
                                    "--factor", "optimizer=adamw,sgd", "--factor", "loss=ce,focal", "--design",
                                    "fractional", "--dry-run", "--results-dir", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    assert "48 cells (1 model x 16 settings x 3 seeds)" in out.stdout  # the default study's 3 seeds
    assert "2^(5-1) fractional factorial, resolution V, 16 runs" in out.stdout and "generators: E = ABCD" in out.stdout
    assert "  AB = CDE" in out.stdout


# --------------------------------------------------------------------------- dashboard parameters
def test_factors_are_categorical_params_of_each_trial(tmp_path):
    s = _study({"factors": {"loss": ["ce", "dice"], "lr": [1e-3, 3e-4]}})
    cells = grids.expand(s, "fp", EXEC)
    gs = grids.GridStorage(f"sqlite:///{tmp_path / 'o.db'}", "p")
    gs.prepare(s, cells, grids.definition(s, "fp", EXEC))
    claimed = [gs.claim(cells, max_retries=0) for _ in range(2)]
    assert [c.cell_id for c, _ in claimed] == [cells[0].cell_id, cells[1].cell_id]  # exactly once, in order
    trials = gs.trials()
    assert trials[1].params == {"model": "baseline", "scheduler": False, "augment": False, "weighted_loss": False,
                                "loss": "ce", "lr": "0.0003"}
    assert trials[1].distributions["loss"].choices == ("ce", "dice")
    assert trials[1].distributions["lr"].choices == ("0.001", "0.0003")
    assert trials[1].user_attrs["label"] == "baseline · loss=ce lr=0.0003 · s0"
    attrs = gs.study_attrs()
    assert attrs["cells"][3]["factors"] == {"loss": "dice", "lr": "0.0003"}


# --------------------------------------------------------------------------- for real (tiny)
def test_a_factor_grid_trains_resumes_extends_reports_and_refuses_another_factor_set(tmp_path, cache_dir):
    results = tmp_path / "results"

    def grid_args(levels: str = "1e-3,2e-3") -> list[str]:
        return ["grid", "--seeds", "1", "--models", "baseline", "--toggles", "none", "--image-size", "32", "--epochs", "1",
                "--data", "synthetic", "--factor", f"lr={levels}", "--study-name", "fx", "--results-dir", str(results),
                "--cache-dir", str(cache_dir)]
    args = grid_args()
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "2 cells (1 model x 2 settings x 1 seed), 0 done, 2 to run" in first.stdout
    # two workers: either cell may finish first, but each prints its levels once, and the counter
    # counts 1 then 2
    done = re.findall(r"\[(\d)/2\] baseline none (lr=0\.00\d) seed 0: val mIoU", first.stdout)
    assert sorted(n for n, _ in done) == ["1", "2"], first.stdout
    assert sorted(level for _, level in done) == ["lr=0.001", "lr=0.002"], first.stdout
    runs = pd.read_csv(results / "fx" / "runs.csv")
    assert [json.loads(f) for f in runs["factors"]] == [{"lr": "0.001"}, {"lr": "0.002"}]
    assert list(runs["label"]) == ["baseline · lr=0.001 · s0", "baseline · lr=0.002 · s0"]
    assert len(pd.read_csv(results / "fx" / "summary.csv")) == 2  # the two cells are not pooled
    effects = pd.read_csv(results / "fx" / "effects.csv")
    assert "lr = 0.002 vs 0.001" in set(effects["effect"])
    assert set(effects["verdict"]) <= {"did not learn", "not enough seeds"}  # one seed of one epoch: no verdict
    html = (results / "fx" / "report.html").read_text()
    assert "Factor effects" in html and "lr = 0.002 vs 0.001" in html
    assert json.loads((results / "fx" / "study.json").read_text())["grid"]["factors"] == {"lr": ["0.001", "0.002"]}

    again = CliRunner().invoke(main, [*args, "--no-report"])
    assert again.exit_code == 0 and "2 done, 0 to run" in again.stdout, again.output
    more = CliRunner().invoke(main, [*args, "--seeds", "2", "--dry-run"])
    assert more.exit_code == 0 and "4 cells (1 model x 2 settings x 2 seeds); 2 done, 2 pending" in more.stdout
    other = CliRunner().invoke(main, grid_args("1e-3,3e-3"))
    assert other.exit_code == 2 and "differs in: factors" in other.output, other.output


@pytest.mark.parametrize("design, raw, expected", [
    ("fractional", FIVE, ["generators: E = ABCD", "AB = CDE", "optimizer = sgd vs adamw", "Factor effects"]),
    ("one-at-a-time", {"design": "one-at-a-time", "factors": {"loss": LOSSES, "optimizer": ["adamw", "sgd"]}},
     ["cannot see interactions", "loss = focal vs ce", "unet · loss=focal optimizer=adamw", "Factor effects"]),
])
def test_the_report_shows_the_design_and_the_per_level_effects(tmp_path, design, raw, expected):
    from ablate.report import write_report

    s = grids.build_study({"models": ["unet"], **raw}, where="s.toml", overrides={"seeds": 3, "name": "d"})
    cells = grids.expand(s, "fp", EXEC)
    runs = _synthetic_runs(cells, lambda c: 0.4 + NOISE[c.seed] + 0.04 * (c.optimizer == "sgd"), noise=True)
    folder = tmp_path / "d"
    folder.mkdir()
    table = pd.DataFrame([{**c.brief(), "model_args": "{}", "factors": json.dumps(c.brief()["factors"]),
                           "design": json.dumps(c.brief()["design"]), "status": "completed",
                           **runs.iloc[i][["val_miou", "test_miou", "val_pixel_acc", "test_pixel_acc", "seconds"]]}
                          for i, c in enumerate(cells)])
    table.to_csv(folder / "runs.csv", index=False)
    (folder / "study.json").write_text(json.dumps({"kind": "grid", "study_name": "d", "seeds": [0, 1, 2],
                                                   "grid": grids.definition(s, "fp", EXEC)}))
    html = write_report(results_dir=tmp_path, study_names=["d"]).read_text()
    for text in expected:
        assert text in html, text
    effects = pd.read_csv(folder / "effects.csv")
    sgd = effects[(effects["effect"] == "optimizer = sgd vs adamw") & (effects["metric"] == "test_miou")].iloc[0]
    assert sgd["estimate"] == pytest.approx(0.04) and sgd["verdict"] == "helps" and sgd["design"] == design

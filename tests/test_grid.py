"""The grid stage without the CLI: study files, cell expansion and ids, the claim lock and
reclaim of dead workers' cells, retry accounting, tables, and optuna-dashboard on the storage."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import storage_url, wsgi_json_getter
from optuna.trial import TrialState

from ablate import data as data_stage
from ablate import grid as grids
from ablate import workers
from ablate.config import TOGGLES
from ablate.errors import AblateError

REPO = Path(__file__).resolve().parents[1]
FP = "f" * 16  # a dataset fingerprint for tests that never load data


def _study(**overrides):
    base = {"models": "unet", "toggles": "scheduler", "seeds": 2, "model_arg": ["base_channels=4"],
            "image_size": 32, "epochs": 1, "name": "t"}
    return grids.build_study(grids.QUICK_STUDY, where="test", overrides={**base, **overrides})


# --------------------------------------------------------------------------- study files
def test_quick_toml_is_the_builtin_quick_study():
    assert grids.read_grid_study(REPO / "studies" / "quick.toml") == grids.build_study(grids.QUICK_STUDY, where="x", overrides={})
    quick = grids.read_grid_study()
    assert quick.name == "quick" and quick.train.data == "synthetic" and quick.models == ("unet",)
    assert len(grids.expand(quick, FP)) == 8 * len(quick.seeds) and quick.model_args["unet"]["base_channels"] <= 16


def test_the_four_architecture_study_is_the_default_study_plus_three_architectures():
    quick, four = grids.read_grid_study(), grids.read_grid_study(REPO / "studies" / "four-archs.toml")
    assert four.name == "four-archs" and four.models == ("baseline", "custom", "resnet18", "unet")
    assert four.toggles == quick.toggles == TOGGLES
    # its unet cells are the default study's cells (the same run ids, seed for seed)
    assert grids.model_config(four, "unet") == grids.model_config(quick, "unet")
    # offline: resnet18 starts from random weights and trains its encoder
    assert four.model_args["resnet18"] == {"weights": "none", "freeze_encoder": False}
    # the wide encoder-decoders get budgets of their own, longer than the default's
    for model in ("baseline", "custom", "resnet18"):
        assert grids.model_config(four, model).epochs > quick.train.epochs


def test_seed_report_study_is_the_seed_experiment():
    study = grids.read_grid_study(REPO / "studies" / "seed-report.toml")
    assert study.train.image_size == (224, 224) and study.train.epochs == 30 and study.train.batch_size == 16
    assert study.train.lr == 1e-3 and study.train.patience == 3 and study.seeds == (0, 1, 2)
    assert study.model_args == {"unet": {"base_channels": 64}} and study.toggles == TOGGLES
    assert len(grids.expand(study, FP)) == 4 * 8 * 3
    assert "VOCdevkit" in (REPO / "studies" / "seed-report.toml").read_text()


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\nseeds = [4, 2]\nmodels = ["baseline"]\n[train]\nepochs = 7\nlr = 1\n')
    study = grids.read_grid_study(path, {"epochs": 2, "seeds": "3"})
    assert study.train.epochs == 2 and study.seeds == (0, 1, 2) and study.train.lr == 1.0
    assert grids.read_grid_study(path).seeds == (4, 2)
    path.write_text('models = ["unet"]\n')
    assert grids.read_grid_study(path).name == "s"  # no name: the file's stem
    with pytest.raises(AblateError, match="^--epochs: expected an integer >= 1, got 0$"):
        grids.read_grid_study(path, {"epochs": 0})


@pytest.mark.parametrize("text, message", [
    ('name = "a"\nmodels = [\n', "line 3, column 1"),
    ('name = "a"\nmodels = ["unet" "custom"]\n', "bad.toml: line 2, column 18: Unclosed array"),
    ('name = "a"\nmodles = ["unet"]\n', "bad.toml: line 2, column 1: unknown key 'modles'"),
    ('[train]\nepoch = 3\n', "bad.toml: line 2, column 1: unknown key 'train.epoch'"),
    ('[train]\nseed = 3\n', "unknown key 'train.seed'; accepted: data, image_size"),
    ('[train]\nepochs = "many"\n', "bad.toml: line 2, column 1: train.epochs: expected an integer >= 1, got 'many'"),
    ('[train]\nlr = true\n', "bad.toml: line 2, column 1: train.lr: expected a number > 0, got True"),
    ('models = ["unet", "vit"]\n', "unknown model 'vit'"),
    ('toggles = ["dropout"]\n', "toggles: expected one of scheduler, augment, weighted_loss, got 'dropout'"),
    ('seeds = 1.5\n', "bad.toml: line 1, column 1: seeds: expected a count >= 1, a list of distinct integers >= 0"),
    ('seeds = [1, 1]\n', "seeds: expected a count >= 1, a list of distinct integers >= 0 (3 or [0, 5, 7]), or "
                          "sequential seeds: auto, auto:MIN-MAX (auto:3-10) or {min = 3, max = 10}, got [1, 1]"),
    ('workers = 0\n', "bad.toml: line 1, column 1: workers: expected 'auto' or an integer >= 1, got 0"),
    ('[model_args.unet]\nwidth = 3\n', "bad.toml: line 2, column 1: unknown key 'model_args.unet.width'; accepted: "
                                       "base_channels"),
    ('[model_args.unet]\nbase_channels = "wide"\n', "bad.toml: line 2, column 1: model_args.unet.base_channels: expected "
                                                    "an integer, got 'wide'"),
    ('name = "a/b"\n', "names a folder"),
    ('[train]\nepochs = 0\n', "bad.toml: line 2, column 1: train.epochs: expected an integer >= 1, got 0"),
    ('[train]\nimage_size = 48\n', "bad.toml: line 2, column 1: train.image_size: expected an integer or HEIGHTxWIDTH, each "
                                   "positive and divisible by 32 (64 or 64x96), got 48; try 64"),
    ('[model_train.custom]\nepoch = 3\n', "bad.toml: line 2, column 1: unknown key 'model_train.custom.epoch'; accepted: "
                                          "image_size"),
    ('[model_train.custom]\ndata = "x"\n', "unknown key 'model_train.custom.data'; accepted: image_size, epochs, "
                                         "batch_size, lr, weight_decay, optimizer, momentum, nesterov, loss, schedule, "
                                         "class_weights, patience, early_stop_on, min_delta; data, num_classes, "
                                         "ignore_index, val_fraction, precision, device, compile are shared by every "
                                         "model ([train])"),
    ('[model_train.custom]\nprecision = "bf16"\n', "unknown key 'model_train.custom.precision'"),
    ('[model_train.custom]\nlr = "fast"\n', "bad.toml: line 2, column 1: model_train.custom.lr: expected a number > 0, got "
                                            "'fast'"),
    ('[model_train.custom]\nepochs = 2.5\n', "bad.toml: line 2, column 1: model_train.custom.epochs: expected an integer "
                                             ">= 1, got 2.5"),
    ('[model_train.custom]\nimage_size = 100\n', "bad.toml: line 2, column 1: model_train.custom.image_size: expected an "
                                                 "integer or HEIGHTxWIDTH, each positive and divisible by 32 (64 or 64x96), "
                                                 "got 100; try 96"),
    ('[model_train.custom]\nlr = 0\n', "bad.toml: line 2, column 1: model_train.custom.lr: expected a number > 0, got 0.0"),
    ('[model_train.vit]\nlr = 1e-3\n', "bad.toml: line 1, column 1: model_train: unknown model 'vit'"),
    ('model_train = 3\n', "bad.toml: line 1, column 1: model_train: expected a table, got 3"),
])
def test_bad_study_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(AblateError, match="(?s).*" + re.escape(message)) as info:
        grids.read_grid_study(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value, seeds", [(3, (0, 1, 2)), ("3", (0, 1, 2)), ("0,5,7", (0, 5, 7)), ([2], (2,)), ("4,", (4,))])
def test_seeds_are_a_count_or_a_list(value, seeds):
    assert grids.parse_seeds(value, "--seeds") == (seeds, None)  # fixed seeds: no sequential plan


@pytest.mark.parametrize("value", ["a", "1.5", "0", -1, "1,-2", True, [], "1,1", 2.0])
def test_bad_seeds_are_refused(value):
    with pytest.raises(AblateError, match="--seeds"):
        grids.parse_seeds(value, "--seeds")


# --------------------------------------------------------------------------- cells
def test_expansion_counts_and_stable_ids():
    study = _study(models="unet,baseline", toggles="weighted_loss,scheduler", seeds="0,3,5")
    cells = grids.expand(study, FP)
    assert len(cells) == 2 * 4 * 3 and len({c.cell_id for c in cells}) == len(cells)
    # Flag order does not matter; the same request always gives the same ids.
    again = grids.expand(_study(models="baseline,unet", toggles="scheduler,weighted_loss", seeds="5,0,3"), FP)
    assert {c.cell_id for c in again} == {c.cell_id for c in cells}
    # Toggles not varied stay off; every toggle setting appears once per model and seed.
    assert not any(c.config.augment for c in cells)
    assert {(c.config.model, c.toggles, c.config.seed) for c in cells} == {
        (m, t, s) for m in ("unet", "baseline") for t in ("none", "scheduler", "weighted_loss", "scheduler+weighted_loss")
        for s in (0, 3, 5)}
    # Anything that changes what a cell computes changes its id; the device does not.
    assert {c.cell_id for c in grids.expand(_study(models="unet,baseline", toggles="weighted_loss,scheduler",
                                                   seeds="0,3,5", epochs=2), FP)}.isdisjoint(c.cell_id for c in cells)
    assert grids.expand(_study(device="cpu"), FP)[0].cell_id == grids.expand(_study(), FP)[0].cell_id
    assert grids.expand(_study(), "0" * 16)[0].cell_id != grids.expand(_study(), FP)[0].cell_id


def test_cells_are_claimed_longest_first_once_their_cost_is_known():
    """LPT scheduling: a model with no finished cell goes first (study order), then the
    others by expected seconds (seconds per epoch of their finished cells x epoch budget)."""
    import optuna

    cells = grids.expand(_study(models="baseline,custom,unet", toggles="scheduler", seeds="0,1"), FP)
    assert grids.longest_first(cells, []) == cells  # nothing known: the study's order

    def done(cell, seconds, epochs=2):
        return optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={
            "cell_id": cell.cell_id, "seconds": seconds, "stopped_epoch": epochs})

    first = {m: next(c for c in cells if c.config.model == m) for m in ("baseline", "custom", "unet")}
    # baseline 3 s/epoch, custom 10 s/epoch (it stopped early: 20 s over 2 epochs), unet unknown
    trials = [done(first["baseline"], 6.0), done(first["custom"], 20.0)]
    order = [c.config.model for c in grids.longest_first(cells, trials)]
    assert order == ["unet"] * 4 + ["custom"] * 4 + ["baseline"] * 4
    # a failed trial teaches nothing
    failed = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"cell_id": first["unet"].cell_id,
                                                                          "seconds": 99.0, "stopped_epoch": 1})
    assert [c.config.model for c in grids.longest_first(cells, [*trials, failed])] == order


def test_cell_ids_do_not_depend_on_where_the_data_is_mounted(tmp_path):
    from ablate.data import load_dataset
    from ablate.synthetic import write_voc

    first = write_voc(tmp_path / "a", size=32).parent
    second = tmp_path / "mnt" / "b"
    shutil.copytree(first, second, copy_function=shutil.copy)  # new mtimes, as after scp to another machine
    fp = data_stage.fingerprint(str(first))
    assert fp == data_stage.fingerprint(str(second)) == load_dataset(str(first), image_size=(32, 32), cache_dir=None).fingerprint
    assert data_stage.fingerprint("synthetic") == load_dataset("synthetic", image_size=(32, 32), cache_dir=None).fingerprint
    ids_a = [c.cell_id for c in grids.expand(_study(data=str(first)), fp)]
    ids_b = [c.cell_id for c in grids.expand(_study(data=str(second)), fp)]
    assert ids_a == ids_b


def _per_model_study(tmp_path, text: str, **overrides):
    path = tmp_path / "s.toml"
    path.write_text('name = "pm"\nmodels = ["unet", "custom"]\ntoggles = []\n[train]\nimage_size = 32\nepochs = 3\n'
                    'lr = 1e-3\n[model_args.unet]\nbase_channels = 4\n' + text)
    return grids.read_grid_study(path, overrides)


def test_per_model_training_options_reach_each_cell_its_identity_and_the_definition(tmp_path):
    study = _per_model_study(tmp_path, "[model_train.custom]\nimage_size = 64\nlr = 3e-4\nepochs = 5\n")
    assert study.model_train == {"custom": {"image_size": (64, 64), "lr": 3e-4, "epochs": 5}}
    cells = {c.config.model: c for c in grids.expand(study, FP)}
    assert (cells["custom"].config.image_size, cells["custom"].config.lr, cells["custom"].config.epochs) == ((64, 64), 3e-4, 5)
    assert (cells["unet"].config.image_size, cells["unet"].config.lr, cells["unet"].config.epochs) == ((32, 32), 1e-3, 3)
    plain = {c.config.model: c for c in grids.expand(_per_model_study(tmp_path, ""), FP)}
    assert plain["unet"].cell_id == cells["unet"].cell_id and plain["custom"].cell_id != cells["custom"].cell_id
    grid = grids.definition(study, FP)
    assert grid["models"]["custom"]["train"] == {"epochs": 5, "image_size": [64, 64], "lr": 3e-4}
    assert grid["models"]["unet"] == {"args": {"base_channels": 4}, "train": {}}
    # A flag wins over the file everywhere, per-model values included.
    flagged = _per_model_study(tmp_path, "[model_train.custom]\nimage_size = 64\nlr = 3e-4\n", image_size=32)
    assert flagged.model_train == {"custom": {"lr": 3e-4}}
    assert {c.config.image_size for c in grids.expand(flagged, FP)} == {(32, 32)}
    # A model not in the grid: its table is checked, then unused.
    assert _per_model_study(tmp_path, "[model_train.baseline]\nlr = 1e-2\n").model_train == {}


def test_a_changed_per_model_setting_is_another_grid(tmp_path):
    url = _storage_url("journal", tmp_path)
    study = _per_model_study(tmp_path, "[model_train.custom]\nlr = 3e-4\n")
    _prepared(url, study)
    _prepared(url, study)
    with pytest.raises(AblateError, match=r"differs in: model_train\.custom\.lr\)"):
        _prepared(url, _per_model_study(tmp_path, "[model_train.custom]\nlr = 1e-4\n"))
    with pytest.raises(AblateError, match=r"differs in: model_train\.unet\.epochs\)"):
        _prepared(url, _per_model_study(tmp_path, "[model_train.custom]\nlr = 3e-4\n[model_train.unet]\nepochs = 9\n"))
    with pytest.raises(AblateError, match=r"differs in: model_args\.unet\)"):
        _prepared(url, _per_model_study(tmp_path, "[model_train.custom]\nlr = 3e-4\n", model_arg=["base_channels=8"]))


def _cpu_with_bf16(monkeypatch, native: bool) -> None:
    import ablate.engine

    monkeypatch.setattr(ablate.engine, "cpu_has_native_bf16", lambda: native)


def test_cell_ids_use_the_precision_and_device_kind_as_resolved(monkeypatch):
    _cpu_with_bf16(monkeypatch, False)
    auto_fp32 = grids.expand(_study(device="cpu"), FP)
    assert {(c.config.precision, c.config.device) for c in auto_fp32} == {("fp32", "cpu")}
    assert [c.cell_id for c in grids.expand(_study(device="cpu", precision="fp32"), FP)] == [c.cell_id for c in auto_fp32]
    assert grids.definition(_study(precision="fp32"), FP) == grids.definition(_study(), FP)
    _cpu_with_bf16(monkeypatch, True)
    auto_bf16 = grids.expand(_study(device="cpu"), FP)
    assert {c.config.precision for c in auto_bf16} == {"bf16"}
    assert {c.cell_id for c in auto_bf16}.isdisjoint(c.cell_id for c in auto_fp32)
    assert grids.definition(_study(), FP)["execution"] == {"device": "cpu", "precision": "bf16"}
    # The device kind is part of the id even where the precision agrees.
    fp32 = _study(device="cpu", precision="fp32")
    assert (grids.expand(fp32, FP, {"device": "cuda", "precision": "fp32"})[0].cell_id
            != grids.expand(fp32, FP, {"device": "cpu", "precision": "fp32"})[0].cell_id)


def test_a_worker_that_resolves_another_precision_claims_nothing(tmp_path, monkeypatch):
    url = _storage_url("journal", tmp_path)
    _cpu_with_bf16(monkeypatch, False)
    study = _study(seeds=1)
    gs, cells = _prepared(url, study)
    _cpu_with_bf16(monkeypatch, True)
    message = ("study t was created for fp32 on cpu; this worker resolves --precision auto to bf16 on cpu; "
               "pass --precision fp32 or use another --study-name")
    with pytest.raises(AblateError) as err:
        grids.work(gs, cells, lambda size: None, results_dir=tmp_path, max_retries=0,
                   on_result=lambda r: None, requested=study.train)
    assert str(err.value) == message
    with pytest.raises(AblateError) as err:
        _prepared(url, study)  # cells and definition as this worker resolves them
    assert str(err.value) == message
    assert gs.trials() == []
    _prepared(url, _study(seeds=1, precision="fp32"))  # the flag that matches is the same grid


def test_model_args_apply_per_model_or_to_every_model_that_has_them():
    study = _study(models="unet,resnet18", model_arg=["base_channels=4", "resnet18.freeze_encoder=true"])
    # On top of the quick study's resnet18 arguments (random init, encoder trained).
    assert study.model_args == {"unet": {"base_channels": 4}, "resnet18": {"weights": "none", "freeze_encoder": True}}
    with pytest.raises(AblateError, match="^model resnet18: model 'resnet18': freeze_encoder=true with weights=none"):
        grids.check_models(study)
    with pytest.raises(AblateError, match=r"^--model-arg: unknown key 'base_channels'; accepted: none$"):
        _study(models="baseline", model_arg=["base_channels=4"])
    with pytest.raises(AblateError, match="weights file not found"):
        grids.check_models(_study(models="resnet18", model_arg=["resnet18.weights=/nonexistent.pth"]))


# --------------------------------------------------------------------------- the claim lock
def _storage_url(kind: str, tmp_path: Path) -> str:
    return {"journal": str(tmp_path / "optuna.journal"), "sqlite": f"sqlite:///{tmp_path / 'optuna.db'}"}[kind]


def _prepared(url: str, study) -> tuple[grids.GridStorage, list[grids.Cell]]:
    cells = grids.expand(study, FP)
    gs = grids.GridStorage(url, study.name)
    gs.prepare(study, cells, grids.definition(study, FP))
    return gs, cells


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql", "mysql"])
def test_concurrent_claims_give_every_cell_exactly_one_trial(kind, tmp_path, request):
    """Many claimers at once (each with its own storage connection, so the lock is really
    contended): every cell gets exactly one trial."""
    url = storage_url(kind, tmp_path, request)
    study = _study(models="unet,baseline,custom", toggles="scheduler,augment", seeds=2)  # 24 cells
    _, cells = _prepared(url, study)
    claimed: list[str] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            gs = grids.GridStorage(url, study.name)
            while (got := gs.claim(cells, max_retries=1)) is not None:
                cell, trial_id = got
                claimed.append(cell.cell_id)
                gs.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(claimed) == sorted(c.cell_id for c in cells)
    trials = grids.GridStorage(url, study.name).trials()
    assert sorted(t.user_attrs["cell_id"] for t in trials) == sorted(c.cell_id for c in cells)
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_dead_workers_cells_are_reclaimed_and_failures_retried(tmp_path):
    url = _storage_url("journal", tmp_path)
    study = _study(toggles="none", seeds=3)  # 3 cells
    gs, cells = _prepared(url, study)
    # Cell 0: claimed by a process of this node that then died (a real, reaped PID).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (_, t0), (_, t1), (_, t2) = (gs.claim(cells, max_retries=1) for _ in range(3))
    gs.storage.set_trial_user_attr(t0, "worker", {**workers.identity(), "pid": dead.pid})
    # Cell 1: claimed on another machine that went silent (no heartbeat moves); its owner
    # recorded a 1 s grace, which is what this observer must wait (not its own 120 s).
    gs.storage.set_trial_user_attr(t1, "worker", {"host": "far", "node": "elsewhere", "pid": 1})
    gs.storage.set_trial_system_attr(t1, workers.GRACE_ATTR, 1.0)
    # Cell 2: failed for real, once.
    gs.storage.set_trial_user_attr(t2, "failure_reason", "non-finite loss at epoch 1 step 2")
    gs.storage.set_trial_state_values(t2, TrialState.FAIL)

    cell, again0 = gs.claim(cells, max_retries=1)  # the dead worker's cell comes back at once
    assert cell == cells[0]
    trial0 = gs.storage.get_trial(t0)
    assert trial0.state == TrialState.FAIL and "died" in trial0.user_attrs["failure_reason"]
    cell, again2 = gs.claim(cells, max_retries=1)  # then the retry of the failed cell
    assert cell == cells[2]
    assert gs.claim(cells, max_retries=1) is None and gs.running == 3  # the silent one waits out its grace
    for trial_id in (again0, again2):
        gs.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
    time.sleep(1.2)
    cell, _ = gs.claim(cells, max_retries=1)
    assert cell == cells[1] and gs.storage.get_trial(t1).user_attrs["failure_reason"] == "worker lost: no heartbeat for 1 s"


def test_only_a_loss_its_supervisor_saw_is_charged(tmp_path):
    """A worker found dead or silent afterwards (its whole grid or machine went down) is never
    charged, however often; one whose supervisor watched it die of a signal is, every time."""
    url = _storage_url("journal", tmp_path)
    gs, cells = _prepared(url, _study(toggles="none", seeds=1))
    lost = f"{grids.WORKER_LOST}: process 7 on h died with the command that ran it"
    killed = f"{grids.WORKER_KILLED}: process 7 on h ended by SIGKILL while running it"
    steps = [(grids.INTERRUPTED, "pending"), *[(lost, "pending")] * 5, (killed, "retry"), (killed, "failed")]
    for reason, expected in steps:
        _, trial_id = gs.claim(cells, max_retries=1)
        workers.fail_trial(gs.storage, trial_id, reason)
        state = grids.cell_states([c.brief() for c in cells], gs.trials(), max_retries=1)[cells[0].cell_id]
        assert state.status == expected, (reason, state)
    assert gs.claim(cells, max_retries=1) is None and state.failures == 2  # a poison cell stops


def test_retry_budget_counts_genuine_failures_only(tmp_path):
    url = _storage_url("journal", tmp_path)
    study = _study(toggles="none", seeds=1)
    gs, cells = _prepared(url, study)
    for reason in (grids.INTERRUPTED, f"{grids.WORKER_LOST}: process 1 on h died", "boom", "boom"):
        _, trial_id = gs.claim(cells, max_retries=1)
        gs.storage.set_trial_user_attr(trial_id, "failure_reason", reason)
        gs.storage.set_trial_state_values(trial_id, TrialState.FAIL)
    assert gs.claim(cells, max_retries=1) is None  # 2 genuine failures = 1 run + 1 retry
    briefs = [c.brief() for c in cells]
    state = grids.cell_states(briefs, gs.trials(), max_retries=1)[cells[0].cell_id]
    assert (state.status, state.attempts, state.failures) == ("failed", 4, 2)
    assert gs.claim(cells, max_retries=2) is not None  # a later run may allow more
    p = grids.progress(briefs, gs.trials())
    assert (p.running, p.failed, p.pending) == (1, 0, 0)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])  # RDB storages check param distributions
def test_more_seeds_extend_a_study_and_reuse_its_cells(tmp_path, kind):
    url = _storage_url(kind, tmp_path)
    gs, one_seed = _prepared(url, _study(seeds=1))
    while (got := gs.claim(one_seed, max_retries=0)) is not None:
        gs.storage.set_trial_state_values(got[1], TrialState.COMPLETE, [0.5])
    _, three_seeds = _prepared(url, _study(seeds=3))
    assert {c.cell_id for c in one_seed} < {c.cell_id for c in three_seeds}
    claimed = []
    while (got := gs.claim(three_seeds, max_retries=0)) is not None:
        claimed.append(got[0].config.seed)
        gs.storage.set_trial_state_values(got[1], TrialState.COMPLETE, [0.5])
    assert sorted(claimed) == [1, 1, 2, 2]  # seed 0 was done already
    attrs = gs.study_attrs()
    assert attrs["seeds"] == [0, 1, 2] and [c["cell_id"] for c in attrs["cells"]] == [c.cell_id for c in three_seeds]
    _prepared(url, _study(seeds="1"))  # a subset: nothing to add, nothing lost
    assert gs.study_attrs()["seeds"] == [0, 1, 2] and len(gs.study_attrs()["cells"]) == 6


def test_a_different_grid_under_the_same_name_is_refused(tmp_path):
    url = _storage_url("journal", tmp_path)
    study = _study()
    _prepared(url, study)
    _prepared(url, study)  # the same grid again is fine
    with pytest.raises(AblateError, match="differs in: epochs.*--study-name"):
        _prepared(url, _study(epochs=3))


# --------------------------------------------------------------------------- tables and dashboard
def _finished_study(tmp_path) -> tuple[grids.GridStorage, list[grids.Cell]]:
    gs, cells = _prepared(_storage_url("journal", tmp_path), _study(toggles="scheduler", seeds=2))
    for i, cell in enumerate(cells[:3]):
        _, trial_id = gs.claim(cells, max_retries=0)
        for epoch in (1, 2):
            gs.storage.set_trial_intermediate_value(trial_id, epoch, 0.1 * epoch)
        if i == 2:
            gs.storage.set_trial_user_attr(trial_id, "failure_reason", "non-finite loss")
            gs.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            continue
        for key, value in {"val_miou": 0.2 + i / 10, "test_miou": 0.1 + i / 10, "val_pixel_acc": 0.9, "best_epoch": 2}.items():
            gs.storage.set_trial_user_attr(trial_id, key, value)
        gs.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.2 + i / 10])
    return gs, cells


def test_tables_come_from_the_storage(tmp_path):
    gs, cells = _finished_study(tmp_path)
    runs_csv, summary_csv = grids.write_tables(gs, tmp_path / "results")
    import pandas as pd

    runs = pd.read_csv(runs_csv)
    assert list(runs["cell_id"]) == [c.cell_id for c in cells]
    assert list(runs["status"]) == ["completed", "completed", "failed", "pending"]
    assert runs.loc[0, "val_miou"] == pytest.approx(0.2) and runs.loc[2, "failure_reason"] == "non-finite loss"
    summary = pd.read_csv(summary_csv)  # seed 1 of "none" failed: only seed 0 counts
    assert list(summary["toggles"]) == ["none", "scheduler"] and list(summary["n"]) == [1, 1]
    assert list(summary["val_miou_mean"]) == pytest.approx([0.2, 0.3])


def test_summary_is_mean_and_std_over_seeds():
    import pandas as pd

    runs = pd.DataFrame([
        {"model": "unet", "model_args": "{}", "toggles": "none", "scheduler": False, "augment": False,
         "weighted_loss": False, "status": "completed", "val_miou": v, "test_miou": v / 2, "val_pixel_acc": 0.5,
         "test_pixel_acc": 0.5} for v in (0.2, 0.4)] + [
        {"model": "unet", "model_args": "{}", "toggles": "none", "scheduler": False, "augment": False,
         "weighted_loss": False, "status": "failed", "val_miou": 0.9}])
    from ablate.analysis import summary_table

    summary = summary_table(runs)
    assert summary.loc[0, "n"] == 2 and summary.loc[0, "val_miou_mean"] == pytest.approx(0.3)
    assert summary.loc[0, "val_miou_std"] == pytest.approx(0.1414, abs=1e-4)
    assert summary.loc[0, "test_miou_mean"] == pytest.approx(0.15)


def test_optuna_dashboard_opens_the_storage(tmp_path):
    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard._app import create_app

    gs, cells = _finished_study(tmp_path)
    app = create_app(grids.GridStorage(gs.url, gs.study_name).storage)

    get = wsgi_json_getter(app)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == [gs.study_name]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 3
    first = detail["trials"][0]
    assert {p["name"] for p in first["params"]} == {"model", "scheduler", "augment", "weighted_loss"}  # seed: a user attr
    assert [v["value"] for v in first["intermediate_values"]] == pytest.approx([0.1, 0.2])
    assert any(a["key"] == "cell_id" and cells[0].cell_id in a["value"] for a in first["user_attrs"])


def test_study_json_masks_credentials(tmp_path):
    study = _study(storage="postgresql://me:hunter2@db.example:5432/ablate")
    _, cells = _prepared(_storage_url("journal", tmp_path), study)
    attrs = grids.GridStorage(_storage_url("journal", tmp_path), study.name).study_attrs()
    path = grids.write_study_json(tmp_path, study, study.storage, attrs, {"name": "synthetic"})
    text = path.read_text()
    assert "hunter2" not in text and "me:***@db.example" in text
    assert json.loads(text)["kind"] == "grid" and json.loads(text)["cells"] == len(cells) == 4
    assert os.path.dirname(path) == str(tmp_path / "t")


def test_a_study_on_another_dataset_names_the_one_it_was_created_on(tmp_path):
    url = _storage_url("journal", tmp_path)
    study = _study()
    gs = grids.GridStorage(url, study.name)
    gs.prepare(study, grids.expand(study, FP), grids.definition(study, FP),
               dataset={"name": "data/rocks", "fingerprint": FP, "sizes": {"train": 707, "val": 23, "test": 26}})
    elsewhere, changed = _study(data="data/other"), "e" * 16
    with pytest.raises(AblateError) as moved:
        gs.prepare(elsewhere, grids.expand(elsewhere, changed), grids.definition(elsewhere, changed))
    assert str(moved.value) == (
        f"study 't' in {url} holds a different grid (differs in: data); study t was created on data/rocks "
        "(756 images, fingerprint ffffffff), this command points at data/other (fingerprint eeeeeeee); "
        "choose a new --study-name, e.g. t-2, or repeat the original settings")
    same = _study(data="data/rocks")  # the same folder, its files edited since
    with pytest.raises(AblateError, match=r"this command points at data/rocks \(fingerprint eeeeeeee\): its files "
                                          r"changed; choose"):
        gs.prepare(same, grids.expand(same, changed), grids.definition(same, changed))


@pytest.mark.parametrize("text, where", [('[train]\nimage_size = "64x"\n', "train.image_size"),
                                         ('[factors]\nimage_size = [64, "64x"]\n', "factors.image_size")])
def test_a_malformed_image_size_in_a_study_file_reads_as_the_flag_does(tmp_path, text, where):
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\nmodels = ["unet"]\n' + text)
    with pytest.raises(AblateError) as info:
        grids.read_grid_study(path, {})
    assert str(info.value) == (f"{path}: line 4, column 1: {where}: expected an integer or HEIGHTxWIDTH, each positive and "
                               "divisible by 32 (64 or 64x96), got '64x'")


@pytest.mark.parametrize("url,names", [("mysql+pymysql://root@127.0.0.1:3306/x", ("pymysql", "ablate[mysql]")),
                                       ("postgresql://u@127.0.0.1:5432/x", ("psycopg",))])
def test_a_missing_database_driver_names_the_package_that_brings_it(url, names, monkeypatch):
    for module in ("pymysql", "psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(AblateError, match="missing database driver") as err:
        grids.GridStorage(url, "s")
    assert all(name in str(err.value) for name in names), str(err.value)
    assert "psycopg" not in str(err.value) or url.startswith("postgresql")

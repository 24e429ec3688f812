"""The worker stage shared by grid and tune: identity, the heartbeat, reclaim by the owner's
recorded grace, and supervised worker processes (GPU round-robin, a killed worker replaced)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablate import store, workers
from ablate.errors import AblateError


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(storage=store.open_storage(str(tmp_path / "w.journal")), study_name="w")


def _owned(study: optuna.Study, owner: dict, grace: float) -> int:
    """A RUNNING trial as `owner` leaves it: its identity, a first beat and its grace."""
    trial_id = study.ask()._trial_id
    study._storage.set_trial_user_attr(trial_id, "worker", owner)
    for key, value in workers.owner_system_attrs(grace).items():
        study._storage.set_trial_system_attr(trial_id, key, value)
    return trial_id


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_identity_names_host_boot_pid_namespace_and_pid():
    me = workers.identity()
    assert set(me) == {"host", "boot", "pidns", "pid", "node", "supervisor"} and me["pid"] == os.getpid()
    assert me["supervisor"] is None  # this process runs its work itself
    assert me["pidns"] == os.stat("/proc/self/ns/pid").st_ino and me["node"] == f"{me['host']}/{me['boot']}/{me['pidns']}"


def test_a_dead_process_of_this_node_is_reclaimed_at_once_a_namespace_twin_is_not(tmp_path):
    study = _study(tmp_path)
    me, pid = workers.identity(), _dead_pid()
    twin = {**me, "pidns": me["pidns"] + 1, "node": f"{me['host']}/{me['boot']}/{me['pidns'] + 1}", "pid": pid}
    here = _owned(study, {**me, "pid": pid}, grace=600)
    elsewhere = _owned(study, twin, grace=600)  # same host name, its own PID namespace
    alive = _owned(study, {**me, "pid": 1}, grace=600)
    assert workers.Reclaimer().reclaim(study._storage, study.get_trials(deepcopy=False)) is True
    states = {t._trial_id: t.state for t in study.get_trials()}
    assert states == {here: TrialState.FAIL, elsewhere: TrialState.RUNNING, alive: TrialState.RUNNING}
    assert (study._storage.get_trial(here).user_attrs["failure_reason"]
            == f"worker lost: process {pid} on {me['host']} died with the command that ran it")


def test_a_dead_worker_whose_supervisor_lives_is_left_to_it_and_charged_by_it(tmp_path):
    """Others leave a dead worker's trial to its live supervisor, which saw the death and
    charges it (`settle_killed`); with the supervisor gone too (the whole command died) the
    trial is an uncharged loss."""
    study = _study(tmp_path)
    me = workers.identity()
    supervised = _owned(study, {**me, "pid": _dead_pid(), "supervisor": 1}, grace=600)
    orphaned = _owned(study, {**me, "pid": _dead_pid(), "supervisor": _dead_pid()}, grace=600)
    assert workers.Reclaimer().reclaim(study._storage, study.get_trials(deepcopy=False)) is True
    states = {t._trial_id: t.state for t in study.get_trials()}
    assert states == {supervised: TrialState.RUNNING, orphaned: TrialState.FAIL}
    reason = study._storage.get_trial(orphaned).user_attrs["failure_reason"]
    assert reason.startswith("worker lost:") and not workers.is_charged(reason)

    pid = study._storage.get_trial(supervised).user_attrs["worker"]["pid"]
    assert workers.settle_killed(study._storage, study.get_trials(deepcopy=False), pid, "SIGKILL") == 1
    reason = study._storage.get_trial(supervised).user_attrs["failure_reason"]
    assert reason == f"worker killed: process {pid} on {me['host']} ended by SIGKILL while running it"
    assert workers.is_charged(reason) and study._storage.get_trial(supervised).state == TrialState.FAIL


def test_observers_honour_the_grace_the_owner_recorded_not_their_own(tmp_path, monkeypatch):
    study = _study(tmp_path)
    far = {"host": "far", "boot": "b", "pidns": 1, "pid": 1, "node": "far/b/1"}
    short = _owned(study, far, grace=0.5)
    long = _owned(study, far, grace=600)
    monkeypatch.setenv(workers.GRACE_ENV, "0.1")  # this observer's own setting: must not matter
    reclaimer = workers.Reclaimer()
    trials = lambda: study.get_trials(deepcopy=False)  # noqa: E731
    assert reclaimer.reclaim(study._storage, trials()) is False  # first sight of both heartbeats
    time.sleep(0.7)
    assert reclaimer.reclaim(study._storage, trials()) is True
    assert study._storage.get_trial(short).user_attrs["failure_reason"] == "worker lost: no heartbeat for 0.5 s"
    assert study._storage.get_trial(long).state == TrialState.RUNNING


def test_a_moving_heartbeat_keeps_a_trial_alive_and_stops_once_it_is_reclaimed(tmp_path):
    study = _study(tmp_path)
    trial_id = _owned(study, {"node": "far/b/1", "pid": 1}, grace=0.6)
    reclaimer = workers.Reclaimer()
    with workers.Heartbeat(study._storage, trial_id, interval=0.1) as beat:
        for _ in range(8):  # 1.6 s, well past the grace: the beats keep it alive
            reclaimer.reclaim(study._storage, study.get_trials(deepcopy=False))
            time.sleep(0.2)
        assert study._storage.get_trial(trial_id).state == TrialState.RUNNING
        assert workers.fail_trial(study._storage, trial_id, "worker lost: test") is True
        time.sleep(0.4)
        assert beat.lost  # the owner's thread noticed and stopped writing
    assert workers.fail_trial(study._storage, trial_id, "again") is False  # finished meanwhile: no error
    assert study._storage.get_trial(trial_id).user_attrs["failure_reason"] == "worker lost: test"


def test_the_owners_grace_comes_from_its_environment(monkeypatch):
    monkeypatch.setenv(workers.GRACE_ENV, "8")
    attrs = workers.owner_system_attrs()
    assert attrs[workers.GRACE_ATTR] == 8 and attrs[workers.INTERVAL_ATTR] == 2
    monkeypatch.setenv(workers.GRACE_ENV, "soon")
    with pytest.raises(AblateError, match="^ABLATE_GRACE_SECONDS must be a number of seconds > 0, got 'soon'$"):
        workers.owner_system_attrs()


def test_worker_plan_spreads_gpus_round_robin_and_splits_cpu_cores():
    plan = workers.worker_plan(3, device="cuda", gpu_ids=["0", "1"], cores=16)
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in plan] == ["0", "1", "0"]
    assert workers.worker_plan(4, device="cpu", gpu_ids=["0", "1"], cores=2) == [({}, 1)] * 4
    assert workers.worker_plan(2, device="auto", gpu_ids=["3"], cores=8) == [({}, 4)] * 2


def report_and_die_once(index: int, events, marker: str) -> None:
    """A worker target: say which GPU and how many threads it got; worker 0 SIGKILLs itself once."""
    import torch

    events.put((index, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.get_num_threads()))
    events.close()
    events.join_thread()  # delivered before the kill
    if index == 0 and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def test_supervised_workers_get_their_gpu_and_a_killed_one_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(workers, "cores", lambda: 4)
    events, warnings = [], []
    codes = workers.supervise(report_and_die_once, (str(tmp_path / "died"),), workers=2, device="cuda",
                              on_event=events.append, respawns=1, warn=warnings.append)
    assert codes == [] and sorted(events) == [(0, "0", 2), (0, "0", 2), (1, "1", 2)]
    assert warnings == ["warning: worker 0 died (SIGKILL); starting another"]


def report_environment_then(index: int, events, name: str, how: str) -> None:
    """A worker target: say what `name` is in its environment, then end as `how` says."""
    events.put((index, os.environ.get(name), os.getppid()))
    if how == "exit 2":
        sys.exit(2)
    if how == "bug":
        raise RuntimeError("a bug in a worker")
    if how == "ctrl-c":
        raise KeyboardInterrupt


@pytest.mark.parametrize("how,codes", [("return", []), ("exit 2", [2, 2]), ("bug", [1, 1])])
def test_workers_get_the_parents_environment_of_now_and_leave_with_their_own_exit_code(monkeypatch, how, codes):
    """Workers are forked from a server started earlier (forkserver): they must still see the
    environment as the parent has it when they start, and end with the code their target
    ended with."""
    workers.warm_up(__name__)  # the server starts with this environment ...
    monkeypatch.setenv("ABLATE_TEST_LATE", f"set after the server started ({how})")  # ... this comes later
    events: list = []
    got = workers.supervise(report_environment_then, ("ABLATE_TEST_LATE", how), workers=2, device="cpu",
                            on_event=events.append)
    late = f"set after the server started ({how})"
    assert sorted(e[:2] for e in events) == [(0, late), (1, late)]
    if sys.platform.startswith("linux"):  # forked from the server, not from this process
        assert {e[2] for e in events} != {os.getpid()}
    assert got == codes  # (a bug's traceback goes to the stderr the server was started with)


def test_a_worker_interrupted_interrupts_the_supervisor():
    with pytest.raises(KeyboardInterrupt):
        workers.supervise(report_environment_then, ("HOME", "ctrl-c"), workers=1, device="cpu",
                          on_event=lambda event: None)


def test_auto_workers_one_per_core_or_gpu_never_more_than_cells_or_memory():
    gib = 1024**3
    assert workers.auto_workers(32, device="cpu", gpus=0, cores=2, memory=24 * gib) == 2
    assert workers.auto_workers(1, device="cpu", gpus=0, cores=16, memory=64 * gib) == 1  # one cell: one process
    assert workers.auto_workers(32, device="cpu", gpus=0, cores=16, memory=5 * gib) == 2  # 2 GiB per worker
    assert workers.auto_workers(32, device="cpu", gpus=0, cores=4, memory=None) == 4  # this machine's /proc/meminfo (>= 8 GiB free)
    assert workers.auto_workers(32, device="cuda", gpus=3, cores=16, memory=64 * gib) == 3
    assert workers.auto_workers(2, device="cuda", gpus=3, cores=16, memory=64 * gib) == 2
    # each auto worker gets an equal share of the cores as torch threads
    assert [t for _, t in workers.worker_plan(2, device="cpu", gpu_ids=[], cores=2)] == [1, 1]


GRID_WORKER = """
import json, sys
from pathlib import Path
from ablate import workers
for module in [*workers.PRELOAD, "ablate.grid.run"]:  # what the grid's worker server imports
    __import__(module)
from ablate import grid as grids, store
results, cache = Path(sys.argv[1]), Path(sys.argv[2])
study = grids.build_study(grids.QUICK_STUDY, where="test", overrides={
    "models": "unet", "toggles": "none", "seeds": 1, "model_arg": ["base_channels=4"], "image_size": 32,
    "epochs": 1, "name": "t"})
cells = grids.expand(study, "f" * 16)
gs = grids.GridStorage(store.default_storage(results, "t", 2), "t")
gs.prepare(study, cells, grids.definition(study, "f" * 16))
done = []
grids.work(gs, cells, grids.Datasets(study.train, cache), results_dir=results, max_retries=1, on_result=done.append)
print(json.dumps({"status": [r.status for r in done],
                  "loaded": sorted(m for m in ("pandas", "scipy.stats", "plotly") if m in sys.modules)}))
"""


GRID_PARENT = """
import json, sys
from pathlib import Path
from ablate import grid as grids
study = grids.read_grid_study(None, {})  # the default study: the U-Net, every toggle
grids.check_models(study)
execution = grids.resolve_execution(study.train)
cells = grids.expand(study, "f" * 16, execution)
grids.check_cells(cells)
dataset = grids.Datasets(study.train, Path(sys.argv[1]))(study.train.image_size)
print(json.dumps({"cells": len(cells), "seeds": len(study.seeds), "images": len(dataset.splits["train"]),
                  "loaded": sorted(m for m in ("torchvision", "torch._dynamo") if m in sys.modules)}))
"""


def test_the_grid_parent_checks_the_default_study_and_loads_its_data_without_torchvision(cache_dir):
    """What `ablate grid` does before its workers start (check the study's models and training
    choices, load the data) imports neither torchvision nor torch._dynamo: 2.6 s of a core that
    the worker server, importing them at the same time, needs on a 2-core machine."""
    out = subprocess.run([sys.executable, "-c", GRID_PARENT, str(cache_dir)], capture_output=True, text=True,
                         check=True, timeout=600)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"cells": 8 * got["seeds"], "seeds": got["seeds"], "images": 160, "loaded": []}


def test_a_grid_worker_runs_a_cell_without_the_analysis_libraries(tmp_path, cache_dir):
    """A grid worker (forked from a server holding `PRELOAD` and the grid's worker loop) trains,
    stores and attaches a cell without importing pandas, scipy.stats or plotly: each costs the
    worker server a second or more of a core while the parent sets up, and none is needed
    before the report."""
    out = subprocess.run([sys.executable, "-c", GRID_WORKER, str(tmp_path), str(cache_dir)], capture_output=True,
                         text=True, check=True, timeout=600)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"status": ["completed"], "loaded": []}


TUNE_WORKER = """
import json, sys
from ablate import workers
for module in [*workers.PRELOAD, "ablate.tune.search", "ablate.tune.confirm"]:  # what the tune's worker server imports
    __import__(module)
print(json.dumps(sorted(m for m in ("pandas", "scipy.stats", "plotly") if m in sys.modules)))
"""


def test_a_tune_worker_server_holds_no_analysis_libraries():
    """The tuner's worker server (`warm_up("ablate.tune.search")`) and its confirmation decide
    without pandas, scipy.stats or plotly: the family's decision (`ablate.decisions`) is plain
    data, and the words and tables of the analysis are for the report."""
    out = subprocess.run([sys.executable, "-c", TUNE_WORKER], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

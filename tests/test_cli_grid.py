"""`ablate grid` and `ablate status` for real: tiny grids (U-Net 4 channels wide, 32 px, one
epoch) run, interrupted, killed, resumed and shared between worker processes on a journal
file and on PostgreSQL; every cell must run exactly once."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from ablate import data as data_stage
from ablate import grid as grids
from ablate import record as records
from ablate import store, workers
from ablate.cli import main
from conftest import storage_url

REPO = Path(__file__).resolve().parents[1]
FAULTS = Path(__file__).resolve().parent / "faults"  # sitecustomize.py: faults injected from outside
# one worker in this process unless a test asks for more (`--workers auto` would spawn one per core,
# out of reach of monkeypatching)
TINY = ["--models", "unet", "--model-arg", "base_channels=4", "--image-size", "32", "--epochs", "1", "--data", "synthetic",
        "--no-report", "--workers", "1"]


def _grid(*args: str):
    return CliRunner().invoke(main, ["grid", *args])


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return grids.GridStorage(url, name).trials()


def _complete_once(trials, n_cells: int) -> None:
    """Exactly one COMPLETE trial per cell, for n_cells distinct cells."""
    complete = Counter(t.user_attrs["cell_id"] for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == n_cells and set(complete.values()) == {1}, complete


def _tables_match_storage(results: Path, name: str, trials, n_cells: int) -> pd.DataFrame:
    runs = pd.read_csv(results / name / "runs.csv")
    assert len(runs) == n_cells and set(runs["status"]) == {"completed"}
    complete = {t.user_attrs["cell_id"]: t for t in trials if t.state == TrialState.COMPLETE}
    assert dict(zip(runs["cell_id"], runs["val_miou"])) == pytest.approx({k: t.value for k, t in complete.items()})
    # Each row points at its COMPLETE attempt's own folder, runs/<cell_id>/<trial number>/.
    assert dict(zip(runs["cell_id"], runs["run_dir"])) == {
        k: f"runs/{k}/{t.number}" for k, t in complete.items()} == {k: t.user_attrs["run_dir"] for k, t in complete.items()}
    for run_dir, value in zip(runs["run_dir"], runs["val_miou"]):
        assert records.summary(records.read(results / name / run_dir))["val_miou"] == pytest.approx(value)
    return runs


def _executions(log: Path) -> list[tuple[str, int]]:
    if not log.is_file():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in log.read_text().splitlines()]


def _env(**extra: str) -> dict[str, str]:
    """This environment without stray FAULT_ settings, plus `extra`; with tests/faults first on
    PYTHONPATH so that its sitecustomize injects the FAULT_ settings into every process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_") and k != "ABLATE_GRACE_SECONDS"}
    path = [str(FAULTS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep)), str(REPO)]
    return {**env, "PYTHONPATH": os.pathsep.join(path), **extra}


def _default_sigint() -> None:
    # A job started in the background by a non-interactive shell (nohup, `cmd &`, some CI
    # runners) inherits SIGINT as ignored, and Python then installs no KeyboardInterrupt
    # handler; give the child the default disposition so the Ctrl-C test means something.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablate", "grid", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _two_grids_at_once(args: list[str], env: dict[str, str], *, timeout: float) -> list[tuple[str, str]]:
    """Start the same `ablate grid` twice at once (two machines on one storage); both exit 0.
    Returns their (stdout, stderr)."""
    procs = [_spawn(args, env), _spawn(args, env)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs


def _wait_for_lines(log: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(_executions(log)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the grid never reached the expected cell"
        time.sleep(0.2)


# --------------------------------------------------------------------------- one process
def test_grid_runs_resumes_and_reports(tmp_path, cache_dir):
    """1 model x 2 toggle settings x 2 seeds = 4 cells (the 8-cell acceptance shape runs on
    PostgreSQL below)."""
    results = tmp_path / "results"
    args = [*TINY, "--toggles", "scheduler", "--seeds", "2", "--study-name", "acc",
            "--results-dir", str(results), "--cache-dir", str(cache_dir)]
    first = _grid(*args)
    assert first.exit_code == 0, first.output
    lines = [l for l in first.stdout.splitlines() if l.startswith("[")]
    assert len(lines) == 4 and re.fullmatch(r"\[1/4\] unet none seed 0: val mIoU \d\.\d{3} test \d\.\d{3} \(\d+s\)", lines[0])
    assert re.search(r"unet      scheduler   2  \d\.\d{3} ± \d\.\d{3}", first.stdout) and str(results / "acc") in first.stdout
    url = store.default_storage(results, 'acc')
    trials = _trials(url, "acc")
    assert len(trials) == 4 and len({t.user_attrs["cell_id"] for t in trials}) == 4
    _complete_once(trials, 4)
    assert all(t.intermediate_values and t.params["model"] == "unet" for t in trials)
    runs = _tables_match_storage(results, "acc", trials, 4)
    assert sorted(Counter(runs["toggles"]).items()) == [("none", 2), ("scheduler", 2)]
    summary = pd.read_csv(results / "acc" / "summary.csv")
    assert len(summary) == 2 and set(summary["n"]) == {2}
    assert '"kind": "grid"' in (results / "acc" / "study.json").read_text()

    # The same request again, flags in another order (seeds as a list): nothing runs, no trial is added.
    again = _grid("--cache-dir", str(cache_dir), "--results-dir", str(results), "--study-name", "acc", "--seeds", "0,1",
                  "--toggles", "scheduler", "--no-report", "--data", "synthetic", "--epochs", "1",
                  "--image-size", "32", "--model-arg", "base_channels=4", "--models", "unet")
    assert again.exit_code == 0, again.output
    assert "4 done, 0 to run" in again.stdout and not [l for l in again.stdout.splitlines() if l.startswith("[")]
    assert len(_trials(url, "acc")) == 4

    dry = _grid(*args, "--dry-run")
    assert dry.exit_code == 0 and "4 done, 0 pending" in dry.stdout and dry.stdout.count(" completed") == 4
    more = _grid(*args, "--seeds", "3", "--dry-run")  # more seeds extend the study
    assert more.exit_code == 0 and "6 cells" in more.stdout and "4 done, 2 pending" in more.stdout, more.output

    status = CliRunner().invoke(main, ["status", "--study-name", "acc", "--results-dir", str(results)])
    assert status.exit_code == 0 and "done 4, running 0, failed 0, pending 0" in status.stdout, status.output

    (results / "acc" / "runs.csv").unlink()
    rebuilt = _grid("--study-name", "acc", "--results-dir", str(results), "--tables-only")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert pd.read_csv(results / "acc" / "runs.csv").equals(runs)


def test_dry_run_lists_cells_and_writes_nothing(tmp_path):
    result = _grid("--dry-run", "--results-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "study quick: 24 cells (1 model x 8 toggle settings x 3 seeds); 0 done, 24 pending" in result.stdout
    rows = [l.split() for l in result.stdout.splitlines() if re.match(r"[0-9a-f]{12} ", l)]
    assert len(rows) == 24 and len({r[0] for r in rows}) == 24
    assert {r[1] for r in rows} == {"unet"}
    # sequential seeds: the first stage's cells, and the plan in words
    auto = _grid("--dry-run", "--seeds", "auto", "--results-dir", str(tmp_path / "r"))
    assert "study quick: 24-80 cells (1 model x 8 toggle settings x 3 to 10 seeds, added in stages)" in auto.stdout
    assert "sequential seeds: 3 to 10, looks at 3, 5, 8, 10" in auto.stdout
    assert len([l for l in auto.stdout.splitlines() if re.match(r"[0-9a-f]{12} ", l)]) == 24
    assert not (tmp_path / "r").exists()


def test_a_diverging_cell_fails_alone_is_retried_and_fails_the_command(tmp_path, cache_dir, monkeypatch):
    """The cell with the scheduler on trains at lr 1e30 and goes non-finite; the other completes."""
    import ablate.engine

    real = ablate.engine.fit_safely

    def absurd_lr_when_scheduled(config, *args, **kwargs):
        return real(config.replace(lr=1e30) if config.scheduler else config, *args, **kwargs)

    monkeypatch.setattr(ablate.engine, "fit_safely", absurd_lr_when_scheduled)
    results = tmp_path / "results"
    args = [*TINY, "--toggles", "scheduler", "--seeds", "1", "--study-name", "bad", "--results-dir", str(results),
            "--cache-dir", str(cache_dir)]
    result = _grid(*args)
    assert result.exit_code == 1, result.output
    assert re.search(r"error: 1 cell\(s\) failed: unet scheduler seed 0 \(non-finite loss", result.stderr), result.output
    trials = _trials(store.default_storage(results, 'bad'), "bad")
    states = Counter((t.user_attrs["toggles"], t.state) for t in trials)
    assert states == {("none", TrialState.COMPLETE): 1, ("scheduler", TrialState.FAIL): 2}  # run + 1 retry
    assert all("non-finite" in t.user_attrs["failure_reason"] for t in trials if t.state == TrialState.FAIL)
    runs = pd.read_csv(results / "bad" / "runs.csv").set_index("toggles")
    assert runs.loc["scheduler", "status"] == "failed" and runs.loc["none", "status"] == "completed"
    assert "non-finite" in runs.loc["scheduler", "failure_reason"] and runs.loc["scheduler", "attempts"] == 2
    record = json.loads((results / "bad" / runs.loc["scheduler", "run_dir"] / "run.json").read_text())
    assert record["status"] == "failed" and "non-finite" in record["failure_reason"]
    # Retries are spent: a rerun adds nothing and still says which cell failed; a broken
    # report is a warning, never the grid's failure.
    import ablate.report

    def broken_report(**kwargs):
        raise RuntimeError("no plotly today")

    monkeypatch.setattr(ablate.report, "write_report", broken_report)
    rerun = _grid(*[a for a in args if a != "--no-report"])
    assert rerun.exit_code == 1 and "unet scheduler seed 0" in rerun.stderr
    assert "warning: no report written (RuntimeError: no plotly today)" in rerun.stderr
    assert len(_trials(store.default_storage(results, 'bad'), "bad")) == 3


def test_each_models_cells_train_at_its_own_image_size(tmp_path, cache_dir):
    study = tmp_path / "sizes.toml"
    study.write_text('name = "sizes"\nmodels = ["unet", "baseline"]\ntoggles = []\n[train]\ndata = "synthetic"\n'
                     'image_size = 32\nepochs = 1\n[model_args.unet]\nbase_channels = 4\n'
                     '[model_train.baseline]\nimage_size = 64\nlr = 3e-3\n')
    results = tmp_path / "results"
    result = _grid("--study", str(study), "--results-dir", str(results), "--cache-dir", str(cache_dir), "--no-report")
    assert result.exit_code == 0, result.output
    runs = pd.read_csv(results / "sizes" / "runs.csv").set_index("model")
    records = {m: json.loads((results / "sizes" / runs.loc[m, "run_dir"] / "run.json").read_text())
               for m in ("unet", "baseline")}
    assert records["unet"]["dataset"]["image_size"] == [32, 32] and records["unet"]["config"]["lr"] == 1e-3
    assert records["baseline"]["dataset"]["image_size"] == [64, 64] and records["baseline"]["config"]["lr"] == 3e-3
    assert records["baseline"]["config"]["image_size"] == [64, 64]
    # A changed per-model setting is another grid.
    study.write_text(study.read_text().replace("lr = 3e-3", "lr = 1e-2"))
    again = _grid("--study", str(study), "--results-dir", str(results), "--cache-dir", str(cache_dir), "--no-report")
    assert again.exit_code == 2 and "differs in: model_train.baseline.lr" in again.stderr, again.output


def test_a_worker_that_resolves_another_precision_exits_2_and_claims_nothing(tmp_path, cache_dir, monkeypatch):
    import ablate.engine

    results = tmp_path / "results"
    args = [*TINY, "--toggles", "none", "--seeds", "1", "--study-name", "prec", "--results-dir", str(results),
            "--cache-dir", str(cache_dir)]
    monkeypatch.setattr(ablate.engine, "cpu_has_native_bf16", lambda: False)
    first = _grid(*args)
    assert first.exit_code == 0, first.output
    monkeypatch.setattr(ablate.engine, "cpu_has_native_bf16", lambda: True)  # another CPU: auto = bf16
    refused = _grid(*args)
    assert refused.exit_code == 2, refused.output
    assert refused.stdout == "" and refused.stderr == (
        "error: study prec was created for fp32 on cpu; this worker resolves --precision auto to bf16 on cpu; "
        "pass --precision fp32 or use another --study-name\n")
    url = store.default_storage(results, 'prec')
    assert len(_trials(url, "prec")) == 1
    matching = _grid(*args, "--precision", "fp32")  # the same cells: nothing left to run
    assert matching.exit_code == 0, matching.output
    assert "1 done, 0 to run" in matching.stdout and len(_trials(url, "prec")) == 1
    record = json.loads(next((results / "prec" / "runs").rglob("run.json")).read_text())
    assert record["config"]["precision"] == "fp32" and record["config"]["device"] == "cpu"


# --------------------------------------------------------------------------- bad input
BAD_TOML = {"syntax.toml": 'name = "x"\nmodels = ["unet" "custom"]\n', "unknown.toml": 'name = "x"\nepochs = 3\n'}


@pytest.mark.parametrize("args, message", [
    (["--models", "unet,vit"], "unknown model 'vit'"),
    (["--toggles", "scheduler,dropout"], "--toggles: expected one of scheduler, augment, weighted_loss, got 'dropout'"),
    (["--seeds", "two"], "--seeds: expected a count >= 1, a list of distinct integers >= 0 (3 or [0, 5, 7]), or "
                         "sequential seeds: auto, auto:MIN-MAX (auto:3-10) or {min = 3, max = 10}, got 'two'"),
    (["--seeds", "1.5"], "--seeds: expected a count >= 1, a list of distinct integers >= 0"),
    (["--seeds", "0,x"], "--seeds: expected a count >= 1, a list of distinct integers >= 0"),
    (["--seeds", "auto:2-8"], "--seeds: expected min >= 3 and min <= max, got min 2, max 8"),
    (["--min-effect", "0"], "--min-effect: expected a minimum effect of interest in mIoU, > 0 and < 1 (e.g. 0.01), got"),
    (["--workers", "0"], "--workers: expected 'auto' or an integer >= 1, got 0"),
    (["--workers", "many"], "--workers: expected 'auto' or an integer >= 1, got 'many'"),
    (["--study", "{tmp}/syntax.toml"], "syntax.toml: line 2, column 18: Unclosed array"),
    (["--study", "{tmp}/unknown.toml"], "unknown.toml: line 2, column 1: unknown key 'epochs'"),
    (["--study", "{tmp}/missing.toml"], "missing.toml: no such file"),
    (["--storage", "postgresql://ablate:s3cret@127.0.0.1:9/db"], "cannot open storage at 127.0.0.1:9"),
    (["--data", "{tmp}/no-such-data"], "no-such-data"),
    (["--image-size", "48"], "--image-size: expected an integer or HEIGHTxWIDTH, each positive and divisible by 32"),
    (["--model-arg", "unet.width=3"], "--model-arg: unknown key 'width'; accepted: base_channels"),
    (["--models", "resnet18", "--model-arg", "resnet18.weights={tmp}/none.pth"], "weights file not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    for name, text in BAD_TOML.items():
        (tmp_path / name).write_text(text)
    results = tmp_path / "results"
    result = _grid(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--results-dir", str(results))
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.output
    assert "s3cret" not in result.output
    assert not results.exists()


def test_a_different_grid_under_an_existing_name_is_refused(tmp_path, cache_dir):
    results = tmp_path / "results"
    study = grids.read_grid_study(overrides={"name": "same", "models": "unet", "toggles": "none", "epochs": 1})
    fp = data_stage.fingerprint("synthetic")
    gs = grids.GridStorage(store.default_storage(results, 'same'), "same")
    gs.prepare(study, grids.expand(study, fp), grids.definition(study, fp))
    result = _grid("--models", "unet", "--toggles", "none", "--epochs", "2", "--study-name", "same",
                   "--results-dir", str(results), "--cache-dir", str(cache_dir))
    assert result.exit_code == 2, result.output
    assert "holds a different grid (differs in: epochs); choose a new --study-name" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not gs.trials()


def test_status_of_a_missing_study_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["status", "--study-name", "nope", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.startswith("error: no grid study 'nope'")
    assert len(result.stderr.splitlines()) == 1 and not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- interruptions
def test_ctrl_c_and_sigkill_mid_cell_then_rerun_runs_every_cell_once(tmp_path, cache_dir):
    """3 cells. Run 1 gets Ctrl-C inside its 2nd cell, run 2 is SIGKILLed inside its 2nd cell,
    run 3 finishes. With --max-retries 0, neither interruption may count as a failure."""
    results, log = tmp_path / "results", tmp_path / "executions.log"
    args = [*TINY, "--toggles", "none", "--seeds", "3", "--study-name", "kill", "--results-dir", str(results),
            "--cache-dir", str(cache_dir), "--max-retries", "0"]
    hooks = _env(FAULT_LOG=str(log), FAULT_SLEEP="2:600")

    first = _spawn(args, hooks)
    _wait_for_lines(log, 2, first)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err

    second = _spawn(args, hooks)
    _wait_for_lines(log, 4, second)
    second.kill()
    second.wait()

    third = subprocess.run([sys.executable, "-m", "ablate", "grid", *args], env=_env(FAULT_LOG=str(log)),
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stdout + third.stderr

    url = store.default_storage(results, 'kill')
    trials = _trials(url, "kill")
    _complete_once(trials, 3)
    reasons = sorted(t.user_attrs["failure_reason"] for t in trials if t.state == TrialState.FAIL)
    assert len(trials) == 5 and reasons[0] == "interrupted" and re.match(r"worker lost: process \d+ on .* died", reasons[1])
    runs = _tables_match_storage(results, "kill", trials, 3)
    executions = Counter(cell for cell, _ in _executions(log))
    assert sorted(executions.values()) == [1, 2, 2]  # the two interrupted cells ran again, nothing else did
    assert dict(zip(runs["cell_id"], runs["attempts"])) == dict(executions)


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", [1, 2])
def test_ten_kills_of_the_whole_grid_then_one_rerun_complete_every_cell_once(n_workers, tmp_path, cache_dir):
    """The whole grid (its process group: parent, worker server, workers) SIGKILLed at 10
    seeded random moments, start-up included, then rerun once with default flags: no loss
    is charged to a cell (nobody saw its worker die: the whole command went), so every cell
    completes exactly once and the rerun exits 0. Lost attempts read 'worker lost'."""
    rng = random.Random(2200 + n_workers)
    results = tmp_path / "results"
    args = [*TINY[:-2], "--toggles", "scheduler,augment,weighted_loss", "--seeds", "1", "--study-name", "kills",
            "--results-dir", str(results), "--cache-dir", str(cache_dir), "--workers", str(n_workers)]
    command = [sys.executable, "-m", "ablate", "grid", *args]
    for _ in range(10):
        proc = subprocess.Popen(command, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group, as a shell job has
        time.sleep(rng.uniform(0.5, 12.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    final = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stdout + final.stderr
    trials = _trials(store.default_storage(results, "kills"), "kills")
    _complete_once(trials, 8)
    reasons = [t.user_attrs.get("failure_reason") for t in trials if t.state == TrialState.FAIL]
    assert all(r.startswith("worker lost: process") for r in reasons), reasons
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code,delays", [(signal.SIGINT, 130, (1.0, 2.0, 3.5, 6.0)),
                                                (signal.SIGTERM, 143, (1.0, 3.0, 6.0))])
def test_a_signal_at_any_moment_is_one_line_and_its_exit_code(signum, code, delays, tmp_path, cache_dir):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM (to the
    command alone, as `kill` sends it) at moments from start-up (the CLI still importing, the
    worker server still importing torch) to mid-cell: one line on stderr, exit 130 / 143, no traceback, no
    'Aborted!'; then a rerun completes every cell once."""
    results = tmp_path / "results"
    # 16 cells: enough that the runs interrupted before the last signal cannot leave so few that the
    # last run finishes them before its signal (with 8, an idle machine did in 2 of 14 runs)
    args = [*TINY[:-2], "--toggles", "scheduler", "--seeds", "8", "--study-name", "sig", "--results-dir", str(results),
            "--cache-dir", str(cache_dir), "--workers", "2"]
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-m", "ablate", "grid", *args], env=_env(), cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint,
                                start_new_session=True)
        time.sleep(delay)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == code, (delay, out, err)
        assert len(lines) == 1 and lines[0].startswith("interrupted") and "rerun" in lines[0], (delay, err)
    again = subprocess.run([sys.executable, "-m", "ablate", "grid", *args], env=_env(), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    _complete_once(_trials(store.default_storage(results, "sig"), "sig"), 16)


# --------------------------------------------------------------------------- concurrency
def test_three_workers_on_the_journal_file_run_every_cell_once(tmp_path, cache_dir):
    results, log = tmp_path / "results", tmp_path / "executions.log"
    args = [*TINY, "--toggles", "scheduler", "--seeds", "3", "--study-name", "jn", "--results-dir", str(results),
            "--cache-dir", str(cache_dir), "--workers", "3"]
    # Each worker lingers in its first cell, so all three are busy before the grid drains.
    proc = subprocess.run([sys.executable, "-m", "ablate", "grid", *args, "--storage", str(results / "jn.journal")],
                          env=_env(FAULT_LOG=str(log), FAULT_SLEEP="1:4"),
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    executions = _executions(log)
    assert len(executions) == 6 and len({cell for cell, _ in executions}) == 6
    assert len({pid for _, pid in executions}) >= 2  # the work really was shared
    trials = _trials(str(results / "jn.journal"), "jn")
    assert len(trials) == 6
    _complete_once(trials, 6)
    _tables_match_storage(results, "jn", trials, 6)


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql", "mysql"])
def test_two_grids_of_two_workers_share_a_fresh_storage_exactly_once(kind, tmp_path, cache_dir, request):
    """Two `ablate grid --workers 2` commands started together on one fresh storage (as two
    machines running the README's same line would, so both create the storage's tables at
    once): 8 cells, 8 trials, 8 distinct cell ids, each run once, both exit 0."""
    results, log = tmp_path / "results", tmp_path / "executions.log"
    url = storage_url(kind, tmp_path, request)
    args = [*TINY[:-2], "--toggles", "scheduler,weighted_loss", "--seeds", "2", "--study-name", "two",
            "--results-dir", str(results), "--cache-dir", str(cache_dir), "--storage", url, "--workers", "2"]
    env = _env(FAULT_LOG=str(log), FAULT_SLEEP="1:2")
    outputs = _two_grids_at_once(args, env, timeout=500)
    executions = _executions(log)
    assert len(executions) == 8 and len({cell for cell, _ in executions}) == 8, executions
    assert len({pid for _, pid in executions}) >= 3  # the work really was shared
    trials = _trials(url, "two")
    assert len(trials) == 8 and len({t.user_attrs["cell_id"] for t in trials}) == 8
    _complete_once(trials, 8)
    _tables_match_storage(results, "two", trials, 8)
    lines = [line for out, _ in outputs for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 8  # each cell's progress line printed once, by the command that ran it


# --------------------------------------------------------------------------- lost workers
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_stalled_worker_is_reclaimed_and_the_winner_speaks_for_the_cell(kind, tmp_path, cache_dir, request):
    """Worker A claims the only cell and its heartbeat stalls (tests/faults holds it inside the
    cell, beats suspended). Worker B, whose own grace setting is 10 minutes, must honour the 2 s
    A recorded on the trial: it reclaims the cell and completes it. Then A wakes up and
    finishes too: one COMPLETE trial, B's; the tables and the run folder they point to are
    B's, and A's late attempt wrote only into its own folder."""
    results, log, release = tmp_path / "results", tmp_path / "executions.log", tmp_path / "release"
    url = request.getfixturevalue("postgres_url") if kind == "postgresql" else f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*TINY, "--toggles", "none", "--seeds", "1", "--study-name", "stall", "--results-dir", str(results),
            "--cache-dir", str(cache_dir), "--storage", url]
    stalled = _spawn(args, _env(FAULT_LOG=str(log), FAULT_HOLD=f"1:{release}", ABLATE_GRACE_SECONDS="2"))
    _wait_for_lines(log, 1, stalled)
    rescuer = _spawn(args, _env(FAULT_LOG=str(log), ABLATE_GRACE_SECONDS="600"))
    out, err = rescuer.communicate(timeout=300)
    assert rescuer.returncode == 0, out + err
    runs = pd.read_csv(results / "stall" / "runs.csv")
    winner_dir = results / "stall" / runs.loc[0, "run_dir"]
    winner_record = (winner_dir / "run.json").read_text()

    release.touch()
    out, err = stalled.communicate(timeout=300)
    assert stalled.returncode == 0, out + err
    assert "reclaimed by another worker while it ran" in err

    trials = _trials(url, "stall")
    _complete_once(trials, 1)
    [winner] = [t for t in trials if t.state == TrialState.COMPLETE]
    [loser] = [t for t in trials if t.state == TrialState.FAIL]
    assert [pid for _, pid in _executions(log)] == [stalled.pid, rescuer.pid]
    assert winner.user_attrs["worker"]["pid"] == rescuer.pid and loser.user_attrs["worker"]["pid"] == stalled.pid
    assert loser.user_attrs["failure_reason"] == "worker lost: no heartbeat for 2 s"
    assert "val_miou" not in loser.user_attrs  # A's late result was refused by the storage
    assert loser.system_attrs["ablate:grace_seconds"] == 2 and winner.system_attrs["ablate:grace_seconds"] == 600
    runs = _tables_match_storage(results, "stall", trials, 1)  # rewritten by A at its end: still B's
    assert results / "stall" / runs.loc[0, "run_dir"] == winner_dir
    assert (winner_dir / "run.json").read_text() == winner_record  # A never wrote there
    loser_dir = results / "stall" / loser.user_attrs["run_dir"]
    assert loser_dir != winner_dir and records.read(loser_dir)["status"] == "failed"
    # The checkpoint lives in the artifact store, attached to the winner only (A's late attempt
    # was refused before it could attach anything); no run folder keeps a best.pt.
    from ablate import store
    from ablate.results import open_study
    from ablate.predict import load_run

    assert not (winner_dir / "best.pt").exists() and not (loser_dir / "best.pt").exists()
    assert sorted(store.artifact_ids(winner.system_attrs)) == ["best.pt", "predictions.png", "run.json"]
    assert store.artifact_ids(loser.system_attrs) == {}
    # The analysis reads the winner's record (from the storage) and checkpoint (artifact) for the cell.
    study = open_study(results, "stall", storage=url)
    cell_id = winner.user_attrs["cell_id"]
    assert study.records[cell_id] == json.loads(winner_record)
    assert load_run(study.checkpoint_dir(cell_id))[1]["config"] == study.records[cell_id]["config"]


def test_a_cell_that_kills_its_process_every_time_fails_after_its_retries(tmp_path, cache_dir):
    """Seed 1's cell SIGKILLs whichever worker runs it. The supervisor sees each death, charges
    it to the cell and replaces the worker (--max-retries 1: two attempts): the cell ends FAIL,
    the other cell completes, the grid exits 1 naming the cell and --max-retries, and a rerun
    runs nothing."""
    results = tmp_path / "results"
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*TINY, "--toggles", "none", "--seeds", "2", "--study-name", "poison", "--results-dir", str(results),
            "--cache-dir", str(cache_dir), "--storage", url, "--workers", "2", "--max-retries", "1"]
    command = [sys.executable, "-m", "ablate", "grid", *args]
    done = subprocess.run(command, env=_env(FAULT_KILL_SEED="1"), cwd=REPO, capture_output=True, text=True, timeout=500)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"error: 1 cell\(s\) failed: unet none seed 1 \(worker killed: process \d+ on \S+ ended by "
                     r"SIGKILL while running it\); each used up its --max-retries 1: fix the cause, or rerun with "
                     r"--max-retries 2 to try again", done.stderr), done.stderr
    assert re.search(r"warning: worker \d died \(SIGKILL\); starting another", done.stderr)
    trials = _trials(url, "poison")
    poison = [t for t in trials if t.user_attrs["seed"] == 1]
    assert [t.state for t in poison] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["failure_reason"].startswith("worker killed: process") for t in poison)
    _complete_once([t for t in trials if t.user_attrs["seed"] == 0], 1)
    again = subprocess.run(command, env=_env(FAULT_KILL_SEED="1"), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 1 and "unet none seed 1 (worker killed" in again.stderr, again.stderr
    assert len(_trials(url, "poison")) == len(trials)


def test_sigterm_to_a_multi_worker_grid_marks_its_running_cells_interrupted(tmp_path, cache_dir):
    """SIGTERM (a scheduler's stop) to the parent alone is passed on to the workers and
    handled like Ctrl-C: each running cell is marked interrupted, the command exits 143."""
    results, log = tmp_path / "results", tmp_path / "executions.log"
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*TINY, "--toggles", "none", "--seeds", "3", "--study-name", "term", "--results-dir", str(results),
            "--cache-dir", str(cache_dir), "--storage", url, "--workers", "2"]
    proc = _spawn(args, _env(FAULT_LOG=str(log), FAULT_SLEEP="1:600"))
    _wait_for_lines(log, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert "interrupted" in err and "Traceback" not in err
    trials = _trials(url, "term")
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert [t.user_attrs["failure_reason"] for t in trials] == ["interrupted"] * 2


@pytest.mark.skipif(workers.cores() < 2, reason="needs 2 cores to split")
def test_workers_auto_is_the_default_one_process_per_core_on_journal_storage(tmp_path):
    results = tmp_path / "results"
    args = TINY[:-2]  # without its "--workers 1"
    result = subprocess.run([sys.executable, "-m", "ablate", "grid", *args, "--toggles", "augment", "--seeds", "1",
                             "--study-name", "auto", "--results-dir", str(results), "--cache-dir", str(tmp_path / "c")],
                            env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "2 workers;" in result.stdout  # 2 cells, >= 2 cores: one process per cell
    assert (results / "auto" / "optuna.journal").is_file() and not (results / "auto" / "optuna.db").exists()
    trials = _trials(store.default_storage(results, "auto"), "auto")
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]

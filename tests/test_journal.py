"""Damaged Optuna journal files (ablate._journal through store.open_storage): a dead writer's
partial last line is set aside and its attempt reruns; any other damage is one clear error
that changes nothing; a live writer half-way through a line is waited for, never cut."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

from ablate import store
from ablate.errors import AblateError
from test_cli_grid import REPO, TINY, _complete_once, _env, _trials


def _optuna_journal(path: Path, n_trials: int = 3) -> bytes:
    """A small study written by Optuna itself; its last line is the last trial's COMPLETE."""
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n_trials)
    return path.read_bytes()


def _reread_states(path: Path) -> list[TrialState]:
    """The trial states a fresh Optuna reader (no ablate in between) finds in the file."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    return [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]


def _copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


# --------------------------------------------------------------------------- a dead writer
def test_a_partial_last_line_is_set_aside_and_optuna_writes_on(tmp_path, capsys):
    path = tmp_path / "optuna.journal"
    data = _optuna_journal(path)
    last = data.rstrip(b"\n").rfind(b"\n") + 1  # where the last trial's COMPLETE record starts
    cut = data[: last + (len(data) - last) // 2]  # its writer died half-way through it
    path.write_bytes(cut)
    capsys.readouterr()

    storage = store.open_storage(str(path))
    copies, err = _copies(path), capsys.readouterr().err.splitlines()
    assert len(copies) == 1 and copies[0].read_bytes() == cut
    assert path.read_bytes() == data[:last]
    assert len(err) == 1 and err[0].startswith(f"warning: {path}: ")
    assert f"({len(cut) - last} bytes at byte offset {last}," in err[0] and str(copies[0]) in err[0]

    # The cut trial is RUNNING again (reclaimed by ablate); writing goes on after the last whole line.
    optuna.load_study(study_name="s", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert _reread_states(path) == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE]
    # A healthy file is left alone: no second copy, no warning.
    store.open_storage(str(path))
    assert _copies(path) == copies and capsys.readouterr().err == ""


# --------------------------------------------------------------------------- other damage
Lines = list[bytes]
DAMAGE: dict[str, Callable[[Lines], tuple[Lines, int]]] = {  # -> damaged lines, index of the bad one
    "garbage line in the middle": lambda ls: ([*ls[:2], b"\xff\xfe\x00garbage\n", *ls[2:]], 2),
    # what ablate before this check made of a partial line: the next record glued onto it
    "next record glued to a partial one": lambda ls: ([*ls[:2], ls[2][:15] + ls[3], *ls[4:]], 2),
    "garbage lines appended": lambda ls: ([*ls, b"\x00\x01junk\n", b"more junk\n"], len(ls)),
    "JSON that is no journal record": lambda ls: ([ls[0], b"[1, 2]\n", *ls[1:]], 1),
    # a repairable tail does not excuse damage before it: still nothing is written
    "garbage in the middle and a partial last line": lambda ls: ([*ls[:2], b"junk\n", *ls[2:-1], ls[-1][:9]], 2),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_before_the_last_line_is_an_error_naming_the_offset(tmp_path, capsys, damage):
    path = tmp_path / "optuna.journal"
    lines, bad = DAMAGE[damage](_optuna_journal(path).splitlines(keepends=True))
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    capsys.readouterr()

    with pytest.raises(AblateError) as exc:
        store.open_storage(str(path))
    offset = len(b"".join(lines[:bad]))
    assert str(path) in str(exc.value) and f"byte offset {offset} " in str(exc.value)
    assert f"truncate -s {offset} {path}" in str(exc.value) and "\n" not in str(exc.value)
    assert path.read_bytes() == damaged and _copies(path) == [] and capsys.readouterr().err == ""


# --------------------------------------------------------------------------- a live writer
def _next_record(path: Path) -> bytes:
    """The bytes Optuna appends for one more write (a study attribute), made on a scratch copy."""
    scratch = path.with_name("scratch.journal")
    shutil.copyfile(path, scratch)
    optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(scratch)))).set_user_attr("live", 1)
    return scratch.read_bytes()[path.stat().st_size:]


def test_a_live_writer_half_way_through_a_line_is_waited_for_not_cut(tmp_path):
    path = tmp_path / "optuna.journal"
    data = _optuna_journal(path)
    record, opened = _next_record(path), []
    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's JournalFileBackend appends under
    lock.acquire()
    try:
        with path.open("ab") as f:  # the live writer has written part of its line
            f.write(record[:10])
        opener = threading.Thread(target=lambda: opened.append(store.open_storage(str(path))))
        opener.start()
        opener.join(1.0)
        assert opener.is_alive() and path.read_bytes() == data + record[:10]  # waiting for the lock
        with path.open("ab") as f:
            f.write(record[10:])
    finally:
        lock.release()
    opener.join(30)
    assert opened and path.read_bytes() == data + record and _copies(path) == []
    assert optuna.load_study(study_name="s", storage=opened[0]).user_attrs == {"live": 1}


def test_a_read_only_folder_is_checked_but_not_repaired(tmp_path, monkeypatch):
    """Someone else's results: no lock file can be made there, so nothing is cut; Optuna reads
    past the partial line, and other damage is still the clear error."""
    path = tmp_path / "optuna.journal"
    data = _optuna_journal(path)
    path.write_bytes(data + b'{"op_code":6,"wor')
    real_access = os.access

    def access(where, mode: int, **kw) -> bool:  # as root every folder is writable: not this one
        return False if Path(where) == tmp_path and mode == os.W_OK else real_access(where, mode, **kw)

    monkeypatch.setattr(os, "access", access)

    storage = store.open_storage(str(path))
    assert path.read_bytes() == data + b'{"op_code":6,"wor' and _copies(path) == []
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3
    path.write_bytes(b"junk\n" + data)
    with pytest.raises(AblateError, match=f"{path}: .* byte offset 0 "):
        store.open_storage(str(path))


# --------------------------------------------------------------------------- the CLI, for real
GRID = [*TINY, "--toggles", "none", "--seeds", "2", "--study-name", "jd"]  # 2 cells


def _ablate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablate", *args], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _commands(results: Path, cache_dir: Path) -> dict[str, list[str]]:
    """grid, status and report on the study in `results`, all on its journal file."""
    where = ["--study-name", "jd", "--storage", str(results / "jd.journal"), "--results-dir", str(results)]
    return {"grid": ["grid", *GRID, "--results-dir", str(results), "--cache-dir", str(cache_dir),
                     "--storage", str(results / "jd.journal")],
            "status": ["status", *where], "report": ["report", *where]}


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory, cache_dir) -> Path:
    """A finished 2-cell grid on a journal file; each test works on a copy of its folder."""
    results = tmp_path_factory.mktemp("grid") / "results"
    done = _ablate(*_commands(results, cache_dir)["grid"])
    assert done.returncode == 0, done.stdout + done.stderr
    return results


def test_cli_reruns_the_attempt_whose_writer_was_killed_mid_record(finished_grid, tmp_path, cache_dir):
    results = shutil.copytree(finished_grid, tmp_path / "results")
    journal, commands = results / "jd.journal", _commands(results, cache_dir)
    data = journal.read_bytes()
    last = data.rfind(b'"datetime_complete"')  # the last trial's state change to COMPLETE
    start, end = data.rfind(b"\n", 0, last) + 1, data.index(b"\n", last) + 1
    journal.write_bytes(data[: (start + end) // 2])  # its writer was killed half-way through it

    rerun = _ablate(*commands["grid"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    warnings = [line for line in rerun.stderr.splitlines() if "incomplete last record" in line]
    assert len(warnings) == 1 and f"bytes at byte offset {start}," in warnings[0], rerun.stderr
    ran = [line for line in rerun.stdout.splitlines() if line.startswith("[")]
    assert len(ran) == 1, rerun.stdout  # that cell, and only that one, ran again
    _complete_once(_trials(str(journal), "jd"), 2)
    for name in ("status", "report"):
        done = _ablate(*commands[name])
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert "done 2" in _ablate(*commands["status"]).stdout


def test_cli_stops_on_a_journal_damaged_in_the_middle(finished_grid, tmp_path, cache_dir):
    results = shutil.copytree(finished_grid, tmp_path / "results")
    journal, commands = results / "jd.journal", _commands(results, cache_dir)
    lines = journal.read_bytes().splitlines(keepends=True)
    damaged = b"".join([*lines[:5], b"\x8b\x08 garbage\n", *lines[5:]])
    journal.write_bytes(damaged)
    offset = len(b"".join(lines[:5]))

    for name, args in commands.items():
        done = _ablate(*args)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and "Traceback" not in done.stderr, (name, done.stderr)
        assert len(errors) == 1 and str(journal) in errors[0] and f"byte offset {offset} " in errors[0], done.stderr
    assert journal.read_bytes() == damaged and _copies(journal) == []

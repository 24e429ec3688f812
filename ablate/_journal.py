"""Results store stage, journal files: an Optuna journal is checked before Optuna opens it; a
dead writer's partial last line is set aside, any other damage is an `AblateError`."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from ablate.errors import AblateError


class _Scan(NamedTuple):
    size: int  # bytes in the file when it was scanned
    complete: int  # bytes up to and including the last b"\n": what follows is a partial line
    bad_offset: int | None  # byte offset of the first complete line that is not a record
    bad_reason: str  # why that line is not a record ("" when there is none)


def open_journal(path: Path) -> JournalStorage:
    """Optuna's journal storage on `path`, checked (and its partial last line set aside) first."""
    # The lock JournalFileBackend takes by default for every append: holding it, no live writer
    # is half-way through a line, so a partial last line can only be a dead writer's.
    lock = JournalFileSymlinkLock(str(path))
    if path.is_file() and not os.access(path.parent, os.W_OK):
        # A read-only folder (someone else's results) takes no lock file and can be repaired by
        # no one; Optuna's reader skips a partial last line, so only other damage is refused.
        _check(path, repair=False)
    elif path.is_file():
        lock.acquire()
        try:
            _check(path, repair=True)
        finally:
            lock.release()
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def _check(path: Path, *, repair: bool) -> None:
    """Raise on a damaged complete line (writing nothing); else cut off a partial last line."""
    scan = _scan(path)
    if scan.bad_offset is not None:
        raise _damaged(path, scan.bad_offset, scan.bad_reason)
    if repair and scan.complete < scan.size:
        _set_aside_partial_line(path, scan.complete, scan.size)


def _scan(path: Path) -> _Scan:
    """One pass over the file: Optuna's reader fails on any damaged line with a line after it,
    so every complete line is checked, once per open (on a 10 MB journal about a quarter of
    what Optuna's own replay of it costs)."""
    offset, bad_offset, bad_reason = 0, None, ""
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # only the last line can lack its newline
            if bad_offset is None and (why := _why_not_a_record(line)):
                bad_offset, bad_reason = offset, why
            offset += len(line)
        size = f.seek(0, os.SEEK_END)
    return _Scan(size, offset, bad_offset, bad_reason)


def _why_not_a_record(line: bytes) -> str:
    """What is wrong with a complete line; "" for a record (a JSON object with an op_code)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg}"
    return "" if isinstance(record, dict) and "op_code" in record else "not an Optuna journal record"


def _damaged(path: Path, offset: int, reason: str) -> AblateError:
    return AblateError(
        f"{path}: damaged Optuna journal: the line at byte offset {offset} is {reason}; nothing was changed. "
        f"Restore the file from a backup (or a {path.name}.damaged-* copy beside it, if there is one), or drop that "
        f"line and all after it with `truncate -s {offset} {path}` (their trials then rerun), and rerun")


def _set_aside_partial_line(path: Path, complete: int, size: int) -> None:
    """Keep a copy of the whole file, cut the partial line off, say so on one stderr line."""
    copy = _copy_path(path)
    shutil.copyfile(path, copy)  # the original bytes survive before a single one is cut
    with path.open("r+b") as f:
        f.truncate(complete)
        f.flush()
        os.fsync(f.fileno())
    print(f"warning: {path}: dropped an incomplete last record ({size - complete} bytes at byte offset {complete}, "
          f"left by a writer that died mid-write); the damaged file is kept as {copy}; "
          "the attempt it belonged to reruns", file=sys.stderr, flush=True)


def _copy_path(path: Path) -> Path:
    """<name>.damaged-<local time>, with a counter when a copy of that second already exists."""
    stem = f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
    copy, n = path.with_name(stem), 1
    while copy.exists():
        copy, n = path.with_name(f"{stem}-{n}"), n + 1
    return copy

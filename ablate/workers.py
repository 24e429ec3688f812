"""Worker stage, shared by the grid and the tuner: who a worker is, its heartbeat, the reclaim
of trials whose worker died or went silent, spawning and supervising worker processes, and
which GPU and how many threads each process gets.

Liveness is judged the same way for every storage kind (SQLite, journal file, PostgreSQL,
MySQL): the owner of a RUNNING trial refreshes a system attr (`HEARTBEAT_ATTR`) from a daemon
thread and records on the trial how often it beats and how long others must wait before
they may call it lost (`GRACE_ATTR`). An observer honours the trial's recorded grace, never
its own setting, and times the silence on its own monotonic clock (no clock comparisons
between machines). A worker of the same host, boot and PID namespace whose process is gone is
lost at once.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ablate import _optuna, store  # _optuna: a FrozenTrial's storage id has no public name
from ablate.errors import AblateError

# Failure reasons (trial user attr "failure_reason"). A loss is the cell's doing only when
# somebody saw it: WORKER_KILLED is written by the supervisor that watched its worker die of a
# signal while the cell ran (OOM killer, segfault), and is charged to the retry budget, so a
# cell that kills its process stops. WORKER_LOST (found dead or silent afterwards: the whole
# command, the machine or its network went down) and INTERRUPTED (Ctrl-C, SIGTERM) never are.
INTERRUPTED = "interrupted"
WORKER_LOST = "worker lost"
WORKER_KILLED = "worker killed"
RECLAIMED = f"{WORKER_LOST}: reclaimed while running"

# Trial system attrs written by the owner of a RUNNING trial.
HEARTBEAT_ATTR = "ablate:heartbeat"  # time.time() of the last beat (only its changes matter)
GRACE_ATTR = "ablate:grace_seconds"  # silence after which observers may reclaim the trial
INTERVAL_ATTR = "ablate:heartbeat_seconds"  # how often the owner beats

GRACE_ENV = "ABLATE_GRACE_SECONDS"  # this process's grace as an OWNER (tests shorten it)
DEFAULT_GRACE_SECONDS = 120.0  # also assumed for a trial whose grace attr is unreadable


def is_crash(reason: str | None) -> bool:
    """Whether a failure reason says the worker process went away (seen or not)."""
    return bool(reason) and reason.startswith((WORKER_LOST, WORKER_KILLED))


def is_charged(reason: str | None) -> bool:
    """Whether a failure counts against a retry budget: a genuine failure, or a worker killed
    under its supervisor's eyes; never an interruption or an unseen loss."""
    return not (reason == INTERRUPTED or (bool(reason) and reason.startswith(WORKER_LOST)))


# --------------------------------------------------------------------------- identity
_supervisor: int | None = None  # PID of the process that supervises this worker (`_child` sets it)


def identity() -> dict[str, Any]:
    """This process: host name, boot id and PID namespace (a PID names the same process only
    within one boot of one namespace: containers share host names and reuse PIDs), its PID,
    `node`, the three joined, which is what two workers compare, and `supervisor`, the PID of
    the process watching it (None when it runs in the command's own process)."""
    host = socket.gethostname()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot, pidns = "", 0
    return {"host": host, "boot": boot, "pidns": pidns, "pid": os.getpid(), "node": f"{host}/{boot}/{pidns}",
            "supervisor": _supervisor}


def process_alive(pid: int) -> bool:
    """Whether a process of this node still runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------- heartbeat
def grace_seconds() -> float:
    """The grace this process, as an owner, records on its trials."""
    text = os.environ.get(GRACE_ENV)
    if text is None:
        return DEFAULT_GRACE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise AblateError(f"{GRACE_ENV} must be a number of seconds > 0, got {text!r}")
    return value


def heartbeat_seconds(grace: float) -> float:
    """Four beats per grace period (at most one per 30 s): one late beat is never a loss."""
    return max(0.25, min(30.0, grace / 4))


def owner_system_attrs(grace: float | None = None) -> dict[str, float]:
    """The system attrs a new RUNNING trial starts with: a first beat and the owner's timing."""
    grace = grace_seconds() if grace is None else grace
    return {HEARTBEAT_ATTR: time.time(), GRACE_ATTR: grace, INTERVAL_ATTR: heartbeat_seconds(grace)}


def take_ownership(storage, trial_id: int) -> None:
    """Stamp a trial created elsewhere (Optuna's `ask`) with this worker and its timing."""
    storage.set_trial_user_attr(trial_id, "worker", identity())
    for key, value in owner_system_attrs().items():
        storage.set_trial_system_attr(trial_id, key, value)


def recorded_grace(trial: FrozenTrial) -> float:
    value = trial.system_attrs.get(GRACE_ATTR)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else DEFAULT_GRACE_SECONDS


class Heartbeat:
    """Refreshes the trial's heartbeat attr while a cell or trial runs (a daemon thread, so a
    training step holding the GIL for long only delays a beat). Stops by itself once the trial
    is finished by someone else (reclaimed): `lost` then says so."""

    def __init__(self, storage, trial_id: int, interval: float | None = None):
        self._storage, self._trial_id = storage, trial_id
        self._interval = heartbeat_seconds(grace_seconds()) if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)
        self.lost = False

    def beat(self) -> None:
        self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT_ATTR, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except UpdateFinishedTrialError:
                self.lost = True
                return
            except Exception:  # noqa: BLE001 - a missed beat must not kill the run; the next one retries
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- reclaim
def fail_trial(storage, trial_id: int, reason: str) -> bool:
    """FAIL a RUNNING trial with `reason`; False when it was finished meanwhile (by its worker
    or another reclaimer), which is no error."""
    try:
        storage.set_trial_user_attr(trial_id, "failure_reason", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    return True


class Reclaimer:
    """Decides which RUNNING trials lost their worker. Keep one per worker process: it
    remembers when it first saw each trial's current heartbeat."""

    def __init__(self) -> None:
        self._me = identity()
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (heartbeat, when it last changed)

    def verdict(self, trial: FrozenTrial, now: float | None = None) -> str | None:
        """The failure reason if `trial`'s worker is lost, else None."""
        now = time.monotonic() if now is None else now
        worker = trial.user_attrs.get("worker")
        worker = worker if isinstance(worker, dict) else {}
        pid = worker.get("pid")
        if (worker.get("node") == self._me["node"] and isinstance(pid, int) and pid != self._me["pid"]
                and not process_alive(pid)):
            supervisor = worker.get("supervisor")
            if isinstance(supervisor, int) and supervisor != self._me["pid"] and process_alive(supervisor):
                return None  # its supervisor saw it die and settles the trial (`settle_killed`)
            return f"{WORKER_LOST}: process {pid} on {worker.get('host')} died with the command that ran it"
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        seen = self._seen.get(_optuna.trial_id(trial))
        if seen is None or seen[0] != beat:
            self._seen[_optuna.trial_id(trial)] = (beat, now)
            return None
        grace = recorded_grace(trial)  # the owner's setting, not ours
        if now - seen[1] < grace:
            return None
        return f"{WORKER_LOST}: no heartbeat for {grace:g} s"

    def reclaim(self, storage, trials: list[FrozenTrial]) -> bool:
        """FAIL every RUNNING trial whose worker is lost; True if any trial changed state."""
        changed = False
        for t in trials:
            if t.state == TrialState.RUNNING and (reason := self.verdict(t)) is not None:
                fail_trial(storage, _optuna.trial_id(t), reason)
                changed = True  # failed by us, or finished meanwhile: either way no longer RUNNING
        return changed


def settle_killed(storage, trials: list[FrozenTrial], pid: int, how: str) -> int:
    """The supervisor's word on a worker of its own that died of signal `how`: FAIL the trials
    that `pid` was running, charged (`WORKER_KILLED`). Returns how many it failed."""
    me, failed = identity(), 0
    for t in trials:
        worker = t.user_attrs.get("worker")
        if (t.state == TrialState.RUNNING and isinstance(worker, dict) and worker.get("pid") == pid
                and worker.get("node") == me["node"]):
            reason = f"{WORKER_KILLED}: process {pid} on {me['host']} ended by {how} while running it"
            failed += fail_trial(storage, _optuna.trial_id(t), reason)
    return failed


# --------------------------------------------------------------------------- processes
def worker_plan(workers: int, *, device: str, gpu_ids: list[str], cores: int) -> list[tuple[dict[str, str], int]]:
    """(environment overrides, torch threads) for each worker process: GPUs round-robin when
    several are visible, CPU cores split evenly."""
    threads = max(1, cores // workers)
    plans = []
    for i in range(workers):
        env = {"CUDA_VISIBLE_DEVICES": gpu_ids[i % len(gpu_ids)]} if device != "cpu" and len(gpu_ids) > 1 else {}
        plans.append((env, threads))
    return plans


WORKER_MEMORY_BYTES = 2 * 1024**3  # what one CPU worker may need at most (a 256 px U-Net at batch 16 stays below)


def auto_workers(cells: int, *, device: str, gpus: int, cores: int, memory: int | None = None) -> int:
    """Processes for `--workers auto`: on GPUs one per GPU; on a CPU one per core, each with
    one torch thread (`worker_plan`), as many as the memory allows. Measured on 2 cores: the
    default grid's cells are small (64 px, 8-32 channels wide) and run 1.27x faster as two
    one-thread processes than as one two-thread process (intra-op threads scale poorly on
    such small convolutions); never more processes than cells."""
    if device == "cuda" and gpus:
        return max(1, min(gpus, cells))
    memory = available_memory() if memory is None else memory
    by_memory = max(1, memory // WORKER_MEMORY_BYTES) if memory else cores
    return max(1, min(cores, cells, by_memory))


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux /proc/meminfo), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in env.split(",") if x.strip()] if env else []
    return ids or [str(i) for i in range(torch.cuda.device_count())]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`): handled like Ctrl-C wherever KeyboardInterrupt is (the
    running work is marked interrupted), but the command exits 143, as a shell expects."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal: 143 for SIGTERM, 130 for Ctrl-C (SIGINT)."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def terminate_as_interrupt() -> None:
    """From now on SIGTERM raises `Terminated` in the main thread (the command's first act)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler, `kill`) behaves like Ctrl-C: the running trial is marked
    interrupted and a rerun continues. Only the main thread can install the handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# What the worker server imports once (forkserver), besides the module of the worker loop it
# serves (`warm_up`): torch, the engine and its augmentation (torchvision, which the engine
# and the resnet18 model import only when they use it); `ablate._server` makes the server
# itself leave without the seconds of teardown. Nothing a worker does not need (the analysis
# stage and pandas cost a second and a half of a core while the parent sets up).
PRELOAD = ["ablate._server", "ablate.engine", "ablate.transforms"]  # _server first: it ignores Ctrl-C


def start_method() -> str:
    """forkserver where the platform has it: one server process imports `PRELOAD` once and
    every worker is forked from it, ready in milliseconds instead of paying torch's import
    (seconds) each, and sharing no threads or state with the parent; spawn elsewhere."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def warm_up(worker_module: str) -> None:
    """Start the worker server now, so it imports torch, the engine and `worker_module` (the
    worker loop's, e.g. "ablate.grid.run") while this process does its own set-up (reading
    the study, loading data); workers started later begin at once. Nothing to do with spawn;
    an unused server exits with this process. One server per process: a later call for
    another loop reuses it (its workers import what the server lacks)."""
    if start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([*PRELOAD, worker_module])
    forkserver.ensure_running()


def _child(env: dict[str, str], threads: int, target: Callable, index: int, events, args: tuple,
           supervisor: int) -> None:
    """Entry point of every worker: this parent's environment as it is now (a forkserver
    child starts with the server's) plus its GPU, before CUDA initialises; its share of the
    cores; Ctrl-C and SIGTERM as interrupts (the server ignored Ctrl-C); the PID of its
    `supervisor`, recorded on the trials it claims; then `target(index, events, *args)`, and
    its exit code once its events are flushed."""
    global _supervisor
    os.environ.clear()
    os.environ.update(env)
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)
    _supervisor = supervisor
    code = 0
    try:
        target(index, events, *args)
    except KeyboardInterrupt as exc:
        code = interrupt_exit_code(exc)
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:  # a bug: its traceback, then the exit code Python would give
        import traceback

        traceback.print_exc()
        code = 1
    events.close()
    events.join_thread()  # the events put so far reach the parent
    store.close_all()  # multiprocessing ends a child with os._exit: close its connections, not drop them
    sys.exit(code)


def exit_code(exc: SystemExit) -> int:
    """The status Python leaves with for `exc`: its code when an int, 0 for None, else 1
    with the code (a message) printed to stderr, as the interpreter does."""
    if isinstance(exc.code, int):
        return exc.code
    if exc.code is not None:
        print(exc.code, file=sys.stderr)
    return 0 if exc.code is None else 1


def supervise(target: Callable, args: tuple, *, workers: int, device: str, on_event: Callable[[Any], None],
              respawns: int = 0, warn: Callable[[str], None] | None = None,
              on_killed: Callable[[int, str], None] | None = None) -> list[int]:
    """Run `target(index, events, *args)` in `workers` spawned processes (GPU and threads from
    `worker_plan`) and pass what they put on `events` to `on_event`. A worker killed by a
    signal other than SIGINT/SIGTERM (OOM killer, segfault, SIGKILL) is reported to
    `on_killed(pid, signal name)` (which charges its trial: `settle_killed`) and replaced, at
    most `respawns` times in all. Ctrl-C or SIGTERM here: the workers get time to mark their
    trials interrupted, then KeyboardInterrupt (`Terminated` for SIGTERM) is raised. Returns
    the non-zero exit codes of the last workers."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    warm_up(getattr(target, "__module__", None) or __name__)  # forkserver: already running when warmed up early
    ctx = multiprocessing.get_context(start_method())
    plans = worker_plan(workers, device=device, gpu_ids=visible_gpus(), cores=cores())

    running: dict[int, tuple[Any, Any]] = {}  # index -> (process, its events queue)
    codes: dict[int, int] = {}  # index -> exit code of a worker that ended for good

    def start(i: int) -> None:
        # A queue per process: one killed while it held its queue's lock blocks no other.
        events = ctx.Queue()
        env, threads = plans[i]
        p = ctx.Process(target=_child, args=({**os.environ, **env}, threads, target, i, events, args, os.getpid()),
                        name=f"ablate-worker-{i}")
        with _interrupts_deferred():  # an interrupt now would leave a worker we hold no handle of
            p.start()
            running[i] = p, events

    with sigterm_interrupts():
        try:
            for i in range(workers):  # inside the try: an interrupt stops the workers started so far
                start(i)
            while running:
                # wakes at once when a worker exits (the last one's exit is what the command waits for)
                multiprocessing.connection.wait([p.sentinel for p, _ in running.values()], timeout=0.2)
                for i, (p, events) in list(running.items()):
                    _drain(events, on_event)
                    if p.is_alive():  # is_alive() also reaps a dead worker, so its PID reads as gone
                        continue
                    _drain(events, on_event)
                    crashed = p.exitcode < 0 and -p.exitcode not in (signal.SIGINT, signal.SIGTERM)
                    if crashed and on_killed is not None:
                        on_killed(p.pid, signal.Signals(-p.exitcode).name)
                    if crashed and respawns > 0:
                        respawns -= 1
                        warn(f"warning: worker {i} died ({signal.Signals(-p.exitcode).name}); starting another")
                        start(i)
                    else:
                        codes[i] = p.exitcode
                        del running[i]
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the bookkeeping
            _stop([p for p, _ in running.values()])
            for _, events in running.values():
                _drain(events, on_event)
            raise
    _raise_interrupt_of(codes.values())
    return [code for _, code in sorted(codes.items()) if code]


def _raise_interrupt_of(codes: Iterable[int]) -> None:
    """A worker that ended by SIGTERM or Ctrl-C ends the command the same way."""
    codes = list(codes)
    if any(code in (143, -signal.SIGTERM) for code in codes):
        raise Terminated
    if any(code in (130, -signal.SIGINT) for code in codes):
        raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until this ends, then act as if they came then: a worker
    interrupted half-way through its start would keep running unseen, or, once this process
    is gone, fail in the forkserver with a traceback. (Python runs signal handlers in the main
    thread only, so only there is anything to defer.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handlers = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)  # now handled as it would have been


def _drain(events, on_event: Callable[[Any], None]) -> None:
    """Pass on what a worker has put on its queue so far."""
    with contextlib.suppress(queue.Empty):
        while True:
            on_event(events.get_nowait())


def _stop(procs: list) -> None:
    """Ctrl-C reached the workers too (same process group); SIGTERM sent to the parent alone
    did not: after a moment pass it on, then wait, then kill what is left."""
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
            p.join()

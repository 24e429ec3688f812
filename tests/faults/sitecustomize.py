"""Fault injection for tests that run `python -m ablate ...` in a subprocess: a test puts this
folder first on the child's PYTHONPATH, Python imports this file at start-up (in spawned
workers too), and it wraps `ablate.engine.fit_safely` from the outside; production code has
no test hooks. Driven by environment variables, each optional:

FAULT_LOG=PATH           append "<cell_id> <pid>" for every cell execution (grid run folders
                         are runs/<cell_id>/<trial number>/)
FAULT_SLEEP=N:SECONDS    sleep inside the N-th cell this process runs (heartbeats go on)
FAULT_HOLD=N:PATH        in the N-th cell, stop this process's heartbeats and wait until PATH
                         exists, then train (a worker that stalls past its grace period)
FAULT_KILL_SEED=S        SIGKILL this process inside every cell of seed S (a poison cell)
"""
import os
import signal
import time
from pathlib import Path


def _install() -> None:
    import ablate.engine
    import ablate.workers

    real_fit, real_beat = ablate.engine.fit_safely, ablate.workers.Heartbeat.beat
    state = {"nth": 0, "stalled": False}

    def beat(self) -> None:
        if not state["stalled"]:
            real_beat(self)

    def fit_safely(config, *args, **kwargs):
        state["nth"] += 1
        out_dir = kwargs.get("out_dir")
        if os.environ.get("FAULT_LOG") and out_dir is not None:
            with open(os.environ["FAULT_LOG"], "a") as log:
                log.write(f"{Path(out_dir).parent.name} {os.getpid()}\n")
        n, _, seconds = os.environ.get("FAULT_SLEEP", "0:0").partition(":")
        if int(n) == state["nth"]:
            time.sleep(float(seconds))
        n, _, release = os.environ.get("FAULT_HOLD", "0:").partition(":")
        if int(n) == state["nth"]:
            state["stalled"] = True
            deadline = time.monotonic() + 300
            while not Path(release).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            state["stalled"] = False
        if os.environ.get("FAULT_KILL_SEED") == str(config.seed):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fit(config, *args, **kwargs)

    ablate.engine.fit_safely = fit_safely
    ablate.workers.Heartbeat.beat = beat


if any(key.startswith("FAULT_") for key in os.environ):
    _install()

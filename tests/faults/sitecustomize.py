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
FAULT_MIOU=T:E,T:E       replace the trained run's val and test mIoU by 0.5 + the sum of the
                         effects E of its toggles T that are on + a per-run noise (SD 0.01,
                         fixed by the run's seed and toggles), pixel accuracy 0.99: results
                         whose verdicts a test knows in advance (sequential seeds)
"""
import hashlib
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
        record = real_fit(config, *args, **kwargs)
        if os.environ.get("FAULT_MIOU") and record.get("status") == "completed":
            _plant(record, config, os.environ["FAULT_MIOU"])
        return record

    ablate.engine.fit_safely = fit_safely
    ablate.workers.Heartbeat.beat = beat


def _plant(record: dict, config, spec: str) -> None:
    import numpy as np

    effects = {name: float(value) for name, value in (part.split(":") for part in spec.split(","))}
    key = f"{config.seed} {config.scheduler} {config.augment} {config.weighted_loss}".encode()
    noise = np.random.default_rng(int(hashlib.sha256(key).hexdigest()[:8], 16)).normal(0, 0.01)
    miou = 0.5 + noise + sum(e for name, e in effects.items() if getattr(config, name))
    for split in ("val", "test"):
        record["metrics"][split].update(miou=miou, pixel_acc=0.99)


if any(key.startswith("FAULT_") for key in os.environ):
    _install()

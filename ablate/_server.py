"""Imported only by the worker server (`workers.PRELOAD`, forkserver): when the server ends
(its parent has exited), it leaves at once instead of tearing down torch, which takes
seconds during which it would still hold the parent's stdout open (a pipe reading the
`ablate` command's output would wait for it). Workers forked from the server inherit the
handler but never run it: they leave through `workers.fast_exit`, and the pid check keeps
it the server's alone."""
import atexit
import os
import sys

_SERVER_PID = os.getpid()


def _leave() -> None:
    if os.getpid() == _SERVER_PID:
        os._exit(0)


# The forkserver runs as `python -c "from multiprocessing.forkserver import main; ..."`:
# imported anywhere else (by mistake), this module does nothing.
if sys.argv == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    atexit.register(_leave)

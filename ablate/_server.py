"""Imported only by the worker server (`workers.PRELOAD`, forkserver), first: Ctrl-C in the
command's first seconds ends it quietly (see below); when the server ends
(its parent has exited), it leaves at once instead of tearing down torch, which takes
seconds during which it would still hold the parent's stdout open (a pipe reading the
`ablate` command's output would wait for it). Workers forked from the server inherit the
handler but never run it: multiprocessing ends them with `os._exit`, and the pid check
keeps it the server's alone."""
import atexit
import os
import signal
import sys

_SERVER_PID = os.getpid()


def _leave() -> None:
    if os.getpid() == _SERVER_PID:
        os._exit(0)


# The forkserver runs as `python -c "from multiprocessing.forkserver import main; ..."`:
# imported anywhere else (by mistake), this module does nothing.
if sys.argv == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    atexit.register(_leave)
    # Ctrl-C reaches the whole process group: the server, still importing torch in the
    # command's first seconds, would print a KeyboardInterrupt traceback, or finish its
    # import first, holding the command's output pipe open for seconds. While it imports,
    # it leaves at once and quietly (its parent says what happened); once ready,
    # multiprocessing makes it ignore Ctrl-C, and each worker restores the default handler
    # (`workers._child`).
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(0))

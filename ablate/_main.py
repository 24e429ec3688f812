"""The `ablate` command's entry point (console script and `python -m ablate`). Ctrl-C or
SIGTERM while the CLI is still being imported ends it at once with one line: nothing has been
read or written yet. Then the CLI runs with Ctrl-C as KeyboardInterrupt and SIGTERM as
`workers.Terminated`, which each command turns into its bookkeeping and exit 130 / 143."""
import os
import signal


def _quit(signum: int, frame: object) -> None:
    os.write(2, b"\ninterrupted: rerun the same command to continue\n")
    os._exit(128 + signum)


def run() -> None:
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):  # not ignored by the caller
            previous[signum] = signal.signal(signum, _quit)
    from ablate.cli import run as cli

    for signum, handler in previous.items():
        signal.signal(signum, handler)
    cli()

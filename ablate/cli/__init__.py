"""Command-line shell: a click group whose subcommands live one per module and load lazily.

Expected failures (`AblateError`, bad options) print one line and exit with code 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import sys

import click

from ablate import __version__
from ablate.errors import AblateError

# name -> "module:attribute"; modules are imported only when their command runs, so
# `ablate --help` does not pay for importing torch.
_COMMANDS = {
    "train": ("ablate.cli.train:train", "Train one model and write its run record."),
    "evaluate": ("ablate.cli.evaluate:evaluate", "Score folders of predicted masks against ground truth."),
    "predict": ("ablate.cli.predict:predict", "Predict one image with a trained run; write a side-by-side PNG."),
    "data": ("ablate.cli.data:data", "Inspect datasets; write the synthetic dataset to disk."),
    "grid": ("ablate.cli.grid:grid", "Run the ablation grid (toggles x architectures x seeds) as a resumable study."),
    "status": ("ablate.cli.grid:status", "Show the progress of a grid study."),
    "tune": ("ablate.cli.tune:tune", "Search hyperparameters with Optuna (TPE + pruning)."),
    "report": ("ablate.cli.report:report", "Write the self-contained interactive HTML report of a study."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module_name, attr = _COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        rows = [(name, help_) for name, (_, help_) in _COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from ablate.cli._options import merge_image_size_args

        return super().parse_args(ctx, merge_image_size_args(args))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AblateError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM where no command said more (start-up)
            from ablate.workers import interrupt_exit_code

            click.echo("\ninterrupted: rerun the same command to continue", err=True)
            sys.exit(interrupt_exit_code(exc))


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="ablate")
def main() -> None:
    """ablate: which training choices help your segmentation model, on which
    architecture, and with which hyperparameters.

    Start with `ablate grid` (the default quick study on the embedded synthetic
    dataset), then open results/quick/report.html.
    """


def run() -> None:
    """The `ablate` console command (through `ablate._main`): SIGTERM is an interrupt from the
    first moment (`workers.terminate_as_interrupt`): exit 143, one line."""
    from ablate import workers

    workers.terminate_as_interrupt()
    main(prog_name="ablate")

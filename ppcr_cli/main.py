"""The ``ppcr`` command: a thin Typer app over the ``ppcr`` library.

Subcommand modules import torch and the heavy library parts only inside their functions,
so ``ppcr --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ppcr.version import __version__
from ppcr_cli import prepare, recipes
from ppcr_cli import eval as eval_cli
from ppcr_cli import tables as tables_cli
from ppcr_cli import predict
from ppcr_cli import serve as serve_cli
from ppcr_cli import train as train_cli
from ppcr_cli import ablate as ablate_cli
from ppcr_cli.errors import main_entry

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="ppcr",
    help=(
        "PPCR: Progressive Prompt-guided Cross-modal Reasoning for referring image segmentation.\n\n"
        "Examples:\n\n"
        "  ppcr prepare shapes --out data/shapes\n\n"
        "  ppcr prepare refcoco --root data/refer_seg\n\n"
        "  ppcr recipes list\n\n"
        "Set PPCR_DEBUG=1 to see full tracebacks."
    ),
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ppcr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """PPCR command line."""


# --- command registration (one line per command module) ---
app.add_typer(prepare.app, name="prepare")
app.add_typer(recipes.app, name="recipes")
app.command("train")(train_cli.train_command)
app.command("predict")(predict.predict_command)
app.command("eval")(eval_cli.eval_command)
app.command("tables")(tables_cli.tables_command)
app.command("ablate")(ablate_cli.ablate_command)
app.command("serve")(serve_cli.serve_command)
# --- end of command registration ---


def main() -> None:
    """Console-script entry point (wraps the app in the error boundary)."""
    main_entry(typer.main.get_command(app))


if __name__ == "__main__":
    main()

"""``ppcr recipes list|show``: browse and inspect the shipped recipes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="List and show recipes.\n\nExamples:\n\n  ppcr recipes list\n\n  ppcr recipes show paper\n\n"
    "  ppcr recipes show shapes spatial-head=attn train.lr=1e-4",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)


@app.command("list")
def list_command() -> None:
    """List the shipped recipes and ablation axes.

    Example: ppcr recipes list
    """
    from rich.table import Table

    from ppcr.config.ablations import list_axes
    from ppcr.config.loading import list_recipes
    from ppcr_cli.console import out

    table = Table(title="Recipes")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("file")
    for name, path, description in list_recipes():
        table.add_row(name, description, str(path))
    out.print(table)
    axes = Table(title="Ablation overlays (ppcr ablate AXIS=VALUE)")
    axes.add_column("axis=value", style="bold")
    axes.add_column("what it reproduces")
    for choices in list_axes().values():
        for choice in choices:
            axes.add_row(choice.label, choice.description)
    out.print(axes)


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Recipe name (e.g. paper, shapes) or a YAML path.")],
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="key=value overrides, e.g. train.lr=1e-4 spatial-head=attn.")
    ] = None,
    params: Annotated[
        bool, typer.Option("--params", help="Build the model on the meta device and count its parameters.")
    ] = False,
) -> None:
    """Print a recipe fully resolved (defaults, overlays and overrides applied).

    Examples: ppcr recipes show paper ; ppcr recipes show shapes train.lr=1e-4 ; ppcr recipes show paper --params
    """
    from rich.syntax import Syntax

    from ppcr.config.loading import dump_recipe, load_recipe
    from ppcr_cli.console import out

    recipe = load_recipe(name, overrides or [])
    if not params:
        out.print(Syntax(dump_recipe(recipe), "yaml", theme="ansi_dark", background_color="default"))
        return
    _print_params(recipe)


def _print_params(recipe) -> None:
    from rich.table import Table

    from ppcr.modeling.summary import parameter_rows
    from ppcr_cli.console import out

    rows = parameter_rows(recipe)
    table = Table(title=f"Parameters of recipe {recipe.name!r} (meta device: no weights loaded)")
    table.add_column("component", style="bold")
    table.add_column("parameters", justify="right")
    table.add_column("trainable", justify="right")
    table.add_column("frozen", justify="right")
    total = trainable = 0
    for component, count, train_count in rows:
        table.add_row(component, f"{count:,}", f"{train_count:,}", f"{count - train_count:,}")
        total += count
        trainable += train_count
    table.add_section()
    table.add_row("total", f"{total:,}", f"{trainable:,}", f"{total - trainable:,}")
    out.print(table)

"""``ppcr ablate``: one command per paper ablation row (thin over :mod:`ppcr.ablation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

EXAMPLES = """Examples:

  ppcr ablate --list

  ppcr ablate spatial-prompt=none

  ppcr ablate spatial-head=attn train.max_steps=500

  ppcr ablate box-source=gt            (reuses the default run; evaluates with ground-truth boxes)"""


def ablate_command(
    arguments: Annotated[
        Optional[list[str]],
        typer.Argument(help="AXIS=VALUE choices (see --list) and key=value recipe overrides."),
    ] = None,
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Base recipe (name or YAML path).")] = "shapes",
    runs: Annotated[Path, typer.Option("--runs", help="Folder of ablation runs.")] = Path("runs/ablate"),
    nproc: Annotated[int, typer.Option("--nproc", help="Training processes.")] = 1,
    list_axes_flag: Annotated[bool, typer.Option("--list", help="Show the axes and their values, then exit.")] = False,
) -> None:
    """Train (or reuse) a variant of a recipe and evaluate it on the recipe's eval splits.

    Runs live in RUNS/RECIPE/CHOICES/; a finished run with the same recipe is reused and an
    interrupted one resumed. `ppcr tables --runs RUNS/RECIPE` puts the results beside the paper's.
    """
    from ppcr_cli.console import err

    if list_axes_flag:
        _print_axes()
        return
    from ppcr.ablation import plan_ablation, run_ablation
    from ppcr_cli.eval import SplitProgress, print_results

    plan = plan_ablation(arguments or [], recipe=recipe, runs_root=runs)
    verb = {"train": "training", "resume": "resuming", "reuse": "reusing"}[plan.action]
    err.print(f"[bold]{plan.label}[/]: {verb} {plan.run_dir}")
    progress = SplitProgress()
    result = run_ablation(plan, nproc=nproc, eval_progress=progress)
    by_dataset: dict[str, list] = {}
    for evaluation in result.evaluations:
        by_dataset.setdefault(evaluation.dataset, []).append(evaluation)
    for evaluations in by_dataset.values():
        print_results(evaluations, evaluations[0].out_dir.parent)


def _print_axes() -> None:
    from rich.table import Table

    from ppcr.config.ablations import list_axes
    from ppcr.config.loading import AXIS_KEYS
    from ppcr_cli.console import out

    table = Table(title="Ablation axes (ppcr ablate AXIS=VALUE)")
    table.add_column("axis", style="bold")
    table.add_column("values")
    table.add_column("recipe key")
    table.add_column("paper rows")
    for axis, choices in list_axes().items():
        table.add_row(
            axis.replace("_", "-"),
            ", ".join(c.value for c in choices),
            AXIS_KEYS.get(axis, ""),
            "\n".join(f"{c.value}: {c.description}" for c in choices),
        )
    out.print(table)


ablate_command.__doc__ += "\n\n" + EXAMPLES

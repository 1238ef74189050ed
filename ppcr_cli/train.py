"""``ppcr train``: a thin wrapper over :func:`ppcr.training.run.train`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

EXAMPLES = """Examples:

  ppcr train --recipe shapes

  ppcr train --recipe shapes train.lr=5e-4 spatial-head=attn --out runs/shapes-attn

  ppcr train --recipe paper --nproc 4

  ppcr train --recipe shapes --out runs/shapes --resume

Multi-GPU and multi-node runs use DeepSpeed's own launcher (see README, "Training")."""


def train_command(
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="key=value overrides, e.g. train.lr=1e-4 spatial-head=attn.")
    ] = None,
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (paper, shapes) or a YAML path.")] = "shapes",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory [default: runs/RECIPE].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last state.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", help="Local processes (GPUs, or CPU ranks with gloo).")] = 1,
    launcher: Annotated[
        str, typer.Option("--launcher", help="auto (DeepSpeed launcher on GPU, spawn on CPU), spawn or deepspeed.")
    ] = "auto",
) -> None:
    """Train PPCR with DeepSpeed (ZeRO-2, AdamW, WarmupDecayLR) as a recipe says.

    Writes recipe.yaml, env.json, metrics.jsonl, checkpoints/, state/ and final/ into the run
    directory; final/ is a PPCR checkpoint for `ppcr eval` and `ppcr predict`. One run at a time
    may use a run directory: a second one on the same --out is refused while the first runs.
    """
    from ppcr.config.loading import load_recipe
    from ppcr.config.schema import Launcher, choices
    from ppcr.errors import PPCRError
    from ppcr.training.run import train
    from ppcr_cli.console import err

    if launcher not in choices(Launcher):
        raise PPCRError(f"unknown --launcher {launcher!r}; valid: {', '.join(choices(Launcher))}")
    resolved = load_recipe(recipe, overrides or [])
    run_dir = out if out is not None else Path("runs") / resolved.name
    result = train(resolved, run_dir, resume=resume, nproc=nproc, launcher=launcher)
    if os.environ.get("RANK", "0") != "0":  # under an external launcher, rank 0 reports
        return
    err.print(
        f"[green]done:[/] {result.steps} steps, {result.samples_per_s:.1f} samples/s; "
        f"checkpoint {result.final_dir}"
    )


train_command.__doc__ += "\n\n" + EXAMPLES

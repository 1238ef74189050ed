"""``ppcr serve``: the web demo (Gradio, the optional extra ``ppcr[demo]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

INSTALL_HINT = "pip install 'ppcr[demo]'  (or: pip install gradio)"

_HELP = """Serve a web page to try a model: upload or pick an image, type referring expressions (one
per line), see each mask tinted with its predicted box, and the box, score and area in a table.

The model picker lists --model, the embedded default and every RUNS/*/final checkpoint; another
checkpoint folder can be typed in. The page is also an HTTP API (see "Use via API" at its foot).
Needs Gradio: pip install 'ppcr[demo]'. Runs offline on the embedded default model.

Examples:

  ppcr serve                                   # http://127.0.0.1:7860

  ppcr serve --model runs/shapes/final --port 8080

  ppcr serve --host 0.0.0.0 --device cuda --dtype bf16
"""


def serve_command(
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Checkpoint folder or hub id to start with (default: the embedded model)."),
    ] = None,
    runs: Annotated[
        Path, typer.Option("--runs", help="Folder whose */final checkpoints the model picker lists.")
    ] = Path("runs"),
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface of this machine).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=1, max=65535)] = 7860,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, bf16 or fp16 (fp16 needs a GPU).")] = "fp32",
) -> None:
    from ppcr.errors import PPCRError

    try:  # imported here, not at the top: `ppcr --help` stays fast
        from ppcr.serving.app import launch
    except ImportError as error:
        if (error.name or "").split(".")[0] != "gradio":
            raise
        raise PPCRError("ppcr serve needs gradio, which is not installed", hint=INSTALL_HINT) from None
    from ppcr.serving.models import model_choices
    from ppcr.serving.session import DemoSession
    from ppcr_cli.console import err

    choices = model_choices(model, runs)
    if not choices:
        raise PPCRError("no model to serve: no default model is installed", hint="pass --model DIR")
    session = DemoSession(device=device, dtype=dtype)
    session.load(choices[0].source)  # a bad --model fails here, with one line, before any server starts
    demo, url = launch(session, choices, host=host, port=port)
    err.print(f"serving {choices[0].label} on {url} (Ctrl-C stops)", soft_wrap=True, markup=False)
    try:
        demo.block_thread()
    finally:
        demo.close()


serve_command.__doc__ = _HELP

"""``ppcr prepare weights``: build a PPCR base checkpoint from public weights.

A thin layer over :func:`ppcr.weights.prepare.prepare_weights`: parse the options, show progress
on stderr, print what happened to every key (per source and component), the SVD error table and
the decisions taken. torch is imported only when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ppcr.config.schema import DtypeName, ModelSize, WeightsFrom, choices

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.weights.prepare import PrepareWeightsResult

SOURCES = choices(WeightsFrom)
SIZES = choices(ModelSize)
DTYPES = choices(DtypeName)
FORMATS = ("text", "json")
_SHOWN_UNMAPPED = 5

_HELP = """Build a PPCR base checkpoint (a directory for --model / init.checkpoint) from public weights.

--from llava: LLaVA-1.5 from llava-hf (LLM, CLIP, projector, tokenizer) and SAM's .pth; both LoRA
adapters and the PPCR heads start fresh, and the checkpoint refers to the two sources (a hub id
as it is, a local path relative to OUT, so OUT can be moved together with them), or with
--copy-base holds them.

--from glamm: the paper's initialisation. GLaMM-GranD-Pretrained is the frozen base (CLIP from
--clip, which GLaMM's release leaves out), GLaMM-RefSeg gives the mask decoder, the semantic
prompt head and the [SEG] rows, and the semantic adapter is the rank-r SVD of RefSeg - GranD on
every q/v matrix (error and captured energy per matrix in the report; a warning when the median
error is above 0.5). That SVD is RefSeg's LoRA only if --base is RefSeg's parent, so every tensor
GLaMM's fine-tuning keeps frozen must be identical in both, or nothing is written. The spatial
adapter starts fresh. The converted base is stored in the checkpoint, and its prompts are GLaMM's
(llava_v1 system prompt, then `The <im_start><image><im_end> provides an overview of the
picture.` before the question).

Sources are hub ids already in the local Hugging Face cache (nothing is downloaded; use
`hf download ID` first) or local directories/files; sharded .bin and safetensors are both read,
one shard at a time. Every key is accounted for in OUT/conversion_report.json.

Examples:

  ppcr prepare weights --from llava --llava llava-hf/llava-1.5-7b-hf --sam sam_vit_h_4b8939.pth --out weights/llava

  ppcr prepare weights --from glamm --base MBZUAI/GLaMM-GranD-Pretrained --semantic MBZUAI/GLaMM-RefSeg
  --clip openai/clip-vit-large-patch14-336 --out weights/glamm
"""


def _choice(allowed: tuple[str, ...]):
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


def weights_command(
    source: Annotated[
        str, typer.Option("--from", help="Weights to start from: llava or glamm.", callback=_choice(SOURCES))
    ],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
    llava: Annotated[
        Optional[str], typer.Option("--llava", help="llava-hf LLaVA-1.5 (hub id or directory); --from llava.")
    ] = None,
    sam: Annotated[
        Optional[str], typer.Option("--sam", help="SAM checkpoint in segment-anything's layout (.pth); --from llava.")
    ] = None,
    base: Annotated[
        Optional[str], typer.Option("--base", help="GLaMM-GranD-Pretrained (hub id or directory); --from glamm.")
    ] = None,
    semantic: Annotated[
        Optional[str], typer.Option("--semantic", help="GLaMM-RefSeg (hub id or directory); --from glamm.")
    ] = None,
    clip: Annotated[
        Optional[str], typer.Option("--clip", help="CLIP ViT-L/14-336 (hub id or directory); --from glamm.")
    ] = None,
    tokenizer: Annotated[
        Optional[str],
        typer.Option("--tokenizer", help="llava-hf tokenizer [default: --llava, or llava-hf/llava-1.5-7b-hf]."),
    ] = None,
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank of both adapters.")] = 8,
    alpha: Annotated[int, typer.Option("--alpha", min=1, help="LoRA alpha of both adapters.")] = 16,
    size: Annotated[
        str, typer.Option("--size", help="Architecture: 7b, or tiny for test models.", callback=_choice(SIZES))
    ] = "7b",
    dtype: Annotated[
        str,
        typer.Option("--dtype", help="LLaVA storage dtype: auto (bf16 for 7b), fp32, bf16, fp16.", callback=_choice(DTYPES)),
    ] = "auto",
    device: Annotated[Optional[str], typer.Option("--device", help="Where the SVDs run, e.g. cuda.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the parts that start fresh.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    copy_base: Annotated[
        bool,
        typer.Option(
            "--copy-base",
            help="--from llava: store LLaVA and SAM inside OUT (self-contained, ~14 GB for 7b) instead of "
            "referring to them by hub id or by a path relative to OUT.",
        ),
    ] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="Summary on stdout: text or json.", callback=_choice(FORMATS))
    ] = "text",
) -> None:
    import contextlib
    import sys

    from ppcr.weights.prepare import prepare_weights
    from ppcr_cli.console import err

    torch_dtype = _torch_dtype(dtype)
    # Libraries imported on the way (deepspeed, via transformers' save) log to stdout; keep
    # stdout for the summary (and valid JSON) by sending their output to stderr. The stages show
    # as a transient status line on a terminal, and not at all otherwise.
    with contextlib.redirect_stdout(sys.stderr), err.status("preparing weights") as status:
        result = prepare_weights(
            source, out, llava=llava, sam=sam, base=base, semantic=semantic, clip=clip, tokenizer=tokenizer,
            rank=rank, alpha=alpha, size=size, dtype=torch_dtype, device=device, seed=seed, overwrite=overwrite,
            copy_base=copy_base, progress=status.update,
        )
    if fmt == "json":
        from ppcr_cli.console import out as stdout

        stdout.print_json(json.dumps(result.to_dict()))
        return
    _print_summary(result)


weights_command.__doc__ = _HELP


def _torch_dtype(name: str):
    if name == "auto":
        return None
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _print_summary(result: PrepareWeightsResult) -> None:
    from rich.table import Table

    from ppcr_cli.console import err, out

    mapping = result.report.mapping
    rows = mapping.table()
    table = Table(title=f"Keys by source and component (--from {result.source})")
    for column in ("source", "component", "mapped", "dropped", "unmapped", "missing"):
        numeric = column not in ("source", "component")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(
            row["source"], row["component"], f"{row['mapped']:,}", f"{row['dropped']:,}",
            _flag(row["unmapped"]), _flag(row["missing"]),
        )
    out.print(table)
    for row in rows:
        reasons = [_reason(reason) for reason in row["reasons"]]
        if reasons:
            out.print(f"  [dim]dropped {row['source']}/{row['component']}:[/] {'; '.join(reasons)}", soft_wrap=True)

    for name, summary in result.adapter_summaries().items():
        svd = Table(title=f"{name} adapter: rank-{result.config.model.lora.r} SVD, relative error per matrix")
        for column in ("matrices", "median error", "worst error", "worst matrix", "median energy", "lowest energy"):
            svd.add_column(column, justify="left" if column == "worst matrix" else "right", no_wrap=column != "worst matrix")
        if summary.get("matrices"):
            svd.add_row(
                str(summary["matrices"]), f"{summary['median_relative_error']:.2e}",
                f"{summary['max_relative_error']:.2e}", summary["worst_module"].removeprefix("model.language_model."),
                f"{summary['median_energy']:.4f}", f"{summary['min_energy']:.4f}",
            )
        out.print(svd)

    for note in result.notes:
        style = "yellow" if note.startswith("WARNING") else "dim"
        err.print(f"[{style}]note:[/] {note}", soft_wrap=True)
    if mapping.unmapped:
        shown = ", ".join(f"{r.source}:{r.key}" for r in mapping.unmapped[:_SHOWN_UNMAPPED])
        more = f" (+{len(mapping.unmapped) - _SHOWN_UNMAPPED} more)" if len(mapping.unmapped) > _SHOWN_UNMAPPED else ""
        err.print(f"[yellow]warning:[/] {len(mapping.unmapped)} unmapped key(s), not loaded: {shown}{more}", soft_wrap=True)
    memory = f", peak memory {result.peak_rss_bytes / 2**30:.1f} GiB" if result.peak_rss_bytes else ""
    out.print(f"wrote {result.out} (report: {result.report_path}) in {result.seconds:.1f} s{memory}", soft_wrap=True)


def _reason(reason: str) -> str:
    if reason.startswith("not taken from"):
        return f"{reason} (another source provides these)"
    return reason


def _flag(count: int) -> str:
    return f"[bold yellow]{count:,}[/]" if count else "0"

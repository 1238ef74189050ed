"""``ppcr predict``: segment what referring expressions describe in an image (or many images).

All the checks that need no model (arguments, expressions, output names, every image decodes)
run first, so bad input fails fast with one line and nothing written; then the model is loaded
once, each image is encoded once, all its expressions are batched, and its files are written
together (see :mod:`ppcr.inference.outputs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.inference.batch_file import PredictJob
    from ppcr.inference.predictor import Prediction

FORMATS = ("text", "json")

_HELP = """Segment the object each referring EXPRESSION describes in IMAGE.

With -o, writes a binary mask PNG at the image's size (white = object); with --overlay, the image
with the mask tinted and the predicted box (the Spatial Segmentation Prompt) outlined. With
several expressions the files are numbered in order: -o mask.png gives mask-1.png, mask-2.png …
(same for --overlay). Prints the box in pixels (x1, y1, x2, y2), the mask area and the
confidence (mean foreground probability inside the mask); --format json prints one JSON
object per image, each prediction with its mask as COCO RLE ("mask_rle", pycocotools' decode
reads it) and null for a number that is not finite.

--batch FILE.jsonl runs many images, one JSON object per line:
{"image": "a.jpg", "expressions": ["the red circle"], "mask": "a.png", "overlay": "a-overlay.jpg"}
(mask and overlay optional; relative paths are relative to the JSONL file's folder). No output
may be any line's image or another output, under any name (links included): that is refused
before anything runs.
Each image is encoded once however many expressions it has.

Without --model the embedded default model is used. Expressions longer than the model's
context are shortened (a warning says so). An expression starting with '-' goes after '--'.

Examples:

  ppcr predict photo.jpg "the man in the red shirt" -o mask.png --overlay overlay.png

  ppcr predict photo.jpg "left dog" "right dog" -o mask.png --format json

  ppcr predict --batch jobs.jsonl --model runs/shapes/final --device cuda --dtype bf16
"""


def _check_format(value: str) -> str:
    if value not in FORMATS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(FORMATS)}")
    return value


def predict_command(
    image: Annotated[
        Optional[Path],
        typer.Argument(help="Input image (any format PIL reads; EXIF orientation is applied).", show_default=False),
    ] = None,
    expressions: Annotated[
        Optional[list[str]],
        typer.Argument(help="One or more referring expressions (quote each one).", show_default=False),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="Mask PNG to write (numbered for several expressions).")
    ] = None,
    overlay: Annotated[
        Optional[Path],
        typer.Option("--overlay", help="Overlay image to write: mask + predicted box (.png, .jpg …)."),
    ] = None,
    batch: Annotated[
        Optional[Path],
        typer.Option("--batch", help="JSONL file of jobs (replaces IMAGE and EXPRESSION; see above)."),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="Result format on stdout: text or json.", callback=_check_format)
    ] = "text",
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Checkpoint directory or Hugging Face hub id (default: the embedded model)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", help="auto, fp32, bf16 or fp16 (auto: bf16 on a GPU that has it, else fp32; fp16 needs a GPU)."
        ),
    ] = "auto",
) -> None:
    from ppcr.errors import PPCRError

    if batch is not None:
        if image is not None or expressions:
            raise PPCRError("--batch replaces IMAGE and EXPRESSION; give either a batch file or an image")
        if output is not None or overlay is not None:
            raise PPCRError(
                "-o/--overlay cannot be used with --batch",
                hint='give each line its own "mask" and "overlay" paths',
            )
        jobs, images = _batch_jobs(batch)
    else:
        if image is None:
            raise typer.BadParameter("missing IMAGE (or use --batch FILE.jsonl)", param_hint="IMAGE")
        jobs, images = _single_job(image, expressions or [], output, overlay)
    _run(jobs, images, model=model, device=device, dtype=dtype, fmt=fmt)


predict_command.__doc__ = _HELP


def _single_job(image: Path, expressions: list[str], output: Optional[Path], overlay: Optional[Path]):
    from ppcr.images import load_image
    from ppcr.inference.batch_file import make_job

    job = make_job(image, expressions, output, overlay)
    return [job], [load_image(image)]  # decoded now: a bad image fails before the model loads


def _batch_jobs(batch: Path):
    from ppcr.errors import PPCRError
    from ppcr.images import load_image
    from ppcr.inference.batch_file import read_batch_file

    jobs = read_batch_file(batch)
    for job in jobs:  # every image must decode before any output is written
        try:
            load_image(job.image)
        except PPCRError as error:
            raise type(error)(f"{job.where}: {error.message}", hint=error.hint) from None
    return jobs, [None] * len(jobs)


def _run(jobs: list["PredictJob"], images: list, *, model: Optional[str], device: str, dtype: str, fmt: str) -> None:
    import warnings

    from ppcr.inference.outputs import write_prediction_files
    from ppcr.inference.predictor import ExpressionTruncatedWarning, PPCRPredictor
    from ppcr_cli.console import progress

    predictor = PPCRPredictor.from_pretrained(model, device=device, dtype=dtype)
    bar, advance = progress("predicting", len(jobs))
    with bar:
        for job, decoded in zip(jobs, images):
            predictor.set_image(decoded if decoded is not None else job.image)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExpressionTruncatedWarning)
                predictions = predictor.predict_batch(list(job.expressions))
            _warn_truncated(job, predictions, predictor.max_length)
            _warn_non_finite(job, predictions)
            write_prediction_files(predictor.image, predictions, job.masks, job.overlays)
            _report(job, predictor.image_size, predictions, fmt)
            advance()


def _warn_truncated(job: "PredictJob", predictions: list["Prediction"], max_length: int) -> None:
    from rich.markup import escape

    from ppcr_cli.console import err

    for number, (expression, prediction) in enumerate(zip(job.expressions, predictions), start=1):
        if prediction.truncated:
            where = f"{job.where}: " if job.where else ""
            err.print(
                f"[yellow]warning:[/] {escape(where)}expression {number} is longer than the model's context "
                f"({max_length} text tokens); only its first {len(prediction.expression.split())} words were used",
                soft_wrap=True,
                emoji=False,
            )


def _non_finite_box(prediction: "Prediction") -> bool:
    return prediction.box is not None and prediction.finite_box is None


def _warn_non_finite(job: "PredictJob", predictions: list["Prediction"]) -> None:
    from rich.markup import escape

    from ppcr_cli.console import err

    where = f"{job.where}: " if job.where else ""
    for number, prediction in enumerate(predictions, start=1):
        if _non_finite_box(prediction):
            err.print(
                f"[yellow]warning:[/] {escape(where)}expression {number}: the model's box is not finite "
                f"({', '.join(str(v) for v in prediction.box)}), so no box is reported (JSON: null); "
                "its weights may be broken",
                soft_wrap=True,
                emoji=False,
            )


def _report(job: "PredictJob", size: tuple[int, int], predictions: list["Prediction"], fmt: str) -> None:
    height, width = size
    rows = []
    for index, (expression, prediction) in enumerate(zip(job.expressions, predictions)):
        box, score = prediction.finite_box, prediction.finite_score  # non-finite: None (JSON null)
        rows.append(
            {
                "expression": expression,
                "read_as": prediction.expression,
                "truncated": prediction.truncated,
                "box": None if box is None else [round(v, 2) for v in box],
                "area": prediction.area,
                "score": None if score is None else round(score, 4),
                "mask": None if job.masks is None else str(job.masks[index]),
                "overlay": None if job.overlays is None else str(job.overlays[index]),
            }
        )
    if fmt == "json":
        from ppcr.data.refer import mask_to_rle
        from ppcr.strict_json import strict_json_dumps, without_non_finite

        for row, prediction in zip(rows, predictions):  # the RLE only where it is printed
            row["mask_rle"] = mask_to_rle(prediction.mask)
        summary = {"image": str(job.image), "width": width, "height": height, "predictions": rows}
        typer.echo(strict_json_dumps(without_non_finite(summary)[0], ensure_ascii=False))  # NaN → null
        return
    typer.echo(f"{job.image} ({width}×{height})")
    for number, (row, prediction) in enumerate(zip(rows, predictions), start=1):
        box = "none" if row["box"] is None else "(" + ", ".join(f"{v:.1f}" for v in row["box"]) + ") px"
        box = "not finite" if _non_finite_box(prediction) else box
        files = ", ".join(f for f in (row["mask"], row["overlay"]) if f)
        line = (
            f"  {number}. {json.dumps(row['expression'], ensure_ascii=False)}  "
            f"score {'n/a' if row['score'] is None else format(row['score'], '.3f')}  "
            f"box {box}  area {row['area']:,} px"
        )
        typer.echo(line + (f"  → {files}" if files else ""))

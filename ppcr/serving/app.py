"""The Gradio page of ``ppcr serve``: thin wiring of :class:`~ppcr.serving.session.DemoSession`.

One event, ``/segment`` (image file, expressions text, model) → (gallery of overlays, table,
JSON details with the masks as COCO RLE, status line), which is also the page's HTTP API
(``gradio_client.Client(url).predict(handle_file(path), text, model, api_name="/segment")``).
A :class:`~ppcr.errors.PPCRError` becomes ``gr.Error`` (its one line shown in the page); any other
failure is logged with its traceback on the server and shown as one line, never as a trace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls (read on import)
import gradio as gr  # noqa: E402  (this module is the only one that needs Gradio)

from ppcr.errors import PPCRError  # noqa: E402
from ppcr.serving.segment import MAX_EXPRESSIONS, MAX_IMAGE_PIXELS, TABLE_HEADERS, read_image  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.serving.models import ModelChoice
    from ppcr.serving.session import DemoSession

LOG = logging.getLogger("ppcr.serve")
MAX_UPLOAD = "50mb"  # refused by the server before any decoding
INTRO = f"""# PPCR: referring image segmentation

Upload or pick an image, type what to segment (one expression per line, up to {MAX_EXPRESSIONS}), press
**Segment**. Each expression gets its mask tinted cyan and its predicted box (the Spatial Segmentation
Prompt SAM receives) outlined; the table gives the box in pixels, the confidence (mean foreground
probability inside the mask) and the mask area. The image is encoded once for all its expressions.
Images up to {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels."""


def _one_line(error: PPCRError) -> str:
    text = error.message.splitlines()[0] if error.message else type(error).__name__
    return f"{text} ({error.hint})" if error.hint else text


class CheckedImage(gr.Image):
    """``gr.Image`` whose upload errors are one line in the page.

    Gradio opens an upload before the event runs; a file PIL cannot read (or an image over PIL's
    decompression-bomb limit) would otherwise fail there with Gradio's generic message.
    """

    is_template = True  # drawn by the page as a plain Image

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            path = getattr(payload, "path", None)
            try:
                if path:
                    read_image(path)  # says what is wrong with the file, in the library's words
            except PPCRError as error:
                raise gr.Error(_one_line(error), print_exception=False) from None
            raise gr.Error("cannot read the uploaded image", print_exception=False) from None


def build_demo(session: "DemoSession", choices: Sequence["ModelChoice"]) -> gr.Blocks:
    """The page: inputs and model picker on the left, results on the right, examples below."""
    from ppcr.serving.examples import shapes_examples

    labels = {choice.source: choice.label for choice in choices}
    first = choices[0].source if choices else None

    def segment(image: Optional[str], text: Optional[str], model: Optional[str]) -> tuple[Any, ...]:
        model = model.strip() if model and model.strip() else first  # an emptied picker: the first model
        try:
            result = session.segment(model, image, text)
        except PPCRError as error:
            raise gr.Error(_one_line(error), print_exception=False) from None
        except Exception as error:  # a bug: the trace goes to the server log, one line to the page
            LOG.exception("request failed")
            reason = str(error).splitlines()[0] if str(error) else ""
            raise gr.Error(f"internal error: {type(error).__name__}: {reason}", print_exception=False) from None
        for note in result.notes:
            gr.Warning(note)
        gallery = [(item.overlay, f"{number}. {item.expression}") for number, item in enumerate(result.items, 1)]
        label = labels.get(model, model) if model else "the embedded default model"
        return gallery, result.table(), result.details(), result.status(label)

    with gr.Blocks(title="PPCR demo", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                image = CheckedImage(label="Image", type="filepath", sources=["upload", "clipboard"], height=300)
                text = gr.Textbox(
                    label="Referring expressions (one per line)",
                    lines=4,
                    placeholder="the red circle on the left\nthe biggest square",
                )
                model = gr.Dropdown(
                    choices=[(choice.label, choice.source) for choice in choices],
                    value=choices[0].source if choices else None,
                    label="Model (a listed checkpoint, or type a checkpoint folder)",
                    allow_custom_value=True,
                )
                run = gr.Button("Segment", variant="primary")
            with gr.Column(scale=1):
                gallery = gr.Gallery(
                    label="Masks (cyan) and predicted boxes", format="png", columns=2, height=600,
                    object_fit="contain",
                )
        status = gr.Markdown(label="status")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Predictions (box in pixels)", interactive=False)
        with gr.Accordion("JSON (masks as COCO RLE)", open=False):
            details = gr.JSON(label="details")
        examples = shapes_examples()
        if examples:
            gr.Examples(
                examples=[[str(example.image), example.text] for example in examples],
                inputs=[image, text],
                label="Shapes-Ref examples (val split, seed 0)",
            )
        run.click(segment, [image, text, model], [gallery, table, details, status], api_name="segment")
    return demo


def launch(
    session: "DemoSession", choices: Sequence["ModelChoice"], *, host: str = "127.0.0.1", port: int = 7860
) -> tuple[gr.Blocks, str]:
    """Start the page on ``host:port`` in a background thread; return it and its local URL.

    A port that is taken is a one-line :class:`~ppcr.errors.PPCRError`.
    """
    demo = build_demo(session, choices)
    try:
        _, url, _ = demo.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            share=False,
            max_file_size=MAX_UPLOAD,
            footer_links=["api"],
        )
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PPCRError(f"cannot serve on {host}:{port}: {reason}", hint="pick another --port") from None
    return demo, url

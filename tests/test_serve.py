"""``ppcr serve``: the demo's logic without Gradio, then the real server on 127.0.0.1 driven through
its HTTP API with gradio_client (no display needed), bad input in the page, and the CLI around it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from pycocotools import mask as mask_utils

from ppcr.errors import ImageError, PPCRError
from ppcr.images import load_image
from ppcr.inference import model_source
from ppcr.inference.predictor import PPCRPredictor, Prediction
from ppcr.serving import segment as demo
from ppcr.serving.examples import shapes_examples
from ppcr.serving.models import model_choices, run_checkpoints
from ppcr.serving.session import DemoSession
from ppcr_cli.errors import run_guarded

EXPRESSIONS = ["the big red circle at the top", "small blue square on the left"]


@pytest.fixture(scope="module")
def shapes_image(tmp_path_factory) -> Path:
    """A fresh Shapes-Ref image from the project's generator (seed 7, not one of the shipped ones)."""
    from ppcr.data.shapes.drawing import draw_image

    drawn = draw_image(np.random.default_rng([7, 1, 0]))
    path = tmp_path_factory.mktemp("demo") / "scene.png"
    Image.fromarray(drawn.pixels).save(path)
    return path


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")


def expected(reference: PPCRPredictor, image: Path, expressions: list[str]):
    reference.set_image(image)
    return reference.predict_batch(expressions)


# ----------------------------------------------------------------------------- the logic


def test_segment_matches_the_predictor_and_draws_mask_and_box(tiny_model_dir, reference, shapes_image):
    predictor = PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")
    result = demo.segment_expressions(predictor, str(shapes_image), "\n".join(EXPRESSIONS))
    wanted = expected(reference, shapes_image, EXPRESSIONS)
    rgb = np.asarray(load_image(shapes_image), dtype=np.float64)
    assert (result.width, result.height) == (rgb.shape[1], rgb.shape[0]) and result.encoded
    for number, (item, truth) in enumerate(zip(result.items, wanted, strict=True), start=1):
        np.testing.assert_array_equal(item.prediction.mask, truth.mask)
        assert item.prediction.box == pytest.approx(truth.box) and item.prediction.score == pytest.approx(truth.score)
        # The overlay: the mask tinted with TINT at TINT_ALPHA, the box outlined, nothing else changed.
        drawn = np.asarray(item.overlay, dtype=np.float64)
        tinted = (1 - demo.TINT_ALPHA) * rgb + demo.TINT_ALPHA * np.asarray(demo.TINT, dtype=np.float64)
        changed = np.any(drawn != rgb, axis=2)
        outline = np.all(drawn == demo.TINT, axis=2)
        inside = truth.mask & ~outline
        np.testing.assert_allclose(drawn[inside], np.rint(tinted[inside]), atol=0.5)
        assert not np.any(changed & ~truth.mask & ~outline)
        ys, xs = np.nonzero(outline)
        x1, y1, x2, y2 = truth.box
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() - x2) <= 1.5
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() - y2) <= 1.5
        row = result.table()[number - 1]
        assert row[:2] == [number, EXPRESSIONS[number - 1]]
        assert row[2:6] == pytest.approx(list(truth.box), abs=0.005)
        assert row[6] == pytest.approx(truth.score, abs=5e-5) and row[7] == truth.area
        rle = result.details()[number - 1]["mask"]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(decoded, truth.mask)
    json.dumps(result.details(), allow_nan=False)


def test_a_box_with_a_non_finite_corner_is_left_out_of_the_overlay_and_the_table():
    rgb = Image.new("RGB", (20, 10), (40, 40, 40))
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 3:8] = True
    broken = Prediction(mask, (float("nan"), 1.0, 15.0, 8.0), 0.5)
    drawn = np.asarray(demo.draw_overlay(rgb, broken))
    assert np.array_equal(drawn, np.asarray(demo.draw_overlay(rgb, Prediction(mask, None, 0.5))))
    assert not np.array_equal(drawn, np.asarray(demo.draw_overlay(rgb, Prediction(mask, (1.0, 1.0, 15.0, 8.0), 0.5))))
    item = demo.SegmentedExpression("x", broken, Image.fromarray(drawn))
    assert item.row(1) == [1, "x", None, None, None, None, 0.5, 15]


def test_one_encoding_per_image_and_reused_when_only_the_text_changes(tiny_model_dir, shapes_image, monkeypatch):
    predictor = PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")
    calls = []
    original = predictor.model.encode_images
    monkeypatch.setattr(predictor.model, "encode_images", lambda images: calls.append(1) or original(images))
    first = demo.segment_expressions(predictor, str(shapes_image), "a\nb\nc\n\n  d  ")
    assert [item.expression for item in first.items] == ["a", "b", "c", "d"] and len(calls) == 1
    second = demo.segment_expressions(predictor, str(shapes_image), "the red circle")
    assert len(calls) == 1 and not second.encoded and "reused" in second.status()
    other = np.zeros((20, 30, 3), np.uint8)
    third = demo.segment_expressions(predictor, other, "the red circle")
    assert len(calls) == 2 and third.encoded and third.items[0].prediction.mask.shape == (20, 30)


def test_too_long_expression_is_a_note_not_an_error(reference, shapes_image):
    result = demo.segment_expressions(reference, str(shapes_image), "a\n" + "big red circle " * 60)
    assert len(result.notes) == 1 and result.notes[0].startswith("expression 2 is longer than the model's context")
    assert "⚠ expression 2" in result.status()


def test_bad_text_and_images_are_one_line_errors(reference, shapes_image, tmp_path, monkeypatch):
    for text in (None, "", "  \n \n"):
        with pytest.raises(PPCRError, match="type at least one referring expression"):
            demo.segment_expressions(reference, str(shapes_image), text)
    with pytest.raises(PPCRError, match="17 expressions; at most 16"):
        demo.parse_expressions("\n".join(["x"] * 17))
    with pytest.raises(PPCRError, match="at most 4,000 are read"):
        demo.parse_expressions("x" * 4001)
    with pytest.raises(ImageError, match="no image: upload one or pick an example"):
        demo.segment_expressions(reference, None, "a")
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(ImageError, match="cannot read the image notes.png: not a recognised image format"):
        demo.read_image(str(not_image))
    # A huge image is refused from its header, before its pixels are decoded.
    monkeypatch.setattr(demo, "MAX_IMAGE_PIXELS", 100 * 100)
    decoded = []
    monkeypatch.setattr("ppcr.images.load_image", lambda source: decoded.append(source))
    with Image.open(shapes_image) as opened:
        width, height = opened.size
    with pytest.raises(ImageError, match=f"the image is {width}×{height} pixels .*; the demo takes at most 0.0 MP"):
        demo.read_image(str(shapes_image))
    with pytest.raises(ImageError, match="the image is 140×90 pixels"):
        demo.read_image(np.zeros((90, 140, 3), np.uint8))
    assert decoded == []


def test_shipped_examples_are_real_shapes_ref_images_and_expressions():
    from ppcr.data.shapes.drawing import draw_image
    from ppcr.data.shapes.expressions import sentence_referents
    from ppcr.data.shapes.writer import _annotations

    examples = shapes_examples()
    assert len(examples) == 4
    index = json.loads((examples[0].image.parent / "examples.json").read_text())
    assert (index["seed"], index["split"]) == (0, "val")
    for example in examples:
        drawn = draw_image(np.random.default_rng([0, example.image_id, 0]))  # what `ppcr prepare shapes` draws
        with Image.open(example.image) as shipped:
            np.testing.assert_array_equal(np.asarray(shipped.convert("RGB")), drawn.pixels)
        _, scene = _annotations(example.image_id, drawn)
        for expression in example.expressions:
            assert len(sentence_referents(expression, scene)) == 1, expression  # names exactly one object
        assert example.text.splitlines() == list(example.expressions)


def test_model_choices_list_model_default_and_run_checkpoints(tmp_path, tiny_model_dir, monkeypatch):
    runs = tmp_path / "runs"
    for folder in ("a/final", "group/b/final", "c/checkpoints/step_1", "d/final-not"):
        (runs / folder).mkdir(parents=True)
        (runs / folder / "config.json").write_text("{}")
    (runs / "e" / "final").mkdir(parents=True)  # no config.json: not a checkpoint
    assert [c.label for c in run_checkpoints(runs)] == ["runs/a/final", "runs/group/b/final"]
    monkeypatch.setattr(model_source, "DEFAULT_MODEL", tiny_model_dir)
    choices = model_choices("mine/model", runs)
    assert [c.source for c in choices] == [
        "mine/model", str(tiny_model_dir), str(runs / "a" / "final"), str(runs / "group" / "b" / "final")
    ]
    assert choices[1].label == f"embedded default ({tiny_model_dir.name})"
    # The default given again as --model is listed once.
    assert [c.source for c in model_choices(str(tiny_model_dir), None)] == [str(tiny_model_dir)]
    monkeypatch.setattr(model_source, "DEFAULT_MODEL", tmp_path / "not-installed")
    assert model_choices(None, tmp_path / "no-runs") == []


def test_session_loads_a_model_once_and_swaps_it_when_the_picker_changes(
    tiny_model_dir, tmp_path, shapes_image, reference
):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    session = DemoSession(device="cpu")
    first = session.predictor(str(tiny_model_dir))
    assert session.predictor(str(tiny_model_dir)) is first
    second = session.predictor(str(copy))
    assert second is not first and session.predictor(str(copy)) is second
    result = session.segment(str(copy), str(shapes_image), "a")
    np.testing.assert_array_equal(result.items[0].prediction.mask, expected(reference, shapes_image, ["a"])[0].mask)
    with pytest.raises(PPCRError, match="model directory not found"):
        session.segment(str(tmp_path / "missing"), str(shapes_image), "a")


# ----------------------------------------------------------------------------- the CLI


def test_serve_without_gradio_is_one_line_with_the_install_hint(capsys, monkeypatch):
    from ppcr_cli.main import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    monkeypatch.delitem(sys.modules, "ppcr.serving.app", raising=False)  # imported afresh, without it
    code = run_guarded(typer.main.get_command(app), ["serve", "--port", "7999"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and lines[0] == "error: ppcr serve needs gradio, which is not installed"
    assert lines[1].startswith("hint: pip install 'ppcr[demo]'") and len(lines) == 2


def test_help_imports_neither_gradio_nor_torch():
    code = (
        "import sys; sys.argv=['ppcr','serve','--help']\nimport ppcr_cli.main as m\ntry:\n    m.main()\n"
        "except SystemExit:\n    pass\nprint('gradio' in sys.modules, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ppcr serve" in result.stdout and result.stdout.strip().endswith("False False"), result.stdout + result.stderr


def test_bad_model_fails_before_the_server_starts(capsys, tmp_path):
    from ppcr_cli.main import app

    code = run_guarded(typer.main.get_command(app), ["serve", "--model", str(tmp_path / "nope"), "--port", "7999"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: model directory not found") and "Traceback" not in err


# ----------------------------------------------------------------------------- the real server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """``ppcr serve`` in a subprocess on a free port of 127.0.0.1; yields its URL."""
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio"), "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1"}
    env.pop("PPCR_DEBUG", None)
    log = open(root / "stderr.txt", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "ppcr_cli", "serve", "--model", str(tiny_model_dir), "--port", str(port),
         "--device", "cpu", "--runs", str(root / "runs")],
        stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=root,
    )
    deadline = time.monotonic() + 240
    url = None
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"on (http://127\.0\.0\.1:\d+/?)", (root / "stderr.txt").read_text())
        if found:
            url = found.group(1)
            break
        time.sleep(0.5)
    assert url is not None, (root / "stderr.txt").read_text()
    yield url, process, root / "stderr.txt"
    process.terminate()
    process.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


def test_server_returns_the_predictors_masks_boxes_scores_and_areas(client, server, reference, shapes_image):
    from gradio_client import handle_file

    gallery, table, details, status = client.predict(
        handle_file(str(shapes_image)), "\n".join(EXPRESSIONS), "", api_name="/segment"
    )
    wanted = expected(reference, shapes_image, EXPRESSIONS)
    rgb = load_image(shapes_image)
    assert len(gallery) == len(details) == len(table["data"]) == 2
    assert f"2 expressions on a {rgb.width}×{rgb.height} image (encoded once)" in status
    for number, (shown, row, detail, truth) in enumerate(zip(gallery, table["data"], details, wanted), start=1):
        assert shown["caption"] == f"{number}. {EXPRESSIONS[number - 1]}"
        with Image.open(shown["image"]) as image:  # PNG: lossless, so equal to the pixel
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(demo.draw_overlay(rgb, truth)))
        rle = detail["mask"]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(decoded, truth.mask)
        assert detail["box"] == pytest.approx(list(truth.box), abs=1e-4)
        assert row[2:6] == pytest.approx(list(truth.box), abs=0.005)
        assert row[6] == pytest.approx(truth.score, abs=5e-5) and row[7] == truth.area == detail["area"]


def test_server_shows_bad_input_as_one_line_messages(client, server, shapes_image, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    huge = tmp_path / "huge.png"
    Image.new("RGB", (5000, 4000), (200, 120, 40)).save(huge)
    not_image = tmp_path / "not-an-image.png"
    not_image.write_bytes(b"\x89PNG but not really")
    cases = [
        (None, "a", "", "no image: upload one or pick an example"),
        (handle_file(str(shapes_image)), "  \n ", "", "type at least one referring expression"),
        (handle_file(str(huge)), "a", "", "the image is 5000×4000 pixels (20.0 MP); the demo takes at most 16.8 MP"),
        (handle_file(str(not_image)), "a", "", "cannot read the image"),
        (handle_file(str(shapes_image)), "\n".join(["x"] * 17), "", "17 expressions; at most 16"),
        (handle_file(str(shapes_image)), "a", str(tmp_path / "no-model"), "model directory not found"),
    ]
    for image, text, model, message in cases:
        with pytest.raises(AppError) as caught:
            client.predict(image, text, model, api_name="/segment")
        shown = str(caught.value)
        assert message in shown and "Traceback" not in shown and "\n" not in shown, shown
    # The server is still serving, and its log has no traceback for those expected errors.
    gallery, *_ = client.predict(handle_file(str(shapes_image)), "a", "", api_name="/segment")
    assert len(gallery) == 1 and server[1].poll() is None
    assert "Traceback" not in server[2].read_text()

"""``ppcr predict``: the files it writes, what it prints, batch files, and bad input failing with
one line, exit 1 and nothing left behind (no output, no temporary)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import typer
from PIL import Image

from ppcr.images import PRED_COLOR, overlay
from ppcr.inference import model_source
from ppcr_cli.errors import run_guarded
from tests.cli_errors import assert_one_line_error


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    pixels = np.random.RandomState(0).randint(0, 256, (43, 61, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("PPCR_DEBUG", raising=False)


def ppcr(capsys, *args):
    """Run ``ppcr predict ARGS`` in this process (the error boundary included)."""
    from ppcr_cli.main import app

    code = run_guarded(typer.main.get_command(app), ["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(folder) -> list[str]:
    """Every file below ``folder``, hidden temporaries included."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def read_mask(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


# ------------------------------------------------------------------ what it writes and prints


def test_one_expression_writes_the_mask_at_the_image_size_and_reports_json(capsys, tmp_path, photo, tiny_model_dir):
    from ppcr.inference.predictor import PPCRPredictor

    mask_path = tmp_path / "out" / "mask.png"
    code, out, err = ppcr(capsys, photo, "the red circle", "-o", mask_path, "--model", tiny_model_dir, "--format", "json")
    assert code == 0, err
    assert files_under(tmp_path / "out") == ["mask.png"]
    pixels = read_mask(mask_path)
    assert pixels.shape == (43, 61) and set(np.unique(pixels)) <= {0, 255}

    summary = json.loads(out)
    assert (summary["width"], summary["height"]) == (61, 43)
    (row,) = summary["predictions"]
    assert row["expression"] == "the red circle" and row["mask"] == str(mask_path)
    assert row["area"] == int((pixels == 255).sum())

    reference = PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")
    reference.set_image(photo)
    expected = reference.predict("the red circle")
    np.testing.assert_array_equal(pixels == 255, expected.mask)
    np.testing.assert_allclose(row["box"], expected.box, atol=0.01)
    assert row["score"] == pytest.approx(expected.score, abs=1e-4)


def test_several_expressions_number_the_outputs_and_the_overlay_shows_mask_and_box(
    capsys, tmp_path, photo, tiny_model_dir
):
    out_dir = tmp_path / "out"
    code, out, err = ppcr(
        capsys, photo, "red circle", "blue square", "-o", out_dir / "mask.png",
        "--overlay", out_dir / "view.png", "--model", tiny_model_dir, "--format", "json",
    )
    assert code == 0, err
    assert files_under(out_dir) == ["mask-1.png", "mask-2.png", "view-1.png", "view-2.png"]
    rows = json.loads(out)["predictions"]
    assert [r["expression"] for r in rows] == ["red circle", "blue square"]
    assert [r["mask"] for r in rows] == [str(out_dir / "mask-1.png"), str(out_dir / "mask-2.png")]

    for number, row in enumerate(rows, start=1):
        mask = read_mask(out_dir / f"mask-{number}.png") == 255
        with Image.open(out_dir / f"view-{number}.png") as drawn:
            drawn = np.asarray(drawn.convert("RGB"))
        assert drawn.shape == (43, 61, 3)
        tinted_only = np.asarray(overlay(photo, mask))  # the mask's tint, no box
        # The mask is tinted where it is, and the box outline is the only other change.
        differs = np.any(drawn != tinted_only, axis=2)
        ys, xs = np.nonzero(differs)
        assert len(xs) > 0 and np.all(drawn[differs] == PRED_COLOR)
        x1, y1, x2, y2 = row["box"]
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() - x2) <= 1.5
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() - y2) <= 1.5
        if mask.any():
            plain = np.asarray(Image.open(photo).convert("RGB"))
            assert np.any(tinted_only[mask] != plain[mask])


def test_text_output_names_each_expression(capsys, photo, tiny_model_dir):
    code, out, err = ppcr(capsys, photo, "red circle", "the {weird} [bold]one[/bold]", "--model", tiny_model_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{photo} (61×43)"
    assert lines[1].startswith('  1. "red circle"  score ') and " px  area " in lines[1]
    assert lines[2].startswith('  2. "the {weird} [bold]one[/bold]"')


def test_exif_rotated_jpeg_mask_has_the_upright_size(capsys, tmp_path, tiny_model_dir):
    stored = Image.fromarray(np.random.RandomState(4).randint(0, 256, (30, 50, 3)).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display: upright 30 wide × 50 high
    photo = tmp_path / "phone.jpg"
    stored.save(photo, exif=exif.tobytes())
    code, _, err = ppcr(capsys, photo, "the red circle", "-o", tmp_path / "m.png", "--overlay",
                        tmp_path / "o.jpg", "--model", tiny_model_dir)
    assert code == 0, err
    assert read_mask(tmp_path / "m.png").shape == (50, 30)
    with Image.open(tmp_path / "o.jpg") as drawn:
        assert drawn.size == (30, 50)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "CMYK"])
def test_each_image_mode_runs(capsys, tmp_path, tiny_model_dir, mode):
    rgb = Image.fromarray(np.random.RandomState(5).randint(0, 256, (26, 39, 3)).astype(np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.random.RandomState(6).randint(0, 65536, (26, 39)).astype(np.uint16))
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("in.jpg" if mode == "CMYK" else "in.png")
    image.save(path)
    code, _, err = ppcr(capsys, path, "a shape", "-o", tmp_path / "m.png", "--model", tiny_model_dir)
    assert code == 0, err
    assert read_mask(tmp_path / "m.png").shape == (26, 39)


def test_too_long_expression_warns_on_one_line_and_still_writes(capsys, tmp_path, photo, tiny_model_dir):
    long_text = " ".join(["the big red circle"] * 40)
    code, out, err = ppcr(capsys, photo, long_text, "-o", tmp_path / "m.png", "--model", tiny_model_dir,
                          "--format", "json")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: expression 1 is longer than the model's context")
    row = json.loads(out)["predictions"][0]
    assert row["truncated"] and len(row["read_as"].split()) < 160 and row["expression"] == long_text
    assert (tmp_path / "m.png").is_file()


def test_default_model_is_used_without_model_option(capsys, tmp_path, photo, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(model_source, "DEFAULT_MODEL", tiny_model_dir)
    code, _, err = ppcr(capsys, photo, "red circle", "-o", tmp_path / "m.png")
    assert code == 0, err
    monkeypatch.setattr(model_source, "DEFAULT_MODEL", tmp_path / "not-installed")
    code, out, err = ppcr(capsys, photo, "red circle", "-o", tmp_path / "n.png")
    assert_one_line_error(code, out, err, "no default model is installed; pass --model DIR")
    assert not (tmp_path / "n.png").exists()


# ------------------------------------------------------------------ batch files


def test_batch_file_relative_paths_one_encoding_per_image(capsys, tmp_path, photo, tiny_model_dir, monkeypatch):
    from ppcr.modeling.model import PPCRModel

    jobs = tmp_path / "jobs"
    (jobs / "imgs").mkdir(parents=True)
    shutil.copy(photo, jobs / "imgs" / "a.png")
    Image.new("RGB", (20, 33), (10, 200, 30)).save(jobs / "imgs" / "b.jpg")
    lines = [
        {"image": "imgs/a.png", "expressions": ["red circle", "blue square"], "mask": "out/a.png"},
        {"image": str(jobs / "imgs" / "b.jpg"), "expressions": ["green thing"], "overlay": "out/b-view.jpg"},
    ]
    batch = jobs / "batch.jsonl"
    batch.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")

    calls = {"encode": 0}
    original = PPCRModel.encode_images

    def counting(self, inputs):
        calls["encode"] += 1
        return original(self, inputs)

    monkeypatch.setattr(PPCRModel, "encode_images", counting)
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    code, out, err = ppcr(capsys, "--batch", batch, "--model", tiny_model_dir, "--format", "json")
    assert code == 0, err
    assert calls["encode"] == 2  # two images, three expressions
    assert files_under(jobs / "out") == ["a-1.png", "a-2.png", "b-view.jpg"]
    summaries = [json.loads(line) for line in out.splitlines()]
    assert [s["image"] for s in summaries] == [str(jobs / "imgs" / "a.png"), str(jobs / "imgs" / "b.jpg")]
    assert [len(s["predictions"]) for s in summaries] == [2, 1]
    assert (summaries[1]["width"], summaries[1]["height"]) == (20, 33)
    assert read_mask(jobs / "out" / "a-2.png").shape == (43, 61)


@pytest.mark.parametrize(
    "second_line, message",
    [
        ('{"image": "missing.png", "expressions": ["a"], "mask": "out/2.png"}', "line 2: image not found"),
        ('{"image": "a.png", "expressions": ["  "], "mask": "out/2.png"}', "line 2: empty referring expression"),
        ('{"image": "a.png", "expressions": "a red circle"}', 'line 2: "expressions" must be a list'),
        ('{"image": "a.png", "expresions": ["a"]}', "line 2: unknown key 'expresions'"),
        ('{"image": "a.png", "expressions": ["a"]', "line 2: not valid JSON"),
        ('{"image": "a.png", "expressions": ["a"], "mask": "out/1.png"}', "same file"),
    ],
)
def test_bad_batch_line_fails_before_anything_is_written(capsys, tmp_path, photo, tiny_model_dir, second_line, message):
    shutil.copy(photo, tmp_path / "a.png")
    batch = tmp_path / "batch.jsonl"
    first = '{"image": "a.png", "expressions": ["red circle"], "mask": "out/1.png"}'
    batch.write_text(first + "\n" + second_line + "\n")
    code, out, err = ppcr(capsys, "--batch", batch, "--model", tiny_model_dir)
    assert_one_line_error(code, out, err, message)
    assert files_under(tmp_path / "out") == []


def test_batch_and_image_together_is_an_error(capsys, tmp_path, photo, tiny_model_dir):
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"image": "x.png", "expressions": ["a"]}\n')
    assert_one_line_error(*ppcr(capsys, photo, "a", "--batch", batch, "--model", tiny_model_dir), "--batch replaces")
    assert_one_line_error(*ppcr(capsys, "--batch", batch, "-o", tmp_path / "m.png"), "cannot be used with --batch")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert_one_line_error(*ppcr(capsys, "--batch", empty, "--model", tiny_model_dir), "holds no jobs")


# ------------------------------------------------------------------ bad input


def test_bad_images(capsys, tmp_path, tiny_model_dir):
    out_dir = tmp_path / "out"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    truncated = tmp_path / "truncated.png"
    buffer = tmp_path / "full.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer)
    truncated.write_bytes(buffer.read_bytes()[:60])
    for image, text in ((tmp_path / "missing.png", "image not found"), (tmp_path, "is a directory"),
                        (corrupt, "cannot read image"), (truncated, "cannot read image")):
        code, out, err = ppcr(capsys, image, "red circle", "-o", out_dir / "m.png", "--overlay",
                              out_dir / "o.png", "--model", tiny_model_dir)
        assert_one_line_error(code, out, err, text)
        assert files_under(out_dir) == []


@pytest.mark.parametrize("expressions", [[""], ["   "], ["red circle", " \t "]])
def test_empty_expression(capsys, tmp_path, photo, tiny_model_dir, expressions):
    code, out, err = ppcr(capsys, photo, *expressions, "-o", tmp_path / "out" / "m.png", "--model", tiny_model_dir)
    assert_one_line_error(code, out, err, "empty referring expression")
    assert files_under(tmp_path / "out") == []


def test_no_expression(capsys, tmp_path, photo, tiny_model_dir):
    assert_one_line_error(*ppcr(capsys, photo, "-o", tmp_path / "m.png", "--model", tiny_model_dir),
                          "no referring expression given")


def test_unwritable_outputs_fail_before_the_model_runs(capsys, tmp_path, photo, monkeypatch):
    from ppcr.inference import predictor

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the output cannot be written")

    monkeypatch.setattr(predictor.PPCRPredictor, "from_pretrained", must_not_load)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "a-dir").mkdir()
    cases = [
        (["-o", tmp_path / "a-dir"], "is a directory"),
        (["-o", a_file / "m.png"], "is not a directory"),
        (["-o", a_file / "deeper" / "m.png"], "is not a directory"),
        (["-o", tmp_path / "m.jpg"], "must end in .png"),
        (["--overlay", tmp_path / "o.xyz"], "no image suffix"),
        (["-o", tmp_path / "same.png", "--overlay", tmp_path / "same.png"], "same file"),
        (["--overlay", photo], "overwrite the input image"),
    ]
    for options, text in cases:
        assert_one_line_error(*ppcr(capsys, photo, "red circle", *options), text)
    # Tests run as root here, where every folder is writable: simulate a read-only one.
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK)
    assert_one_line_error(*ppcr(capsys, photo, "red circle", "-o", tmp_path / "new" / "m.png"), "is not writable")
    monkeypatch.undo()
    assert files_under(tmp_path) == ["a-file"]


def test_write_failure_leaves_no_file_and_no_temporary(capsys, tmp_path, photo, tiny_model_dir, monkeypatch):
    """The second overlay fails mid-write: neither mask nor the first overlay may appear."""

    real_overlay = overlay
    calls = {"n": 0}

    def failing_overlay(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_overlay(*args, **kwargs)

    monkeypatch.setattr("ppcr.images.overlay", failing_overlay)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = ppcr(capsys, photo, "red circle", "blue square", "-o", out_dir / "m.png",
                          "--overlay", out_dir / "o.png", "--model", tiny_model_dir)
    assert calls["n"] == 2
    assert_one_line_error(code, out, err, "No space left on device")
    assert files_under(out_dir) == []


@pytest.mark.parametrize(
    "damage, text",
    [("delete:heads.safetensors", "heads.safetensors"),
     ("truncate:base/llava/model.safetensors", "cannot load"),
     ("truncate:heads.safetensors", "heads.safetensors"),
     ("delete:config.json", "config.json")],
)
def test_damaged_model_directory(capsys, tmp_path, photo, damaged_model_copy, damage, text):
    copy = damaged_model_copy(damage)
    code, out, err = ppcr(capsys, photo, "red circle", "-o", tmp_path / "out" / "m.png", "--model", copy)
    assert_one_line_error(code, out, err, text)
    assert files_under(tmp_path / "out") == []


def test_model_option_errors(capsys, tmp_path, photo):
    assert_one_line_error(*ppcr(capsys, photo, "a", "--model", tmp_path / "nope"), "model directory not found")
    assert_one_line_error(*ppcr(capsys, photo, "a", "--dtype", "fp16", "--device", "cpu"), "fp16 is not supported")
    assert_one_line_error(*ppcr(capsys, photo, "a", "--dtype", "double"), "unknown dtype")
    assert_one_line_error(*ppcr(capsys, photo, "a", "--device", "tpu"), "unknown device")


def test_usage_errors_exit_2(capsys, photo):
    assert_one_line_error(*ppcr(capsys, photo, "a", "--format", "xml"), "'xml' is not one of text, json", 2)
    assert_one_line_error(*ppcr(capsys, "--format", "json"), "missing IMAGE", 2)


# ------------------------------------------------------------------ the real command


@pytest.mark.slow
def test_installed_command_end_to_end(tmp_path, photo, tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if k != "PPCR_DEBUG"}
    command = [sys.executable, "-m", "ppcr_cli", "predict", str(photo), "red circle", "-o", str(tmp_path / "m.png"),
               "--model", str(tiny_model_dir), "--device", "cpu", "--format", "json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"][0]["mask"] == str(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").shape == (43, 61)

    (tmp_path / "broken").mkdir()
    result = subprocess.run([*command[:-6], "--model", str(tmp_path / "broken")], capture_output=True, text=True,
                            env=env, timeout=300)
    assert_one_line_error(result.returncode, result.stdout, result.stderr, "config.json")


def test_predict_module_does_not_import_torch():
    code = "import sys, ppcr_cli.predict, ppcr.inference.batch_file, ppcr.utils.device; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr

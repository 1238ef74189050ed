"""Hostile and careless output paths and model outputs (issue 23, points 1, 2, 8, 9, 14, 15).

Each case keeps its files small and finishes in a few seconds: where the point is "refused
before any work", the model loader is replaced by one that fails the test, so the old behaviour
(running the whole job and then overwriting an input) shows up as a failure at once instead of
a long run. Nothing here needs a GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
import typer
from PIL import Image

from ppcr_cli.errors import run_guarded
from tests.cli_errors import assert_one_line_error


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("PPCR_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def ppcr(capsys, *args):
    """Run ``ppcr ARGS`` in this process (the error boundary included): (exit code, stdout, stderr)."""
    from ppcr_cli.main import app

    code = run_guarded(typer.main.get_command(app), [*map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def picture(path, seed=0, size=(61, 43)):
    width, height = size
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def files_under(folder) -> list[str]:
    """Every file and link below ``folder`` (hidden temporaries included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: these cases must be refused before that."""
    from ppcr.inference import predictor

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the outputs are unsafe")

    monkeypatch.setattr(predictor.PPCRPredictor, "from_pretrained", must_not_load)
    monkeypatch.setattr("ppcr_cli.eval._load_model", must_not_load)


# ------------------------------------------------------------------ 1: batch outputs vs. inputs


@pytest.mark.parametrize("key", ["mask", "overlay"])
def test_batch_output_naming_another_lines_input_is_refused_before_anything_runs(capsys, tmp_path, no_model_load, key):
    first, second = picture(tmp_path / "a.png", 1), picture(tmp_path / "b.png", 2)
    before = second.read_bytes()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"image": "a.png", "expressions": ["red circle"], key: "b.png"}) + "\n"
        + json.dumps({"image": "b.png", "expressions": ["blue square"]}) + "\n"
    )
    lines = assert_one_line_error(*ppcr(capsys, "predict", "--batch", jobs), "jobs.jsonl line 1")
    assert "b.png" in lines[0] and "input image" in lines[0]
    assert second.read_bytes() == before and first.is_file()
    assert files_under(tmp_path) == ["a.png", "b.png", "jobs.jsonl"]


def test_batch_outputs_colliding_through_a_linked_folder_are_refused(capsys, tmp_path, no_model_load):
    picture(tmp_path / "a.png", 1)
    picture(tmp_path / "b.png", 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "same-out").symlink_to(tmp_path / "out", target_is_directory=True)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"image": "a.png", "expressions": ["x"], "mask": "out/m.png"}) + "\n"
        + json.dumps({"image": "b.png", "expressions": ["y"], "mask": "same-out/m.png"}) + "\n"
    )
    assert_one_line_error(*ppcr(capsys, "predict", "--batch", jobs), "same file")
    assert not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------ 2: the same file by another name


def test_input_reached_through_a_symlink_is_not_overwritten_by_its_target(capsys, tmp_path, no_model_load):
    real = picture(tmp_path / "a.png", 1)
    before = real.read_bytes()
    (tmp_path / "link.png").symlink_to(real)
    for option in ("-o", "--overlay"):
        assert_one_line_error(*ppcr(capsys, "predict", tmp_path / "link.png", "x", option, real), "input image")
    # And the other way round: the output is a link to the input, or a hard link of it.
    assert_one_line_error(*ppcr(capsys, "predict", real, "x", "-o", tmp_path / "link.png"), "input image")
    os.link(real, tmp_path / "hard.png")
    assert_one_line_error(*ppcr(capsys, "predict", tmp_path / "hard.png", "x", "-o", real), "input image")
    # A folder reached through a link names the same file too.
    (tmp_path / "here").symlink_to(tmp_path, target_is_directory=True)
    assert_one_line_error(*ppcr(capsys, "predict", real, "x", "--overlay", tmp_path / "here" / "a.png"), "input image")
    assert real.read_bytes() == before


def test_batch_input_through_a_symlink_is_protected_too(capsys, tmp_path, no_model_load):
    real = picture(tmp_path / "a.png", 1)
    (tmp_path / "link.png").symlink_to(real)
    picture(tmp_path / "b.png", 2)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"image": "b.png", "expressions": ["x"], "mask": "a.png"}) + "\n"
        + json.dumps({"image": "link.png", "expressions": ["y"]}) + "\n"
    )
    assert_one_line_error(*ppcr(capsys, "predict", "--batch", jobs), "input image")


@pytest.fixture
def eval_args(small_shapes_root):
    def make(model, out):
        return ["eval", "--model", model, "--dataset", "shapes", "--split", "val",
                "--data-root", small_shapes_root, "--out", out, "--device", "cpu"]

    return make


def test_eval_out_that_would_replace_the_model_folder_is_refused(capsys, tmp_path, tiny_model_dir, eval_args,
                                                                 no_model_load):
    """``--out`` such that OUT/shapes_val is the model (here reached through a symlink): the
    evaluation would replace that folder with its results."""
    model = tmp_path / "shapes_val"
    shutil.copytree(tiny_model_dir, model)
    (tmp_path / "link").symlink_to(model, target_is_directory=True)
    lines = assert_one_line_error(*ppcr(capsys, *eval_args(tmp_path / "link", tmp_path)), "would replace")
    assert str(tmp_path / "shapes_val") in lines[0]
    assert (model / "config.json").is_file()


def test_eval_out_that_would_replace_the_images_folder_is_refused(capsys, tmp_path, small_shapes_root, tiny_model_dir,
                                                                  eval_args, no_model_load):
    images = tmp_path / "results" / "shapes_val"
    shutil.copytree(small_shapes_root / "images" / "shapes", images)
    args = [*eval_args(tiny_model_dir, tmp_path / "results"), "--images", images]
    assert_one_line_error(*ppcr(capsys, *args), "would replace")
    assert any(images.iterdir())


# ------------------------------------------------------------------ 8: eval outputs checked first


def test_eval_out_that_is_a_file_fails_before_the_model_loads(capsys, tmp_path, tiny_model_dir, eval_args,
                                                              no_model_load):
    a_file = tmp_path / "results.json"
    a_file.write_text("{}")
    assert_one_line_error(*ppcr(capsys, *eval_args(tiny_model_dir, a_file)), "is a file")
    assert_one_line_error(*ppcr(capsys, *eval_args(tiny_model_dir, a_file / "deeper")), "is not a directory")
    assert a_file.read_text() == "{}"


def test_eval_out_in_a_read_only_place_fails_before_the_model_loads(capsys, tmp_path, tiny_model_dir, eval_args,
                                                                    no_model_load, monkeypatch):
    # Tests run as root here, where every folder is writable: simulate a read-only one.
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK)
    assert_one_line_error(*ppcr(capsys, *eval_args(tiny_model_dir, tmp_path / "new")), "is not writable")


# ------------------------------------------------------------------ 9: non-finite boxes


@pytest.fixture(scope="module")
def nan_box_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with a box head whose weights are NaN: every predicted box is NaN."""
    import torch
    from safetensors.torch import load_file, save_file

    copy = tmp_path_factory.mktemp("nan-model") / "model"
    shutil.copytree(tiny_model_dir, copy)
    heads = load_file(str(copy / "heads.safetensors"))
    for name in heads:
        if name.startswith("box_head."):
            heads[name] = torch.full_like(heads[name], float("nan"))
    save_file(heads, str(copy / "heads.safetensors"), metadata={"format": "pt"})
    return copy


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_box_is_json_null_with_a_warning(capsys, tmp_path, nan_box_model):
    photo = picture(tmp_path / "a.png")
    code, out, err = ppcr(capsys, "predict", photo, "red circle", "--model", nan_box_model, "--format", "json",
                          "--overlay", tmp_path / "o.png")
    assert code == 0, err
    (row,) = _strict_json(out)["predictions"]
    assert row["box"] is None
    warned = [line for line in err.splitlines() if line.strip()]
    assert len(warned) == 1 and warned[0].startswith("warning:") and "not finite" in warned[0], err
    assert (tmp_path / "o.png").is_file()

    code, out, err = ppcr(capsys, "predict", photo, "red circle", "--model", nan_box_model)
    assert code == 0, err
    assert "box not finite" in out and "(nan" not in out
    assert any(line.startswith("warning:") and "not finite" in line for line in err.splitlines()), err


def test_json_helper_turns_every_non_finite_number_into_null():
    from ppcr.strict_json import strict_json_dumps, without_non_finite

    value, where = without_non_finite({"a": [1.0, float("nan")], "b": {"c": float("-inf")}, "d": 2, "e": "NaN"})
    assert value == {"a": [1.0, None], "b": {"c": None}, "d": 2, "e": "NaN"}
    assert where == ["a[1]", "b.c"]
    with pytest.raises(ValueError):
        strict_json_dumps({"x": float("nan")})


# ------------------------------------------------------------------ 14: very big images


def _reference_overlay(image, mask, gt_mask, alpha=0.5):
    """The overlay's documented pixel rule, computed the plain way (float copy of everything)."""
    from ppcr.images import GT_COLOR, PRED_COLOR

    pixels = np.asarray(image, dtype=np.float32).copy()
    pixels[mask] = (1.0 - alpha) * pixels[mask] + alpha * np.asarray(PRED_COLOR, dtype=np.float32)
    padded = np.pad(gt_mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & gt_mask
    pixels[gt_mask & ~interior] = GT_COLOR
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def test_overlay_of_a_big_image_allocates_no_full_size_float_copy():
    """Drawing must not hold float copies of the whole image (12000×9000 peaked at 6 GB): numpy
    may allocate at most about one byte per pixel (a bool mask) while drawing. PIL's own
    uint8 copy is not counted by tracemalloc and is allowed."""
    from ppcr.images import overlay

    height, width = 1500, 2000
    rng = np.random.RandomState(3)
    image = Image.fromarray(rng.randint(0, 256, (height, width, 3)).astype(np.uint8))
    yy, xx = np.mgrid[:height, :width]
    mask = (yy - 700) ** 2 + (xx - 900) ** 2 < 600**2
    gt_mask = (abs(yy - 800) < 450) & (abs(xx - 1100) < 700)
    tracemalloc.start()
    try:
        drawn = overlay(image, mask, box_xyxy=(300, 100, 1500, 1300), gt_mask=gt_mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * height * width, f"overlay peaked at {peak / 1e6:.1f} MB of numpy/Python memory"
    expected = _reference_overlay(image, mask, gt_mask)
    result = np.asarray(drawn)
    inside_box = np.zeros((height, width), bool)  # the box outline is drawn on top; compare elsewhere
    line = max(1, round(min(width, height) / 200))
    inside_box[100 - line : 1300 + line + 1, 300 - line : 1500 + line + 1] = True
    inside_box[100 + line : 1300 - line + 1, 300 + line : 1500 - line + 1] = False
    np.testing.assert_array_equal(result[~inside_box], expected[~inside_box])


def test_eval_panel_of_a_big_image_is_drawn_at_a_bounded_size():
    from ppcr.evaluation.render import GAP, MAX_TILE_SIDE, TEXT_ROW, PanelInputs, render_panel

    height, width = 1200, 3000  # longer side 3000 → tiles of 1024×410
    image = Image.new("RGB", (width, height), (90, 90, 90))
    gt = np.zeros((height, width), bool)
    gt[300:900, 600:1800] = True
    panel = render_panel(PanelInputs(image, gt, gt.copy(), (600, 300, 1800, 900), (600, 300, 1800, 900), "x", 1.0))
    tile_height = round(height * MAX_TILE_SIDE / width)
    assert panel.size == (4 * MAX_TILE_SIDE + 3 * GAP, tile_height + 2 * TEXT_ROW)
    # The ground-truth box tile (third) is outlined where the scaled box is.
    left = 2 * (MAX_TILE_SIDE + GAP)
    third = np.asarray(panel.crop((left, TEXT_ROW, left + MAX_TILE_SIDE, TEXT_ROW + tile_height)))
    from ppcr.images import GT_COLOR

    ys, xs = np.nonzero(np.all(third == GT_COLOR, axis=2))
    assert abs(xs.min() - 600 * MAX_TILE_SIDE / width) <= 3 and abs(xs.max() - 1800 * MAX_TILE_SIDE / width) <= 3
    assert abs(ys.min() - 300 * MAX_TILE_SIDE / width) <= 3 and abs(ys.max() - 900 * MAX_TILE_SIDE / width) <= 3


def test_big_image_warning_is_one_clean_line_and_over_the_hard_limit_a_clear_error(
    capsys, tmp_path, tiny_model_dir, monkeypatch
):
    photo = picture(tmp_path / "a.png")  # 61×43 = 2,623 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)  # warn above 2,000, refuse above 4,000
    code, out, err = ppcr(capsys, "predict", photo, "red circle", "--model", tiny_model_dir,
                          "-o", tmp_path / "m.png")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "61×43" in lines[0], err
    assert "DecompressionBomb" not in err and "warnings.warn" not in err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    lines = assert_one_line_error(*ppcr(capsys, "predict", photo, "x", "--model", tiny_model_dir), "too large")
    assert "DecompressionBomb" not in "".join(lines)


# ------------------------------------------------------------------ 15: cosmetics


def test_help_texts_keep_their_angle_bracket_placeholders(capsys):
    code, out, _ = ppcr(capsys, "eval", "-h")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    assert "else /eval" not in text and "else MODEL/eval" in text
    code, out, _ = ppcr(capsys, "prepare", "weights", "-h")
    assert code == 0
    assert "<im_start><image><im_end>" in out.replace("│", " ").replace(" ", "")


def test_error_messages_keep_square_brackets(capsys, tmp_path, tiny_model_dir):
    """``heads.safetensors [box_head] does not match`` printed as ``heads.safetensors  does not
    match``: the CLI read ``[box_head]`` as rich markup."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    heads = load_file(str(copy / "heads.safetensors"))
    name = next(k for k in heads if k.startswith("box_head.") and k.endswith("bias"))
    heads[name] = heads[name][:-1].clone()
    save_file(heads, str(copy / "heads.safetensors"), metadata={"format": "pt"})
    photo = picture(tmp_path / "a.png")
    lines = assert_one_line_error(*ppcr(capsys, "predict", photo, "x", "--model", copy), "does not match")
    assert "heads.safetensors [box_head] does not match" in lines[0]


def test_a_run_folder_as_model_points_at_its_final_checkpoint(capsys, tmp_path, tiny_model_dir, eval_args):
    run = tmp_path / "runs" / "X"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("{}\n")
    (run / "final").symlink_to(tiny_model_dir, target_is_directory=True)
    photo = picture(tmp_path / "a.png")
    for args in (["predict", photo, "x", "--model", run], eval_args(run, tmp_path / "out")):
        lines = assert_one_line_error(*ppcr(capsys, *args), "")
        assert len(lines) == 2 and str(run / "final") in lines[1], lines


def test_torchscript_pth_is_a_clear_error_without_torchs_warning(tmp_path):
    import torch

    from ppcr.errors import CheckpointError
    from ppcr.modeling.sam import read_sam_state_dict
    from ppcr.weights.shards import iter_tensors

    path = tmp_path / "sam.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    for read in (read_sam_state_dict, lambda p: list(iter_tensors(p))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(CheckpointError, match="TorchScript") as error:
                read(path)
        assert not caught, [str(w.message) for w in caught]
        assert "weights_only" not in str(error.value)


def test_library_warnings_print_as_one_line_in_the_cli():
    """Any warning raised while a command runs is one ``warning:`` line, not Python's two-line
    ``file:line: Category: message`` + source form."""
    code = (
        "import warnings, typer, sys\n"
        "from ppcr_cli.errors import run_guarded\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def go():\n"
        "    warnings.warn('something odd\\nsecond line', UserWarning)\n"
        "sys.exit(run_guarded(typer.main.get_command(app), []))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PPCR_DEBUG"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "warning: something odd", result.stderr

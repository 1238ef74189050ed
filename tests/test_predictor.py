"""PPCRPredictor: encode once / predict many, results in the image's pixel frame, every input mode,
device and dtype resolution, and where the weights come from (default, directory, hub cache)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ppcr.errors import CheckpointError, DataError, PPCRError
from ppcr.inference import model_source
from ppcr.inference.predictor import ExpressionTruncatedWarning, PPCRPredictor, Prediction
from ppcr.utils.device import preferred_dtype, resolve_device, resolve_dtype

EXPRESSIONS = ["red circle", "the small blue square on the left of the green triangle", "a", "big green star at the top"]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture
def sharp(tiny_model_dir):
    """A fresh predictor whose semantic prompt is amplified, so that a random model's masks
    visibly depend on the expression (otherwise every expression gives nearly the same mask)."""
    fresh = PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")
    with torch.no_grad():
        fresh.model.semantic_proj[2].weight.mul_(50)
    return fresh


def _image(height=37, width=53, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)


# ------------------------------------------------------------------ the API


def test_lazy_export():
    import ppcr

    assert ppcr.PPCRPredictor is PPCRPredictor


def test_predict_returns_mask_box_score_in_the_image_frame(predictor):
    predictor.set_image(_image(37, 53))
    result = predictor.predict("the red circle")
    assert isinstance(result, Prediction)
    assert result.mask.dtype == np.bool_ and result.mask.shape == (37, 53)
    assert predictor.image_size == (37, 53)
    x1, y1, x2, y2 = result.box
    assert all(isinstance(v, float) for v in result.box)
    assert 0 <= x1 <= x2 <= 53 and 0 <= y1 <= y2 <= 37
    assert isinstance(result.score, float) and 0.0 <= result.score <= 1.0
    assert result.area == int(result.mask.sum())
    assert result.expression == "the red circle" and not result.truncated


def test_results_equal_the_models_own_output(predictor):
    """Mask = logits > 0 at original size (not transposed); box = normalised box × (W, H)."""
    image = _image(41, 66, seed=3)
    predictor.set_image(image)
    ours = predictor.predict_batch(EXPRESSIONS[:2])

    model, processor = predictor.model, predictor.processor
    features = model.encode_images(processor.images([image]))
    direct = model.segment(features, processor.texts(EXPRESSIONS[:2], [0, 0]))
    for b, result in enumerate(ours):
        np.testing.assert_array_equal(result.mask, (direct.mask_logits[b] > 0).numpy())
        nx1, ny1, nx2, ny2 = direct.boxes[b].tolist()
        expected = (min(nx1, nx2) * 66, min(ny1, ny2) * 41, max(nx1, nx2) * 66, max(ny1, ny2) * 41)
        np.testing.assert_allclose(result.box, expected, rtol=1e-6)
        assert result.score == pytest.approx(float(direct.scores[b]))


def test_image_is_encoded_once_for_many_predicts(tiny_model_dir, monkeypatch):
    fresh = PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")
    calls = {"encode": 0}
    original = fresh.model.encode_images

    def counting(inputs):
        calls["encode"] += 1
        return original(inputs)

    monkeypatch.setattr(fresh.model, "encode_images", counting)
    fresh.set_image(_image())
    assert calls["encode"] == 1
    for expression in EXPRESSIONS:
        fresh.predict(expression)
    fresh.predict_batch(EXPRESSIONS)
    assert calls["encode"] == 1
    fresh.reset_image()
    fresh.set_image(_image(seed=1))
    fresh.predict("a")
    assert calls["encode"] == 2


def test_predict_batch_is_one_model_call_and_matches_single_predicts(sharp, monkeypatch):
    sharp.set_image(_image(40, 60, seed=5))
    singles = [sharp.predict(e) for e in EXPRESSIONS]
    # The amplified model must tell the expressions apart, or this test could not catch a mix-up.
    assert len({r.mask.tobytes() for r in singles}) == len(EXPRESSIONS)

    calls = {"segment": 0}
    original = sharp.model.segment

    def counting(*args, **kwargs):
        calls["segment"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(sharp.model, "segment", counting)
    batched = sharp.predict_batch(EXPRESSIONS)
    assert calls["segment"] == 1
    for single, together in zip(singles, batched):
        np.testing.assert_array_equal(single.mask, together.mask)
        np.testing.assert_allclose(single.box, together.box, atol=1e-4)
        assert single.score == pytest.approx(together.score, abs=1e-5)
    chunked = sharp.predict_batch(EXPRESSIONS, batch_size=3)
    assert calls["segment"] == 3
    assert [r.mask.tobytes() for r in chunked] == [r.mask.tobytes() for r in singles]
    assert sharp.predict_batch([]) == []


def test_predict_before_set_image_or_after_reset_is_an_error(tiny_model_dir):
    fresh = PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")
    with pytest.raises(PPCRError, match="no image is set"):
        fresh.predict("a red circle")
    fresh.set_image(_image())
    fresh.predict("a red circle")
    fresh.reset_image()
    assert fresh.image is None and fresh.image_size is None
    with pytest.raises(PPCRError, match="no image is set"):
        fresh.predict_batch(["a red circle"])


def test_bad_expressions(predictor):
    predictor.set_image(_image())
    for bad in ("", "   ", "\t\n"):
        with pytest.raises(DataError, match="empty referring expression"):
            predictor.predict(bad)
    with pytest.raises(PPCRError, match="predict_batch takes a list"):
        predictor.predict_batch("red circle")
    with pytest.raises(PPCRError, match="one expression"):
        predictor.predict(["red circle"])


def test_too_long_expression_is_shortened_with_a_warning(predictor):
    predictor.set_image(_image())
    long_text = " ".join(["the big red circle"] * 40)
    with pytest.warns(ExpressionTruncatedWarning, match="shortened"):
        result = predictor.predict(long_text)
    assert result.truncated
    kept = result.expression.split()
    assert 0 < len(kept) < 160 and long_text.split()[: len(kept)] == kept
    # What was kept fits as it is: the processor feeds exactly this text to the model.
    assert predictor.fit_expression(result.expression) == (result.expression, False)
    full, fitted = (predictor.processor.texts([text], [0]) for text in (long_text, result.expression))
    for stage in ("semantic", "spatial"):
        assert getattr(full, stage).input_ids.tolist() == getattr(fitted, stage).input_ids.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not predictor.predict("the big red circle").truncated


@pytest.mark.parametrize("overrides", [["model.spatial_prompt=none"], ["model.spatial_prompt=expression"],
                                       ["model.spatial_head=attn"]])
def test_other_variants(overrides, tmp_path):
    """Without a spatial stage there is no box (None, and the CLI prints null); other variants
    still give a pixel box; a too-long expression is cut for the expression-bearing spatial prompt too."""
    from ppcr.config.loading import load_recipe
    from ppcr.modeling.build import build_model

    variant = PPCRPredictor(build_model(load_recipe("shapes", overrides)))
    variant.set_image(_image(33, 21))
    result = variant.predict("the red circle")
    assert result.mask.shape == (33, 21)
    if overrides == ["model.spatial_prompt=none"]:
        assert result.box is None
    else:
        assert result.box is not None and result.box[2] <= 21 and result.box[3] <= 33
    with pytest.warns(ExpressionTruncatedWarning):
        long_result = variant.predict(" ".join(["the big red circle"] * 40))
    assert variant.fit_expression(long_result.expression) == (long_result.expression, False)


# ------------------------------------------------------------------ image inputs


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    with Image.open(path) as reopened:  # the test must really exercise the mode it names
        return reopened.mode


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P-transparent", "RGBA", "I;16", "CMYK-jpeg"])
def test_every_image_mode_runs_at_its_own_size(predictor, tmp_path, mode):
    height, width = 29, 47
    rgb = Image.fromarray(_image(height, width, seed=7))
    if mode == "I;16":
        data = np.random.RandomState(1).randint(0, 65536, (height, width)).astype(np.uint16)
        image, suffix, expected = Image.fromarray(data), ".png", ("I;16", "I")
    elif mode == "CMYK-jpeg":
        image, suffix, expected = rgb.convert("CMYK"), ".jpg", ("CMYK",)
    elif mode == "P-transparent":
        image = rgb.convert("P")
        image.info["transparency"] = 0
        suffix, expected = ".png", ("P",)
    else:
        image, suffix, expected = rgb.convert(mode), ".png", (mode,)
    path = tmp_path / f"input{suffix}"
    kwargs = {"transparency": 0} if mode == "P-transparent" else {}
    assert _save(image, path, **kwargs) in expected
    predictor.set_image(path)
    result = predictor.predict("the red circle")
    assert result.mask.shape == (height, width)
    assert predictor.image.mode == "RGB"


def test_exif_rotated_jpeg_gives_an_upright_mask(predictor, tmp_path):
    stored = Image.fromarray(_image(30, 50, seed=2))  # stored 50 wide × 30 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": upright it is 30 wide × 50 high
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes())
    predictor.set_image(path)
    result = predictor.predict("the red circle")
    assert result.mask.shape == (50, 30)
    assert result.box[2] <= 30 and result.box[3] <= 50


def test_pil_image_and_grey_array_inputs(predictor):
    predictor.set_image(Image.fromarray(_image(20, 31)))
    assert predictor.predict("a").mask.shape == (20, 31)
    predictor.set_image(np.zeros((17, 23), dtype=np.uint8))
    assert predictor.predict("a").mask.shape == (17, 23)


def test_unreadable_image_is_a_one_line_image_error(predictor, tmp_path):
    from ppcr.errors import ImageError

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    predictor.set_image(_image())
    for source, text in ((tmp_path / "missing.png", "not found"), (tmp_path, "directory"), (broken, "cannot read")):
        with pytest.raises(ImageError, match=text):
            predictor.set_image(source)
        with pytest.raises(PPCRError, match="no image is set"):  # the earlier image is not reused
            predictor.predict("a")


# ------------------------------------------------------------------ device and dtype


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu) is torch.float32
    assert resolve_dtype("bf16", cpu) is torch.bfloat16
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(PPCRError, match="fp16 is not supported on the CPU"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(PPCRError, match="unknown dtype 'fp64'"):
        resolve_dtype("fp64", cpu)
    with pytest.raises(PPCRError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(PPCRError, match="invalid device"):
        resolve_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(PPCRError, match="CUDA is not available"):
        resolve_device("cuda")


def test_preferred_dtype_is_bf16_only_on_a_gpu_that_supports_it():
    assert preferred_dtype(torch.device("cpu")) is torch.float32
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        assert preferred_dtype(torch.device("cuda")) is expected


def test_dtype_is_checked_before_the_model_is_looked_for(tmp_path):
    with pytest.raises(PPCRError, match="fp16 is not supported on the CPU"):
        PPCRPredictor.from_pretrained(tmp_path / "does-not-exist", device="cpu", dtype="fp16")


def test_bf16_on_cpu_predicts(tiny_model_dir):
    half = PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu", dtype="bf16")
    assert next(half.model.llava.parameters()).dtype is torch.bfloat16
    # SAM multiplies float32 box coordinates with this matrix: the model's casts keep it float32
    assert half.model.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype is torch.float32
    half.set_image(_image(25, 35))
    result = half.predict("the red circle")
    assert result.mask.shape == (25, 35) and result.box is not None and 0.0 <= result.score <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_cuda_predicts_like_cpu(tiny_model_dir, dtype):
    gpu = PPCRPredictor.from_pretrained(tiny_model_dir, device="cuda", dtype=dtype)
    cpu = PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")
    image = _image(45, 61, seed=9)
    gpu.set_image(image)
    cpu.set_image(image)
    on_gpu, on_cpu = gpu.predict("the red circle"), cpu.predict("the red circle")
    assert on_gpu.mask.shape == (45, 61)
    tolerance = 1e-3 if dtype == "fp32" else 0.1
    np.testing.assert_allclose(on_gpu.box, on_cpu.box, atol=tolerance * 61)
    assert np.mean(on_gpu.mask != on_cpu.mask) < (0.01 if dtype == "fp32" else 0.2)


# ------------------------------------------------------------------ where the weights come from


def test_no_default_model_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(model_source, "DEFAULT_MODEL", tmp_path / "assets" / "ppcr-shapes-tiny")
    with pytest.raises(CheckpointError) as info:
        PPCRPredictor.from_pretrained(device="cpu")
    assert str(info.value) == "no default model is installed; pass --model DIR"


def test_default_model_is_used_when_installed(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(model_source, "DEFAULT_MODEL", tiny_model_dir)
    assert model_source.resolve_model_dir(None) == tiny_model_dir
    assert PPCRPredictor.from_pretrained(device="cpu").model.spec.size == "tiny"


def test_hub_id_resolves_from_the_local_cache_offline(monkeypatch, tmp_path, tiny_model_dir):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--ppcr-tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_source.resolve_model_dir("someone/ppcr-tiny") == repo / "snapshots" / commit
    loaded = PPCRPredictor.from_pretrained("someone/ppcr-tiny", device="cpu")
    loaded.set_image(_image())
    assert loaded.predict("a").mask.shape == (37, 53)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        model_source.resolve_model_dir("someone/not-downloaded")


def test_model_paths_that_are_not_checkpoints(tmp_path, tiny_model_dir):
    with pytest.raises(CheckpointError, match="model directory not found"):
        model_source.resolve_model_dir(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="model directory not found"):
        model_source.resolve_model_dir("./runs/nope")
    with pytest.raises(CheckpointError, match="is a file"):
        model_source.resolve_model_dir(tiny_model_dir / "config.json")


@pytest.mark.parametrize(
    "damage",
    ["delete:heads.safetensors", "truncate:heads.safetensors", "truncate:base/llava/model.safetensors",
     "delete:config.json", "truncate:semantic/adapter_model.safetensors", "delete:tokenizer/tokenizer.json"],
)
def test_damaged_checkpoint_is_a_checkpoint_error(damaged_model_copy, damage):
    with pytest.raises(CheckpointError):
        PPCRPredictor.from_pretrained(damaged_model_copy(damage), device="cpu")

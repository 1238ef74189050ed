"""``Prediction.to_dict()`` (box, score, area, mask as COCO RLE; strict JSON), ``return_logits``,
and ``ppcr predict --format json`` printing the same dictionary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from PIL import Image
from pycocotools import mask as mask_utils

from ppcr.data.refer import mask_to_rle
from ppcr.inference.predictor import PPCRPredictor, Prediction
from ppcr_cli.errors import run_guarded


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return PPCRPredictor.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(np.random.RandomState(4).randint(0, 256, (29, 47, 3)).astype(np.uint8)).save(path)
    return path


def test_to_dict_round_trips_the_mask_through_pycocotools_and_is_strict_json(predictor, photo):
    predictor.set_image(photo)
    prediction = predictor.predict("the red circle on the left")
    data = prediction.to_dict()
    assert set(data) == {"expression", "truncated", "box", "score", "area", "mask"}
    text = json.dumps(data, allow_nan=False)  # strict JSON: raises on NaN/inf
    data = json.loads(text)
    assert isinstance(data["mask"]["counts"], str) and data["mask"]["size"] == [29, 47]
    decoded = mask_utils.decode({"size": data["mask"]["size"], "counts": data["mask"]["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), prediction.mask)
    assert data["area"] == int(prediction.mask.sum())
    assert data["box"] == pytest.approx(list(prediction.box)) and data["score"] == pytest.approx(prediction.score)
    assert data["expression"] == "the red circle on the left" and data["truncated"] is False


def test_rle_of_a_known_mask():
    mask = np.zeros((3, 4), bool)
    mask[1, 1:3] = True
    # Column-major run lengths: 4 off, 1 on, 2 off, 1 on, 4 off (COCO's compressed string for them).
    assert mask_to_rle(mask) == {"size": [3, 4], "counts": "41202"}
    assert mask_to_rle(np.zeros((2, 2), bool)) == {"size": [2, 2], "counts": "4"}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_become_none(bad):
    mask = np.ones((2, 3), bool)
    box_bad = Prediction(mask=mask, box=(0.0, bad, 2.0, 1.0), score=0.5).to_dict()
    assert box_bad["box"] is None and box_bad["score"] == 0.5
    score_bad = Prediction(mask=mask, box=(0.0, 0.0, 2.0, 1.0), score=bad).to_dict()
    assert score_bad["score"] is None and score_bad["box"] == [0.0, 0.0, 2.0, 1.0]
    json.dumps(box_bad, allow_nan=False)
    json.dumps(score_bad, allow_nan=False)
    assert Prediction(mask=mask, box=None, score=0.1).to_dict()["box"] is None  # no spatial stage


def test_return_logits_gives_the_logits_the_mask_is_thresholded_from(predictor, photo):
    predictor.set_image(photo)
    plain = predictor.predict("blue square")
    assert plain.logits is None  # not kept unless asked for
    with_logits = predictor.predict("blue square", return_logits=True)
    assert with_logits.logits.dtype == np.float32 and with_logits.logits.shape == (29, 47)
    np.testing.assert_array_equal(with_logits.logits > 0, with_logits.mask)
    np.testing.assert_array_equal(with_logits.mask, plain.mask)

    model, processor = predictor.model, predictor.processor
    direct = model.segment(model.encode_images(processor.images([photo])), processor.texts(["blue square"], [0]))
    np.testing.assert_array_equal(with_logits.logits, direct.mask_logits[0].numpy())
    # The score is the mean foreground probability inside the mask, computed from these logits.
    inside = with_logits.logits[with_logits.mask]
    expected = float((1 / (1 + np.exp(-inside.astype(np.float64)))).mean()) if inside.size else 0.0
    assert with_logits.score == pytest.approx(expected, abs=1e-5)

    batch = predictor.predict_batch(["blue square", "a red star"], return_logits=True)
    np.testing.assert_allclose(batch[0].logits, with_logits.logits, atol=1e-4)  # batched: padding shifts the float sums
    assert batch[1].logits.shape == (29, 47)


def test_cli_json_carries_the_mask_as_rle_equal_to_the_written_png(capsys, tmp_path, photo, tiny_model_dir):
    from ppcr_cli.main import app

    args = ["predict", str(photo), "red circle", "blue square", "-o", str(tmp_path / "m.png"),
            "--model", str(tiny_model_dir), "--format", "json"]
    code = run_guarded(typer.main.get_command(app), args)
    out = capsys.readouterr().out
    assert code == 0
    rows = json.loads(out)["predictions"]
    for number, row in enumerate(rows, start=1):
        rle = row["mask_rle"]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        with Image.open(tmp_path / f"m-{number}.png") as written:
            np.testing.assert_array_equal(decoded, np.asarray(written) == 255)
        assert row["area"] == int(decoded.sum())
        assert row["mask"] == str(tmp_path / f"m-{number}.png")  # the file path keeps its key

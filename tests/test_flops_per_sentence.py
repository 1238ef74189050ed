"""benchmarks/flops_per_sentence.py counts the pipeline piece by piece on ``meta``; its mirror of
``PPCRModel.segment``'s bookkeeping must give exactly the FLOPs of the real path, which is checked
here on the tiny model run for real on the CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.flops_per_sentence import SDPA_CPU_FORMULA, count_mode  # noqa: E402
from ppcr.config.loading import load_recipe  # noqa: E402
from ppcr.modeling.build import build_model  # noqa: E402
from ppcr.modeling.processor import PPCRProcessor  # noqa: E402

EXPRESSIONS = ["red circle on the left", "big blue square", "green triangle", "small yellow star at the top"]


@pytest.fixture(scope="module")
def models():
    recipe = load_recipe("shapes")
    return build_model(recipe).eval(), build_model(recipe, device="meta").eval()


def _real_flops(model, processor, mode: str) -> int:
    """FLOPs of encode_images + segment on real tensors, as ppcr eval runs them.

    Their undecorated bodies (``_encode_images``, ``_predict``) are called: under ``no_grad`` a
    view of a parameter (SAM's ``no_mask_embed``) claims ``requires_grad`` without a grad_fn, and
    FlopCounterMode's module tracker asserts on it.
    """
    from PIL import Image

    image = Image.new("RGB", (640, 480), (120, 30, 200))
    count = len(EXPRESSIONS)
    naive = mode == "naive"
    images = processor.images([image] * (count if naive else 1))
    text = processor.texts(EXPRESSIONS, list(range(count)) if naive else [0] * count)
    with FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FORMULA) as counter:
        features = model._encode_images(images)
        model._predict(
            features, text, box_source="predicted", gt_boxes=None, share_prefix=mode == "grouped+kv", compute_ce=False
        )
    return counter.get_total_flops()


@pytest.mark.parametrize("mode", ["naive", "grouped", "grouped+kv"])
def test_meta_count_equals_the_real_paths_flops(models, mode):
    real, meta = models
    processor = PPCRProcessor.from_model(real)
    counted = count_mode(meta, PPCRProcessor.from_model(meta), mode, EXPRESSIONS)
    assert counted.total == _real_flops(real, processor, mode) > 0
    assert counted.parts["SAM encoder"] > 0 and counted.parts["CLIP"] > 0
    if mode == "grouped+kv":
        assert counted.parts["LLM semantic prefix"] > 0 and counted.parts["LLM spatial suffix"] > 0


def test_sharing_cuts_flops_in_the_expected_order(models):
    _, meta = models
    processor = PPCRProcessor.from_model(meta)
    totals = [count_mode(meta, processor, mode, EXPRESSIONS).total for mode in ("naive", "grouped", "grouped+kv")]
    assert totals[0] > totals[1] > totals[2]

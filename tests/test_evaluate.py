"""Evaluation: image-grouped and naive modes agree with each other and with a direct model call,
the written metrics and CSV are what the masks say, and the Fig. 6 panels are drawn."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from ppcr.data.refer import ReferDataset
from ppcr.errors import DataError, PPCRError
from ppcr.evaluation.outputs import read_per_sentence
from ppcr.evaluation.render import GAP, PanelInputs, render_panel
from ppcr.images import GT_COLOR, PRED_COLOR

torch = pytest.importorskip("torch")

from ppcr.config.loading import load_recipe  # noqa: E402
from ppcr.evaluation.evaluate import evaluate, evaluate_many  # noqa: E402
from ppcr.modeling.build import build_model  # noqa: E402

SPLIT = "val"  # Shapes-Ref(20 images) val: 28 sentences on 2 images (10 and 18)


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and steadier on a shared CPU
    yield build_model(load_recipe("shapes")).eval()
    torch.set_num_threads(threads)


def _collect(model, data_root, **kwargs):
    masks: dict[tuple[int, int], np.ndarray] = {}

    def keep(sample, mask, row):
        masks[(sample.ref_id, sample.sent_id)] = mask.copy()

    result = evaluate(model, "shapes", SPLIT, data_root, on_prediction=keep, **kwargs)
    return result, masks


def _assert_same_rows(rows, reference):
    """Masks and their counts exactly; the box and score up to float rounding of batched maths."""
    assert len(rows) == len(reference)
    for row, ref in zip(rows, reference):
        exact = ("ref_id", "sent_id", "image_id", "ann_id", "sentence", "iou", "intersection", "union", "pred_area")
        assert [getattr(row, k) for k in exact] == [getattr(ref, k) for k in exact]
        assert row.box_xyxy == pytest.approx(ref.box_xyxy, abs=1e-3)
        assert row.score == pytest.approx(ref.score, abs=1e-5)


def test_grouped_and_naive_give_the_same_masks_as_a_direct_model_call(model, small_shapes_root):
    from ppcr.modeling.processor import PPCRProcessor

    data = ReferDataset("shapes", small_shapes_root, SPLIT)
    groups = [len(samples) for samples in data.samples_by_image().values()]
    assert len(groups) >= 2 and max(groups) > 4  # several images per batch, and images split in chunks

    grouped, grouped_masks = _collect(model, small_shapes_root, batch_size=32)
    chunked, chunked_masks = _collect(model, small_shapes_root, batch_size=4)
    naive, naive_masks = _collect(model, small_shapes_root, naive=True, batch_size=1)
    naive_batched, naive_batched_masks = _collect(model, small_shapes_root, naive=True, batch_size=5)

    assert grouped.mode == "grouped" and naive.mode == "naive"
    assert len(grouped_masks) == len(data) == grouped.metrics["count"]
    for other in (chunked_masks, naive_masks, naive_batched_masks):
        assert other.keys() == grouped_masks.keys()
        for key, mask in grouped_masks.items():
            assert np.array_equal(mask, other[key]), key
    for other in (chunked, naive, naive_batched):
        _assert_same_rows(other.sentences, grouped.sentences)
        assert other.metrics == grouped.metrics

    # The same sentences through the model by hand, one at a time, without any sharing.
    processor = PPCRProcessor.from_model(model)
    for sample in (data[0], data[len(data) - 1]):
        features = model.encode_images(processor.images([sample.image_path]))
        prediction = model.segment(features, processor.texts([sample.text], [0]), share_prefix=False)
        direct = (prediction.mask_logits[0] > 0).numpy()
        assert direct.shape == (sample.height, sample.width)
        assert np.array_equal(direct, grouped_masks[(sample.ref_id, sample.sent_id)])
        row = next(r for r in grouped.sentences if (r.ref_id, r.sent_id) == (sample.ref_id, sample.sent_id))
        box = prediction.boxes[0].numpy() * [sample.width, sample.height, sample.width, sample.height]
        expected = (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))
        assert row.box_xyxy == pytest.approx(expected, abs=1e-3)
        assert row.score == pytest.approx(float(prediction.scores[0]), abs=1e-6)


def test_evaluation_is_deterministic(model, small_shapes_root):
    first = evaluate(model, "shapes", SPLIT, small_shapes_root, batch_size=8)
    second = evaluate(model, "shapes", SPLIT, small_shapes_root, batch_size=8)
    assert first.metrics == second.metrics
    assert first.sentences == second.sentences


def test_written_files_agree_with_a_recomputation_from_the_masks(model, small_shapes_root, tmp_path):
    result, masks = _collect(model, small_shapes_root, out_dir=tmp_path, model_name="tiny-random")
    folder = tmp_path / f"shapes_{SPLIT}"
    assert result.out_dir == folder

    data = ReferDataset("shapes", small_shapes_root, SPLIT)
    with open(folder / "per_sentence.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["ref_id"]), int(r["sent_id"])) for r in rows] == [(s.ref_id, s.sent_id) for s in data]

    ious, total_i, total_u = [], 0, 0
    for row, sample in zip(rows, data):
        pred = masks[(sample.ref_id, sample.sent_id)]
        gt = data.mask(sample)
        intersection = int(np.logical_and(pred, gt).sum())
        union = int(np.logical_or(pred, gt).sum())
        iou = 1.0 if union == 0 else intersection / union
        assert int(row["intersection"]) == intersection and int(row["union"]) == union
        assert float(row["iou"]) == pytest.approx(iou, abs=1e-12)
        assert int(row["pred_area"]) == int(pred.sum())
        assert int(row["image_id"]) == sample.image_id and row["sentence"] == sample.text
        x1, y1, x2, y2 = (float(row[k]) for k in ("box_x1", "box_y1", "box_x2", "box_y2"))
        assert x1 <= x2 and y1 <= y2 and 0 <= x1 and x2 <= sample.width and 0 <= y1 and y2 <= sample.height
        assert 0.0 <= float(row["score"]) <= 1.0
        ious.append(iou)
        total_i, total_u = total_i + intersection, total_u + union

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["count"] == len(data) == len(rows)
    assert metrics["oIoU"] == pytest.approx(100.0 * total_i / total_u)
    assert metrics["mIoU"] == pytest.approx(100.0 * sum(ious) / len(ious))
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
        share = sum(iou >= threshold for iou in ious) / len(ious)
        assert metrics[f"P@{threshold:g}"] == pytest.approx(100.0 * share)
    assert (metrics["dataset"], metrics["split"], metrics["box_source"]) == ("shapes", SPLIT, "predicted")
    assert metrics["model"] == "tiny-random" and metrics["mode"] == "grouped"
    assert (metrics["spatial_prompt"], metrics["spatial_head"]) == ("semantic", "mlp")
    assert metrics["seconds"] > 0 and metrics["sentences_per_second"] > 0
    assert read_per_sentence(folder / "per_sentence.csv")[5].iou == pytest.approx(ious[5], abs=1e-12)
    assert not (folder / "vis").exists()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # nothing temporary left behind


def test_gt_box_source_feeds_sam_the_ground_truth_boxes(model, small_shapes_root, monkeypatch):
    seen = []
    original = model.segment

    def spy(features, text, **kwargs):
        seen.append((kwargs["box_source"], kwargs["gt_boxes"]))
        return original(features, text, **kwargs)

    monkeypatch.setattr(model, "segment", spy)
    data = ReferDataset("shapes", small_shapes_root, SPLIT)
    oracle = evaluate(model, "shapes", SPLIT, small_shapes_root, box_source="gt", naive=True, batch_size=1)
    assert oracle.box_source == "gt"
    assert len(seen) == len(data)
    for (source, boxes), sample in zip(seen, data):
        x1, y1, x2, y2 = sample.box_xyxy
        expected = [x1 / sample.width, y1 / sample.height, x2 / sample.width, y2 / sample.height]
        assert source == "gt"
        assert boxes.shape == (1, 4)
        assert boxes[0].tolist() == pytest.approx(expected, abs=1e-6)
    seen.clear()
    predicted = evaluate(model, "shapes", SPLIT, small_shapes_root)
    assert seen and all(source == "predicted" and boxes is None for source, boxes in seen)
    assert predicted.sentences != oracle.sentences  # the box SAM sees changes the masks


def test_save_vis_writes_fig6_panels_for_the_first_sentences(model, small_shapes_root, tmp_path):
    results = evaluate_many(model, "shapes", [SPLIT, "testB"], small_shapes_root, out_dir=tmp_path, save_vis=2)
    assert [r.split for r in results] == [SPLIT, "testB"]
    data = ReferDataset("shapes", small_shapes_root, SPLIT)
    panels = sorted((tmp_path / f"shapes_{SPLIT}" / "vis").glob("*.png"))
    assert [p.name for p in panels] == [
        f"{i:05d}_ref{data[i].ref_id}_sent{data[i].sent_id}.png" for i in range(2)
    ]
    assert results[0].vis_paths == panels
    with Image.open(panels[0]) as panel:
        assert panel.width > 4 * data[0].width and panel.height > data[0].height
    assert len(list((tmp_path / "shapes_testB" / "vis").glob("*.png"))) == 2


def test_bad_inputs_fail_before_any_model_work(model, small_shapes_root, tmp_path):
    with pytest.raises(PPCRError, match="box_source"):
        evaluate(model, "shapes", SPLIT, small_shapes_root, box_source="oracle")
    with pytest.raises(PPCRError, match="batch_size"):
        evaluate(model, "shapes", SPLIT, small_shapes_root, batch_size=0)
    with pytest.raises(DataError, match="unknown split 'testA' for refcocog"):
        evaluate(model, "refcocog", "testA", small_shapes_root)
    with pytest.raises(DataError, match="images folder not found"):
        evaluate(model, "shapes", SPLIT, small_shapes_root, images=tmp_path / "nowhere")
    some_images = tmp_path / "some"
    some_images.mkdir()
    with pytest.raises(DataError, match="image files missing"):
        evaluate_many(model, "shapes", ["testB", SPLIT], small_shapes_root, images=some_images)


def test_panel_layout_and_colours():
    height, width = 20, 30
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    gt = np.zeros((height, width), dtype=bool)
    gt[2:12, 3:13] = True
    pred = np.zeros((height, width), dtype=bool)
    pred[5:15, 10:25] = True
    panel = render_panel(
        PanelInputs(image, gt, pred, gt_box=(3, 2, 13, 12), pred_box=(10, 5, 25, 15), sentence="a thing", iou=0.2)
    )
    scale = -(-240 // width)
    tile = width * scale
    assert panel.width == 4 * tile + 3 * GAP
    pixels = np.asarray(panel).astype(int)
    top = 18  # title row

    def at(column: int, y: int, x: int) -> np.ndarray:
        return pixels[top + y * scale + scale // 2, column * (tile + GAP) + x * scale + scale // 2]

    assert np.argmax(at(0, 7, 8)) == int(np.argmax(GT_COLOR))  # GT tile: inside the GT mask is green
    assert np.argmax(at(1, 10, 20)) == int(np.argmax(PRED_COLOR))  # prediction tile: red inside
    assert at(0, 18, 28).tolist() != at(0, 7, 8).tolist()  # outside the mask is not tinted
    assert at(2, 2, 8).tolist() == list(GT_COLOR)  # GT box outline (top edge)
    assert at(3, 5, 18).tolist() == list(PRED_COLOR)  # predicted box outline (top edge)
    assert at(3, 2, 8).tolist() == [128, 128, 128]  # the predicted-box tile has no GT box

    no_box = render_panel(PanelInputs(image, gt, pred, (3, 2, 13, 12), None, "a thing", 0.2))
    assert no_box.size == panel.size  # variants without a spatial stage: an empty fourth tile
    fourth = np.asarray(no_box).astype(int)[top + 5 * scale + scale // 2, 3 * (tile + GAP) + 18 * scale + scale // 2]
    assert fourth.tolist() == [128, 128, 128]  # no red outline where the predicted box was

"""Shapes-Ref is in exactly the refer layout: the RefCOCO reader and a plain pickle + pycocotools
reading (what refer.py / LISA do) see the same samples, masks and boxes."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ppcr.data.datasets import DATASETS
from ppcr.data.refer import ReferDataset
from ppcr.data.shapes import generate_shapes_ref


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_ref(root, seed=3, images=40)
    return root


def _plain_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """The refer.py recipe: polygons through frPyObjects, RLE as is, decode, merge channels."""
    segmentation = ann["segmentation"]
    if isinstance(segmentation[0], list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rles = [dict(r, counts=r["counts"].encode()) if isinstance(r["counts"], str) else r for r in segmentation]
    decoded = mask_utils.decode(rles)
    return decoded.reshape(height, width, -1).sum(axis=2) > 0


@pytest.mark.parametrize("name", ["shapes", "shapes+", "shapesg"])
def test_reader_and_plain_reading_agree(shapes_root, name):
    spec = DATASETS[name]
    refs = pickle.load(open(spec.refs_path(shapes_root), "rb"))
    instances = json.loads(spec.instances_path(shapes_root).read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    kinds = set()
    for split in spec.splits:
        dataset = ReferDataset(name, shapes_root, split)
        plain = [
            (ref, sent_id)
            for ref in sorted((r for r in refs if r["split"] == split), key=lambda r: r["ref_id"])
            for sent_id in ref["sent_ids"]
        ]
        assert len(dataset) == len(plain) > 0
        for sample, (ref, sent_id) in zip(dataset, plain):
            ann = anns[ref["ann_id"]]
            image = images[ref["image_id"]]
            sentence = next(s for s in ref["sentences"] if s["sent_id"] == sent_id)
            assert (sample.ref_id, sample.sent_id, sample.text) == (ref["ref_id"], sent_id, sentence["sent"])
            assert sample.image_path == spec.images_dir(shapes_root) / image["file_name"]
            assert sample.image_path.is_file()
            x, y, w, h = ann["bbox"]
            assert sample.box_xyxy == pytest.approx((x, y, x + w, y + h))
            expected = _plain_mask(ann, image["height"], image["width"])
            np.testing.assert_array_equal(dataset.mask(sample), expected)
            kinds.add("rle" if isinstance(ann["segmentation"][0], dict) else "polygon")
    assert kinds == {"rle", "polygon"}

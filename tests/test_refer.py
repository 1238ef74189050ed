"""The refer-layout reader on small files written in the real layout (tests/refer_fixtures.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ppcr.data.refer import ReferDataset, ReferIndex, ReferSample, annotation_mask, split_matches
from ppcr.errors import DataError
from tests.refer_fixtures import (
    SMALL_EXAMPLE_COUNTS,
    blob_mask,
    make_annotation,
    make_image,
    make_ref,
    small_example,
    uncompressed_rle,
    write_example,
    write_refer_dataset,
    write_small_example,
)


@pytest.fixture(scope="module")
def refcoco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_small_example(root, "refcoco")
    return root


def by_ref(dataset: ReferDataset, ref_id: int) -> list[ReferSample]:
    return [sample for sample in dataset if sample.ref_id == ref_id]


def test_train_split_order_text_and_image_fields(refcoco_root):
    train = ReferDataset("refcoco", refcoco_root, "train")
    # Refs sorted by ref_id (the pickle stores them 5, 1, 3, 2, ...); sentences in sent_ids
    # order (ref 1 lists 101 before 100); text = `sent`, stripped.
    assert [(s.ref_id, s.sent_id, s.text) for s in train] == [
        (1, 101, "both squares"),
        (1, 100, "the two boxes"),
        (2, 200, "small rectangle"),
        (3, 300, "rle blob"),
    ]
    first = train[0]
    assert first.raw == "Both squares!" and first.text == "both squares"
    assert by_ref(train, 2)[0].raw == "  SMALL RECTANGLE "
    assert (first.dataset, first.split) == ("refcoco", "train")
    assert (first.ann_id, first.image_id) == (101, 1)
    assert first.file_name == "COCO_train2014_000000000001.jpg"
    assert first.image_path == refcoco_root / "images/mscoco/images/train2014" / first.file_name
    assert first.image_path.is_file()
    assert (first.width, first.height) == (40, 30)
    assert by_ref(train, 2)[0].category_id == 2
    assert len(train) == 4 and train[-1] == list(train)[-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.text = "changed"


def test_boxes_are_converted_from_xywh_to_xyxy(refcoco_root):
    train = ReferDataset("refcoco", refcoco_root, "train")
    assert by_ref(train, 1)[0].box_xyxy == (2.0, 2.0, 18.0, 18.0)
    assert by_ref(train, 2)[0].box_xyxy == (20.0, 4.0, 30.0, 10.0)
    assert all(isinstance(v, float) for v in train[0].box_xyxy)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode under numpy 2
def test_multi_part_polygon_mask_is_the_binary_union(refcoco_root):
    from pycocotools import mask as mask_utils

    train = ReferDataset("refcoco", refcoco_root, "train")
    sample = by_ref(train, 1)[0]
    mask = train.mask(sample)
    expected = blob_mask(30, 40, 2, 2, 12, 12) | blob_mask(30, 40, 8, 8, 18, 18)
    assert mask.dtype == np.bool_ and mask.shape == (30, 40)
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 100 + 100 - 16
    # The parts overlap: summing pycocotools' channels (what refer.py does) would give 2 there.
    ann = train.index.anns[101]
    channels = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], 30, 40))
    assert channels.sum(axis=2).max() == 2


def test_compressed_rle_mask_with_str_counts(refcoco_root):
    train = ReferDataset("refcoco", refcoco_root, "train")
    sample = by_ref(train, 3)[0]
    assert isinstance(train.index.anns[103]["segmentation"]["counts"], str)
    np.testing.assert_array_equal(train.mask(sample), blob_mask(30, 40, 3, 5, 10, 15))


def test_uncompressed_rle_mask_with_list_counts(refcoco_root):
    val = ReferDataset("refcoco", refcoco_root, "val")
    sample = val[0]
    assert isinstance(val.index.anns[104]["segmentation"]["counts"], list)
    mask = val.mask(sample)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, blob_mask(24, 32, 2, 4, 7, 10))


def test_annotation_mask_handles_rle_lists_and_degenerate_polygons():
    part_a, part_b = blob_mask(6, 5, 1, 1, 3, 3), blob_mask(6, 5, 2, 2, 5, 4)
    ann = {"id": 9, "segmentation": [uncompressed_rle(part_a), uncompressed_rle(part_b)]}
    np.testing.assert_array_equal(annotation_mask(ann, 6, 5), part_a | part_b)
    # A 4-number "polygon" would be read as a bbox by pycocotools; it has no area and is dropped.
    flat = {"id": 10, "segmentation": [[1, 1, 4, 4]]}
    assert not annotation_mask(flat, 6, 5).any()
    with pytest.raises(DataError, match=r"RLE size \[6, 5\] does not match"):
        annotation_mask({"id": 11, "segmentation": uncompressed_rle(np.zeros((6, 5), bool))}, 5, 6)


def test_split_filtering_and_grouping(refcoco_root):
    index = ReferIndex.load("refcoco", refcoco_root)
    expected_refs = {"train": [1, 2, 3], "val": [4], "testA": [5], "testB": [6]}
    for split, (images, refs, sentences) in SMALL_EXAMPLE_COUNTS["unc"].items():
        dataset = index.split(split)
        assert sorted({s.ref_id for s in dataset}) == expected_refs[split]
        assert len(expected_refs[split]) == refs
        assert (len(dataset.image_ids()), len(dataset)) == (images, sentences)
        assert all(s.split == split for s in dataset)
    train = index.split("train")
    assert train.image_ids() == [1, 2]
    groups = train.samples_by_image()
    assert list(groups) == [1, 2]
    assert [(s.ref_id, s.sent_id) for s in groups[1]] == [(1, 101), (1, 100), (2, 200)]
    assert [s.ref_id for s in groups[2]] == [3]


def test_unknown_split_lists_valid_splits(refcoco_root):
    with pytest.raises(DataError) as info:
        ReferDataset("refcoco", refcoco_root, "testa")
    assert "valid splits: train, val, testA, testB" in info.value.message
    assert info.value.hint == "did you mean 'testA'?"


def test_refcocog_umd_splits(tmp_path):
    write_small_example(tmp_path, "refcocog")
    index = ReferIndex.load("refcocog", tmp_path)
    assert index.split_by == "umd" and index.splits == ("train", "val", "test")
    test = index.split("test")
    assert [(s.ref_id, s.text) for s in test] == [
        (5, "man on left"), (6, "a bottle"), (6, "green bottle"), (6, "bottle right"),
    ]
    assert (len(test.image_ids()), len(test)) == SMALL_EXAMPLE_COUNTS["umd"]["test"][::2]
    with pytest.raises(DataError, match="valid splits: train, val, test"):
        index.split("testA")


def test_google_split_by_is_supported_and_unknown_split_by_refused(tmp_path):
    fixture = write_small_example(tmp_path, "refcoco", split_by="google")
    assert fixture.refs_path.name == "refs(google).p"
    google = ReferDataset("refcoco", tmp_path, "test", split_by="google")
    assert [s.ref_id for s in google] == [5, 6, 6, 6]
    with pytest.raises(DataError, match="unknown split_by 'umd' for refcoco"):
        ReferDataset("refcoco", tmp_path, "val", split_by="umd")


@pytest.mark.parametrize("protocol, python2", [(0, True), (2, True), (2, False), (5, False)])
def test_pickle_flavours_give_identical_samples(tmp_path, refcoco_root, protocol, python2):
    write_small_example(tmp_path, "refcoco", protocol=protocol, python2=python2, write_images=False)
    reference = ReferDataset("refcoco", refcoco_root, "train")
    images = refcoco_root / "images/mscoco/images/train2014"
    other = ReferDataset("refcoco", tmp_path, "train", images=images)
    assert list(other) == list(reference)


@pytest.mark.parametrize("protocol", [0, 2])
def test_latin1_python2_sentences_are_decoded(tmp_path, protocol):
    example = small_example()
    example.refs[0]["sentences"][0]["sent"] = "l'homme à gauche"
    write_example(tmp_path, example, protocol=protocol, write_images=False)
    assert ReferDataset("refcoco", tmp_path, "testA")[0].text == "l'homme à gauche"


def test_images_override_and_split_matching_semantics(refcoco_root, tmp_path):
    val = ReferDataset("refcoco", refcoco_root, "val", images=tmp_path / "coco")
    assert val[0].image_path == tmp_path / "coco" / "COCO_train2014_000000000003.jpg"
    assert split_matches("testAB", "testA") and split_matches("testAB", "testB")
    assert not split_matches("testB", "testA") and not split_matches("train", "testA")
    assert split_matches("testA", "test") and split_matches("val", "val")
    assert not split_matches("train", "val")


def test_index_is_shared_between_splits_and_reloaded_when_files_change(tmp_path):
    fixture = write_small_example(tmp_path, "refcoco", write_images=False)
    index = ReferIndex.load("refcoco", tmp_path)
    assert ReferIndex.load("refcoco", tmp_path) is index
    assert ReferDataset("refcoco", tmp_path, "val").index is index
    assert index.split("testB").index is index
    assert 107 not in index.anns  # unreferenced annotations are not kept

    example = small_example()
    example.refs.append(make_ref(7, 105, 4, "val", ["one more sentence here"]))
    write_example(tmp_path, example, write_images=False)
    assert fixture.refs_path.exists()
    fresh = ReferIndex.load("refcoco", tmp_path)
    assert fresh is not index
    assert [s.ref_id for s in fresh.split("val")] == [4, 4, 7]


def test_missing_or_broken_instances_json(tmp_path):
    fixture = write_small_example(tmp_path, "refcoco", write_images=False)
    fixture.instances_path.write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        ReferDataset("refcoco", tmp_path, "val")
    fixture.instances_path.write_text('{"images": []}')
    with pytest.raises(DataError, match="is not a COCO instances file"):
        ReferDataset("refcoco", tmp_path, "val")
    fixture.instances_path.unlink()
    with pytest.raises(DataError, match="instances.json not found"):
        ReferDataset("refcoco", tmp_path, "val")


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        ReferDataset("refcoco", tmp_path / "nowhere", "val")
    with pytest.raises(DataError, match="folder .*refcoco\\+ not found"):
        ReferDataset("refcoco+", tmp_path, "val")
    fixture = write_small_example(tmp_path, "refcoco+", write_images=False)
    fixture.refs_path.unlink()
    with pytest.raises(DataError, match=r"refs pickle not found: .*refs\(unc\)\.p"):
        ReferDataset("refcoco+", tmp_path, "val")


def test_dangling_annotation_is_a_data_error_when_its_split_is_read(tmp_path):
    example = small_example()
    example.annotations[:] = [ann for ann in example.annotations if ann["id"] != 104]
    write_example(tmp_path, example, write_images=False)
    assert len(ReferDataset("refcoco", tmp_path, "train")) == 4  # other splits still read
    with pytest.raises(DataError, match="ref 4 points at annotation 104") as info:
        ReferDataset("refcoco", tmp_path, "val")
    assert "ppcr prepare refcoco" in info.value.hint


def test_records_lacking_required_keys_are_data_errors(tmp_path):
    ref = make_ref(1, 1, 1, "val", ["x"])
    del ref["ann_id"]
    write_refer_dataset(tmp_path, refs=[ref], images=[make_image(1)],
                        annotations=[make_annotation(1, 1, [0, 0, 2, 2])], write_images=False)
    with pytest.raises(DataError, match="record 0 lacks the key 'ann_id'"):
        ReferDataset("refcoco", tmp_path, "val")

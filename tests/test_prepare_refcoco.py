"""`ppcr prepare refcoco|refcoco+|refcocog`: validating a refer layout the user put in place."""

from __future__ import annotations

import pytest

from ppcr.data.datasets import get_dataset
from ppcr.data.prepare import check_refer_layout
from ppcr.errors import DataError
from tests.refer_fixtures import (
    SMALL_EXAMPLE_COUNTS,
    SMALL_EXAMPLE_IMAGES,
    make_ref,
    small_example,
    write_example,
    write_refer_dataset,
    write_small_example,
)


def measured(report) -> dict[str, tuple[int, int, int]]:
    return {row.split: (row.images, row.refs, row.sentences) for row in report.rows}


@pytest.mark.parametrize(
    "name, split_by", [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")]
)
def test_good_layout_is_ok_with_exact_counts(tmp_path, name, split_by):
    write_small_example(tmp_path, name)
    advances: list[int] = []
    report = check_refer_layout(name, tmp_path, progress=advances.append)
    assert report.ok and report.problems == [] and report.summary() == ""
    report.raise_if_problems()
    assert report.split_by == split_by and report.images_checked
    assert measured(report) == SMALL_EXAMPLE_COUNTS[split_by]
    assert [row.split for row in report.rows] == list(get_dataset(name).splits)
    spec = get_dataset(name)
    assert [row.published for row in report.rows] == [spec.published[s] for s in spec.splits]
    assert report.total_images == SMALL_EXAMPLE_IMAGES and sum(advances) == SMALL_EXAMPLE_IMAGES


def test_missing_image_is_reported_with_name_and_hint(tmp_path):
    fixture = write_small_example(tmp_path, "refcoco")
    (fixture.images_dir / "COCO_train2014_000000000003.jpg").unlink()
    report = check_refer_layout("refcoco", tmp_path)
    assert not report.ok
    [problem] = report.problems
    assert (problem.kind, problem.count, problem.total) == ("missing_images", 1, 5)
    assert problem.examples == ("COCO_train2014_000000000003.jpg",)
    assert measured(report) == SMALL_EXAMPLE_COUNTS["unc"]  # counts are still measured
    with pytest.raises(DataError) as info:
        report.raise_if_problems()
    assert info.value.message == (
        f"refcoco: 1 of 5 images missing under {fixture.images_dir} "
        "(first: COCO_train2014_000000000003.jpg)"
    )
    assert "--images DIR" in info.value.hint


def test_images_folder_override_and_absent_folder(tmp_path):
    fixture = write_small_example(tmp_path, "refcoco")
    assert check_refer_layout("refcoco", tmp_path, images=fixture.images_dir).ok
    elsewhere = tmp_path / "coco" / "train2014"
    report = check_refer_layout("refcoco", tmp_path, images=elsewhere)
    [problem] = report.problems
    assert problem.count == 5 and f"({elsewhere} does not exist)" in problem.message
    assert problem.examples == tuple(f"COCO_train2014_{i:012d}.jpg" for i in (1, 2, 3))
    assert problem.message.endswith("COCO_train2014_000000000003.jpg, ...)")


def test_check_images_false_skips_the_file_check(tmp_path):
    write_small_example(tmp_path, "refcocog", write_images=False)
    assert not check_refer_layout("refcocog", tmp_path).ok
    report = check_refer_layout("refcocog", tmp_path, check_images=False)
    assert report.ok and not report.images_checked


def test_dangling_annotation_and_image_entries_are_reported(tmp_path):
    example = small_example()
    annotations = [ann for ann in example.annotations if ann["id"] != 104]
    images = [image for image in example.images if image["id"] != 5]
    write_refer_dataset(tmp_path, refs=example.refs, images=images, annotations=annotations)
    report = check_refer_layout("refcoco", tmp_path)
    kinds = {problem.kind: problem for problem in report.problems}
    assert set(kinds) == {"missing_annotations", "missing_image_entries"}
    assert kinds["missing_annotations"].examples == ("104",)
    assert kinds["missing_image_entries"].examples == ("5",)
    with pytest.raises(DataError) as info:
        report.raise_if_problems()
    message = info.value.message
    assert message.startswith(
        "refcoco: 1 of 6 refs point at annotations missing from instances.json (first ann_id: 104)"
    )
    second = "; 1 of 6 refs point at image ids missing from instances.json (first image_id: 5)"
    assert second in message
    assert "\n" not in message and "do not belong together" in info.value.hint


def test_annotation_of_another_image_and_unknown_split_values(tmp_path):
    example = small_example()
    example.refs.append(make_ref(7, 101, 2, "train", ["wrong image"]))  # ann 101 is on image 1
    example.refs.append(make_ref(8, 102, 1, "trainval", ["odd split"]))
    write_example(tmp_path, example)
    report = check_refer_layout("refcoco", tmp_path)
    [problem] = report.problems
    assert problem.kind == "annotation_image_mismatch" and problem.examples == ("7",)
    assert any("trainval" in note for note in report.notes)
    assert measured(report)["train"] == (2, 4, 5)


def test_google_split_by_has_no_published_counts(tmp_path):
    write_small_example(tmp_path, "refcoco", split_by="google")
    report = check_refer_layout("refcoco", tmp_path, split_by="google")
    assert report.ok
    rows = [(row.split, row.published) for row in report.rows]
    assert rows == [("train", None), ("val", None), ("test", None)]
    assert measured(report)["test"] == (2, 2, 4)


def test_missing_root_folder_pickle_and_instances_raise(tmp_path):
    with pytest.raises(DataError, match="refcoco: data root not found"):
        check_refer_layout("refcoco", tmp_path / "absent")
    with pytest.raises(DataError, match=r"refcocog: folder .*refcocog not found") as info:
        check_refer_layout("refcocog", tmp_path)
    assert "refs(umd).p" in info.value.hint
    fixture = write_small_example(tmp_path, "refcoco", write_images=False)
    fixture.refs_path.unlink()
    with pytest.raises(DataError, match=r"refs pickle not found: .*refs\(unc\)\.p"):
        check_refer_layout("refcoco", tmp_path)
    fixture.refs_path.write_bytes(b"\x80\x02]q\x00(K\x01")
    with pytest.raises(DataError, match="is truncated or not a pickle"):
        check_refer_layout("refcoco", tmp_path)
    fixture.instances_path.unlink()
    with pytest.raises(DataError, match="instances.json not found"):
        check_refer_layout("refcoco", tmp_path)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'refcocoh'"):
        check_refer_layout("refcocoh", tmp_path)

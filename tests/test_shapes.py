"""Shapes-Ref generator: refer layout, exact masks, unique expressions, splits, determinism."""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ppcr.data.datasets import DATASETS
from ppcr.data.shapes import (
    ExpressionSyntaxError,
    Scene,
    SceneObject,
    generate_shapes_ref,
    identifies,
    normalise,
    parse,
    scenes_from_coco,
    sentence_referents,
    vocabulary,
)
from ppcr.data.shapes.expressions import (
    Description,
    Located,
    NounPhrase,
    Ordinal,
    Related,
    render,
)
from ppcr.data.shapes.vocabulary import (
    FAMILIES,
    GENERIC_NOUNS,
    LOCATION_WORDS,
    RELATION_PHRASES,
    SHAPE_WORDS,
)
from ppcr.errors import DataError

NAMES = ("shapes", "shapes+", "shapesg")
IMAGES = 48
SEED = 3
REF_KEYS = {"ref_id", "ann_id", "category_id", "file_name", "image_id", "split", "sent_ids", "sentences"}
SENTENCE_KEYS = {"tokens", "raw", "sent_id", "sent"}
COCO_KEYS = {"info", "images", "licenses", "annotations", "categories"}
# pycocotools' decode trips a numpy-2 DeprecationWarning on every call; it is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_ref")
    ticks: list[int] = []
    summary = generate_shapes_ref(out, seed=SEED, images=IMAGES, progress=ticks.append)
    return out, summary, ticks


def _load(out: Path, name: str) -> tuple[list[dict], dict]:
    spec = DATASETS[name]
    with open(spec.refs_path(out), "rb") as f:
        refs = pickle.load(f)  # our own file: plain pickle is fine here
    with open(spec.instances_path(out)) as f:
        instances = json.load(f)
    return refs, instances


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    """Decode the way refer / LISA do: polygon list via frPyObjects, else a list of RLEs."""
    if isinstance(segmentation[0], list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rles = [{"size": r["size"], "counts": r["counts"].encode()} for r in segmentation]
    return mask_utils.decode(rles).sum(axis=2) > 0


def test_files_have_the_refer_layout_and_keys(generated):
    out, summary, ticks = generated
    assert ticks == [1] * IMAGES
    vocab = set(vocabulary())
    for name in NAMES:
        spec = DATASETS[name]
        assert spec.refs_path(out).name == f"refs({spec.split_by}).p"
        assert spec.refs_path(out).read_bytes()[:2] == b"\x80\x02"  # pickle protocol 2
        refs, instances = _load(out, name)
        assert set(instances) == COCO_KEYS
        assert isinstance(refs, list) and refs
        for ref in refs:
            assert set(ref) == REF_KEYS
            assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
            assert 1 <= len(ref["sentences"]) <= 3
            for sentence in ref["sentences"]:
                assert set(sentence) == SENTENCE_KEYS
                assert sentence["tokens"] == sentence["sent"].split()
                assert sentence["sent"] == sentence["sent"].lower()
                assert normalise(sentence["raw"]) == sentence["sent"]
                assert set(sentence["tokens"]) <= vocab
        sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
        assert len(sent_ids) == len(set(sent_ids))
        assert [r["ref_id"] for r in refs] == list(range(len(refs)))
        assert any(s["raw"] != s["sent"] for r in refs for s in r["sentences"])
        # The summary reports what the files hold.
        for split in spec.splits:
            in_split = [r for r in refs if r["split"] == split]
            counts = summary.datasets[name][split]
            assert counts.refs == len(in_split) > 0
            assert counts.sentences == sum(len(r["sentences"]) for r in in_split)
            assert counts.images == len({r["image_id"] for r in in_split})

    refs, instances = _load(out, "shapes")
    categories = {c["id"]: c for c in instances["categories"]}
    assert len(categories) >= 6
    assert {c["supercategory"] for c in categories.values()} == set(FAMILIES)
    annotations = {a["id"]: a for a in instances["annotations"]}
    for ref in refs:
        assert annotations[ref["ann_id"]]["image_id"] == ref["image_id"]
        assert annotations[ref["ann_id"]]["category_id"] == ref["category_id"]
    sizes = set()
    image_dir = DATASETS["shapes"].images_dir(out)
    for image in instances["images"]:
        path = image_dir / image["file_name"]
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (image["width"], image["height"])
        assert image["width"] != image["height"] and 96 <= min(img.size) and max(img.size) <= 160
        sizes.add(img.size)
    assert len(sizes) > IMAGES // 2
    # All three datasets describe the same image pool and objects.
    assert _load(out, "shapes+")[1] == instances == _load(out, "shapesg")[1]


def test_masks_are_exactly_the_pixels_of_their_object(generated):
    out, _, _ = generated
    _, instances = _load(out, "shapes")
    images = {i["id"]: i for i in instances["images"]}
    pixels = {
        i["id"]: np.asarray(Image.open(DATASETS["shapes"].images_dir(out) / i["file_name"]).convert("RGB"))
        for i in instances["images"]
    }
    kinds = set()
    for ann in instances["annotations"]:
        image = images[ann["image_id"]]
        mask = _decode(ann["segmentation"], image["height"], image["width"])
        kinds.add("polygon" if isinstance(ann["segmentation"][0], list) else "rle")
        img = pixels[ann["image_id"]]
        colours_in_mask = np.unique(img[mask], axis=0)
        assert len(colours_in_mask) == 1, "an object's mask covers exactly one colour"
        assert colours_in_mask[0].tolist() == ann["attributes"]["rgb"]
        assert np.array_equal(mask, (img == colours_in_mask[0]).all(axis=2)), "mask == where it is shown"
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        tight = [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
        assert ann["bbox"] == [float(v) for v in tight]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert ann["area"] == float(mask.sum()) and ann["iscrowd"] == 0
    assert kinds == {"polygon", "rle"}, "both fully visible and occluded objects occur"


def test_every_sentence_denotes_exactly_its_object(generated):
    out, _, _ = generated
    relation_phrases = [p for phrases in RELATION_PHRASES.values() for p in phrases]
    phrase_lengths = {len(p) for p in relation_phrases}
    nouns = set(GENERIC_NOUNS) | {w for ws in SHAPE_WORDS.values() for w in ws}
    for name in NAMES:
        refs, instances = _load(out, name)
        scenes = scenes_from_coco(instances)
        located = 0
        for ref in refs:
            scene = scenes[ref["image_id"]]
            for sentence in ref["sentences"]:
                assert sentence_referents(sentence["sent"], scene) == {ref["ann_id"]}, sentence["sent"]
                assert identifies(sentence["raw"], scene, ref["ann_id"])
                tokens = sentence["tokens"]
                located += bool(LOCATION_WORDS & set(tokens))
                if name == "shapes+":
                    assert not LOCATION_WORDS & set(tokens), sentence["sent"]
                if name == "shapesg":
                    windows = {tuple(tokens[i : i + n]) for n in phrase_lengths for i in range(len(tokens))}
                    assert windows & set(relation_phrases), sentence["sent"]
                    assert sum(t in nouns for t in tokens) >= 2, sentence["sent"]
        if name == "shapes":
            assert located > 0.6 * sum(len(r["sentences"]) for r in refs)


def test_every_image_has_colour_and_shape_distractors(generated):
    out, _, _ = generated
    scenes = scenes_from_coco(_load(out, "shapes")[1])
    for image_id, scene in scenes.items():
        colours = [o.colour for o in scene.objects]
        shapes = [o.shape for o in scene.objects]
        assert len(set(colours)) < len(colours) and len(set(shapes)) < len(shapes)
        # So a bare colour is ambiguous somewhere in every image: the checker must say so.
        shared = next(c for c in colours if colours.count(c) > 1)
        assert len(sentence_referents(f"the {shared} shape", scene)) >= 2
        assert not identifies(f"the {shared} shape", scene, scene.objects[0].key)


def test_splits_partition_images_and_test_splits_split_families(generated):
    out, _, _ = generated
    split_of_image: dict[str, dict[int, str]] = {}
    for name in NAMES:
        refs, instances = _load(out, name)
        families = {c["id"]: c["supercategory"] for c in instances["categories"]}
        splits_per_image = defaultdict(set)
        for ref in refs:
            splits_per_image[ref["image_id"]].add(ref["split"])
        assert all(len(s) == 1 for s in splits_per_image.values())
        assert {r["split"] for r in refs} == set(DATASETS[name].splits)
        split_of_image[name] = {image: next(iter(s)) for image, s in splits_per_image.items()}
        if "testA" in DATASETS[name].splits:
            assert {families[r["category_id"]] for r in refs if r["split"] == "testA"} == {"round"}
            assert {families[r["category_id"]] for r in refs if r["split"] == "testB"} == {"angular"}
    # shapes and shapes+ share a partition, as RefCOCO and RefCOCO+ do.
    common = split_of_image["shapes"].keys() & split_of_image["shapes+"].keys()
    assert all(split_of_image["shapes"][i] == split_of_image["shapes+"][i] for i in common)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(generated, tmp_path):
    out, _, _ = generated
    first = _tree_bytes(out)
    generate_shapes_ref(tmp_path / "again", seed=SEED, images=IMAGES)
    assert _tree_bytes(tmp_path / "again") == first
    generate_shapes_ref(tmp_path / "other", seed=SEED + 1, images=IMAGES)
    other = _tree_bytes(tmp_path / "other")
    assert other.keys() == first.keys()
    for name in NAMES:
        refs_file = str(DATASETS[name].refs_path(Path(".")))
        assert other[refs_file] != first[refs_file]
    pngs = [k for k in first if k.endswith(".png")]
    assert sum(other[k] != first[k] for k in pngs) == len(pngs)
    assert not [k for k in first if ".tmp" in k]


def test_bad_output_path_and_sizes_raise_data_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate_shapes_ref(a_file, images=20)
    with pytest.raises(DataError, match="cannot create"):
        generate_shapes_ref(a_file / "below", images=20)
    with pytest.raises(DataError, match="images must be"):
        generate_shapes_ref(tmp_path / "few", images=5)
    with pytest.raises(DataError, match="seed"):
        generate_shapes_ref(tmp_path / "neg", seed=-1, images=20)
    assert not (tmp_path / "few").exists()


class _Interrupted(Exception):
    pass


def test_an_interrupted_overwrite_leaves_the_previous_dataset_as_it_was(tmp_path):
    generate_shapes_ref(tmp_path, seed=1, images=20)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(DATASETS[name].refs_path(tmp_path).relative_to(tmp_path) in before for name in NAMES)

    seen: list[int] = []

    def stop_after_five(advance: int) -> None:
        seen.append(advance)
        if len(seen) == 5:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        generate_shapes_ref(tmp_path, seed=2, images=20, progress=stop_after_five, overwrite=True)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert not list(tmp_path.rglob("*.tmp*"))


def _scene(*objects: tuple[str, str, str, tuple[float, float, float, float]], size=(100, 80)) -> Scene:
    family = {s: f for f, shapes in FAMILIES.items() for s in shapes}
    return Scene(
        size[0],
        size[1],
        tuple(
            SceneObject(key, shape, family[shape], colour, size_class, box)
            for key, (shape, colour, size_class, box) in enumerate(objects)
        ),
    )


def test_locations_and_relations_mean_what_they_say():
    row = _scene(
        ("circle", "red", "small", (5, 30, 10, 10)),
        ("circle", "red", "small", (45, 30, 10, 10)),
        ("circle", "red", "small", (85, 30, 10, 10)),
        ("square", "blue", "large", (40, 2, 20, 20)),
    )
    assert sentence_referents("the red circle on the left", row) == {0}
    assert sentence_referents("rightmost red circle", row) == {2}
    assert sentence_referents("the middle red circle", row) == {1}
    assert sentence_referents("the second red circle from the right", row) == {1}
    assert sentence_referents("the red circle", row) == {0, 1, 2}
    assert sentence_referents("the red circle below the blue square", row) == {1}
    assert sentence_referents("the red circle closest to the blue square", row) == {1}
    assert sentence_referents("the shape at the top", row) == {3}
    assert sentence_referents("the large shape", row) == {3}
    # Two circles 3 px apart: "leftmost" is not clear-cut, so both are possible referents.
    close = _scene(
        ("circle", "red", "small", (5, 30, 10, 10)),
        ("circle", "red", "small", (8, 50, 10, 10)),
        ("star", "red", "small", (80, 30, 10, 10)),
    )
    assert sentence_referents("the left red circle", close) == {0, 1}
    # A landmark that is not unique makes the relational sentence denote nothing.
    assert sentence_referents("the star to the right of the red circle", close) == set()
    assert sentence_referents("the star to the right of the red circle", row) == set()


def test_every_surface_form_parses_back_to_its_expression():
    red_circle = NounPhrase(colour="red", shape="circle")
    expressions = [
        Description(NounPhrase(size="small", colour="blue", family="angular")),
        Located(red_circle, "left"),
        Located(NounPhrase(), "bottom"),
        Located(NounPhrase(size="large"), "middle"),
        Ordinal(NounPhrase(colour="green"), "right"),
        Related(red_circle, (("left_of", NounPhrase(shape="star")),)),
        Related(NounPhrase(), (("closest_to", NounPhrase(colour="yellow")), ("below", red_circle))),
    ]
    for expression in expressions:
        for seed in range(30):
            words = render(expression, np.random.default_rng(seed))
            assert parse(" ".join(words)) == expression, words
    for bad in ("the red banana", "red circle on the", "the circle the square", "second red circle"):
        with pytest.raises(ExpressionSyntaxError):
            parse(bad)

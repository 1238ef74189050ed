"""``generate_shapes_ref``: draw the image pool once and write shapes, shapes+ and shapesg.

Output is the refer layout (``<out>/<folder>/refs(<split_by>).p`` + ``instances.json``, images
under ``<out>/images/shapes``), so the RefCOCO reader, trainer and evaluator read it unchanged.
Every file is written atomically (``ppcr.io``); the refs pickles go last, so a
run that is interrupted never leaves a refs file whose images or annotations are missing.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ppcr.data.datasets import DATASETS, SplitCounts
from ppcr.data.shapes.candidates import sentences_for_scene
from ppcr.data.shapes.drawing import DrawnImage, draw_image
from ppcr.data.shapes.expressions import typed_form
from ppcr.data.shapes.scene import ATTRIBUTES_KEY, Scene, SceneObject
from ppcr.data.shapes.splits import assign_splits, target_allowed
from ppcr.data.shapes.vocabulary import FAMILIES, FAMILY_OF, SHAPE_TYPES
from ppcr.errors import DataError
from ppcr.io import atomic_write_bytes

DEFAULT_IMAGES = 1500
MIN_IMAGES = 20
OBJECT_ID_STRIDE = 100  # annotation id = image id * stride + draw index (< OBJECTS_PER_IMAGE max)
PICKLE_PROTOCOL = 2  # like the Python 2 originals
# Which expression style each dataset uses, and which split partition it shares.
DATASET_STYLES: dict[str, str] = {"shapes": "located", "shapes+": "attributes", "shapesg": "relational"}
PARTITION_OF: dict[str, int] = {"shapes": 1, "shapes+": 1, "shapesg": 2}
DATASETS_WRITTEN = tuple(DATASET_STYLES)
CATEGORY_IDS: dict[str, int] = {shape: index + 1 for index, shape in enumerate(SHAPE_TYPES)}
# numpy seed-sequence streams: (seed, image id, stream) keeps each image and dataset independent.
DRAW_STREAM = 0
SPLIT_IMAGE_ID = 0  # image ids start at 1, so id 0 is free for the split partitions


@dataclass
class ShapesSummary:
    """What was written: per dataset and split, images / refs / sentences."""

    out: Path
    seconds: float
    images: int
    datasets: dict[str, dict[str, SplitCounts]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, int, int, int]]:
        """(dataset, split, images, refs, sentences) for every dataset and split written."""
        return [
            (name, split, counts.images, counts.refs, counts.sentences)
            for name, splits in self.datasets.items()
            for split, counts in splits.items()
        ]


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} exists and is not a folder", hint="pass a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in DATASETS_WRITTEN:
            (out / DATASETS[name].folder).mkdir(exist_ok=True)
        DATASETS["shapes"].images_dir(out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create output folders under {out}: {error.strerror or error}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError(f"output folder {out} is not writable")



def _segmentation(obj, height: int, width: int) -> list:
    """Polygon when fully visible; the visible region as compressed RLE when occluded.

    RLE is wrapped in a one-element list, as refclef stores it: refer-style readers test
    ``segmentation[0]`` for a polygon list and otherwise decode the list of RLEs.
    """
    if not obj.occluded:
        return [obj.polygon]
    rle = mask_utils.encode(np.asfortranarray(obj.visible_mask.astype(np.uint8)))
    return [{"size": [height, width], "counts": rle["counts"].decode("ascii")}]


def _annotations(image_id: int, drawn: DrawnImage) -> tuple[list[dict], Scene]:
    annotations, objects = [], []
    for index, obj in enumerate(drawn.objects):
        ann_id = image_id * OBJECT_ID_STRIDE + index
        bbox = obj.visible_bbox()
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": CATEGORY_IDS[obj.spec.shape],
                "segmentation": _segmentation(obj, drawn.height, drawn.width),
                "area": float(np.count_nonzero(obj.visible_mask)),
                "bbox": list(bbox),
                "iscrowd": 0,
                ATTRIBUTES_KEY: {"colour": obj.spec.colour, "size": obj.spec.size, "rgb": list(obj.rgb)},
            }
        )
        objects.append(
            SceneObject(
                ann_id, obj.spec.shape, FAMILY_OF[obj.spec.shape], obj.spec.colour, obj.spec.size, bbox
            )
        )
    return annotations, Scene(drawn.width, drawn.height, tuple(objects))


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _instances(seed: int, images: list[dict], annotations: list[dict]) -> dict:
    return {
        "info": {
            "description": "Shapes-Ref: synthetic referring segmentation benchmark generated by PPCR",
            "seed": seed,
        },
        "images": images,
        "licenses": [{"id": 1, "name": "generated data, no restrictions", "url": ""}],
        "annotations": annotations,
        "categories": [
            {"id": CATEGORY_IDS[shape], "name": shape, "supercategory": family}
            for family, shapes in FAMILIES.items()
            for shape in sorted(shapes, key=CATEGORY_IDS.get)
        ],
    }


def _refs(
    name: str,
    seed: int,
    scenes: dict[int, Scene],
    file_names: dict[int, str],
    split_of: dict[int, str],
) -> list[dict]:
    refs: list[dict] = []
    sent_id = 0
    stream = 1 + DATASETS_WRITTEN.index(name)
    for image_id, scene in scenes.items():
        split = split_of[image_id]
        rng = np.random.default_rng([seed, image_id, stream])
        chosen = sentences_for_scene(
            scene, DATASET_STYLES[name], rng, wanted=lambda obj: target_allowed(split, obj.family)
        )
        stem = Path(file_names[image_id]).stem
        for ann_id, texts in chosen.items():
            sentences = []
            for text in texts:
                raw = typed_form(text, rng)
                sentences.append({"tokens": text.split(), "raw": raw, "sent_id": sent_id, "sent": text})
                sent_id += 1
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": ann_id,
                    "category_id": CATEGORY_IDS[scene.object(ann_id).shape],
                    "file_name": f"{stem}_{ann_id % OBJECT_ID_STRIDE}.png",
                    "image_id": image_id,
                    "split": split,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "sentences": sentences,
                }
            )
    return refs


def _split_counts(refs: list[dict], splits: tuple[str, ...]) -> dict[str, SplitCounts]:
    counts = {}
    for split in splits:
        in_split = [r for r in refs if r["split"] == split]
        counts[split] = SplitCounts(
            images=len({r["image_id"] for r in in_split}),
            refs=len(in_split),
            sentences=sum(len(r["sentences"]) for r in in_split),
        )
    return counts


def generate_shapes_ref(
    out: Path,
    seed: int = 0,
    images: int = DEFAULT_IMAGES,
    progress: Callable[[int], None] | None = None,
) -> ShapesSummary:
    """Generate Shapes-Ref under ``out``; byte-identical output for the same seed and size.

    ``progress(1)`` is called once per image drawn (``images`` calls in all).
    """
    started = time.perf_counter()
    out = Path(out)
    if isinstance(images, bool) or not isinstance(images, int) or images < MIN_IMAGES:
        raise DataError(
            f"images must be an integer >= {MIN_IMAGES}, got {images!r}",
            hint=f"the default is {DEFAULT_IMAGES}",
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    _prepare_out(out)
    for name in DATASETS_WRITTEN:  # an older run's refs must not outlive a run interrupted here
        DATASETS[name].refs_path(out).unlink(missing_ok=True)
    image_dir = DATASETS["shapes"].images_dir(out)

    coco_images, annotations, scenes, file_names = [], [], {}, {}
    for image_id in range(1, images + 1):
        drawn = draw_image(np.random.default_rng([seed, image_id, DRAW_STREAM]))
        file_name = f"shapes_{image_id:06d}.png"
        atomic_write_bytes(image_dir / file_name, _png_bytes(drawn.pixels))
        coco_images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": drawn.height,
                "width": drawn.width,
                "license": 1,
            }
        )
        image_annotations, scenes[image_id] = _annotations(image_id, drawn)
        annotations += image_annotations
        file_names[image_id] = file_name
        if progress is not None:
            progress(1)

    instances_bytes = json.dumps(_instances(seed, coco_images, annotations), separators=(",", ":")).encode()
    partitions: dict[int, dict[int, str]] = {}
    summary = ShapesSummary(out=out, seconds=0.0, images=images)
    for name in DATASETS_WRITTEN:
        spec = DATASETS[name]
        partition = PARTITION_OF[name]
        if partition not in partitions:
            rng = np.random.default_rng([seed, SPLIT_IMAGE_ID, partition])
            partitions[partition] = assign_splits(list(scenes), spec.splits, rng)
        refs = _refs(name, seed, scenes, file_names, partitions[partition])
        atomic_write_bytes(spec.instances_path(out), instances_bytes)
        atomic_write_bytes(spec.refs_path(out), pickle.dumps(refs, protocol=PICKLE_PROTOCOL))
        summary.datasets[name] = _split_counts(refs, spec.splits)
    summary.seconds = time.perf_counter() - started
    return summary

"""``generate_shapes_ref``: draw the image pool once and write shapes, shapes+ and shapesg.

Output is the refer layout (``<out>/<folder>/refs(<split_by>).p`` + ``instances.json``, images
under ``<out>/images/shapes``), so the RefCOCO reader, trainer and evaluator read it unchanged.
The dataset is built in a staging folder inside ``<out>`` and swapped in when complete (refs
last), so a run that is interrupted never leaves a refs file whose images or annotations are
missing, and an existing dataset is replaced only with ``overwrite``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ppcr.data.datasets import DATASETS, SplitCounts
from ppcr.data.refer import mask_to_rle
from ppcr.data.shapes.candidates import sentences_for_scene
from ppcr.data.shapes.drawing import DrawnImage, draw_image
from ppcr.data.shapes.expressions import typed_form
from ppcr.data.shapes.scene import ATTRIBUTES_KEY, Scene, SceneObject
from ppcr.data.shapes.splits import assign_splits, target_allowed
from ppcr.data.shapes.vocabulary import FAMILIES, FAMILY_OF, SHAPE_TYPES
from ppcr.errors import DataError
from ppcr.io import atomic_write_bytes, replace_directory

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
STAGING_PREFIX = ".shapes-ref.tmp-"  # the new dataset is built in <out>/.shapes-ref.tmp-XXXXXXXX


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
    except OSError as error:
        raise DataError(f"cannot create output folders under {out}: {error.strerror or error}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError(f"output folder {out} is not writable")


def _dataset_paths() -> list[str]:
    """The folders a Shapes-Ref occupies under its root: the shared images, then each dataset."""
    return [DATASETS["shapes"].images_subdir, *(DATASETS[name].folder for name in DATASETS_WRITTEN)]


def existing_dataset(out: Path) -> list[str]:
    """Which of the Shapes-Ref folders under ``out`` exist with something in them."""
    found = []
    for relative in _dataset_paths():
        path = out / relative
        if path.is_symlink() or path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(relative)
    return found


def _install(staging: Path, out: Path) -> None:
    """Move a complete Shapes-Ref from ``staging`` into ``out``, replacing any previous one.

    The old refs pickles go first, so no instant has old refs over new images; then each folder
    is swapped in whole (:func:`~ppcr.io.replace_directory`), the images first and each
    dataset's refs with it last. Until then an existing dataset was left untouched.
    """
    try:
        for name in DATASETS_WRITTEN:
            DATASETS[name].refs_path(out).unlink(missing_ok=True)
        for relative in _dataset_paths():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            replace_directory(staging / relative, out / relative)
    except OSError as error:
        raise DataError(f"cannot write Shapes-Ref into {out}: {error.strerror or error}") from None



def _segmentation(obj) -> list:
    """Polygon when fully visible; the visible region as compressed RLE when occluded.

    RLE is wrapped in a one-element list, as refclef stores it: refer-style readers test
    ``segmentation[0]`` for a polygon list and otherwise decode the list of RLEs.
    """
    if not obj.occluded:
        return [obj.polygon]
    return [mask_to_rle(obj.visible_mask)]


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
                "segmentation": _segmentation(obj),
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
    overwrite: bool = False,
) -> ShapesSummary:
    """Generate Shapes-Ref under ``out``; byte-identical output for the same seed and size.

    ``progress(1)`` is called once per image drawn (``images`` calls in all). A Shapes-Ref
    already in ``out`` is refused unless ``overwrite``; either way the new one is built in a
    temporary folder inside ``out`` and moved into place only when complete, so an interrupted
    run leaves the previous dataset as it was. Other folders in ``out`` are never touched.
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
    existing = existing_dataset(out)
    if existing and not overwrite:
        raise DataError(
            f"{out} already holds a Shapes-Ref dataset ({', '.join(existing)})",
            hint="pass --overwrite to replace it (library: overwrite=True), or choose another --out",
        )
    for stale in out.glob(f"{STAGING_PREFIX}*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as error:
        raise DataError(f"cannot write into {out}: {error.strerror or error}") from None
    try:
        summary = _write_shapes_ref(staging, seed, images, progress)
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary.out = out
    summary.seconds = time.perf_counter() - started
    return summary


def _write_shapes_ref(
    out: Path, seed: int, images: int, progress: Callable[[int], None] | None
) -> ShapesSummary:
    """Draw the images and write the three datasets under ``out`` (an empty staging folder)."""
    for name in DATASETS_WRITTEN:
        (out / DATASETS[name].folder).mkdir()
    image_dir = DATASETS["shapes"].images_dir(out)
    image_dir.mkdir(parents=True)

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
    return summary

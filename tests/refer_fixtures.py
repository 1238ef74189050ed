"""Write tiny datasets in the real refer layout, for tests.

``write_refer_dataset`` lays out ``<root>/<folder>/refs(<split_by>).p``, ``instances.json`` and
(optionally) the image files, exactly where the reader and ``ppcr prepare`` look. By default the
pickle is written the way Python 2's cPickle wrote the real files (``str`` as byte strings), so
tests exercise the same decoding path as the downloaded data.

``small_example()`` / ``write_small_example()`` give a ready-made dataset covering the formats'
quirks (multi-part polygons, compressed and uncompressed RLE, ``raw`` ≠ ``sent``, ``sent_ids``
order ≠ list order, refs stored out of ``ref_id`` order). ``SMALL_EXAMPLE_COUNTS`` holds its
per-split sizes, worked out by hand.
"""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppcr.data.datasets import get_dataset

COCO_FILE_NAME = "COCO_train2014_{:012d}.jpg"
DEFAULT_CATEGORIES = [
    {"id": 1, "name": "thing", "supercategory": "thing"},
    {"id": 2, "name": "other", "supercategory": "thing"},
]


# ----------------------------------------------------------------------------- records


def make_image(
    image_id: int, width: int = 40, height: int = 30, file_name: str | None = None
) -> dict:
    """A COCO ``images`` entry."""
    return {
        "id": image_id,
        "file_name": file_name or COCO_FILE_NAME.format(image_id),
        "width": width,
        "height": height,
        "license": 1,
    }


def rectangle_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A COCO polygon (flat x, y list) tracing an axis-aligned rectangle."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_annotation(
    ann_id: int,
    image_id: int,
    bbox: list[float],
    segmentation=None,
    category_id: int = 1,
    iscrowd: int = 0,
) -> dict:
    """A COCO ``annotations`` entry; the segmentation defaults to the bbox rectangle."""
    x, y, w, h = bbox
    if segmentation is None:
        segmentation = [rectangle_polygon(x, y, x + w, y + h)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "bbox": list(bbox),
        "segmentation": segmentation,
        "category_id": category_id,
        "iscrowd": iscrowd,
        "area": float(w * h),
    }


def make_ref(
    ref_id: int,
    ann_id: int,
    image_id: int,
    split: str,
    sentences: list[str],
    raws: list[str] | None = None,
    sent_order: list[int] | None = None,
    category_id: int = 1,
) -> dict:
    """A refs-pickle record. Sentence ids default to ``ref_id * 100 + i`` (unique per file).

    ``sent_order`` (positions into ``sentences``) makes the record's ``sent_ids`` list the ids in
    another order than ``sentences``; the reader must follow ``sent_ids``.
    """
    ids = list(range(ref_id * 100, ref_id * 100 + len(sentences)))
    raws = raws if raws is not None else [text.upper() for text in sentences]
    records = [
        {"sent_id": sid, "sent": text, "raw": raw, "tokens": text.split()}
        for sid, text, raw in zip(ids, sentences, raws)
    ]
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "category_id": category_id,
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",  # not a real file, as upstream
        "sent_ids": [ids[i] for i in sent_order] if sent_order is not None else ids,
        "sentences": records,
    }


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a binary mask (column-major runs, starting with zeros)."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    counts: list[int] = []
    current, run = False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE with ``counts`` as ``str``, as it appears in instances.json."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ----------------------------------------------------------------------------- Python 2 pickles


class Py2Unicode(str):
    """Marks a string that Python 2 held as ``unicode`` (written as UNICODE/BINUNICODE)."""


def python2_pickle(obj, protocol: int = 2, str_encoding: str = "latin1") -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle did: ``str`` becomes a *byte* string.

    Python 3 ``str`` values are encoded with ``str_encoding`` and written as py2 ``str`` (STRING /
    SHORT_BINSTRING / BINSTRING), which Python 3 decodes as ASCII unless told otherwise;
    :class:`Py2Unicode` values are written as py2 ``unicode``. Supports protocol 0 and 2.
    """
    if protocol not in (0, 2):
        raise ValueError("python2_pickle writes protocol 0 or 2")
    out = bytearray(b"\x80\x02" if protocol == 2 else b"")
    _write_py2(out, obj, protocol, str_encoding)
    out += b"."
    return bytes(out)


def _escape_py2_string(data: bytes) -> bytes:
    text = []
    for byte in data:
        if byte == 0x5C:
            text.append("\\\\")
        elif byte == 0x27:
            text.append("\\'")
        elif 32 <= byte < 127:
            text.append(chr(byte))
        else:
            text.append(f"\\x{byte:02x}")
    return ("'" + "".join(text) + "'").encode("ascii")


def _escape_py2_unicode(value: str) -> bytes:
    text = []
    for char in value:
        code = ord(char)
        if code < 32 or code >= 127 or char == "\\":
            text.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            text.append(char)
    return "".join(text).encode("ascii")


def _write_py2(out: bytearray, obj, protocol: int, encoding: str) -> None:
    if obj is None:
        out += b"N"
    elif isinstance(obj, bool):
        out += (b"\x88" if obj else b"\x89") if protocol == 2 else (b"I01\n" if obj else b"I00\n")
    elif isinstance(obj, int):
        if protocol == 0:
            out += f"I{obj}\n".encode() if -(2**31) <= obj < 2**31 else f"L{obj}L\n".encode()
        elif 0 <= obj < 256:
            out += b"K" + bytes([obj])
        elif 0 <= obj < 65536:
            out += b"M" + struct.pack("<H", obj)
        elif -(2**31) <= obj < 2**31:
            out += b"J" + struct.pack("<i", obj)
        else:
            raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out += b"\x8a" + bytes([len(raw)]) + raw
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj) if protocol == 2 else f"F{obj!r}\n".encode()
    elif isinstance(obj, Py2Unicode):
        if protocol == 2:
            data = str(obj).encode("utf-8")
            out += b"X" + struct.pack("<I", len(data)) + data
        else:
            out += b"V" + _escape_py2_unicode(obj) + b"\n"
    elif isinstance(obj, (str, bytes)):
        data = obj.encode(encoding) if isinstance(obj, str) else obj
        if protocol == 0:
            out += b"S" + _escape_py2_string(data) + b"\n"
        elif len(data) < 256:
            out += b"U" + bytes([len(data)]) + data
        else:
            out += b"T" + struct.pack("<i", len(data)) + data
    elif isinstance(obj, list):
        out += b"]" if protocol == 2 else b"(l"
        if protocol == 2 and obj:
            out += b"("
        for item in obj:
            _write_py2(out, item, protocol, encoding)
            if protocol == 0:
                out += b"a"
        if protocol == 2 and obj:
            out += b"e"
    elif isinstance(obj, tuple):
        out += b"("
        for item in obj:
            _write_py2(out, item, protocol, encoding)
        out += b"t"
    elif isinstance(obj, dict):
        out += b"}" if protocol == 2 else b"(d"
        if protocol == 2 and obj:
            out += b"("
        for key, value in obj.items():
            _write_py2(out, key, protocol, encoding)
            _write_py2(out, value, protocol, encoding)
            if protocol == 0:
                out += b"s"
        if protocol == 2 and obj:
            out += b"u"
    else:
        raise TypeError(f"python2_pickle cannot write {type(obj).__name__}")


# ----------------------------------------------------------------------------- writing a layout


@dataclass(frozen=True)
class ReferFixture:
    """Where ``write_refer_dataset`` put things."""

    root: Path
    name: str
    split_by: str
    folder: Path
    refs_path: Path
    instances_path: Path
    images_dir: Path


def write_refer_dataset(
    root: str | Path,
    name: str = "refcoco",
    split_by: str | None = None,
    refs: list[dict] = (),
    images: list[dict] = (),
    annotations: list[dict] = (),
    protocol: int = 2,
    python2: bool = True,
    str_encoding: str = "latin1",
    write_images: bool = True,
    images_dir: str | Path | None = None,
    categories: list[dict] | None = None,
) -> ReferFixture:
    """Write a refer-layout dataset under ``root`` and return its paths.

    ``python2=True`` writes the pickle as Python 2 did (see :func:`python2_pickle`; protocol 0 or
    2); ``python2=False`` uses this Python's pickle with ``protocol``. Images (solid-colour JPEGs
    of the entries' sizes) go to ``images_dir``, by default the registry's folder under ``root``.
    """
    spec = get_dataset(name)
    root = Path(root)
    split_by = split_by or spec.split_by
    refs_path = spec.refs_path(root, split_by)
    instances_path = spec.instances_path(root)
    refs_path.parent.mkdir(parents=True, exist_ok=True)
    payload = list(refs)
    if python2:
        data = python2_pickle(payload, protocol, str_encoding)
    else:
        data = pickle.dumps(payload, protocol=protocol)
    refs_path.write_bytes(data)
    instances = {
        "info": {"description": f"ppcr test fixture for {name}"},
        "licenses": [],
        "images": list(images),
        "annotations": list(annotations),
        "categories": categories if categories is not None else DEFAULT_CATEGORIES,
    }
    instances_path.write_text(json.dumps(instances), encoding="utf-8")
    image_folder = spec.images_dir(root, images_dir)
    if write_images:
        write_image_files(image_folder, images)
    return ReferFixture(
        root, name, split_by, refs_path.parent, refs_path, instances_path, image_folder
    )


def write_image_files(images_dir: Path, images: list[dict]) -> None:
    """Write one small solid-colour image per ``images`` entry, sized as the entry says."""
    from PIL import Image

    images_dir.mkdir(parents=True, exist_ok=True)
    for entry in images:
        shade = (entry["id"] * 37) % 256
        Image.new("RGB", (entry["width"], entry["height"]), (shade, 255 - shade, 128)).save(
            images_dir / entry["file_name"]
        )


# ----------------------------------------------------------------------------- a ready-made example


@dataclass(frozen=True)
class ReferExample:
    refs: list[dict]
    images: list[dict]
    annotations: list[dict]


# Per split: (images, refs, sentences) of small_example(), counted by hand.
SMALL_EXAMPLE_COUNTS = {
    "unc": {"train": (2, 3, 4), "val": (1, 1, 2), "testA": (1, 1, 1), "testB": (1, 1, 3)},
    "umd": {"train": (2, 3, 4), "val": (1, 1, 2), "test": (2, 2, 4)},
}
SMALL_EXAMPLE_IMAGES = 5


def two_square_polygons() -> list[list[float]]:
    """Two overlapping squares of one object: [2,12]² and [8,18]² (overlap [8,12]²)."""
    return [rectangle_polygon(2, 2, 12, 12), rectangle_polygon(8, 8, 18, 18)]


def blob_mask(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def small_example(splits: tuple[str, ...] = ("train", "val", "testA", "testB")) -> ReferExample:
    """Five images, six refs, eleven sentences; one unreferenced annotation.

    With refcocog-style splits (no testA/testB) the testA and testB refs both go to ``test``.
    """
    test_a = "testA" if "testA" in splits else "test"
    test_b = "testB" if "testB" in splits else "test"
    images = [
        make_image(1, 40, 30),
        make_image(2, 40, 30),
        make_image(3, 32, 24),
        make_image(4, 32, 24),
        make_image(5, 32, 24),
    ]
    annotations = [
        make_annotation(101, 1, [2, 2, 16, 16], segmentation=two_square_polygons()),
        make_annotation(102, 1, [20, 4, 10, 6], category_id=2),
        make_annotation(
            103, 2, [5, 3, 10, 7], segmentation=compressed_rle(blob_mask(30, 40, 3, 5, 10, 15))
        ),
        make_annotation(
            104, 3, [4, 2, 6, 5], segmentation=uncompressed_rle(blob_mask(24, 32, 2, 4, 7, 10))
        ),
        make_annotation(105, 4, [1, 1, 8, 8]),
        make_annotation(106, 5, [10, 10, 12, 6]),
        make_annotation(107, 2, [0, 0, 4, 4]),  # referenced by no ref
    ]
    refs = [
        make_ref(5, 105, 4, test_a, ["man on left"]),
        make_ref(
            1, 101, 1, "train", ["the two boxes", "both squares"],
            raws=["THE TWO BOXES", "Both squares!"], sent_order=[1, 0],
        ),
        make_ref(3, 103, 2, "train", ["rle blob"]),
        make_ref(2, 102, 1, "train", ["  small rectangle "], category_id=2),
        make_ref(6, 106, 5, test_b, ["a bottle", "green bottle", "bottle right"]),
        make_ref(4, 104, 3, "val", ["uncompressed blob", "the blob"]),
    ]
    return ReferExample(refs, images, annotations)


def write_example(
    root: str | Path, example: ReferExample, name: str = "refcoco", **options
) -> ReferFixture:
    """Write a :class:`ReferExample` (e.g. an edited ``small_example()``) in the refer layout."""
    return write_refer_dataset(
        root,
        name=name,
        refs=example.refs,
        images=example.images,
        annotations=example.annotations,
        **options,
    )


def write_small_example(
    root: str | Path, name: str = "refcoco", split_by: str | None = None, **options
) -> ReferFixture:
    """``small_example`` written in the refer layout for dataset ``name`` (its splits)."""
    spec = get_dataset(name)
    default_split_by = (split_by or spec.split_by) == spec.split_by
    example = small_example(spec.splits if default_split_by else ("train", "val", "test"))
    return write_refer_dataset(
        root,
        name=name,
        split_by=split_by,
        refs=example.refs,
        images=example.images,
        annotations=example.annotations,
        **options,
    )

"""Reader for datasets in the refer layout (RefCOCO, RefCOCO+, RefCOCOg, Shapes-Ref).

``<root>/<folder>/refs(<split_by>).p`` lists the referred objects ("refs"), each with its
sentences; ``<root>/<folder>/instances.json`` holds the COCO images and annotations the refs point
at (bbox and polygon/RLE mask). One sample is one sentence.

Order (deterministic, so evaluation dumps are reproducible): refs sorted by ``ref_id``, and each
ref's sentences in its ``sent_ids`` order. ``samples_by_image`` groups by ascending ``image_id``,
keeping that order inside an image.

Split selection follows the original ``refer.py``: ``train``/``val`` match exactly; ``testA``,
``testB``, ``testC`` also match combined values such as ``testAB`` (only refclef carries those);
``test`` matches every ``test*`` value. For the registered datasets this is an exact match.

The parsed files are shared between splits through :class:`ReferIndex` and a small in-process
cache keyed on the files' size and mtime. We deliberately write no on-disk index: the pickle and
JSON load in seconds, and a second copy would only add a staleness problem.
"""

from __future__ import annotations

import difflib
import json
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ppcr.data.annotations import bbox_problem, image_size_problem, segmentation_problem
from ppcr.data.datasets import GOOGLE_SPLITS, DatasetSpec, get_dataset
from ppcr.data.pickles import load_refs_pickle
from ppcr.errors import DataError

REQUIRED_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
_PREPARE_HINT = "run `ppcr prepare <dataset>` to list every invalid annotation"
_CACHE_SIZE = 4


@dataclass(frozen=True)
class ReferSample:
    """One referring expression with the object and image it refers to."""

    dataset: str
    split: str
    ref_id: int
    ann_id: int
    sent_id: int
    image_id: int
    file_name: str
    image_path: Path
    width: int
    height: int
    text: str
    raw: str
    category_id: int | None
    box_xyxy: tuple[float, float, float, float]


def _did_you_mean(value: str, choices) -> str | None:
    """Closest choice, ignoring case first (``testa`` → ``testA``, not ``testB``)."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=1)
    return f"did you mean {by_lower[close[0]]!r}?" if close else None


def valid_splits(spec: DatasetSpec, split_by: str) -> tuple[str, ...]:
    """Split names a ``refs(<split_by>).p`` of this dataset may be asked for."""
    if split_by == spec.split_by:
        return spec.splits
    if split_by == "google" and "google" in spec.other_split_bys:
        return GOOGLE_SPLITS[spec.name]
    known = (spec.split_by, *spec.other_split_bys)
    raise DataError(
        f"unknown split_by {split_by!r} for {spec.name}; valid: {', '.join(known)}",
        hint=_did_you_mean(split_by, known),
    )


def split_matches(ref_split: str, split: str) -> bool:
    """refer.py's ``getRefIds`` split semantics (see the module docstring)."""
    if split in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and split[-1] in ref_split[4:]
    if split == "test":
        return ref_split.startswith("test")
    return ref_split == split


def ordered_sentences(ref: dict, source: Path | str = "refs") -> list[dict]:
    """A ref's sentence dicts in ``sent_ids`` order (list order when ``sent_ids`` is absent)."""
    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        raise DataError(f"{source}: ref {ref['ref_id']}: 'sentences' is not a list of dicts")
    sent_ids = ref.get("sent_ids")
    if sent_ids is None:
        return sentences
    by_id = {s.get("sent_id"): s for s in sentences}
    missing = [sid for sid in sent_ids if sid not in by_id]
    if missing:
        raise DataError(
            f"{source}: ref {ref['ref_id']} lists sent_ids {missing} that are not in its sentences"
        )
    return [by_id[sid] for sid in sent_ids]


def _file_signature(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _load_instances(path: Path, wanted_ann_ids: set) -> tuple[dict[int, dict], dict[int, dict]]:
    """All images, and only the annotations the refs use (the rest is memory we never need)."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(
            f"instances.json not found: {path}",
            hint="expected the refer layout <root>/<dataset>/instances.json",
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} is not valid JSON ({error})", hint="re-download or re-extract the dataset zip"
        ) from None
    except RecursionError:
        raise DataError(
            f"{path} nests its JSON too deeply to be a COCO instances file",
            hint="re-download or re-extract the dataset zip",
        ) from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise DataError(f"{path} is not a COCO instances file (needs 'images' and 'annotations')")
    images: dict[int, dict] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise DataError(f"{path}: an image entry lacks 'id' or 'file_name'")
        if type(entry["id"]) is not int or type(entry["file_name"]) is not str:
            raise DataError(f"{path}: an image entry's id is not an integer or its file_name not a string")
        images[entry["id"]] = entry
    anns: dict[int, dict] = {}
    for entry in data["annotations"]:
        if not isinstance(entry, dict) or "id" not in entry:
            raise DataError(f"{path}: an annotation entry lacks 'id'")
        if type(entry["id"]) is not int:
            raise DataError(f"{path}: an annotation entry's id is a {type(entry['id']).__name__}, not an integer")
        if entry["id"] in wanted_ann_ids:
            anns[entry["id"]] = entry
    return images, anns


def _layout_hint(root: Path, folder: str, split_by: str) -> str:
    return f"expected the refer layout {root}/{folder}/{{refs({split_by}).p,instances.json}}"


class ReferIndex:
    """The parsed refs pickle and instances.json of one dataset, shared by all its splits."""

    def __init__(
        self,
        spec: DatasetSpec,
        root: Path,
        split_by: str,
        refs: list[dict],
        images: dict[int, dict],
        anns: dict[int, dict],
    ):
        self.spec = spec
        self.root = root
        self.split_by = split_by
        self.refs = tuple(refs)
        self.images = images
        self.anns = anns
        self.splits = valid_splits(spec, split_by)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def refs_path(self) -> Path:
        return self.spec.refs_path(self.root, self.split_by)

    @property
    def instances_path(self) -> Path:
        return self.spec.instances_path(self.root)

    @classmethod
    def load(cls, name: str, root: str | Path, split_by: str | None = None) -> "ReferIndex":
        """Load (or reuse from the in-process cache) dataset ``name``'s index under ``root``."""
        spec = get_dataset(name)
        split_by = split_by or spec.split_by
        valid_splits(spec, split_by)
        root = Path(root)
        if not root.is_dir():
            raise DataError(
                f"data root not found: {root}",
                hint="the data root is the folder holding refcoco/, refcoco+/, refcocog/ and images/",
            )
        folder = root / spec.folder
        if not folder.is_dir():
            raise DataError(
                f"{spec.name}: folder {folder} not found",
                hint=_layout_hint(root, spec.folder, split_by),
            )
        refs_path = spec.refs_path(root, split_by)
        instances_path = spec.instances_path(root)
        signature = []
        for path in (refs_path, instances_path):
            try:
                signature.append(_file_signature(path))
            except FileNotFoundError:
                what = "refs pickle" if path == refs_path else "instances.json"
                raise DataError(
                    f"{spec.name}: {what} not found: {path}",
                    hint=_layout_hint(root, spec.folder, split_by),
                ) from None
        key = (spec.name, str(root.resolve()), split_by, tuple(signature))
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
                return cached
        index = cls._read(spec, root, split_by, refs_path, instances_path)
        with _CACHE_LOCK:
            _CACHE[key] = index
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return index

    @classmethod
    def _read(
        cls, spec: DatasetSpec, root: Path, split_by: str, refs_path: Path, instances_path: Path
    ) -> "ReferIndex":
        refs = load_refs_pickle(refs_path)
        for position, ref in enumerate(refs):
            for key in REQUIRED_REF_KEYS:
                if key not in ref:
                    raise DataError(f"{refs_path}: record {position} lacks the key {key!r}")
            for key in ("ref_id", "ann_id", "image_id"):
                if type(ref[key]) is not int:
                    kind = type(ref[key]).__name__
                    raise DataError(f"{refs_path}: record {position}: {key} is a {kind}, expected an integer")
            if type(ref["split"]) is not str:
                kind = type(ref["split"]).__name__
                raise DataError(f"{refs_path}: record {position}: split is a {kind}, expected str")
        refs.sort(key=lambda ref: ref["ref_id"])
        images, anns = _load_instances(instances_path, {ref["ann_id"] for ref in refs})
        return cls(spec, root, split_by, refs, images, anns)

    def check_split(self, split: str) -> str:
        if split not in self.splits:
            raise DataError(
                f"unknown split {split!r} for {self.name} ({self.split_by}); "
                f"valid splits: {', '.join(self.splits)}",
                hint=_did_you_mean(split, self.splits),
            )
        return split

    def refs_in_split(self, split: str) -> list[dict]:
        """The refs of a (checked) split, in ``ref_id`` order."""
        self.check_split(split)
        return [ref for ref in self.refs if split_matches(str(ref["split"]), split)]

    def split(self, split: str, images: str | Path | None = None) -> "ReferDataset":
        """The samples of one split; ``images`` overrides the registry's image folder."""
        return ReferDataset._from_index(self, split, images)


_CACHE: "OrderedDict[tuple, ReferIndex]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_index_cache() -> None:
    """Forget every cached :class:`ReferIndex` (tests; long-lived processes after edits)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class ReferDataset:
    """The sentences of one split of a refer-layout dataset, in the documented order."""

    def __init__(
        self,
        name: str,
        root: str | Path,
        split: str,
        images: str | Path | None = None,
        split_by: str | None = None,
    ):
        index = ReferIndex.load(name, root, split_by)
        self._init(index, split, images)

    @classmethod
    def _from_index(
        cls, index: ReferIndex, split: str, images: str | Path | None
    ) -> "ReferDataset":
        dataset = cls.__new__(cls)
        dataset._init(index, split, images)
        return dataset

    def _init(self, index: ReferIndex, split: str, images: str | Path | None) -> None:
        self.index = index
        self.split = index.check_split(split)
        self.images_dir = index.spec.images_dir(index.root, images)
        self._samples = tuple(self._build_samples())

    @property
    def name(self) -> str:
        return self.index.name

    @property
    def split_by(self) -> str:
        return self.index.split_by

    def _dangling(self, ref: dict, kind: str, target_id: Any) -> DataError:
        """A ref whose annotation or image is missing from the instances file."""
        return DataError(
            f"{self.name}: ref {ref['ref_id']} points at {kind} {target_id}, "
            f"which is not in {self.index.instances_path}",
            hint=f"run `ppcr prepare {self.name}` to check the layout",
        )

    def _invalid(self, ref: dict, problem: str) -> DataError:
        """A ref whose annotation or image entry cannot be used as it is."""
        return DataError(
            f"{self.name}: annotation {ref['ann_id']} (ref {ref['ref_id']}) in "
            f"{self.index.instances_path}: {problem}",
            hint=f"run `ppcr prepare {self.name}` to list every invalid annotation",
        )

    def _build_samples(self) -> Iterator[ReferSample]:
        source = self.index.refs_path
        for ref in self.index.refs_in_split(self.split):
            ann = self.index.anns.get(ref["ann_id"])
            if ann is None:
                raise self._dangling(ref, "annotation", ref["ann_id"])
            image = self.index.images.get(ref["image_id"])
            if image is None:
                raise self._dangling(ref, "image", ref["image_id"])
            problem = image_size_problem(image) or bbox_problem(ann.get("bbox"), image["width"], image["height"])
            if problem:
                raise self._invalid(ref, problem)
            box = _box_xyxy(ann["bbox"])
            category = ref.get("category_id", ann.get("category_id"))
            for sentence in ordered_sentences(ref, source):
                if "sent" not in sentence and "raw" not in sentence:
                    raise DataError(f"{source}: ref {ref['ref_id']} has a sentence without 'sent'")
                text = str(sentence.get("sent", sentence.get("raw"))).strip()
                yield ReferSample(
                    dataset=self.name,
                    split=self.split,
                    ref_id=ref["ref_id"],
                    ann_id=ref["ann_id"],
                    sent_id=sentence.get("sent_id", -1),
                    image_id=ref["image_id"],
                    file_name=image["file_name"],
                    image_path=self.images_dir / image["file_name"],
                    width=int(image["width"]),
                    height=int(image["height"]),
                    text=text,
                    raw=str(sentence.get("raw", text)),
                    category_id=category,
                    box_xyxy=box,
                )

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, position: int) -> ReferSample:
        return self._samples[position]

    def __iter__(self) -> Iterator[ReferSample]:
        return iter(self._samples)

    def __repr__(self) -> str:
        return (
            f"ReferDataset({self.name!r}, split={self.split!r}, split_by={self.split_by!r}, "
            f"samples={len(self)})"
        )

    def image_ids(self) -> list[int]:
        """Distinct image ids of the split, ascending."""
        return sorted({sample.image_id for sample in self._samples})

    def samples_by_image(self) -> "OrderedDict[int, list[ReferSample]]":
        """Samples grouped by image (ascending image id), sample order kept inside each group."""
        groups: dict[int, list[ReferSample]] = {}
        for sample in self._samples:
            groups.setdefault(sample.image_id, []).append(sample)
        return OrderedDict((image_id, groups[image_id]) for image_id in sorted(groups))

    def mask(self, sample: ReferSample) -> np.ndarray:
        """The ground-truth mask of ``sample`` as a bool ``H×W`` array (union of all parts)."""
        ann = self.index.anns[sample.ann_id]
        return annotation_mask(ann, sample.height, sample.width)


def _box_xyxy(bbox: list) -> tuple[float, float, float, float]:
    """XYXY from a COCO ``[x, y, w, h]`` already checked by :func:`bbox_problem`."""
    x, y, w, h = (float(v) for v in bbox)
    return (x, y, x + w, y + h)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of an H×W mask (the inverse of :func:`annotation_mask`) with ``counts`` as text, so it can go into JSON as it is."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=bool).astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation (polygons, compressed or uncompressed RLE) to bool ``H×W``.

    Parts are OR-ed, never summed, so overlapping polygons of one object stay binary. The
    segmentation is checked first (:func:`~ppcr.data.annotations.segmentation_problem`):
    pycocotools itself decodes a malformed RLE into uninitialised memory without complaint.
    """
    from pycocotools import mask as mask_utils

    segmentation = ann.get("segmentation")
    problem = segmentation_problem(segmentation, width, height)
    if problem:
        raise DataError(f"annotation {ann.get('id')}: {problem}", hint=_PREPARE_HINT)
    rles = []
    polygons = []
    for part in [segmentation] if isinstance(segmentation, dict) else segmentation:
        if isinstance(part, dict):
            rles.append(_rle(part, height, width, mask_utils))
        elif len(part) >= 6:
            # Fewer than three points has no area, and pycocotools would read a 4-number list
            # as a bbox.
            polygons.append([float(v) for v in part])
    if polygons:
        rles.extend(mask_utils.frPyObjects(polygons, height, width))
    if not rles:
        return np.zeros((height, width), dtype=bool)
    with warnings.catch_warnings():
        # pycocotools' decode trips a numpy-2 DeprecationWarning about __array__(copy=...).
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(rles)
    return np.asarray(decoded > 0).any(axis=2)


def _rle(segmentation: dict, height: int, width: int, mask_utils) -> dict:
    """A checked RLE part in the form pycocotools decodes."""
    counts = segmentation["counts"]
    if isinstance(counts, (list, tuple)):
        return mask_utils.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)
    return {"size": [height, width], "counts": counts.encode("ascii")}

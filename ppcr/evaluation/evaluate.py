"""Score a PPCR model on every sentence of a refer-layout split (docs/design.md, "Evaluation").

Image-grouped mode (the default): the split's sentences are grouped by image; each image is read
and encoded once (CLIP tokens + SAM embedding, :meth:`PPCRModel.encode_images`), and all its
sentences run through both LLM stages and SAM as one batch against those features, sharing the
image's prompt prefix (``share_prefix=True``). Several small images fill one batch of up to
``batch_size`` sentences; an image with more sentences is encoded once and prompted in chunks.

Naive mode (``naive=True``, for comparison): every sentence gets its own copy of its image,
read and encoded for it alone, without a shared prefix — what a per-sample evaluation loop does.
The sentences are still batched, so the difference measured is only the sharing. Both modes
give the same masks.

Whatever the processing order, results are reported in the reader's fixed order (refs by
``ref_id``, sentences in ``sent_ids`` order). With a :class:`~ppcr.evaluation.sharding.Shard` of
several processes each scores its share of the batches and the rows are gathered; rank 0 writes
the files (``ppcr.evaluation.processes`` starts the processes). Timing (``seconds``) covers reading and
preprocessing the images, the model and the scoring, not the loading of the annotation index
nor the writing of the outputs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from ppcr.config.schema import BoxSource, choices
from ppcr.data.refer import ReferDataset, ReferSample
from ppcr.errors import ImageError, PPCRError
from ppcr.evaluation.data import load_split
from ppcr.evaluation.metrics import IoUAccumulator, intersection_union, iou_from_counts
from ppcr.evaluation.outputs import (
    METRICS_FILE,
    PER_SENTENCE_FILE,
    VIS_DIR,
    SentenceResult,
    check_eval_destination,
    split_dir_name,
    write_metrics,
    write_per_sentence,
)
from ppcr.evaluation.sharding import Shard
from ppcr.images import load_image
from ppcr.io import atomic_directory

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.processor import PPCRProcessor

BOX_SOURCES = choices(BoxSource)
GT_MASK_CACHE = 64  # decoded ground-truth masks kept (an image's refs come together)
# progress(label, sentences done in this split, sentences in this split)
ProgressFn = Callable[[str, int, int], None]
# on_prediction(sample, predicted bool H×W mask, its scored row): e.g. to keep or save masks
PredictionHook = Callable[[ReferSample, np.ndarray, SentenceResult], None]


@dataclass
class EvalResult:
    """One split's evaluation: the metrics, every sentence's row and where the files went."""

    dataset: str
    split: str
    box_source: str
    mode: str
    metrics: dict[str, Any]
    sentences: list[SentenceResult]
    images: int
    seconds: float
    batch_size: int
    model: Optional[str] = None
    model_settings: dict[str, str] = field(default_factory=dict)
    data_root: Optional[str] = None
    images_dir: Optional[str] = None
    device: Optional[str] = None
    out_dir: Optional[Path] = None
    vis_paths: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.split}"

    @property
    def sentences_per_second(self) -> Optional[float]:
        return len(self.sentences) / self.seconds if self.seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        """The content of ``metrics.json``: metrics first, then provenance."""
        from ppcr.version import __version__

        return {
            **self.metrics,
            "dataset": self.dataset,
            "split": self.split,
            "box_source": self.box_source,
            "model": self.model,
            **self.model_settings,
            "mode": self.mode,
            "images": self.images,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 4),
            "sentences_per_second": None
            if self.sentences_per_second is None
            else round(self.sentences_per_second, 4),
            "data_root": self.data_root,
            "images_dir": self.images_dir,
            "device": self.device,
            "ppcr_version": __version__,
        }


@dataclass
class _Pending:
    """A sentence waiting for its prediction: where it goes in the reader order and its image."""

    position: int
    sample: ReferSample
    image: "Image.Image"


def _check_options(box_source: str, batch_size: int, save_vis: int) -> None:
    if box_source not in BOX_SOURCES:
        raise PPCRError(f"unknown box_source {box_source!r}; valid: {', '.join(BOX_SOURCES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PPCRError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(save_vis, bool) or not isinstance(save_vis, int) or save_vis < 0:
        raise PPCRError(f"save_vis must be a non-negative integer, got {save_vis!r}")


def _gt_box_normalised(sample: ReferSample) -> list[float]:
    x1, y1, x2, y2 = sample.box_xyxy
    width, height = float(sample.width), float(sample.height)
    return [min(max(v, 0.0), 1.0) for v in (x1 / width, y1 / height, x2 / width, y2 / height)]


def _read_image(sample: ReferSample) -> "Image.Image":
    image = load_image(sample.image_path)
    if (image.height, image.width) != (sample.height, sample.width):
        raise ImageError(
            f"{sample.image_path} is {image.width}×{image.height} pixels but the annotations "
            f"say {sample.width}×{sample.height}",
            hint="the images folder does not match this dataset; check --images",
        )
    return image


def _model_settings(model: "PPCRModel") -> dict[str, str]:
    return {"spatial_prompt": model.spec.spatial_prompt, "spatial_head": model.spec.spatial_head}


def _model_device(model: "PPCRModel") -> torch.device:
    return next(model.parameters()).device


class _Scorer:
    """Runs batches of pending sentences through the model and scores them."""

    def __init__(
        self,
        model: "PPCRModel",
        processor: "PPCRProcessor",
        data: ReferDataset,
        box_source: str,
        keep_for_vis: int,
        on_prediction: Optional[PredictionHook],
    ):
        self.model = model
        self.processor = processor
        self.data = data
        self.box_source = box_source
        self.keep_for_vis = keep_for_vis
        self.on_prediction = on_prediction
        self.device = _model_device(model)
        self.rows: dict[int, SentenceResult] = {}
        self.vis: dict[int, tuple[ReferSample, "Image.Image", np.ndarray]] = {}
        self._gt_masks: "OrderedDict[int, np.ndarray]" = OrderedDict()

    def gt_mask(self, sample: ReferSample) -> np.ndarray:
        """The sample's ground-truth mask; the sentences of one ref share one decoded mask."""
        mask = self._gt_masks.get(sample.ann_id)
        if mask is None:
            mask = self.data.mask(sample)
            self._gt_masks[sample.ann_id] = mask
            while len(self._gt_masks) > GT_MASK_CACHE:
                self._gt_masks.popitem(last=False)
        return mask

    def encode(self, images: Sequence["Image.Image"]):
        inputs = self.processor.images(list(images)).to(self.device)
        return self.model.encode_images(inputs)

    def run(self, features, pending: Sequence[_Pending], image_index: Sequence[int], share_prefix: bool) -> None:
        samples = [item.sample for item in pending]
        text = self.processor.texts([s.text for s in samples], list(image_index)).to(self.device)
        gt_boxes = None
        if self.box_source == "gt":
            gt_boxes = torch.tensor([_gt_box_normalised(s) for s in samples], dtype=torch.float32)
            gt_boxes = gt_boxes.to(self.device)
        prediction = self.model.segment(
            features, text, box_source=self.box_source, gt_boxes=gt_boxes, share_prefix=share_prefix
        )
        boxes = None if prediction.boxes is None else prediction.boxes.float().cpu().numpy()
        scores = prediction.scores.float().cpu().numpy()
        for row, item in enumerate(pending):
            mask = (prediction.mask_logits[row] > 0).cpu().numpy()
            self._score(item, mask, None if boxes is None else boxes[row], float(scores[row]))

    def _score(self, item: _Pending, mask: np.ndarray, box: Optional[np.ndarray], score: float) -> None:
        sample = item.sample
        gt = self.gt_mask(sample)
        intersection, union = intersection_union(mask, gt)
        pixel_box = None
        if box is not None:
            scale = np.array([sample.width, sample.height, sample.width, sample.height], dtype=np.float64)
            x1, y1, x2, y2 = (box.astype(np.float64) * scale).tolist()
            pixel_box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        result = SentenceResult(
            ref_id=int(sample.ref_id),
            sent_id=int(sample.sent_id),
            image_id=int(sample.image_id),
            ann_id=int(sample.ann_id),
            sentence=sample.text,
            iou=iou_from_counts(intersection, union),
            intersection=intersection,
            union=union,
            pred_area=int(np.count_nonzero(mask)),
            box_xyxy=pixel_box,
            score=score,
        )
        self.rows[item.position] = result
        if item.position < self.keep_for_vis:
            self.vis[item.position] = (sample, item.image, mask)
        if self.on_prediction is not None:
            self.on_prediction(sample, mask, result)


def _grouped_batches(groups: Sequence[list[Any]], batch_size: int) -> list[list[list[Any]]]:
    """Pack whole images into batches of at most ``batch_size`` sentences (a bigger image alone)."""
    batches: list[list[list[Any]]] = []
    current: list[list[Any]] = []
    count = 0
    for group in groups:
        if current and count + len(group) > batch_size:
            batches.append(current)
            current, count = [], 0
        current.append(group)
        count += len(group)
    if current:
        batches.append(current)
    return batches


def _image_groups(data: ReferDataset) -> list[list[tuple[int, ReferSample]]]:
    """(reader position, sample) grouped by image, images in ascending id (``samples_by_image``)."""
    groups: dict[int, list[tuple[int, ReferSample]]] = {}
    for position, sample in enumerate(data):
        groups.setdefault(sample.image_id, []).append((position, sample))
    return [groups[image_id] for image_id in sorted(groups)]


def _grouped_work(data: ReferDataset, batch_size: int, shard: Shard) -> list[list[list[tuple[int, ReferSample]]]]:
    """This rank's batches of whole images."""
    return shard.take(_grouped_batches(_image_groups(data), batch_size))


def _naive_work(data: ReferDataset, batch_size: int, shard: Shard) -> list[int]:
    """This rank's batches of the naive mode, as start positions in the reader order."""
    return shard.take(range(0, len(data), batch_size))


def _run_grouped(
    scorer: _Scorer, data: ReferDataset, work: list, batch_size: int, advance: Callable[[int], None]
) -> None:
    for batch in work:
        images = [_read_image(group[0][1]) for group in batch]
        features = scorer.encode(images)
        flat = [
            (image_index, _Pending(position, sample, images[image_index]))
            for image_index, group in enumerate(batch)
            for position, sample in group
        ]
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            scorer.run(features, [p for _, p in chunk], [i for i, _ in chunk], share_prefix=True)
            advance(len(chunk))


def _run_naive(
    scorer: _Scorer, data: ReferDataset, work: list, batch_size: int, advance: Callable[[int], None]
) -> None:
    samples = list(data)
    for start in work:
        chunk = samples[start : start + batch_size]
        images = [_read_image(sample) for sample in chunk]
        features = scorer.encode(images)
        pending = [_Pending(start + k, sample, image) for k, (sample, image) in enumerate(zip(chunk, images))]
        scorer.run(features, pending, list(range(len(chunk))), share_prefix=False)
        advance(len(chunk))


def _write_outputs(result: EvalResult, scorer: _Scorer, data: ReferDataset, out_dir: Path) -> Path:
    """Write metrics.json, per_sentence.csv and the panels into ``<out>/<dataset>_<split>/``.

    The folder is built beside its destination and renamed into place, so a reader sees either
    the previous complete results or the new complete ones.
    """
    from ppcr.evaluation.render import PanelInputs, save_panel

    destination = Path(out_dir) / split_dir_name(result.dataset, result.split)
    vis_names = []
    with atomic_directory(destination) as tmp:
        write_per_sentence(tmp / PER_SENTENCE_FILE, result.sentences)
        for position in sorted(scorer.vis):
            sample, image, mask = scorer.vis[position]
            row = scorer.rows[position]
            name = f"{position:05d}_ref{sample.ref_id}_sent{sample.sent_id}.png"
            save_panel(
                PanelInputs(
                    image=image,
                    gt_mask=scorer.gt_mask(sample),
                    pred_mask=mask,
                    gt_box=sample.box_xyxy,
                    pred_box=row.box_xyxy,
                    sentence=sample.text,
                    iou=row.iou,
                ),
                tmp / VIS_DIR / name,
            )
            vis_names.append(name)
        write_metrics(tmp / METRICS_FILE, result.to_json())
    result.out_dir = destination
    result.vis_paths = [destination / VIS_DIR / name for name in vis_names]
    return destination


def _evaluate_split(
    model: "PPCRModel",
    processor: "PPCRProcessor",
    data: ReferDataset,
    *,
    box_source: str,
    out_dir: Optional[str | Path],
    save_vis: int,
    batch_size: int,
    naive: bool,
    progress: Optional[ProgressFn],
    model_name: Optional[str],
    on_prediction: Optional[PredictionHook],
    shard: Shard,
) -> EvalResult:
    label = f"{data.name}/{data.split}"
    total = len(data)
    work = (_naive_work if naive else _grouped_work)(data, batch_size, shard)
    # Progress counts this rank's sentences (all of them for one process).
    mine = sum(min(batch_size, total - start) for start in work) if naive else sum(len(g) for b in work for g in b)
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(label, done, mine)

    if progress is not None:
        progress(label, 0, mine)
    scorer = _Scorer(model, processor, data, box_source, save_vis, on_prediction)
    started = time.perf_counter()
    (_run_naive if naive else _run_grouped)(scorer, data, work, batch_size, advance)
    if scorer.device.type == "cuda":
        torch.cuda.synchronize(scorer.device)
    scorer.rows = shard.gather(scorer.rows)
    scorer.vis = shard.gather(scorer.vis) if save_vis else scorer.vis
    seconds = time.perf_counter() - started

    rows = [scorer.rows[position] for position in range(total)]
    accumulator = IoUAccumulator()
    for row in rows:
        accumulator.add_counts(row.intersection, row.union)
    result = EvalResult(
        dataset=data.name,
        split=data.split,
        box_source=box_source,
        mode="naive" if naive else "grouped",
        metrics=accumulator.result(),
        sentences=rows,
        images=len(data.image_ids()),
        seconds=seconds,
        batch_size=batch_size,
        model=model_name,
        model_settings=_model_settings(model),
        data_root=str(data.index.root),
        images_dir=str(data.images_dir),
        device=str(scorer.device),
    )
    if out_dir is not None and shard.is_main:
        _write_outputs(result, scorer, data, Path(out_dir))
    return result


def evaluate_many(
    model: "PPCRModel",
    dataset: str,
    splits: Sequence[str],
    data_root: str | Path,
    *,
    images: str | Path | None = None,
    box_source: str = "predicted",
    out_dir: Optional[str | Path] = None,
    save_vis: int = 0,
    batch_size: int = 16,
    naive: bool = False,
    progress: Optional[ProgressFn] = None,
    model_name: Optional[str] = None,
    on_prediction: Optional[PredictionHook] = None,
    shard: Optional[Shard] = None,
) -> list[EvalResult]:
    """Score ``model`` on every sentence of each of ``splits`` of ``dataset`` under ``data_root``.

    Every split, and the output folder, is checked before any runs. ``images`` overrides the
    dataset's image folder; ``box_source="gt"`` feeds SAM the ground-truth box (Table 3's
    oracle). With ``out_dir`` the files of :mod:`ppcr.evaluation.outputs` are written to
    ``out_dir/<dataset>_<split>/`` (``save_vis``: Fig. 6 panels of the first N sentences).
    ``progress(label, done, total)`` is called as sentences finish; ``on_prediction(sample,
    mask, row)`` sees every predicted mask.
    ``model_name`` (e.g. the checkpoint directory) is recorded in ``metrics.json``.

    ``shard``: this process's place when several score the splits together (every rank must
    call this with the same arguments); each scores its share, all get every row back, rank 0
    writes the files, ``on_prediction`` sees this rank's sentences, ``progress`` counts them.
    """
    _check_options(box_source, batch_size, save_vis)
    shard = shard or Shard()
    if not splits:
        raise PPCRError("no split to evaluate", hint="name at least one split, e.g. val")
    loaded = [load_split(dataset, split, data_root, images) for split in dict.fromkeys(splits)]
    if out_dir is not None:
        inputs = [data_root, *(data.images_dir for data in loaded)]
        check_eval_destination(out_dir, dataset, [data.split for data in loaded], inputs)
    from ppcr.modeling.processor import PPCRProcessor

    processor = PPCRProcessor.from_model(model)
    was_training = model.training
    model.eval()
    try:
        return [
            _evaluate_split(
                model,
                processor,
                data,
                box_source=box_source,
                out_dir=out_dir,
                save_vis=save_vis,
                batch_size=batch_size,
                naive=naive,
                progress=progress,
                model_name=model_name,
                on_prediction=on_prediction,
                shard=shard,
            )
            for data in loaded
        ]
    finally:
        model.train(was_training)


def evaluate(model: "PPCRModel", dataset: str, split: str, data_root: str | Path, **options: Any) -> EvalResult:
    """Score ``model`` on every sentence of ``dataset``/``split`` under ``data_root``.

    ``options`` are :func:`evaluate_many`'s keyword options (images, box_source, out_dir,
    save_vis, batch_size, naive, progress, model_name, on_prediction, shard), described there.
    """
    return evaluate_many(model, dataset, [split], data_root, **options)[0]

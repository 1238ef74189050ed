"""Does the box follow the expression? The spread of predicted boxes across one image's sentences.

Why: a model that ignores the expression puts the same box on an image whatever it is asked, and
can still score on Shapes-Ref's ``shapes`` split from location words alone. For the first
``--images`` val images of each dataset this asks for the box of every sentence of the image
(up to eight) and reports the mean, over images, of the boxes' standard deviation across those
sentences (normalised coordinates), next to the same spread of the ground-truth boxes. A spread
near zero means the box head reads the image but not the words.

    .venv/bin/python experiments/probe_expression_use.py [--model DIR] [--images 40] [--tag NAME]

Results are printed and written to ``experiments/results/expression_use_<tag>.json``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
from probe_shapes_learning import write_result

SENTENCES_PER_IMAGE = 8


def box_spreads(model, processor, dataset, images: int) -> tuple[float, float]:
    """(predicted, ground-truth) mean over images of the per-coordinate std across sentences."""
    from ppcr.modeling.processor import PPCRSample

    by_image = defaultdict(list)
    for sample in dataset:
        by_image[sample.image_path].append(sample)
    predicted, truth = [], []
    for path, samples in [(p, s) for p, s in by_image.items() if len(s) > 1][:images]:
        samples = samples[:SENTENCES_PER_IMAGE]
        batch = processor([PPCRSample(path, s.text, box_xyxy=s.box_xyxy, image_key=0) for s in samples])
        with torch.no_grad():
            out = model.segment(model.encode_images(batch.images), batch.text)
        predicted.append(float(out.boxes.std(0).mean()))
        truth.append(float(batch.gt_boxes.std(0).mean()))  # normalised by the processor
    return float(np.mean(predicted)), float(np.mean(truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="PPCR checkpoint (default: the embedded model)")
    parser.add_argument("--data-root", default="data/shapes")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--tag", default="default")
    args = parser.parse_args()

    from ppcr.data.refer import ReferDataset
    from ppcr.inference.model_source import resolve_model_dir
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.processor import PPCRProcessor

    model = PPCRModel.from_pretrained(resolve_model_dir(args.model)).eval()
    if model.box_head is None:
        raise SystemExit("this model has no box head (spatial_prompt=none)")
    processor = PPCRProcessor.from_model(model)
    report = {"model": args.model or "embedded", "images": args.images}
    for name in ("shapes", "shapes+", "shapesg"):
        predicted, truth = box_spreads(model, processor, ReferDataset(name, args.data_root, "val"), args.images)
        report[name] = {"predicted_spread": round(predicted, 4), "ground_truth_spread": round(truth, 4)}
        print(name, report[name], flush=True)
    write_result(f"expression_use_{args.tag}", report)


if __name__ == "__main__":
    main()

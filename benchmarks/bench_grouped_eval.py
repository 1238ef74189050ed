"""Image-grouped vs naive evaluation speed, with the tiny shapes model (random weights).

    .venv/bin/python benchmarks/bench_grouped_eval.py [--images 40] [--per-image 7] [--repeat 3]

A Shapes-Ref split is rewritten so that every image carries ``--per-image`` sentences (7 by
default, about RefCOCO's 7.2 sentences per val image), then ``ppcr.evaluation.evaluate`` scores
it in four settings, interleaved ``--repeat`` times (the fastest time of each is kept, which is
the least disturbed by other work on a shared machine):

- grouped, batch 16 — the default: each image encoded once, its sentences batched together;
- naive, batch 1 — the per-sentence loop (image read and encoded for every sentence, one
  sentence per forward): the headline comparison;
- naive, batch 16 — sentences batched, but every one with its own encoded copy of its image
  (isolates what sharing the image saves at equal batching);
- grouped, batch 1 — image encoded once, sentences one at a time (sharing without batching).

All four must give the same per-sentence intersections and unions (checked). Prints a table and
writes benchmarks/results/grouped_eval.json.
"""

from __future__ import annotations

import argparse
import pickle
import platform
import statistics
import sys
import tempfile
from pathlib import Path

SETTINGS = (
    ("grouped, batch 16", False, 16),
    ("naive, batch 1", True, 1),
    ("naive, batch 16", True, 16),
    ("grouped, batch 1", False, 1),
)
SPLIT = "val"


def write_benchmark_split(root: Path, images: int, per_image: int, seed: int) -> tuple[int, int]:
    """Generate Shapes-Ref and rewrite ``shapes``' refs: ``per_image`` sentences per image in val.

    Returns (images, sentences) of the rewritten val split. Refs beyond the quota go to train.
    """
    from ppcr.data.datasets import get_dataset
    from ppcr.data.pickles import load_refs_pickle
    from ppcr.data.shapes import generate_shapes_ref

    generate_shapes_ref(root, seed=seed, images=images)
    spec = get_dataset("shapes")
    refs = sorted(load_refs_pickle(spec.refs_path(root)), key=lambda ref: (ref["image_id"], ref["ref_id"]))
    taken: dict[int, int] = {}
    for ref in refs:
        room = per_image - taken.get(ref["image_id"], 0)
        if room <= 0:
            ref["split"] = "train"
            continue
        keep = ref["sent_ids"][:room]
        ref["sentences"] = [s for s in ref["sentences"] if s["sent_id"] in keep]
        ref["sent_ids"] = keep
        ref["split"] = SPLIT
        taken[ref["image_id"]] = taken.get(ref["image_id"], 0) + len(keep)
    spec.refs_path(root).write_bytes(pickle.dumps(refs, protocol=2))
    return len(taken), sum(taken.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=40, help="Shapes-Ref images generated (>= 20)")
    parser.add_argument("--per-image", type=int, default=7, help="sentences per image in the split")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the fastest is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadier timing)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grouped_eval.json")
    args = parser.parse_args()

    import torch

    from ppcr.config.loading import load_recipe
    from ppcr.evaluation.evaluate import evaluate
    from ppcr.io import atomic_save_json
    from ppcr.modeling.build import build_model

    torch.set_num_threads(args.threads)
    model = build_model(load_recipe("shapes"), device=args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        n_images, n_sentences = write_benchmark_split(root, args.images, args.per_image, seed=0)
        evaluate(model, "shapes", SPLIT, root, batch_size=16)  # warm-up (lazy initialisation)
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in SETTINGS}
        counts: dict[str, list[tuple[int, int]]] = {}
        for _ in range(args.repeat):
            for name, naive, batch_size in SETTINGS:
                result = evaluate(model, "shapes", SPLIT, root, naive=naive, batch_size=batch_size)
                seconds[name].append(result.seconds)
                counts[name] = [(row.intersection, row.union) for row in result.sentences]
                oiou = result.metrics["oIoU"]
    reference = counts[SETTINGS[0][0]]
    identical = all(rows == reference for rows in counts.values())

    best = {name: min(times) for name, times in seconds.items()}
    grouped = best["grouped, batch 16"]
    speedups = {
        "grouped_vs_naive_per_sentence": best["naive, batch 1"] / grouped,
        "grouped_vs_naive_batched": best["naive, batch 16"] / grouped,
        "grouped_vs_naive_unbatched_both": best["naive, batch 1"] / best["grouped, batch 1"],
    }
    median = {name: statistics.median(times) for name, times in seconds.items()}
    speedups_median = {
        "grouped_vs_naive_per_sentence": median["naive, batch 1"] / median["grouped, batch 16"],
        "grouped_vs_naive_batched": median["naive, batch 16"] / median["grouped, batch 16"],
        "grouped_vs_naive_unbatched_both": median["naive, batch 1"] / median["grouped, batch 1"],
    }
    result_json = {
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}",
        "model": "build_model(load_recipe('shapes')), random init",
        "images": n_images,
        "sentences": n_sentences,
        "sentences_per_image": n_sentences / n_images,
        "repeat": args.repeat,
        "seconds_best": best,
        "seconds_all": seconds,
        "sentences_per_second_best": {name: n_sentences / value for name, value in best.items()},
        "speedup": speedups,
        "seconds_median": median,
        "speedup_median": speedups_median,
        "identical_results": identical,
        "oIoU": oiou,
    }
    atomic_save_json(args.out, result_json)

    print(f"{n_sentences} sentences on {n_images} images ({n_sentences / n_images:.1f} per image), "
          f"best of {args.repeat}:")
    for name, value in best.items():
        print(f"  {name:<18} {value:7.3f} s  {n_sentences / value:7.1f} sentences/s")
    labels = {
        "grouped_vs_naive_per_sentence": "grouped (batch 16) vs naive per-sentence loop",
        "grouped_vs_naive_batched": "grouped vs naive at equal batch 16",
        "grouped_vs_naive_unbatched_both": "grouped vs naive, both unbatched",
    }
    for key, label in labels.items():
        print(f"speed-up, {label + ':':<48} {speedups[key]:.2f}x (median {speedups_median[key]:.2f}x)")
    print(f"identical per-sentence results in all settings: {identical}")
    print(f"wrote {args.out}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()

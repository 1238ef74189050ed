"""Training throughput of the shapes recipe on this machine (samples/s).

    .venv/bin/python benchmarks/bench_train_shapes.py [--steps 60] [--data data/shapes]

Generates Shapes-Ref if the data folder is missing, trains the shapes recipe for a few steps
in a temporary run directory and writes benchmarks/results/train_shapes.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--nproc", type=int, default=1)
    args = parser.parse_args()

    import torch

    from ppcr.config.loading import load_recipe
    from ppcr.data.shapes import generate_shapes_ref
    from ppcr.training.run import train

    if not (args.data / "shapes" / "refs(unc).p").is_file():
        generate_shapes_ref(args.data)
    overrides = [f"data.root={args.data}", f"train.max_steps={args.steps}", "train.save_every=100000"]
    if load_recipe("shapes", overrides).train.warmup_steps >= args.steps:
        # The schedule must fit the short run (DeepSpeed warns otherwise); throughput is unaffected.
        overrides.append(f"train.warmup_steps={args.steps // 2}")
    recipe = load_recipe("shapes", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(recipe, Path(tmp) / "run", nproc=args.nproc, progress=False)
        wall = time.perf_counter() - start
    row = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, python {platform.python_version()}",
        "torch": torch.__version__,
        "nproc": args.nproc,
        "steps": result.steps,
        "batch_size": recipe.train.batch_size,
        "samples_per_s": result.samples_per_s,
        "wall_s_including_setup": wall,
    }
    out = Path(__file__).parent / "results" / "train_shapes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"shapes recipe: {result.samples_per_s:.1f} samples/s over {result.steps} steps "
          f"(batch {recipe.train.batch_size}, nproc {args.nproc}); {wall:.1f} s with setup")


if __name__ == "__main__":
    main()

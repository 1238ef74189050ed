"""Time `ppcr --help` (must stay fast: no torch at startup) and Shapes-Ref generation.

    .venv/bin/python benchmarks/bench_startup_and_shapes.py [--repeat 5] [--images N]

Prints a small table and writes benchmarks/results/startup_and_shapes.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def time_command(argv: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--images", type=int, default=None, help="Shapes-Ref size [default: generator default]")
    args = parser.parse_args()

    from ppcr.data.shapes import generate_shapes_ref

    help_times = time_command([sys.executable, "-m", "ppcr_cli", "--help"], args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {} if args.images is None else {"images": args.images}
        start = time.perf_counter()
        summary = generate_shapes_ref(Path(tmp) / "shapes", seed=0, **kwargs)
        shapes_seconds = time.perf_counter() - start
        rows = summary.rows()
    sentences = sum(r[-1] for r in rows)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
        "ppcr_help_seconds_median": statistics.median(help_times),
        "ppcr_help_seconds_all": help_times,
        "shapes_generation_seconds": shapes_seconds,
        "shapes_sentences": sentences,
    }
    out = Path(__file__).parent / "results" / "startup_and_shapes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ppcr --help (median of {args.repeat}): {result['ppcr_help_seconds_median']:.3f} s")
    print(f"Shapes-Ref generation: {shapes_seconds:.1f} s for {sentences} sentences (all datasets and splits)")


if __name__ == "__main__":
    main()

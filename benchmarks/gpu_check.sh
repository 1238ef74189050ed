#!/usr/bin/env bash
# Real-size speed check on one CUDA GPU without network: install the carried wheels, install ppcr,
# then run benchmarks/gpu_check.py (random bf16 weights, all 32 LLM layers) within 8 minutes.
#
#   benchmarks/gpu_check.sh            # on the GPU machine, from anywhere; JSON to $OUT or benchmarks/results/
#   benchmarks/gpu_check.sh --tiny     # the same steps with the tiny model on a CPU (dry run)
#
# The machine must have torch (a CUDA build) and transformers. Everything else comes from wheels/
# (git-ignored; it travels with the working tree). Fill it on a machine WITH network, for the GPU
# machine's Python (here 3.11; change --python-version / --abi to match `python -V` there):
#
#   mkdir -p wheels
#   pip download --no-deps --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform any -d wheels \
#       peft accelerate segment-anything pycocotools pillow typer click shellingham annotated-doc rich \
#       markdown-it-py mdurl pygments hjson ninja msgpack psutil py-cpuinfo pydantic pydantic-core \
#       annotated-types typing-inspection einops
#   # DeepSpeed is published as a source archive only: build a pure-Python wheel (its CUDA ops
#   # compile just in time, and PPCR's config uses none of them); --no-build-isolation uses the
#   # local torch, which DeepSpeed's setup.py imports.
#   DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation -w wheels deepspeed==0.19.8
#
# (--no-deps with the list above keeps pip from downloading torch and transformers again; the
# list is the closure of ppcr's dependencies minus what torch and transformers bring.)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TINY=()
if [[ "${1:-}" == "--tiny" ]]; then
    TINY=(--tiny)
    shift
fi
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"

"$PYTHON" - "${TINY[@]}" <<'EOF'
import sys
import torch, transformers
tiny = "--tiny" in sys.argv
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
if not tiny and not torch.cuda.is_available():
    sys.exit("error: no CUDA device visible (use --tiny for a CPU dry run)")
EOF

# Only what is missing is installed; pip never looks beyond wheels/ (--no-index).
if [[ -d wheels ]]; then
    "$PYTHON" -m pip install --no-index --find-links wheels --quiet \
        deepspeed peft accelerate segment-anything pycocotools pillow typer rich pyyaml
else
    echo "no wheels/ folder: assuming the dependencies are installed" >&2
fi
"$PYTHON" -m pip install --no-index --no-deps --no-build-isolation --quiet -e .

# Under 8 minutes with the installs: gpu_check.py starts no phase after 400 s; timeout is the backstop.
timeout --kill-after=20 450 "$PYTHON" benchmarks/gpu_check.py "${TINY[@]}" --budget-s 400 \
    --out "$OUT_DIR/gpu_check.json" "$@"

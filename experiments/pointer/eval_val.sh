#!/usr/bin/env bash
# Score a checkpoint on the three Shapes-Ref val splits; prints oIoU / mIoU per dataset.
# usage: experiments/pointer/eval_val.sh MODEL_DIR [DATA_ROOT] [extra ppcr eval args]
set -euo pipefail
model=$1; root=${2:-data/shapes}; shift; shift || true
for dataset in shapes shapes+ shapesg; do
  .venv/bin/ppcr eval --model "$model" --data-root "$root" --dataset "$dataset" --split val \
    --out "$model/eval-val-$dataset" --format json "$@" 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); r=d if isinstance(d,list) else d.get('results',d); print('$dataset', json.dumps(r)[:400])"
done

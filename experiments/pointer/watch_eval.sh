#!/usr/bin/env bash
# Score each export of a running training (checkpoints/step_N, every 2,000 steps, then final) on
# the three Shapes-Ref val splits of data/shapes (seed 0, never trained on by shapes-pointer).
# usage: experiments/pointer/watch_eval.sh RUN_DIR [PPCR]   (results: RUN_DIR/val-curve.jsonl)
set -uo pipefail
run=$1; ppcr=${2:-.venv/bin/ppcr}
done_tags=" "
while :; do
  for dir in "$run"/checkpoints/step_* "$run"/final; do
    [ -f "$dir/config.json" ] || continue
    tag=$(basename "$dir"); step=${tag#step_}
    case "$done_tags" in *" $tag "*) continue;; esac
    if [ "$tag" != final ] && [ $((10#$step % 2000)) -ne 0 ]; then done_tags="$done_tags$tag "; continue; fi
    for dataset in shapes shapes+ shapesg; do
      nice -n 10 $ppcr eval --model "$dir" --data-root data/shapes --dataset "$dataset" --split val \
        --out "$run/val-eval/$tag/$dataset" --format json 2>/dev/null |
        python3 -c "import json,sys; r=json.load(sys.stdin)[0]; print(json.dumps({'export': '$tag', 'dataset': '$dataset', 'mIoU': round(r['mIoU'], 2), 'oIoU': round(r['oIoU'], 2), 'P@0.5': round(r['P@0.5'], 2)}))" >> "$run/val-curve.jsonl"
    done
    done_tags="$done_tags$tag "
    [ "$tag" = final ] && exit 0
  done
  sleep 60
done

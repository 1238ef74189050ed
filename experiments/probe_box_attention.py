"""Where the LLM looks: the share of image attention that lands on the target's patches.

Why: a PPCR model grounds an expression only if the position that predicts ``[SEG]`` (stage 1)
or ``[BOX]`` (stage 2) attends to the target's image tokens. For each layer this reports the
attention mass on all image tokens and, of that, the share on the target's patches (the mask
pooled onto CLIP's grid after LLaVA's pad-to-square), next to the share a uniform spread would
give. A share near uniform means the stage has not learnt to find the target.

    .venv/bin/python experiments/probe_box_attention.py [--model DIR] [--sentences 48]

Results are printed and written to ``experiments/results/box_attention_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def target_cells(mask: np.ndarray, grid: int) -> torch.Tensor:
    """Which CLIP patches (row-major) the target covers, after centring the image in a square."""
    height, width = mask.shape
    side = max(height, width)
    square = np.zeros((side, side), np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = mask
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(square)[None, None], grid)
    return pooled.flatten() > 0.05


def positions_before(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Per row, the position before ``token_id``: the state that predicts it, which PPCR's heads read."""
    return (input_ids == token_id).to(torch.long).argmax(dim=1) - 1


def stage_attention(model, stage, embeds: torch.Tensor, adapter: str):
    language_model = model.language_model
    with model.adapters.use(adapter):
        return language_model(inputs_embeds=embeds, attention_mask=stage.attention_mask, output_attentions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="PPCR checkpoint (default: the embedded model)")
    parser.add_argument("--data-root", default="data/shapes")
    parser.add_argument("--sentences", type=int, default=48)
    parser.add_argument("--tag", default="default")
    args = parser.parse_args()

    from ppcr.data.refer import ReferDataset
    from ppcr.images import load_image
    from ppcr.inference.model_source import resolve_model_dir
    from ppcr.modeling.adapters import SEMANTIC, SPATIAL
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.processor import PPCRProcessor, PPCRSample

    # Eager attention: sdpa returns no attention weights.
    model = PPCRModel.from_pretrained(
        resolve_model_dir(args.model), spec_overrides={"attn_implementation": "eager"}
    ).eval()
    processor = PPCRProcessor.from_model(model)
    grid = round(model.image_seq_length**0.5)
    ids = model.token_ids
    report = {}
    for name in ("shapes", "shapes+"):
        split = ReferDataset(name, args.data_root, "val")
        samples = [split[j] for j in range(min(args.sentences, len(split)))]
        batch = processor([PPCRSample(load_image(s.image_path), s.text, image_key=s.image_id) for s in samples])
        cells = [target_cells(split.mask(s).astype(np.float32), grid) for s in samples]
        uniform_share = round(float(np.mean([c.float().mean() for c in cells])), 3)
        with torch.no_grad():
            features = model.encode_images(batch.images)
            image_tokens = features.clip_tokens[batch.text.image_index]
            semantic = batch.text.semantic
            semantic_out = stage_attention(
                model, semantic, model.input_embeddings(semantic.input_ids, image_tokens, None), SEMANTIC
            )
            stages = [("semantic", semantic, ids.seg, semantic_out)]
            if model.box_head is not None:
                rows = torch.arange(len(samples))
                h_sem = semantic_out.last_hidden_state[rows, positions_before(semantic.input_ids, ids.seg)]
                _, sem_input = model.semantic_prompts(h_sem)
                spatial = batch.text.spatial
                spatial_out = stage_attention(
                    model, spatial, model.input_embeddings(spatial.input_ids, image_tokens, sem_input), SPATIAL
                )
                stages.append(("spatial", spatial, ids.box, spatial_out))
        for stage_name, stage, token, out in stages:
            positions = positions_before(stage.input_ids, token)
            image_slots = stage.input_ids == ids.image
            for layer, attention in enumerate(out.attentions):
                on_image, on_target = [], []
                for b in range(len(samples)):
                    weights = attention[b, :, positions[b]].mean(0)[image_slots[b]]
                    on_image.append(float(weights.sum()))
                    on_target.append(float(weights[cells[b]].sum() / weights.sum().clamp_min(1e-9)))
                row = {
                    "attention_on_image": round(float(np.mean(on_image)), 3),
                    "target_share": round(float(np.mean(on_target)), 3),
                    "uniform_share": uniform_share,
                }
                report[f"{name}/{stage_name}/layer{layer}"] = row
                print(f"{name:8s} {stage_name:8s} layer {layer}: {json.dumps(row)}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"box_attention_{args.tag}.json"
    path.write_text(json.dumps({"model": str(args.model or "embedded"), "sentences": args.sentences, "layers": report}, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()

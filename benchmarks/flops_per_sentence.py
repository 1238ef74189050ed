"""FLOPs per sentence of the three evaluation modes, counted at the paper's real size on ``meta``.

    .venv/bin/python benchmarks/flops_per_sentence.py [--per-image 7] [--peak-tflops 790]

The paper model (LLaVA-1.5-7B: 32 layers of 4096, CLIP ViT-L/14-336 → 576 image tokens, SAM
ViT-H at 1024 px, both LoRA adapters, the F_Map MLP) is built by ``build_model`` on the meta
device (no memory, no weights) with the stand-in tokenizer (``init.tokenizer: stand-in``), and
``torch.utils.flop_counter.FlopCounterMode`` counts each piece of the pipeline as
``PPCRModel.encode_images`` / ``segment`` run it for one image with ``--per-image`` sentences
(about RefCOCO's 7.2 per val image):

- ``naive``: every sentence encodes its own copy of the image and runs both LLM stages in full
  (``ppcr eval --naive``);
- ``grouped``: the image is encoded once for its sentences; both stages still run in full;
- ``grouped+kv``: grouped, and each stage's prompt prefix (BOS, ``USER:``, the 576 image tokens)
  runs once per image, its KV cache shared by the sentences' suffixes (the ``ppcr eval`` default).

The pieces are the model's own modules and methods called with meta tensors of the real shapes
(``encode_images``' vision towers, ``language_model`` with and without the cache,
``semantic_prompts``, the box head, ``sam_prompting.sam_masks``; ``prefix_cache.prefix_length``
finds the shared prefix); only the bookkeeping around them (prefix search, ``[SEG]`` positions), which
reads token values and so cannot run on meta, is mirrored here from ``PPCRModel._predict``.
tests/test_flops_per_sentence.py checks this mirror against the real ``segment`` path on the
tiny model on the CPU: the counts are equal.

Attention: on ``meta`` ``scaled_dot_product_attention`` decomposes into two ``bmm`` that the
counter sees (full, not causal-halved, the counter's convention for fused kernels too); on the
CPU it dispatches to ``_scaled_dot_product_flash_attention_for_cpu``, which the counter does not
know, so :data:`SDPA_CPU_FORMULA` supplies its count. Element-wise work, norms, softmax and the
mask resizing are not FLOPs in the counter's sense (matmul/conv/attention only).

Prompt lengths come from the processor with the stand-in tokenizer, whose merges know the
templates but not RefCOCO's words (those take a few more tokens than with Llama's tokenizer);
``--tokenizer DIR`` uses a real LLaVA tokenizer directory instead. Writes
benchmarks/results/flops_per_sentence.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = ("naive", "grouped", "grouped+kv")
# RefCOCO-style expressions (short, spatial and attribute words), one image's worth.
EXPRESSIONS = (
    "man in red shirt on the left",
    "woman holding the umbrella",
    "left zebra",
    "bowl of soup closest to you",
    "guy in the middle with glasses",
    "white car behind the bus",
    "person on far right",
)
IMAGE_SIZE = (480, 640)  # (H, W): COCO's most common size


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# The CPU fused attention kernel, unknown to FlopCounterMode (it would count 0).
SDPA_CPU_FORMULA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


class Tally:
    """FLOPs per pipeline part, each part counted in its own ``FlopCounterMode``."""

    def __init__(self) -> None:
        self.parts: dict[str, int] = defaultdict(int)

    def run(self, part: str, fn: Callable[[], Any]) -> Any:
        with FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FORMULA) as counter:
            out = fn()
        self.parts[part] += counter.get_total_flops()
        return out

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def _image_inputs(model, count: int, device: torch.device, size: tuple[int, int]):
    """``count`` images' preprocessed pixels as the processor shapes them, as empty tensors."""
    from ppcr.modeling.batch import ImageInputs

    clip, sam = model.clip_image_size, model.sam_image_size
    height, width = size
    scale = sam / max(height, width)
    input_size = (int(height * scale + 0.5), int(width * scale + 0.5))
    return ImageInputs(
        clip_pixels=torch.empty(count, 3, clip, clip, device=device),
        sam_pixels=torch.empty(count, 3, sam, sam, device=device),
        input_sizes=[input_size] * count,
        original_sizes=[size] * count,
    )


def common_prefix_length(model, input_ids: torch.Tensor) -> Optional[int]:
    """What-if prefix rule: the longest token prefix all rows share, up to the first ``<sem>``
    slot (its embedding differs per sentence). The model stops at the image tokens instead."""
    same = (input_ids == input_ids[:1]).all(dim=0) & (input_ids[0] != model.token_ids.sem)
    length = int(same.to(torch.long).cumprod(0).sum())
    return length or None


def _stage_flops(
    tally: Tally, part: str, model, stage, clip_tokens, image_index, sem_input, share_prefix: bool, prefix_rule=None
):
    """Last-layer states of one stage, counted; mirrors ``PPCRModel._stage_hidden``.

    ``prefix_rule(model, input_ids)`` replaces the model's prefix search (what-if estimates only).
    """
    from ppcr.modeling.kv_cache import cache_keyword, returned_cache
    from ppcr.modeling.prefix_cache import prefix_length

    device, dtype = clip_tokens.device, clip_tokens.dtype
    batch, length = stage.input_ids.shape
    hidden = model.hidden_size
    rule = prefix_rule or (lambda m, ids: prefix_length(ids, m.token_ids))
    prefix = rule(model, stage.input_ids) if share_prefix else None
    if prefix is None or prefix >= length:
        embeds = tally.run("embed", lambda: torch.empty(batch, length, hidden, device=device, dtype=dtype))
        # use_cache=True only keeps transformers from reading mask values on meta; no FLOPs change.
        tally.run(part, lambda: model.language_model(inputs_embeds=embeds, use_cache=True))
        return
    for image in torch.unique(image_index).tolist():
        rows = int((image_index == image).sum())
        prefix_embeds = torch.empty(1, prefix, hidden, device=device, dtype=dtype)
        out = tally.run(part + " prefix", lambda: model.language_model(inputs_embeds=prefix_embeds, use_cache=True))
        cache = returned_cache(out)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        suffix = torch.empty(rows, length - prefix, hidden, device=device, dtype=dtype)
        cached = {cache_keyword(type(model.language_model)): cache}
        tally.run(part + " suffix", lambda: model.language_model(inputs_embeds=suffix, use_cache=True, **cached))


def count_segment(
    model, text, features, share_prefix: bool, tally: Optional[Tally] = None, prefix_rule=None
) -> Tally:
    """FLOPs of ``model.segment(features, text, share_prefix=...)`` with ``features`` on meta."""
    tally = tally or Tally()
    device, dtype = features.clip_tokens.device, features.clip_tokens.dtype
    image_index = text.image_index
    batch = image_index.numel()
    hidden = model.hidden_size
    _stage_flops(
        tally, "LLM semantic", model, text.semantic, features.clip_tokens, image_index, None, share_prefix, prefix_rule
    )
    h_sem = torch.empty(batch, hidden, device=device, dtype=dtype)
    semantic_prompt, sem_input = tally.run("heads", lambda: model.semantic_prompts(h_sem))
    boxes = None
    if model.box_head is not None:
        _stage_flops(
            tally, "LLM spatial", model, text.spatial, features.clip_tokens, image_index, sem_input, share_prefix,
            prefix_rule,
        )
        p_box = torch.empty(batch, hidden, device=device, dtype=dtype)
        image_tokens = features.clip_tokens.index_select(0, image_index.to(device))
        boxes = tally.run("heads", lambda: model.box_head(p_box, image_tokens))
    from ppcr.modeling.sam_prompting import sam_masks

    tally.run(
        "SAM decoder",
        lambda: sam_masks(model.sam, model.sam_transform, features, image_index, semantic_prompt, boxes),
    )
    return tally


def count_encode(model, images, tally: Optional[Tally] = None):
    """FLOPs of ``model.encode_images(images)``, split into CLIP (with the projector) and SAM."""
    tally = tally or Tally()
    vision_dtype = next(model.llava.model.vision_tower.parameters()).dtype
    pixels = images.clip_pixels.to(vision_dtype)
    out = tally.run("CLIP", lambda: model.llava.model.get_image_features(pixel_values=pixels))
    pooled = out.pooler_output
    clip_tokens = torch.stack(list(pooled)) if isinstance(pooled, (list, tuple)) else pooled
    sam_dtype = model.sam.image_encoder.patch_embed.proj.weight.dtype
    sam_embeddings = tally.run("SAM encoder", lambda: model.sam.image_encoder(images.sam_pixels.to(sam_dtype)))
    from ppcr.modeling.model import ImageFeatures

    features = ImageFeatures(
        clip_tokens=clip_tokens,
        sam_embeddings=sam_embeddings,
        input_sizes=list(images.input_sizes),
        original_sizes=list(images.original_sizes),
    )
    return tally, features


def count_mode(model, processor, mode: str, expressions, image_size=IMAGE_SIZE, prefix_rule=None) -> Tally:
    """FLOPs of one image's ``expressions`` through ``mode`` (one batch, as ``ppcr eval`` runs them)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = next(model.parameters()).device
    count = len(expressions)
    naive = mode == "naive"
    images = _image_inputs(model, count if naive else 1, device, image_size)
    text = processor.texts(list(expressions), list(range(count)) if naive else [0] * count)
    tally, features = count_encode(model, images)
    return count_segment(model, text, features, share_prefix=mode == "grouped+kv", tally=tally, prefix_rule=prefix_rule)


def what_if(model, processor, expressions, naive_per_sentence: float) -> dict[str, float]:
    """Speed-up over naive of changes to the grouped+kv path (estimates, not the shipped code)."""
    count = len(expressions)
    common = count_mode(model, processor, "grouped+kv", expressions, prefix_rule=common_prefix_length)
    shipped = count_mode(model, processor, "grouped+kv", expressions)
    one_prefix = shipped.total - shipped.parts["LLM spatial prefix"]
    doubled = [expressions[i % count] for i in range(2 * count)]
    twice = count_mode(model, processor, "grouped+kv", doubled).total / len(doubled)
    return {
        "shared prefix extended to the longest common token prefix (exact, a code change)": naive_per_sentence
        / (common.total / count),
        "one image prefix for both stages (changes the model: LoRA off on the prefix)": naive_per_sentence
        / (one_prefix / count),
        f"{2 * count} sentences per image instead of {count} (the data, not the code)": naive_per_sentence / twice,
    }


def prompt_lengths(model, processor, expressions) -> dict[str, Any]:
    """Token counts of the prompts: padded lengths per stage and the shared prefix."""
    from ppcr.modeling.prefix_cache import prefix_length

    text = processor.texts(list(expressions), [0] * len(expressions))
    stages = {"semantic": text.semantic, "spatial": text.spatial}
    out: dict[str, Any] = {}
    for name, stage in stages.items():
        if stage is None:
            continue
        out[name] = {
            "padded_length": int(stage.input_ids.shape[1]),
            "prefix": prefix_length(stage.input_ids, model.token_ids),
            "text_tokens": [int(n) - model.image_seq_length for n in stage.attention_mask.sum(dim=1).tolist()],
        }
    return out


def build_meta_model(tokenizer: Optional[str], head: str = "mlp"):
    from ppcr.config.loading import load_recipe
    from ppcr.modeling.build import build_model

    overrides = ["init.source=random", f"init.tokenizer={tokenizer or 'stand-in'}", f"spatial-head={head}"]
    return build_model(load_recipe("paper", overrides), dtype=torch.bfloat16, device="meta").eval()


def table_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| mode | TFLOP / sentence | vs naive | H200 floor ms / sentence | largest part |",
        "|---|---:|---:|---:|---|",
    ]
    for mode, row in results.items():
        parts = row["parts_per_sentence_tflop"]
        top = max(parts, key=parts.get)
        lines.append(
            f"| {mode} | {row['tflop_per_sentence']:.2f} | {row['speedup_vs_naive']:.2f}× | "
            f"{row['floor_ms_per_sentence']:.2f} | {top} ({parts[top] / row['tflop_per_sentence']:.0%}) |"
        )
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-image", type=int, default=7, help="sentences per image (RefCOCO val: ~7.2)")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="accelerator bf16 peak for the floor")
    parser.add_argument("--tokenizer", default=None, help="a LLaVA tokenizer directory (default: the stand-in)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/flops_per_sentence.json")
    args = parser.parse_args(argv)
    if not 1 <= args.per_image <= len(EXPRESSIONS) * 4:
        parser.error(f"--per-image must be from 1 to {len(EXPRESSIONS) * 4}")

    from ppcr.modeling.processor import PPCRProcessor

    started = time.perf_counter()
    model = build_meta_model(args.tokenizer)
    processor = PPCRProcessor.from_model(model)
    expressions = [EXPRESSIONS[i % len(EXPRESSIONS)] for i in range(args.per_image)]
    results: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        tally = count_mode(model, processor, mode, expressions)
        per_sentence = tally.total / len(expressions)
        results[mode] = {
            "tflop_per_sentence": per_sentence / 1e12,
            "parts_per_sentence_tflop": {k: v / len(expressions) / 1e12 for k, v in sorted(tally.parts.items()) if v},
            "floor_ms_per_sentence": per_sentence / (args.peak_tflops * 1e12) * 1e3,
            "ceiling_sentences_per_s": args.peak_tflops * 1e12 / per_sentence,
        }
    naive = results["naive"]["tflop_per_sentence"]
    for row in results.values():
        row["speedup_vs_naive"] = naive / row["tflop_per_sentence"]
    kv = results["grouped+kv"]
    # What no per-sentence change can remove: the image's encoders and both stages' prefixes.
    shared_parts = kv["parts_per_sentence_tflop"].items()
    per_image = sum(v for k, v in shared_parts if k in ("CLIP", "SAM encoder") or "prefix" in k)
    what_ifs = what_if(model, processor, expressions, results["naive"]["tflop_per_sentence"] * 1e12)
    payload = {
        "what": "FLOPs per sentence at real size (LLaVA-1.5-7B, 32 layers, CLIP-L/14-336, SAM ViT-H), counted on meta",
        "sentences_per_image": args.per_image,
        "expressions": expressions,
        "image_size_hw": list(IMAGE_SIZE),
        "tokenizer": args.tokenizer or "stand-in (llava-hf ids and size, Shapes-Ref merges)",
        "prompt_tokens": prompt_lengths(model, processor, expressions),
        "peak_tflops": args.peak_tflops,
        "modes": results,
        "kv_vs_naive": results["grouped+kv"]["speedup_vs_naive"],
        "target_kv_vs_naive": 8.0,
        "per_image_share_of_kv_tflop_per_sentence": per_image,
        "bound_if_suffixes_and_sam_decoder_were_free": naive / per_image,
        "what_if_kv_vs_naive": what_ifs,
        "counter": "torch.utils.flop_counter.FlopCounterMode; SDPA counted as two bmm on meta",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print("\n".join(table_rows(results)))
    for change, ratio in what_ifs.items():
        print(f"what if {change}: {ratio:.2f}×")
    print(
        f"\ngrouped+kv vs naive: {payload['kv_vs_naive']:.2f}× (target 8×); per-image parts alone "
        f"bound it at {payload['bound_if_suffixes_and_sam_decoder_were_free']:.2f}×. Wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The paper architecture at its real widths, random bf16 weights, through one training step and
one grouped evaluation on the CPU.

    .venv/bin/python benchmarks/real_size_smoke.py            (about 5-10 min on two cores, ~6 GB)

What runs, per box head (``--heads mlp attn``): the ``paper`` recipe with ``init.source=random``
and ``init.tokenizer=stand-in`` (llava-hf's 32002-entry layout; the model has LLaVA's 32064-row
embedding), built by ``build_model`` in bfloat16: CLIP ViT-L/14-336 (576 image tokens), the
4096-wide LLaVA-1.5-7B LLM with both LoRA adapters, the heads, SAM ViT-H at 1024 px. The LLM keeps
only its first ``--llm-layers`` (default 4) of 32 decoder layers: all 32 in bf16 are 13.5 GB, more
than this 24 GB machine shared with other jobs can give; every width and token count is the real
one. Then

1. one training step of the full objective (BCE + Dice + L1 + CE, the paper's weights) through the
   trainer's own ``PPCRTrainModule`` on ``--batch`` Shapes-Ref training sentences of one image
   (the recipe's micro batch), backward, gradient clipping and an AdamW step on the trainable
   parts (``optimizer_groups``: LoRA adapters, added token rows, heads, SAM's mask decoder);
2. ``ppcr.evaluation.evaluate`` (image-grouped, shared-prefix KV cache) on a Shapes-Ref split
   trimmed to ``--eval-sentences`` sentences of one image.

Records wall time and peak RSS of each phase and the tensor shape at every stage boundary (CLIP
tokens, SAM embedding, LLM states, h_sem, P_box, SAM's prompt tokens, mask logits, boxes) in
benchmarks/results/real_size_smoke.json. Refuses to start with less than ``--min-free-gb`` of
available memory (checked in /proc/meminfo). Not part of the test run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def rss_gb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**30


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def _shape(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [_shape(v) for v in value]
    if hasattr(value, "last_hidden_state"):
        return _shape(value.last_hidden_state)
    if hasattr(value, "pooler_output"):
        return _shape(value.pooler_output)
    return type(value).__name__


class ShapeLog:
    """Forward hooks on the stage-boundary modules; records each distinct shape they see."""

    def __init__(self, model) -> None:
        self.phase = "build"
        self.seen: dict[str, dict[str, list]] = {}
        self.handles = []
        boundaries = {
            "CLIP vision tower (last hidden state)": model.llava.model.vision_tower,
            "CLIP tokens after the projector (LLM <image> embeddings)": model.llava.model.multi_modal_projector,
            "SAM image embedding": model.sam.image_encoder,
            "LLM last hidden states (one call per stage, or prefix + suffix)": model.language_model,
            "semantic prompt for SAM (semantic_proj(h_sem))": model.semantic_proj,
            "box head output (normalised xyxy)": model.box_head,
            "SAM prompt encoder (sparse box corners, dense)": model.sam.prompt_encoder,
        }
        for name, module in boundaries.items():
            self.handles.append(module.register_forward_hook(self._recorder(name)))
        self.handles.append(model.sam.mask_decoder.register_forward_hook(self._decoder, with_kwargs=True))

    def _record(self, name: str, shape: Any) -> None:
        shapes = self.seen.setdefault(self.phase, {}).setdefault(name, [])
        if shape not in shapes:
            shapes.append(shape)

    def _recorder(self, name: str):
        def hook(module, args, output):
            self._record(name, _shape(output))

        return hook

    def _decoder(self, module, args, kwargs, output):
        sparse = kwargs["sparse_prompt_embeddings"]
        self._record("SAM decoder sparse prompt (2 box corners + semantic token)", _shape(sparse))
        self._record("SAM decoder image embedding", _shape(kwargs["image_embeddings"]))
        self._record("SAM low-res mask logits, IoU prediction", _shape(output))

    def add(self, name: str, value: Any) -> None:
        self._record(name, _shape(value))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _smoke_recipe(head: str, data_root: Path):
    from ppcr.config.loading import load_recipe

    overrides = [
        "init.source=random",
        "init.tokenizer=stand-in",
        f"spatial-head={head}",
        f"data.root={data_root}",
        "data.datasets=[shapes]",
    ]
    return load_recipe("paper", overrides)


def _trim_split(root: Path, split: str, sentences: int) -> tuple[int, int]:
    """Keep ``sentences`` sentences of the first image of ``split`` (shapes); returns (images, sentences)."""
    import pickle

    from ppcr.data.datasets import get_dataset
    from ppcr.data.pickles import load_refs_pickle

    spec = get_dataset("shapes")
    path = spec.refs_path(root)
    refs = load_refs_pickle(path)
    image = min(ref["image_id"] for ref in refs if ref["split"] == split)
    kept = 0
    for ref in sorted(refs, key=lambda r: r["ref_id"]):
        if ref["split"] != split:
            continue
        room = sentences - kept if ref["image_id"] == image else 0
        if room <= 0:
            ref["split"] = "train"
            continue
        ids = ref["sent_ids"][:room]
        ref["sentences"] = [s for s in ref["sentences"] if s["sent_id"] in ids]
        ref["sent_ids"] = ids
        kept += len(ids)
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return 1, kept


def _grad_norm(parameters) -> float:
    grads = [p.grad.float().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def train_step(model, recipe, log: ShapeLog, batch: int) -> dict[str, Any]:
    """One optimizer step of the full objective through the trainer's model wrapper."""
    from ppcr.modeling.adapters import SEMANTIC, SPATIAL
    from ppcr.training.param_groups import optimizer_groups
    from ppcr.training.ppcr_task import PPCRTrainModule, ReferTrainDataset

    data = ReferTrainDataset(recipe)
    first = data.image_groups()[0]
    group = next(g for g in data.image_groups() if len(g) >= batch) if len(first) < batch else first
    items = [data[i] for i in group[:batch]]
    module = PPCRTrainModule(model, recipe).train()
    groups = optimizer_groups(module, recipe.train)
    optimizer = torch.optim.AdamW(groups, betas=tuple(recipe.train.betas), weight_decay=recipe.train.weight_decay)
    trainable = [p for g in groups for p in g["params"]]
    def lora_b(adapter: str):  # B starts at zero, so A gets no gradient in the first step
        return next(p for n, p in model.adapters.parameters(adapter).items() if "lora_B" in n)

    watched = {
        "LoRA semantic (first lora_B)": lora_b(SEMANTIC),
        "LoRA spatial (first lora_B)": lora_b(SPATIAL),
        "mask decoder": next(model.sam.mask_decoder.parameters()),
        "box head": next(model.box_head.parameters()),
    }
    before = {name: p.detach().clone() for name, p in watched.items()}

    log.phase = "train step"
    started = time.perf_counter()
    output = module(items)
    forward_s = time.perf_counter() - started
    log.add("h_sem (P_txt^seg)", output.h_sem)
    log.add("P_box^seg", output.p_box)
    log.add("predicted boxes", output.boxes)
    log.add("mask logits at the original size (per sentence)", output.mask_logits)
    started = time.perf_counter()
    output.loss.backward()
    backward_s = time.perf_counter() - started
    grad_norms = {
        name: float(p.grad.float().norm()) if p.grad is not None else None for name, p in watched.items()
    }
    total_norm = _grad_norm(trainable)
    started = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(trainable, recipe.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - started
    changed = {name: not torch.equal(before[name], p.detach()) for name, p in watched.items()}
    return {
        "sentences": len(items),
        "images": len({i.image_key for i in items}),
        "loss": float(output.loss.detach()),
        "loss_terms": {k: float(v.detach()) for k, v in output.losses.items()},
        "loss_is_finite": math.isfinite(float(output.loss.detach())),
        "grad_norm_before_clip": total_norm,
        "grad_norm_first_tensor": grad_norms,
        "updated_by_the_step": changed,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "seconds": {"forward": forward_s, "backward": backward_s, "clip_and_adamw": step_s},
    }


def grouped_eval(model, root: Path, log: ShapeLog) -> dict[str, Any]:
    from ppcr.evaluation.evaluate import evaluate

    log.phase = "grouped eval"
    result = evaluate(model, "shapes", "val", root, batch_size=16)
    return {
        "sentences": result.metrics["count"],
        "images": result.images,
        "mode": result.mode,
        "seconds": result.seconds,
        "sentences_per_second": result.sentences_per_second,
        "mIoU_random_weights": result.metrics["mIoU"],
        "all_ious_finite": all(math.isfinite(row.iou) for row in result.sentences),
    }


def run_head(head: str, args, root: Path) -> dict[str, Any]:
    from ppcr.modeling.build import build_model

    recipe = _smoke_recipe(head, root)
    started = time.perf_counter()
    model = build_model(recipe, dtype=torch.bfloat16, llm_layers=args.llm_layers)
    build_s = time.perf_counter() - started
    rss_after_build = rss_gb()
    log = ShapeLog(model)
    parameters = sum(p.numel() for p in model.parameters())
    text_config = model.llava.config.text_config
    out: dict[str, Any] = {
        "spatial_head": head,
        "model": {
            "llm_hidden": model.hidden_size,
            "llm_layers_built": len(model.language_model.layers),
            "llm_layers_real": 32,
            "llm_intermediate": text_config.intermediate_size,
            "vocab_rows": model.llava.get_input_embeddings().weight.shape[0],
            "image_tokens": model.image_seq_length,
            "clip_image_size": model.clip_image_size,
            "sam_image_size": model.sam_image_size,
            "sam_prompt_dim": model.sam.prompt_encoder.embed_dim,
            "sam_embedding_grid": list(model.sam.prompt_encoder.image_embedding_size),
            "dtype": str(next(model.parameters()).dtype),
            "parameters": parameters,
        },
        "build_seconds": build_s,
        "rss_gb_after_build": rss_after_build,
    }
    out["train_step"] = train_step(model, recipe, log, args.batch)
    out["rss_gb_after_train_step"] = rss_gb()
    out["peak_rss_gb_after_train_step"] = peak_rss_gb()
    out["grouped_eval"] = grouped_eval(model, root, log)
    out["rss_gb_after_eval"] = rss_gb()
    out["peak_rss_gb_after_eval"] = peak_rss_gb()
    out["shapes"] = log.seen
    log.close()
    del model, log
    gc.collect()
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-layers", type=int, default=4, help="LLM decoder layers to build (real: 32)")
    parser.add_argument("--heads", nargs="+", default=["mlp", "attn"], choices=["mlp", "attn"])
    parser.add_argument("--batch", type=int, default=2, help="training sentences (the paper's micro batch: 2)")
    parser.add_argument("--eval-sentences", type=int, default=4, help="sentences of the one evaluated image")
    parser.add_argument("--min-free-gb", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/real_size_smoke.json")
    args = parser.parse_args(argv)
    free = available_gb()
    if free < args.min_free_gb:
        print(f"error: {free:.1f} GB available, the smoke run wants {args.min_free_gb:.0f} GB", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)

    from ppcr.data.shapes import generate_shapes_ref

    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ppcr-smoke-") as tmp:
        root = Path(tmp)
        generate_shapes_ref(root, seed=0, images=20)
        images, sentences = _trim_split(root, "val", args.eval_sentences)
        for head in args.heads:
            print(f"[{time.perf_counter() - started:6.0f} s] {head} head: build, train step, grouped eval", flush=True)
            runs.append(run_head(head, args, root))
            print(
                f"[{time.perf_counter() - started:6.0f} s] loss {runs[-1]['train_step']['loss']:.4f}, "
                f"peak RSS {peak_rss_gb():.2f} GB",
                flush=True,
            )
    payload = {
        "what": "paper architecture at real widths, random bf16 weights, one training step + one grouped eval on CPU",
        "command": "python benchmarks/real_size_smoke.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "note": f"LLM cut to {args.llm_layers} of 32 decoder layers to fit the shared 24 GB machine; "
        "all widths and token counts are the real ones",
        "available_gb_at_start": free,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_gb": peak_rss_gb(),
        "torch_threads": torch.get_num_threads(),
        "eval_split": {"dataset": "shapes", "split": "val", "images": images, "sentences": sentences},
        "runs": runs,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wall {payload['wall_seconds']:.0f} s, peak RSS {payload['peak_rss_gb']:.2f} GB; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

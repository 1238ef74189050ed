"""Learning probes for the tiny shapes model: which part of PPCR learns, and how fast.

Why: the shapes recipe does not yet ground expressions in its 20-minute budget. These probes take
the pipeline apart so a change can be judged in minutes rather than by a full training run:

* ``variant``: the model as the recipe builds it (any ``key=value`` overrides), plain AdamW with
  linear warm-up and decay, random batches; reports the loss terms every 100 steps and a quick
  evaluation (IoU with predicted boxes) on the first sentences of ``shapes/val`` and ``shapes+/val``.
* ``oracle-colour``: ``spatial_prompt=none`` with SAM's semantic prompt replaced by an MLP of the
  target's true mean colour: can the tiny SAM learn colour-conditioned masks at all?
* ``gt-box``: the recipe trained with the ground-truth box fed to SAM (Table 3's oracle): can the
  tiny SAM learn box → mask?
* ``memorise``: box loss only, ``--images`` distinct training images, each with one target and the
  same text ("the shape"): can image → LLM → box head fit even a handful of boxes?

Two knobs test remedies: ``--base-lr`` trains the MLLM (the LLM, CLIP, projector, embeddings,
LoRA, added token rows) at its own learning rate (default: the recipe's ``train.mllm_lr``);
``--standardise-heads`` puts a ``BatchNorm1d(affine=False)`` in front of the box head,
``semantic_proj`` and ``sem_to_input`` (the recipe's ``model.head_norm: batch`` does the same inside
the model, so use one or the other).

Usage (Shapes-Ref in data/shapes, ``ppcr prepare shapes --out data/shapes``)::

    python experiments/probe_shapes_learning.py variant --steps 900 spatial-prompt=expression train.lr=3e-3
    python experiments/probe_shapes_learning.py oracle-colour --steps 1000 train.lr=3e-3

A step draws ``train.batch_size`` sentences; the recorded results used 8 or 16 (their JSON says
which), from recipes before the shapes recipe's batch grew to 32: pass ``train.batch_size=8`` to
compare with them. Results are printed and written to ``experiments/results/probe_<probe>_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ppcr.config.loading import load_recipe
from ppcr.data.refer import ReferDataset
from ppcr.evaluation.metrics import IoUAccumulator
from ppcr.images import load_image
from ppcr.training.ppcr_task import ReferTrainDataset, TrainItem, build_train_model

RESULTS = Path(__file__).parent / "results"


class ColourOracle(torch.nn.Module):
    """Stands in for ``semantic_proj``: the target's mean RGB (set per batch) → a SAM prompt token."""

    def __init__(self, sam_dim: int):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, sam_dim))
        self.colours: torch.Tensor | None = None

    def forward(self, h_sem: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.colours.to(h_sem.dtype))


class Standardised(torch.nn.Module):
    """``inner(BatchNorm1d(x))``: per-feature standardisation (running statistics in eval mode)."""

    def __init__(self, inner: torch.nn.Module, dim: int):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(dim, affine=False, momentum=0.01)
        self.inner = inner

    def forward(self, x: torch.Tensor, *rest) -> torch.Tensor:
        return self.inner(self.norm(x), *rest)


def standardise_heads(model) -> None:
    for name in ("box_head", "semantic_proj", "sem_to_input"):
        head = getattr(model, name)
        if head is not None:
            setattr(model, name, Standardised(head, model.hidden_size))


def memorise_items(data: ReferTrainDataset, count: int) -> list[TrainItem]:
    """The first target of ``count`` distinct images, all with the same text."""
    seen, items = set(), []
    for index in range(len(data)):
        item = data[index]
        if item.image_key not in seen:
            seen.add(item.image_key)
            item.expression = "the shape"
            items.append(item)
            if len(items) == count:
                break
    return items


def mean_colours(items: list[TrainItem]) -> torch.Tensor:
    colours = [np.asarray(i.image.convert("RGB"))[i.mask.astype(bool)].mean(0) / 255.0 for i in items]
    return torch.tensor(np.stack(colours), dtype=torch.float32)


def quick_eval(module, root: str, box_source: str, limit: int, batch: int = 32) -> dict[str, dict]:
    """oIoU / mIoU / P@t (percent) on the first ``limit`` sentences of shapes/val and shapes+/val."""
    results = {}
    module.eval()
    with torch.no_grad():
        for name in ("shapes", "shapes+"):
            split = ReferDataset(name, root, "val")
            count = min(limit, len(split))
            scores = IoUAccumulator()
            for start in range(0, count, batch):
                samples = [split[j] for j in range(start, min(start + batch, count))]
                items = [
                    TrainItem(load_image(s.image_path), s.text, split.mask(s), s.box_xyxy, (name, s.image_id), "eval")
                    for s in samples
                ]
                out = forward(module, items, box_source)
                for logits, item in zip(out.mask_logits, items):
                    scores.add((logits > 0).numpy(), item.mask)
            results[f"{name}/val"] = scores.result()
    module.train()
    return results


def forward(module, items: list[TrainItem], box_source: str):
    semantic = module.model.semantic_proj
    if isinstance(semantic, ColourOracle):
        semantic.colours = mean_colours(items)
    if box_source == "predicted":
        return module(items)
    from ppcr.modeling.processor import PPCRSample

    samples = [PPCRSample(i.image, i.expression, i.mask, i.box_xyxy, i.image_key) for i in items]
    batch = module.processor(samples)
    return module.model(batch, box_source=box_source)


def probe_optimizer(train, heads: list, mllm: list, mllm_lr: float, steps: int):
    """Plain AdamW (heads at ``train.lr``, the MLLM at ``mllm_lr``) with linear warm-up and decay to 0."""
    groups = [{"params": heads, "lr": train.lr}, {"params": mllm, "lr": mllm_lr}]
    optimizer = torch.optim.AdamW(groups, betas=tuple(train.betas), weight_decay=train.weight_decay)
    warmup = max(1, train.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1.0 - s / steps)
    )
    return optimizer, schedule


def train_l1_steps(step_loss, trainable: list, optimizer, schedule, grad_clip: float, steps: int, after_step=None) -> list[dict]:
    """The fixed-token probes' loop: ``step_loss(step)`` gives the step's L1, which is minimised
    with clipped gradients; returns (and prints) its mean every 250 steps and at the end.
    ``after_step(step)`` runs after each update (a periodic validation)."""
    losses, window, started = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        loss = step_loss(step)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        optimizer.step()
        schedule.step()
        window.append(float(loss.detach()))
        if step % 250 == 0 or step == steps:
            losses.append(
                {"step": step, "l1": round(float(np.mean(window)), 4), "seconds": round(time.perf_counter() - started, 1)}
            )
            print(losses[-1], flush=True)
            window = []
        if after_step is not None:
            after_step(step)
    return losses


def write_result(name: str, result: dict) -> None:
    """``experiments/results/<name>.json``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=["variant", "oracle-colour", "gt-box", "memorise"])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    parser.add_argument("--recipe", default="shapes")
    parser.add_argument("--data-root", default="data/shapes")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--eval-sentences", type=int, default=480)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--images", type=int, default=64, help="memorise: how many images")
    parser.add_argument(
        "--base-lr", type=float, default=None, help="lr of the MLLM (default: the recipe's train.mllm_lr, else train.lr)"
    )
    parser.add_argument("--standardise-heads", action="store_true")
    args = parser.parse_intermixed_args()

    torch.set_num_threads(args.threads)
    overrides = [f"data.root={args.data_root}", *args.overrides]
    if args.probe == "oracle-colour":
        overrides = ["spatial-prompt=none", *overrides]
    if args.probe == "memorise":
        overrides = [*overrides, "loss.bce=0", "loss.dice=0", "loss.ce=0", "loss.l1=1"]
    recipe = load_recipe(args.recipe, overrides)
    torch.manual_seed(recipe.seed)
    module = build_train_model(recipe)
    if args.probe == "oracle-colour":
        module.model.semantic_proj = ColourOracle(module.model.sam.prompt_encoder.embed_dim)
    if args.standardise_heads:
        standardise_heads(module.model)
    box_source = "gt" if args.probe == "gt-box" else "predicted"
    data = ReferTrainDataset(recipe)
    fixed = memorise_items(data, args.images) if args.probe == "memorise" else None
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    train = recipe.train
    heads = [p for n, p in named if not module.is_mllm_parameter(n)]
    rest = [p for n, p in named if module.is_mllm_parameter(n)]
    base_lr = args.base_lr or train.mllm_lr or train.lr
    optimizer, schedule = probe_optimizer(train, heads, rest, base_lr, args.steps)
    rng = np.random.default_rng(recipe.seed)
    rows, window, started = [], {}, time.perf_counter()
    for step in range(1, args.steps + 1):
        if fixed is not None:
            items = [fixed[int(i)] for i in rng.integers(len(fixed), size=train.batch_size)]
        else:
            items = [data[int(i)] for i in rng.integers(len(data), size=train.batch_size)]
        out = forward(module, items, box_source)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        optimizer.step()
        schedule.step()
        for key, value in out.losses.items():
            window[key] = window.get(key, 0.0) + float(value.detach())
        if step % 100 == 0 or step == args.steps:
            span = 100 if step % 100 == 0 else step % 100
            row = {"step": step, "seconds": round(time.perf_counter() - started, 1)}
            row.update({k: round(v / span, 4) for k, v in window.items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
            window = {}
    evaluation = {} if fixed is not None else quick_eval(module, args.data_root, box_source, args.eval_sentences)
    print(json.dumps(evaluation), flush=True)
    result = {
        "probe": args.probe,
        "overrides": args.overrides,
        "base_lr": base_lr,
        "standardise_heads": args.standardise_heads,
        "steps": args.steps,
        "batch_size": recipe.train.batch_size,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "losses": rows,
        "eval": evaluation,
    }
    write_result(f"probe_{args.probe}_{args.tag}", result)


if __name__ == "__main__":
    main()

"""Grounding probe without SAM: can the tiny LLaVA's spatial stage learn to find a named object?

Why: the shapes recipe's box stays poor (training L1 ~0.15), and a full PPCR step spends two thirds
of its time outside the LLM. This probe trains only what grounding needs, about 14 steps/s on one
core: every object whose phrase is unique in its image ("red", or "red circle" with
``--phrase colour-shape``) is asked for in one answer, ``"red [BOX] , blue circle [BOX] ..."``
(``--single``: one object per image), and each ``[BOX]`` is scored with the box L1. Three heads
read the same CLIP → projector tokens, so they separate readout from retrieval:

* ``llm``: the model's own path, the spatial adapter's state before ``[BOX]`` → box head;
* ``oracle``: the box head reads the mean projector token over the target's patches (is the
  readout learnable?);
* ``cross-attention``: a learned query per phrase attends over the projector tokens through one
  ``nn.MultiheadAttention`` (a clean retrieval on the same tokens).

``--readout word`` reads the llm head's state at the phrase's last word instead of before
``[BOX]``: the tiny tokenizer writes ``"red [BOX]"`` as ``red``, a lone space, ``[BOX]``, so
PPCR's readout sits on the space, the same token for every phrase, and the LLM must first carry
the phrase there (see probe_token_retrieval.py ``--readout-after``).

Reports training L1 per 100 steps, the val L1 (each of an image's first three objects asked for
alone) and, for ``llm``, the share of each layer's image attention on the target's patches.

    .venv/bin/python experiments/probe_grounding.py --head llm --steps 1500 train.batch_size=8 [key=value ...]
    ppcr prepare shapes --out /tmp/sh10k --images 10000   # more images, against memorising
    .venv/bin/python experiments/probe_grounding.py --head cross-attention --data-root /tmp/sh10k train.batch_size=8

A step takes ``train.batch_size`` images; the recorded results used 8 (the shapes recipe's batch
before it grew to 32 sentences of 8 images).

Results are printed and written to ``experiments/results/grounding_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
from probe_box_attention import stage_attention, target_cells
from probe_shapes_learning import probe_optimizer, write_result

QUESTION = "Where are the shapes?"


def image_phrases(root: str, split: str, phrase: str) -> dict[int, tuple[Path, list[tuple[str, list[float]]]]]:
    """Per image of ``shapes/<split>``: its path and (phrase, normalised xyxy) of each object whose
    phrase no other object in the image shares."""
    from ppcr.data.refer import ReferDataset
    from ppcr.data.shapes import scenes_from_coco

    dataset = ReferDataset("shapes", root, split)
    scenes = scenes_from_coco(json.loads(dataset.index.instances_path.read_text()))
    paths = {s.image_id: s.image_path for s in dataset}
    out = {}
    for image_id, path in sorted(paths.items()):
        scene = scenes[image_id]
        words = [o.colour if phrase == "colour" else f"{o.colour} {o.shape}" for o in scene.objects]
        unique = [
            (word, [o.x0 / scene.width, o.y0 / scene.height, o.x1 / scene.width, o.y1 / scene.height])
            for word, o in zip(words, scene.objects)
            if words.count(word) == 1
        ]
        if unique:
            out[image_id] = (path, unique)
    return out


def box_cells(size: tuple[int, int], box: list[float], grid: int) -> torch.Tensor:
    """The CLIP patches a normalised box covers (after LLaVA's pad-to-square)."""
    height, width = size
    mask = np.zeros((height, width), np.float32)
    mask[int(box[1] * height) : int(np.ceil(box[3] * height)), int(box[0] * width) : int(np.ceil(box[2] * width))] = 1
    return target_cells(mask, grid)


class Probe(torch.nn.Module):
    """The model plus the two control heads; ``forward`` gives predicted and true boxes."""

    def __init__(self, module, head: str, phrases: list[str], readout: str = "before-box"):
        super().__init__()
        self.module, self.head, self.phrases, self.read_at = module, head, phrases, readout
        model = module.model
        hidden = model.hidden_size
        self.grid = round(model.image_seq_length**0.5)
        self.query = torch.nn.Embedding(len(phrases), hidden)
        self.attention = torch.nn.MultiheadAttention(hidden, 4, batch_first=True)
        self.readout = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4))

    def readout_positions(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, position) of the state the llm head reads for each ``[BOX]`` (``--readout``).

        The tiny tokenizer writes ``"red [BOX]"`` as ``red``, a space, ``[BOX]``: the state before
        ``[BOX]`` (PPCR's readout) sits on the space; ``word`` reads the word itself.
        """
        rows, boxes = (input_ids == self.module.model.token_ids.box).nonzero().unbind(1)
        if self.read_at == "before-box":
            return rows, boxes - 1
        spaces = input_ids[rows, boxes - 1]
        if not bool((spaces == spaces[0]).all()):
            raise SystemExit("--readout word expects one space token before every [BOX]")
        return rows, boxes - 2

    def stage(self, groups: list[list[tuple[str, list[float]]]]):
        """The spatial-stage inputs asking for each group's phrases, padded as the processor pads."""
        processor = self.module.processor
        return processor._pad([processor._encode_turn(QUESTION, " , ".join(f"{p} [BOX]" for p, _ in g)) for g in groups])

    def forward(self, images, sizes, groups) -> tuple[torch.Tensor, torch.Tensor]:
        from ppcr.modeling.adapters import SPATIAL

        model = self.module.model
        tokens = model._encode_images(self.module.processor.images(images)).clip_tokens
        targets = [(k, p, b) for k, g in enumerate(groups) for p, b in g]
        truth = torch.tensor([b for _, _, b in targets], dtype=torch.float32)
        owner = torch.tensor([k for k, _, _ in targets])
        if self.head == "cross-attention":
            query = self.query(torch.tensor([self.phrases.index(p) for _, p, _ in targets])).unsqueeze(1)
            attended = self.attention(query, tokens[owner], tokens[owner], need_weights=False)[0][:, 0]
            return self.readout(attended).sigmoid(), truth
        if self.head == "oracle":
            cells = torch.stack([box_cells(sizes[k], b, self.grid) for k, _, b in targets]).float()
            states = (tokens[owner] * cells.unsqueeze(-1)).sum(1) / cells.sum(1, keepdim=True).clamp_min(1)
        else:
            stage = self.stage(groups)
            hidden = model._stage_hidden(SPATIAL, stage, tokens, torch.arange(len(groups)), None, share_prefix=False)
            states = hidden[self.readout_positions(stage.input_ids)]
        states = model.p_box_norm(states) if model.p_box_norm is not None else states
        return model.box_head(states, tokens[owner]), truth


def attention_shares(probe: Probe, images, sizes, groups) -> list[dict]:
    """Per LLM layer: the share of the query's image attention on the target's patches (one target per image)."""
    from ppcr.modeling.adapters import SPATIAL

    model = probe.module.model
    model.language_model.config._attn_implementation = "eager"  # sdpa returns no attention weights
    stage = probe.stage(groups)
    with torch.no_grad():
        tokens = model.encode_images(probe.module.processor.images(images)).clip_tokens
        out = stage_attention(model, stage, model._input_embeddings(stage.input_ids, tokens, None), SPATIAL)
    queries = probe.readout_positions(stage.input_ids)[1]
    image_slots = stage.input_ids[0] == model.token_ids.image
    cells = [box_cells(sizes[k], g[0][1], probe.grid) for k, g in enumerate(groups)]
    uniform = float(np.mean([c.float().mean() for c in cells]))
    rows = []
    for layer, attention in enumerate(out.attentions):
        shares = []
        for k in range(len(groups)):
            weights = attention[k, :, queries[k]].mean(0)[image_slots]
            shares.append(float(weights[cells[k]].sum() / weights.sum().clamp_min(1e-9)))
        rows.append({"layer": layer, "target_share": round(float(np.mean(shares)), 4), "uniform_share": round(uniform, 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    parser.add_argument("--head", choices=["llm", "oracle", "cross-attention"], default="llm")
    parser.add_argument("--phrase", choices=["colour", "colour-shape"], default="colour")
    parser.add_argument("--single", action="store_true", help="one object per image instead of all")
    parser.add_argument(
        "--readout",
        choices=["before-box", "word"],
        default="before-box",
        help="llm head: read the state before [BOX] (PPCR's, a space token here) or at the phrase's last word",
    )
    parser.add_argument("--recipe", default="shapes")
    parser.add_argument("--data-root", default="data/shapes")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="run")
    args = parser.parse_intermixed_args()

    from ppcr.config.loading import load_recipe
    from ppcr.images import load_image
    from ppcr.training.ppcr_task import build_train_model

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, [f"data.root={args.data_root}", *args.overrides])
    torch.manual_seed(recipe.seed)
    train_set = image_phrases(args.data_root, "train", args.phrase)
    val_set = image_phrases(args.data_root, "val", args.phrase)
    phrases = sorted({p for _, objects in [*train_set.values(), *val_set.values()] for p, _ in objects})
    probe = Probe(build_train_model(recipe), args.head, phrases, args.readout)
    images: dict[int, object] = {}

    def load(image_id: int, table):
        if image_id not in images:
            images[image_id] = load_image(table[image_id][0])
        return images[image_id]

    named = [(n, p) for n, p in probe.named_parameters() if p.requires_grad]
    mllm = [p for n, p in named if probe.module.is_mllm_parameter(n.removeprefix("module."))]
    heads = [p for n, p in named if not probe.module.is_mllm_parameter(n.removeprefix("module."))]
    train = recipe.train
    optimizer, schedule = probe_optimizer(train, heads, mllm, train.mllm_lr or train.lr, args.steps)
    rng = random.Random(recipe.seed)
    train_ids = sorted(train_set)
    losses, window, started = [], [], time.perf_counter()
    for step in range(1, args.steps + 1):
        chosen = rng.sample(train_ids, train.batch_size)
        groups = []
        for image_id in chosen:
            objects = list(train_set[image_id][1])
            rng.shuffle(objects)
            groups.append(objects[:1] if args.single else objects)
        pictures = [load(i, train_set) for i in chosen]
        predicted, truth = probe(pictures, [(p.height, p.width) for p in pictures], groups)
        loss = (predicted - truth).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], train.grad_clip)
        optimizer.step()
        schedule.step()
        window.append(float(loss.detach()))
        if step % 100 == 0 or step == args.steps:
            row = {"step": step, "l1": round(float(np.mean(window)), 4), "seconds": round(time.perf_counter() - started, 1)}
            losses.append(row)
            print(json.dumps(row), flush=True)
            window = []

    probe.eval()
    images.clear()
    errors = []
    val_ids = sorted(val_set)
    with torch.no_grad():
        for start in range(0, len(val_ids), 16):
            chunk = val_ids[start : start + 16]
            for nth in range(3):
                picked = [i for i in chunk if len(val_set[i][1]) > nth]
                if picked:
                    pictures = [load(i, val_set) for i in picked]
                    groups = [val_set[i][1][nth : nth + 1] for i in picked]
                    predicted, truth = probe(pictures, [(p.height, p.width) for p in pictures], groups)
                    errors.append((predicted - truth).abs().mean(1))
    val_l1 = float(torch.cat(errors).mean())
    result = {
        "head": args.head,
        "phrase": args.phrase,
        "dense": not args.single,
        "readout": args.readout,
        "overrides": args.overrides,
        "steps": args.steps,
        "batch_images": train.batch_size,
        "train_images": len(train_ids),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "losses": losses,
        "val_l1": round(val_l1, 4),
        "val_objects": int(sum(e.numel() for e in errors)),
    }
    if args.head == "llm":
        picked = val_ids[:64]
        pictures = [load(i, val_set) for i in picked]
        shares = attention_shares(
            probe, pictures, [(p.height, p.width) for p in pictures], [val_set[i][1][:1] for i in picked]
        )
        result["attention"] = shares
    print(json.dumps({k: result[k] for k in ("val_l1", "val_objects")} | {"attention": result.get("attention")}))
    write_result(f"grounding_{args.tag}", result)


if __name__ == "__main__":
    main()

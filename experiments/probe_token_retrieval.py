"""Retrieval calibration: how fast does the tiny LLM learn "colour word → that object's box" on
fixed image tokens, outside PPCR?

Why: the shapes model's box ignores colour and shape words (probe_expression_use.py). This probe
takes PPCR out of the way: the image tokens of a model (CLIP → projector, computed once and kept
fixed) are followed by one learned word embedding per colour, the tiny LLM (the same peft-wrapped
Llama as PPCR's, spatial adapter) reads them, and an MLP maps the last state to the box of the
object with that colour (objects whose colour is unique in their image).
Training only the box L1, a step takes about 40 ms on one core, so knobs are compared in a minute:

* ``--standardise``: the tokens standardised per feature (dataset statistics) before the LLM;
* ``--head-norm``: the last state standardised per feature (BatchNorm) before the MLP, as
  ``model.head_norm: batch``;
* ``--single``: one object per image and step instead of every unique-colour object;
* ``--per-image``: each image's tokens standardised per feature over its own tokens (stateless,
  as a model could do it; ``--standardise`` uses training-set statistics);
* ``--word-std``: the colour words' initial std (default 1, ``nn.Embedding``'s; the tiny LLM's
  own token embeddings start at ``init_std``);
* ``--readout-after``: one more input after the word, a learned vector that is the same for every
  query, and the box is read there. That is PPCR's case: the heads read the state before
  ``[BOX]``/``[SEG]``, a template token, so the LLM must first bring the named colour to that
  position and then find the object (two hops instead of one);
* ``--fresh-tokens``: the image tokens of a freshly initialised shapes-recipe model (random CLIP,
  the recipe's own init, not the overrides) instead of a checkpoint's;
* recipe overrides (``model.tiny.init_std=0.06``) and ``--lr`` for the LLM.

    .venv/bin/python experiments/probe_token_retrieval.py --standardise --lr 1e-3 model.tiny.init_std=0.06
    ppcr prepare shapes --out /tmp/sh10k --images 10000   # two steps need more images than 986
    .venv/bin/python experiments/probe_token_retrieval.py --fresh-tokens --per-image --readout-after \
        --lr 1e-3 --steps 4000 --data-root /tmp/sh10k model.tiny.init_std=0.06

Results are printed and written to ``experiments/results/token_retrieval_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
from dataclasses import replace
from pathlib import Path

import torch
from probe_shapes_learning import probe_optimizer, train_l1_steps, write_result


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


def image_tokens(model, processor, table: dict) -> dict[int, torch.Tensor]:
    """Projector tokens (n×d) per image id, computed once in evaluation mode."""
    from ppcr.images import load_image

    ids, tokens = sorted(table), {}
    for start in range(0, len(ids), 64):
        chunk = ids[start : start + 64]
        with torch.no_grad():
            out = model.encode_images(
                processor.images([load_image(table[i][0]) for i in chunk])
            ).clip_tokens
        tokens.update({image_id: out[k] for k, image_id in enumerate(chunk)})
    return tokens


def per_image(tokens: torch.Tensor) -> torch.Tensor:
    """One image's tokens (n×d) standardised per feature over its own n tokens."""
    return (tokens - tokens.mean(0)) / (tokens.std(0) + 1e-5)


class Retriever(torch.nn.Module):
    """Learned colour word after the image tokens → tiny LLM (spatial adapter) → MLP → box."""

    def __init__(
        self,
        model,
        phrases: int,
        head_norm: bool,
        word_std: float | None = None,
        readout_after: bool = False,
    ):
        super().__init__()
        self.model = model
        hidden = model.hidden_size
        self.word = torch.nn.Embedding(phrases, hidden)
        if word_std is not None:
            torch.nn.init.normal_(self.word.weight, std=word_std)
        self.readout = (
            torch.nn.Parameter(torch.randn(1, 1, hidden)) if readout_after else None
        )
        self.tokens_in = torch.nn.Linear(hidden, hidden)
        self.norm = (
            torch.nn.BatchNorm1d(hidden, affine=False, momentum=0.01)
            if head_norm
            else None
        )
        self.head = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4)
        )

    def forward(self, tokens: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        from ppcr.modeling.adapters import SPATIAL

        embeds = torch.cat([self.tokens_in(tokens), self.word(words)[:, None]], dim=1)
        if self.readout is not None:
            readout = self.readout.expand(embeds.shape[0], 1, -1)
            embeds = torch.cat([embeds, readout], dim=1)
        with self.model.adapters.use(SPATIAL):
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
            state = self.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[:, -1]
        return self.head(self.norm(state) if self.norm is not None else state).sigmoid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*", help="recipe overrides for the fresh LLM, key=value"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--tokens-from",
        default=None,
        help="PPCR checkpoint for the image tokens (default: embedded)",
    )
    source.add_argument("--fresh-tokens", action="store_true")
    parser.add_argument("--data-root", default="data/shapes")
    parser.add_argument("--standardise", action="store_true")
    parser.add_argument("--head-norm", action="store_true")
    parser.add_argument("--single", action="store_true")
    parser.add_argument("--per-image", action="store_true")
    parser.add_argument("--word-std", type=float, default=None)
    parser.add_argument("--readout-after", action="store_true")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--images", type=int, default=8, help="images per step")
    parser.add_argument("--tag", default="run")
    args = parser.parse_intermixed_args()

    from ppcr.config.loading import load_recipe
    from ppcr.inference.model_source import resolve_model_dir
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.processor import PPCRProcessor
    from ppcr.training.ppcr_task import build_train_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.fresh_tokens:
        source = build_train_model(load_recipe("shapes", [])).model.eval()
    else:
        source = PPCRModel.from_pretrained(resolve_model_dir(args.tokens_from)).eval()
    processor = PPCRProcessor.from_model(source)
    train_set = image_phrases(args.data_root, "train", "colour")
    val_set = image_phrases(args.data_root, "val", "colour")
    train_tokens, val_tokens = (
        image_tokens(source, processor, train_set),
        image_tokens(source, processor, val_set),
    )
    if args.per_image:
        train_tokens = {k: per_image(v) for k, v in train_tokens.items()}
        val_tokens = {k: per_image(v) for k, v in val_tokens.items()}
    if args.standardise:
        flat = torch.stack(list(train_tokens.values())).flatten(0, 1)
        mean, std = flat.mean(0), flat.std(0) + 1e-6
        train_tokens = {k: (v - mean) / std for k, v in train_tokens.items()}
        val_tokens = {k: (v - mean) / std for k, v in val_tokens.items()}
    phrases = sorted(
        {
            p
            for table in (train_set, val_set)
            for _, objects in table.values()
            for p, _ in objects
        }
    )

    recipe = load_recipe("shapes", list(args.overrides))
    llm = build_train_model(recipe).model
    for name, parameter in llm.named_parameters():
        parameter.requires_grad_("language_model" in name)
    net = Retriever(
        llm, len(phrases), args.head_norm, args.word_std, args.readout_after
    )
    trainable = [p for p in net.parameters() if p.requires_grad]
    # The probes' AdamW and schedule (the recipe's betas and warm-up), everything at --lr.
    train = replace(recipe.train, lr=args.lr)
    optimizer, schedule = probe_optimizer(train, trainable, [], args.lr, args.steps)
    rng = random.Random(0)

    def batch(table, tokens, chosen, every_object: bool):
        rows = []
        for image_id in chosen:
            objects = list(table[image_id][1])
            rng.shuffle(objects)
            rows += [
                (tokens[image_id], phrases.index(p), b)
                for p, b in (objects if every_object else objects[:1])
            ]
        return (
            torch.stack([r[0] for r in rows]),
            torch.tensor([r[1] for r in rows]),
            torch.tensor([r[2] for r in rows], dtype=torch.float32),
        )

    ids = sorted(train_set)

    def step_loss(step: int) -> torch.Tensor:
        tokens, words, boxes = batch(
            train_set, train_tokens, rng.sample(ids, args.images), not args.single
        )
        return (net(tokens, words) - boxes).abs().mean()

    losses = train_l1_steps(
        step_loss, trainable, optimizer, schedule, train.grad_clip, args.steps
    )
    net.eval()
    with torch.no_grad():
        tokens, words, boxes = batch(val_set, val_tokens, sorted(val_set), True)
        val_l1 = float((net(tokens, words) - boxes).abs().mean())
    result = {
        "overrides": args.overrides,
        "standardise": args.standardise,
        "head_norm": args.head_norm,
        "single": args.single,
        "per_image": args.per_image,
        "word_std": args.word_std,
        "readout_after": args.readout_after,
        "tokens": "fresh" if args.fresh_tokens else (args.tokens_from or "embedded"),
        "data_root": args.data_root,
        "train_images": len(train_set),
        "lr": args.lr,
        "steps": args.steps,
        "images_per_step": args.images,
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        "losses": losses,
        "val_l1": round(val_l1, 4),
        "val_objects": int(boxes.shape[0]),
    }
    print({"val_l1": result["val_l1"]})
    write_result(f"token_retrieval_{args.tag}", result)


if __name__ == "__main__":
    main()

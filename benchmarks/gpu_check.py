"""Speed of the real-size model on one GPU, with random bf16 weights: what benchmarks/gpu_check.sh runs.

    python benchmarks/gpu_check.py [--out FILE] [--budget-s 450]     (a CUDA machine)
    .venv/bin/python benchmarks/gpu_check.py --tiny                   (the same steps, tiny model, CPU)

Builds the ``paper`` recipe with ``init.source=random`` and ``init.tokenizer=stand-in`` (all 32
LLM layers, CLIP-L/14-336, SAM ViT-H, both LoRA adapters, the MLP head) directly on the GPU in
bfloat16 (``build_model``), on a Shapes-Ref split rewritten to 7 sentences per image (RefCOCO's
~7.2), and measures, each phase timed against the budget (a phase that would start past it is
skipped and says so):

1. evaluation: ``ppcr.evaluation.evaluate`` grouped (image encoded once, shared-prefix KV
   cache, batch 16) against naive (image re-encoded per sentence, batch 16), sentences/s, with
   the FLOPs per sentence of each (benchmarks/flops_per_sentence.py) to give the achieved
   TFLOP/s;
2. ``PPCRPredictor``: ``set_image`` once, then latency per expression, one at a time and as
   one ``predict_batch`` of the image's 7 expressions;
3. one DeepSpeed ZeRO-2 training step at the recipe's batch 8 (micro-batch 2, so 4 micro-steps
   on one GPU) through the trainer's own ``PPCRTrainModule``, DeepSpeed config
   (``build_deepspeed_config``) and parameter groups: a warm-up step, then ``--train-steps``
   timed steps; step time and peak GPU memory.

Writes JSON after every phase (a killed run keeps what it measured) to ``--out`` (default
``$OUT/gpu_check.json`` when ``$OUT`` is set, else benchmarks/results/gpu_check.json).
``--tiny`` swaps in the ``shapes`` recipe's tiny model (fp32, whatever device is there) so the
whole script can be dry-run on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

SPLIT = "val"


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_check.json" if out else HERE / "results" / "gpu_check.json"


class Report:
    """The JSON being built, written after every phase."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path = path
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"phases": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def phase(self, name: str, fn: Callable[[], dict[str, Any]], needs_s: float) -> Optional[dict[str, Any]]:
        """Run a phase unless fewer than ``needs_s`` seconds of the budget are left."""
        left = self.budget_s - self.elapsed()
        if left < needs_s:
            reason = f"{left:.0f} s of the budget left, the phase needs ~{needs_s:.0f} s"
            self.data["phases"][name] = {"skipped": reason}
            self.write()
            return None
        print(f"[{self.elapsed():6.1f} s] {name}", flush=True)
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next phase
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(result["traceback"], file=sys.stderr, flush=True)
        result["phase_seconds"] = time.perf_counter() - started
        self.data["phases"][name] = result
        self.write()
        return result

    def write(self) -> None:
        self.data["elapsed_s"] = self.elapsed()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_gb(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        import resource

        return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    return {
        "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def recipe_for(args, data_root: Path):
    from ppcr.config.loading import load_recipe

    common = [f"data.root={data_root}", "data.datasets=[shapes]", "data.num_workers=0",
              "train.batch_size=8", "train.micro_batch_size=2"]
    if args.tiny:
        return load_recipe("shapes", common)
    return load_recipe("paper", ["init.source=random", "init.tokenizer=stand-in", *common])


# ---------------------------------------------------------------------------- phases


def evaluation_phase(model, root: Path, expressions: list[str], args) -> dict[str, Any]:
    from ppcr.evaluation.evaluate import evaluate

    device = next(model.parameters()).device
    model.eval()
    evaluate(model, "shapes", SPLIT, root, batch_size=16)  # warm-up: kernels, allocator
    out: dict[str, Any] = {}
    rows = {}
    for name, naive in (("grouped", False), ("naive", True)):
        reset_peak(device)
        result = evaluate(model, "shapes", SPLIT, root, naive=naive, batch_size=16)
        rows[name] = [(r.intersection, r.union) for r in result.sentences]
        out[name] = {
            "sentences": len(result.sentences),
            "seconds": result.seconds,
            "sentences_per_s": result.sentences_per_second,
            **memory_gb(device),
        }
    out["grouped_vs_naive"] = out["grouped"]["sentences_per_s"] / out["naive"]["sentences_per_s"]
    out["same_masks"] = rows["grouped"] == rows["naive"]
    try:
        out["flops"] = flops_per_sentence(model, expressions, args)
        for name in ("grouped", "naive"):
            mode = "grouped+kv" if name == "grouped" else "naive"
            out[name]["achieved_tflops"] = out["flops"][mode] * out[name]["sentences_per_s"]
    except Exception as exc:  # noqa: BLE001 - the timing stands without it
        out["flops"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def flops_per_sentence(model, expressions: list[str], args) -> dict[str, float]:
    """TFLOP per sentence of each mode for one image's sentences, counted on a meta copy."""
    from flops_per_sentence import count_mode

    from ppcr.modeling.build import build_model
    from ppcr.modeling.processor import PPCRProcessor

    recipe = recipe_for(args, Path("unused"))
    meta = build_model(recipe, dtype=torch.bfloat16 if not args.tiny else torch.float32, device="meta").eval()
    processor = PPCRProcessor.from_model(meta)
    return {mode: count_mode(meta, processor, mode, expressions).total / len(expressions) / 1e12
            for mode in ("naive", "grouped+kv")}


def predictor_phase(model, image_path: Path, expressions: list[str], repeat: int) -> dict[str, Any]:
    from ppcr.inference.predictor import PPCRPredictor

    device = next(model.parameters()).device
    predictor = PPCRPredictor(model)
    predictor.set_image(image_path)
    predictor.predict(expressions[0])  # warm-up
    sync(device)
    started = time.perf_counter()
    predictor.set_image(image_path)
    sync(device)
    set_image_s = time.perf_counter() - started
    single = []
    for _ in range(repeat):
        for expression in expressions:
            started = time.perf_counter()
            predictor.predict(expression)
            sync(device)
            single.append(time.perf_counter() - started)
    batched = []
    for _ in range(repeat):
        started = time.perf_counter()
        predictor.predict_batch(expressions)
        sync(device)
        batched.append((time.perf_counter() - started) / len(expressions))
    single.sort()
    return {
        "expressions": len(expressions),
        "set_image_ms": set_image_s * 1e3,
        "predict_ms_median": single[len(single) // 2] * 1e3,
        "predict_ms_min": single[0] * 1e3,
        "predict_batch_ms_per_expression_best": min(batched) * 1e3,
        **memory_gb(device),
    }


def training_phase(model, recipe, steps: int) -> dict[str, Any]:
    """One process of ``ppcr train`` (the trainer runs nproc=1 the same way: a rank environment)."""
    from ppcr.training.distributed import environment, free_port, rank_environment

    with environment(rank_environment(0, 1, free_port())):
        return _train_steps(model, recipe, steps)


def _train_steps(model, recipe, steps: int) -> dict[str, Any]:
    import deepspeed

    from ppcr.training.deepspeed_config import build_deepspeed_config, resolve_precision
    from ppcr.training.distributed import init_distributed
    from ppcr.training.param_groups import optimizer_groups
    from ppcr.training.plan import make_plan
    from ppcr.training.ppcr_task import PPCRTrainModule, ReferTrainDataset

    device = next(model.parameters()).device
    dist = init_distributed(device.type)
    dataset = ReferTrainDataset(recipe)
    train = recipe.train
    plan = make_plan(train, 1, len(dataset))
    precision = resolve_precision(train.precision, dist.device_type)
    module = PPCRTrainModule(model, recipe).train()
    groups = optimizer_groups(module, train)
    config = build_deepspeed_config(train, plan, precision, [g["lr"] for g in groups])
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=groups, config=config)
    order = list(range(len(dataset)))
    random.Random(0).shuffle(order)
    cursor = 0

    def one_step() -> tuple[float, float]:
        nonlocal cursor
        sync(device)
        started = time.perf_counter()
        loss = 0.0
        for _ in range(plan.grad_accum):
            items = [dataset[order[(cursor + k) % len(order)]] for k in range(plan.micro_batch_size)]
            cursor += plan.micro_batch_size
            output = engine(items)
            engine.backward(output.loss)
            engine.step()
            loss += float(output.loss.detach()) / plan.grad_accum
        sync(device)
        return time.perf_counter() - started, loss

    warmup_s, warmup_loss = one_step()
    reset_peak(device)
    timed = [one_step() for _ in range(steps)]
    return {
        "zero_stage": config["zero_optimization"]["stage"],
        "precision": precision,
        "batch_size": plan.batch_size,
        "micro_batch_size": plan.micro_batch_size,
        "grad_accum": plan.grad_accum,
        "warmup_step_s": warmup_s,
        "step_s": [s for s, _ in timed],
        "step_s_best": min(s for s, _ in timed),
        "sentences_per_s": plan.batch_size / min(s for s, _ in timed),
        "losses": [warmup_loss, *(loss for _, loss in timed)],
        "losses_finite": all(math.isfinite(x) for x in [warmup_loss, *(loss for _, loss in timed)]),
        "trainable_parameters": sum(p.numel() for g in groups for p in g["params"]),
        **memory_gb(device),
    }


# ---------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny shapes model (CPU dry run)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting phases after this")
    parser.add_argument("--images", type=int, default=20, help="images of the evaluated split, 7 sentences each (>= 20)")
    parser.add_argument("--train-steps", type=int, default=2, help="timed optimizer steps after the warm-up")
    parser.add_argument("--repeat", type=int, default=3, help="predictor rounds")
    args = parser.parse_args(argv)
    out = args.out or default_out()
    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA device; use --tiny for the CPU dry run", file=sys.stderr)
        return 1

    from bench_grouped_eval import write_benchmark_split

    from ppcr.data.refer import ReferDataset
    from ppcr.modeling.build import build_model

    report = Report(out, args.budget_s)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report.data.update({
        "what": "real-size PPCR (random bf16 weights) on one GPU" if not args.tiny else "tiny dry run",
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "budget_s": args.budget_s,
    })
    with tempfile.TemporaryDirectory(prefix="ppcr-gpu-check-") as tmp:
        root = Path(tmp) / "shapes"
        images, sentences = write_benchmark_split(root, max(20, args.images), 7, seed=0)  # Shapes-Ref needs 20
        report.data["eval_split"] = {"images": images, "sentences": sentences, "per_image": sentences / images}
        recipe = recipe_for(args, root)
        first = ReferDataset("shapes", root, SPLIT)
        image_id = first[0].image_id
        expressions = [s.text for s in first if s.image_id == image_id]
        image_path = first[0].image_path
        holder: dict[str, Any] = {}

        def build() -> dict[str, Any]:
            reset_peak(device)
            started = time.perf_counter()
            dtype = torch.float32 if args.tiny else torch.bfloat16
            holder["model"] = build_model(recipe, dtype=dtype, device=device)
            sync(device)
            model = holder["model"]
            return {
                "seconds": time.perf_counter() - started,
                "llm_layers": len(model.language_model.layers),
                "hidden": model.hidden_size,
                "image_tokens": model.image_seq_length,
                "sam_image_size": model.sam_image_size,
                "parameters": sum(p.numel() for p in model.parameters()),
                "dtype": str(next(model.parameters()).dtype),
                **memory_gb(device),
            }

        if report.phase("build", build, needs_s=0) is None or "model" not in holder:
            return 1
        model = holder["model"]
        report.phase("evaluation", lambda: evaluation_phase(model, root, expressions, args), needs_s=60)
        report.phase("predictor", lambda: predictor_phase(model, image_path, expressions, args.repeat), needs_s=20)
        report.phase("train_step", lambda: training_phase(model, recipe, args.train_steps), needs_s=60)
    report.write()
    failed = [name for name, phase in report.data["phases"].items() if "error" in phase]
    print(f"[{report.elapsed():6.1f} s] wrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``ppcr ablate``: train (or reuse) one variant of a recipe and evaluate it.

A variant is a recipe plus ablation overlays (``spatial-head=attn``) and overrides. Its run
directory is named after the choices that change *training*; ``box-source`` only changes
evaluation, so ``box-source=gt`` reuses the default run and writes ``eval-gt/`` beside ``eval/``.
A finished run with the same recipe is reused, an interrupted one is resumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ppcr.config.ablations import AblationChoice, list_axes, parse_choice
from ppcr.config.loading import load_recipe
from ppcr.config.schema import Recipe
from ppcr.errors import PPCRError
from ppcr.training.layout import STATE_DIR

DEFAULT_RUNS_ROOT = Path("runs/ablate")
EVAL_ONLY_AXES = {"box_source"}
# Keys that do not change what is trained (compared when deciding whether a run can be reused).
IGNORED_FOR_REUSE = ("name", "description", "eval")


@dataclass
class AblationPlan:
    recipe: Recipe
    choices: list[AblationChoice]
    run_dir: Path
    action: str  # "train", "resume" or "reuse"

    @property
    def label(self) -> str:
        return ",".join(c.label for c in self.choices) or "default"


@dataclass
class AblationResult:
    plan: AblationPlan
    evaluations: list[Any] = field(default_factory=list)
    train_result: Optional[Any] = None


def split_arguments(arguments: Iterable[str]) -> tuple[list[AblationChoice], list[str]]:
    """Separate ``AXIS=VALUE`` choices (shipped overlays) from plain ``key=value`` overrides."""
    axes = list_axes()
    choices, overrides = [], []
    for text in arguments:
        key = text.split("=", 1)[0].strip().replace("-", "_")
        if key in axes:
            choices.append(parse_choice(text))
        else:
            overrides.append(text)
    seen: dict[str, str] = {}
    for choice in choices:
        if choice.axis in seen and seen[choice.axis] != choice.value:
            raise PPCRError(
                f"{choice.axis.replace('_', '-')} is given twice ({seen[choice.axis]} and {choice.value})"
            )
        seen[choice.axis] = choice.value
    return choices, overrides


def _training_view(recipe: Recipe) -> dict:
    data = dataclasses.asdict(recipe)
    for key in IGNORED_FOR_REUSE:
        data.pop(key, None)
    return data


def run_dir_for(recipe_name: str, choices: list[AblationChoice], overrides: list[str], runs_root: Path) -> Path:
    """``<runs>/<recipe>/<training choices>[+<hash of training overrides>]`` (``default`` if none)."""
    import hashlib

    label = ",".join(sorted(c.label for c in choices if c.axis not in EVAL_ONLY_AXES)) or "default"
    training_overrides = sorted(o for o in overrides if not o.strip().startswith("eval."))
    if training_overrides:
        label += "+" + hashlib.sha1("\n".join(training_overrides).encode()).hexdigest()[:8]
    return Path(runs_root) / recipe_name / label


def plan_ablation(
    arguments: Iterable[str], *, recipe: str = "shapes", runs_root: str | Path = DEFAULT_RUNS_ROOT
) -> AblationPlan:
    """Resolve the variant, its run directory and whether to train, resume or reuse."""
    choices, overrides = split_arguments(arguments)
    resolved = load_recipe(recipe, overrides, overlays=[c.overlay for c in choices])
    run_dir = run_dir_for(resolved.name, choices, overrides, Path(runs_root))
    final = run_dir / "final" / "config.json"
    saved = run_dir / "recipe.yaml"
    if not run_dir.exists():
        return AblationPlan(resolved, choices, run_dir, "train")
    if not saved.is_file():
        raise PPCRError(
            f"{run_dir} exists but is not a training run (no recipe.yaml)",
            hint="remove it or pass another --runs folder",
        )
    if _training_view(load_recipe(saved)) != _training_view(resolved):
        raise PPCRError(
            f"{run_dir} holds a run of a different recipe",
            hint="remove it, or pass another --runs folder, to train this variant",
        )
    if final.is_file():
        return AblationPlan(resolved, choices, run_dir, "reuse")
    if (run_dir / STATE_DIR / "latest").is_file():
        return AblationPlan(resolved, choices, run_dir, "resume")
    # Stopped before its first training state: nothing to resume, so it starts again.
    return AblationPlan(resolved, choices, run_dir, "train")


def run_ablation(
    plan: AblationPlan,
    *,
    nproc: int = 1,
    device: str = "cpu",
    eval_progress: Optional[Callable[[str, int, int], None]] = None,
    train_progress: Optional[bool] = None,
) -> AblationResult:
    """Train (or resume / reuse) the variant, then evaluate it on ``recipe.eval.splits``."""
    from ppcr.data.datasets import parse_split_ref
    from ppcr.evaluation.evaluate import evaluate_many
    from ppcr.evaluation.runs import default_eval_dir
    from ppcr.modeling.model import PPCRModel
    from ppcr.training.run import train
    from ppcr.utils.device import resolve_device

    torch_device = resolve_device(device)  # a device this machine lacks fails now, not after training
    recipe = plan.recipe
    by_dataset: dict[str, list[str]] = {}
    for text in recipe.eval.splits:  # checked before hours of training, not after
        spec, split = parse_split_ref(text)
        by_dataset.setdefault(spec.name, []).append(split)

    result = AblationResult(plan)
    if plan.action != "reuse":
        result.train_result = train(
            recipe, plan.run_dir, resume=plan.action == "resume", nproc=nproc, progress=train_progress
        )
    final = plan.run_dir / "final"
    model = PPCRModel.from_pretrained(final, device=torch_device)
    out_dir = default_eval_dir(final, recipe.eval.box_source)
    for dataset, splits in by_dataset.items():
        result.evaluations += evaluate_many(
            model,
            dataset,
            splits,
            recipe.data.root,
            images=recipe.data.images,
            box_source=recipe.eval.box_source,
            out_dir=out_dir,
            batch_size=recipe.eval.batch_size,
            progress=eval_progress,
            model_name=str(final),
        )
    return result

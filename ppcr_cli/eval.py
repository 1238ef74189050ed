"""``ppcr eval``: score a checkpoint on every sentence of one or more splits (thin over
``ppcr.evaluation.evaluate``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ppcr.config.schema import BoxSource, choices
from ppcr.errors import PPCRError

DEFAULT_DATA_ROOT = "data/refer_seg"
FORMATS = ("table", "json")
BOX_SOURCES = choices(BoxSource)


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise PPCRError(f"{option} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _saved_recipe(model_dir: Path, config_recipe: Optional[dict]) -> Optional[dict]:
    """The recipe saved with the checkpoint (``config.json``), else the run's ``recipe.yaml``."""
    if isinstance(config_recipe, dict):
        return config_recipe
    from ppcr.evaluation.runs import RECIPE_FILE, run_dir_of

    run_dir = run_dir_of(model_dir)
    if run_dir is None:
        return None
    import yaml

    try:
        data = yaml.safe_load((run_dir / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def default_data_root(recipe: Optional[dict]) -> Path:
    """``data.root`` of the model's saved recipe if it names one, else ``data/refer_seg``."""
    data = recipe.get("data") if isinstance(recipe, dict) else None
    root = data.get("root") if isinstance(data, dict) else None
    return Path(root) if isinstance(root, str) and root else Path(DEFAULT_DATA_ROOT)


def _check_model_dir(model_dir: Path):
    """Fail fast (before torch is imported) on a missing or foreign checkpoint directory."""
    from ppcr.errors import CheckpointError
    from ppcr.modeling.config import CONFIG_NAME, PPCRConfig, not_a_checkpoint_hint

    if not model_dir.exists():
        raise CheckpointError(
            f"model directory not found: {model_dir}", hint="pass a PPCR checkpoint directory with --model"
        )
    if not model_dir.is_dir():
        raise CheckpointError(f"--model must be a checkpoint directory, got the file {model_dir}")
    if not (model_dir / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{model_dir} is not a PPCR checkpoint (it has no {CONFIG_NAME})", hint=not_a_checkpoint_hint(model_dir)
        )
    return PPCRConfig.load(model_dir)


def _device_and_dtype(device: str, dtype: str):
    """``--device`` and ``--dtype`` as torch objects, or a one-line error (before anything is read)."""
    from ppcr.utils.device import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    return torch_device, resolve_dtype(dtype, torch_device)


def _load_model(model_dir: Path, device: str, dtype: str = "auto"):
    """Load the checkpoint on ``--device`` (auto: CUDA when available) in ``--dtype`` (auto: bf16
    on a GPU that has it, else fp32)."""
    from transformers.utils import logging as hf_logging

    from ppcr.modeling.model import PPCRModel

    torch_device, torch_dtype = _device_and_dtype(device, dtype)
    hf_logging.disable_progress_bar()
    return PPCRModel.from_pretrained(model_dir, dtype=torch_dtype, device=torch_device)


def print_unsqueezed(renderable) -> None:
    """Print a rich table on stdout at its natural width even when stdout is narrow or a pipe
    (rich would otherwise shrink the columns and cut numbers to "7…")."""
    from rich.console import Console
    from rich.measure import Measurement

    from ppcr_cli.console import out

    width = Measurement.get(out, out.options.update_width(100_000), renderable).maximum
    if width <= out.width:
        out.print(renderable)
        return
    wide = Console(
        file=out.file, width=width, highlight=False, force_terminal=out.is_terminal, no_color=out.no_color
    )
    wide.print(renderable)


class SplitProgress:
    """One rich progress bar per split on stderr (only drawn on a terminal)."""

    def __init__(self) -> None:
        from ppcr_cli.console import progress_bars

        self.bar = progress_bars()
        self.tasks: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(f"eval {label}", total=total)
        self.bar.update(self.tasks[label], completed=done, total=total)


def print_results(results, out_dir: Path) -> None:
    from rich.table import Table

    from ppcr.evaluation.metrics import PRECISION_THRESHOLDS, precision_key
    from ppcr_cli.console import err

    first = results[0]
    table = Table(title=f"{first.dataset} · {first.box_source} boxes · {first.model}", title_justify="left")
    keys = ["oIoU", "mIoU", *(precision_key(t) for t in PRECISION_THRESHOLDS)]
    for column in ("split", "sentences", *keys, "sent/s"):
        table.add_column(column, justify="left" if column == "split" else "right", no_wrap=True)
    for result in results:
        metrics = result.metrics
        cells = ["–" if metrics[key] is None else f"{metrics[key]:.2f}" for key in keys]
        speed = result.sentences_per_second
        table.add_row(result.split, f"{metrics['count']:,}", *cells, "–" if speed is None else f"{speed:.1f}")
    print_unsqueezed(table)
    err.print(f"[dim]results written to[/] {out_dir}")


ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        help="PPCR checkpoint directory (save_pretrained / ppcr train output) or Hugging Face hub id "
        "[default: the embedded Shapes-Ref model, evaluated into runs/ppcr-shapes-tiny/].",
    ),
]
DatasetOpt = Annotated[
    str, typer.Option("--dataset", help="refcoco, refcoco+, refcocog, shapes, shapes+ or shapesg.")
]
SplitOpt = Annotated[
    list[str], typer.Option("--split", help="Split to score; repeat for several (e.g. --split val --split testA).")
]
DataRootOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--data-root",
        help="Folder holding the refer layout (default: data.root of the model's saved recipe, else data/refer_seg).",
    ),
]
ImagesOpt = Annotated[
    Optional[Path],
    typer.Option("--images", help="Images folder (default: the dataset's folder under the data root)."),
]
BoxSourceOpt = Annotated[
    str, typer.Option("--box-source", help="predicted (the box head's) or gt (Table 3's oracle).")
]
OutOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--out",
        help="Output folder; each split goes to OUT/DATASET_SPLIT/ (default: RUN/eval, or RUN/eval-gt "
        "with --box-source gt, when the model folder or its parent holds the run's recipe.yaml; "
        "else MODEL/eval, MODEL being the --model folder).",
    ),
]
FormatOpt = Annotated[
    str, typer.Option("--format", help="table (rich, on stdout) or json (JSON only on stdout).")
]
SaveVisOpt = Annotated[
    int, typer.Option("--save-vis", help="Write the Fig. 6 panel (PNG) of the first N sentences.")
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Sentences per forward pass.")]
NaiveOpt = Annotated[
    bool, typer.Option("--naive", help="Re-encode the image for every sentence (slow; for comparison).")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto: cuda when available).")
]
DtypeOpt = Annotated[
    str,
    typer.Option("--dtype", help="auto, fp32, bf16 or fp16 (auto: bf16 on a GPU that has it, else fp32; fp16 needs a GPU)."),
]
NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        help="Processes sharing the images (one per GPU; gloo ranks on CPU); the results are the same. "
        "Under torchrun / deepspeed leave it at 1: each launched process is one.",
    ),
]


def eval_command(
    dataset: DatasetOpt,
    split: SplitOpt,
    model: ModelOpt = None,
    data_root: DataRootOpt = None,
    images: ImagesOpt = None,
    box_source: BoxSourceOpt = "predicted",
    out_dir: OutOpt = None,
    output_format: FormatOpt = "table",
    save_vis: SaveVisOpt = 0,
    batch_size: BatchSizeOpt = 16,
    naive: NaiveOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    nproc: NprocOpt = 1,
) -> None:
    """Score a checkpoint on every sentence of the given splits: oIoU, mIoU, P@0.5…0.9.

    Writes metrics.json, per_sentence.csv (and with --save-vis the Fig. 6 panels) per split.

    Examples:

      ppcr eval --dataset shapes --split val            (the embedded model)

      ppcr eval --model runs/shapes/final --dataset shapes --split val --split testA --split testB

      ppcr eval --model ckpt --dataset refcocog --split val --split test --data-root data/refer_seg --format json

      ppcr eval --model ckpt --dataset refcoco --split val --box-source gt --save-vis 8

      ppcr eval --model OWNER/NAME --dataset refcoco --split val --device cuda --dtype bf16   (a hub id)

      ppcr eval --model ckpt --dataset refcoco --split val --nproc 8     (one process per GPU)

      torchrun --nproc_per_node 8 -m ppcr_cli eval --model ckpt --dataset refcoco --split val
    """
    from ppcr.data.datasets import get_dataset
    from ppcr.evaluation.data import load_split
    from ppcr.evaluation.outputs import check_eval_destination
    from ppcr.evaluation.runs import default_eval_dir

    _choice(output_format, FORMATS, "--format")
    _choice(box_source, BOX_SOURCES, "--box-source")
    if batch_size < 1:
        raise PPCRError(f"--batch-size must be at least 1, got {batch_size}")
    if save_vis < 0:
        raise PPCRError(f"--save-vis must be 0 or more, got {save_vis}")
    if nproc < 1:
        raise PPCRError(f"--nproc must be at least 1, got {nproc}")
    from ppcr.evaluation.runs import embedded_run_dir, record_embedded_run
    from ppcr.inference.model_source import resolve_model_dir

    _device_and_dtype(device, dtype)  # a device or dtype this machine lacks fails before any file is read
    given = model
    model = resolve_model_dir(model)
    # How the results name the model: the resolved folder, or the hub id as given.
    model_name = str(model) if given is None or Path(given).expanduser().exists() else given
    config = _check_model_dir(model)
    spec = get_dataset(dataset)
    splits = list(dict.fromkeys(split))
    for name in splits:
        spec.check_split(name)
    root = data_root if data_root is not None else default_data_root(_saved_recipe(model, config.recipe))
    # Every split's annotations and images, and where the results go, are checked before the model loads.
    loaded = [load_split(dataset, name, root, images) for name in splits]
    destination = out_dir if out_dir is not None else default_eval_dir(model, box_source)
    check_eval_destination(destination, dataset, splits, [model, root, *(data.images_dir for data in loaded)])

    embedded = embedded_run_dir(model)
    if embedded is not None and out_dir is None:
        record_embedded_run(embedded, config.recipe)

    from ppcr.training.distributed import launched_externally

    if nproc > 1 or launched_externally():
        results = _evaluate_in_processes(
            model, dataset, splits, root, images, box_source, destination, save_vis, batch_size, naive, device, nproc,
            dtype=dtype, model_name=model_name,
        )
        if os.environ.get("RANK", "0") == "0":  # under torchrun/deepspeed, rank 0 reports
            print_outcome(results, output_format, destination)
        return

    from ppcr.evaluation.evaluate import evaluate_many

    loaded = _load_model(model, device, dtype)
    progress = SplitProgress()
    with progress.bar:
        results = evaluate_many(
            loaded,
            dataset,
            splits,
            root,
            images=images,
            box_source=box_source,
            out_dir=destination,
            save_vis=save_vis,
            batch_size=batch_size,
            naive=naive,
            progress=progress,
            model_name=model_name,
        )
    print_outcome(results, output_format, destination)


def print_outcome(results, output_format: str, destination: Path) -> None:
    """The results as JSON on stdout, or as the rich table."""
    from ppcr.strict_json import strict_json_dumps

    if output_format == "json":
        payload = [{**result.to_json(), "out_dir": str(result.out_dir)} for result in results]
        typer.echo(strict_json_dumps(payload, indent=2))  # never NaN: not JSON
    else:
        print_results(results, destination)


def _evaluate_in_processes(
    model, dataset, splits, root, images, box_source, destination, save_vis, batch_size, naive, device, nproc,
    *, dtype: str, model_name: str,
):
    """``--nproc N`` or a process of torchrun/deepspeed: every process loads the model itself."""
    from ppcr.evaluation.processes import EvalJob, evaluate_in_processes
    from ppcr_cli.console import err

    job = EvalJob(
        model_dir=str(model), dataset=dataset, splits=splits, data_root=str(root),
        images=None if images is None else str(images), box_source=box_source, out_dir=str(destination),
        save_vis=save_vis, batch_size=batch_size, naive=naive, device=device, model_name=model_name,
        dtype=None if dtype == "auto" else dtype, show_progress=err.is_terminal,
    )
    return evaluate_in_processes(job, nproc)

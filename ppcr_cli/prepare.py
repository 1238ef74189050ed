"""``ppcr prepare``: validate RefCOCO-family layouts and generate Shapes-Ref."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="Check datasets in the refer layout, generate the Shapes-Ref benchmark, or convert public weights "
    "into a PPCR base checkpoint.\n\n"
    "Examples:\n\n  ppcr prepare refcoco --root data/refer_seg\n\n"
    "  ppcr prepare weights --from glamm --out weights/ppcr-glamm-7b\n\n"
    "  ppcr prepare refcocog --root data/refer_seg --images /coco/train2014\n\n"
    "  ppcr prepare shapes --out data/shapes --seed 0",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)

RootOpt = Annotated[
    Path, typer.Option("--root", help="Data root holding refcoco/, refcoco+/, refcocog/ (the refer layout).")
]
ImagesOpt = Annotated[
    Optional[Path],
    typer.Option("--images", help="COCO train2014 images folder [default: ROOT/images/mscoco/images/train2014]."),
]
SplitByOpt = Annotated[
    Optional[str], typer.Option("--split-by", help="Which refs(SPLIT-BY).p to read (unc, umd, google).")
]
NoImagesOpt = Annotated[bool, typer.Option("--skip-images", help="Do not check that every image file exists.")]


def _check_refer(name: str, root: Path, images: Optional[Path], split_by: Optional[str], skip_images: bool):
    from rich.table import Table

    from ppcr.data.prepare import check_refer_layout
    from ppcr_cli.console import err, out, progress

    bar, advance = progress(f"checking {name}", None)
    with bar:
        report = check_refer_layout(
            name, root, images=images, split_by=split_by, check_images=not skip_images, progress=advance
        )
    table = Table(title=f"{report.dataset} ({report.split_by}) under {report.root}")
    for column in ("split", "images", "refs", "sentences", "published images", "published refs",
                   "published sentences"):
        table.add_column(column, justify="right" if column != "split" else "left")

    def fmt(value) -> str:
        return "–" if value is None else f"{value:,}"

    for row in report.rows:
        pub = row.published
        table.add_row(row.split, fmt(row.images), fmt(row.refs), fmt(row.sentences),
                      fmt(pub and pub.images), fmt(pub and pub.refs), fmt(pub and pub.sentences))
    out.print(table)
    for note in report.notes:
        err.print(f"[dim]note:[/] {note}")
    for problem in report.problems:
        for detail in problem.details:
            err.print(f"[red]invalid:[/] {detail}", markup=True, highlight=False, soft_wrap=True)
    report.raise_if_problems()
    err.print(f"[green]ok:[/] {report.dataset} layout is complete")


def _register_refer(name: str) -> None:
    def command(
        root: RootOpt = Path("data/refer_seg"),
        images: ImagesOpt = None,
        split_by: SplitByOpt = None,
        skip_images: NoImagesOpt = False,
    ) -> None:
        _check_refer(name, root, images, split_by, skip_images)

    command.__doc__ = (
        f"Validate the {name} refer layout and print per-split counts beside the published ones.\n\n"
        f"Example: ppcr prepare {name} --root data/refer_seg"
    )
    app.command(name)(command)


for _name in ("refcoco", "refcoco+", "refcocog"):
    _register_refer(_name)


@app.command("shapes")
def shapes_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write shapes/, shapes+/, shapesg/ and images/.")] = Path(
        "data/shapes"
    ),
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    images: Annotated[
        Optional[int], typer.Option("--images", help="Number of images to draw [default: the generator's].")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace a Shapes-Ref already in OUT (once the new one is complete)."),
    ] = False,
) -> None:
    """Generate Shapes-Ref (shapes, shapes+, shapesg) in the refer layout and print its summary.

    An existing Shapes-Ref in --out is refused unless --overwrite is given.

    Example: ppcr prepare shapes --out data/shapes --seed 0
    """
    from rich.table import Table

    from ppcr.data.shapes import generate_shapes_ref
    from ppcr_cli.console import err, out, progress

    kwargs = {} if images is None else {"images": images}
    bar, advance = progress("drawing Shapes-Ref", kwargs.get("images"))
    with bar:
        summary = generate_shapes_ref(out_dir, seed=seed, progress=advance, overwrite=overwrite, **kwargs)
    table = Table(title=f"Shapes-Ref (seed {seed}) in {summary.out}")
    for column in ("dataset", "split", "images", "refs", "sentences"):
        table.add_column(column, justify="left" if column in ("dataset", "split") else "right")
    for row in summary.rows():
        table.add_row(*[str(v) if not isinstance(v, int) else f"{v:,}" for v in row])
    out.print(table)
    err.print(f"[green]done[/] in {summary.seconds:.1f} s")


def _register_weights() -> None:
    from ppcr_cli.weights import weights_command

    app.command("weights")(weights_command)


_register_weights()

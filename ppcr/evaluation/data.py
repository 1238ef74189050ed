"""The split an evaluation scores, checked before any model work (no torch here, so the CLI can
reject a bad data root or images folder in a fraction of a second)."""

from __future__ import annotations

from pathlib import Path

from ppcr.data.datasets import get_dataset
from ppcr.data.refer import ReferDataset, ReferIndex
from ppcr.errors import DataError

IMAGES_HINT = "pass the images folder with --images DIR (library: images=DIR)"


def check_images_present(data: ReferDataset) -> None:
    """Fail before any model work if the split's image files are not where they should be."""
    if not data.images_dir.is_dir():
        raise DataError(
            f"{data.name}: images folder not found: {data.images_dir}",
            hint=IMAGES_HINT,
        )
    paths = sorted({sample.image_path for sample in data})
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise DataError(
            f"{data.name}/{data.split}: {len(missing)} of {len(paths)} image files missing, "
            f"e.g. {missing[0]}",
            hint=IMAGES_HINT,
        )


def load_split(
    dataset: str, split: str, data_root: str | Path, images: str | Path | None = None
) -> ReferDataset:
    """The split's samples, its images checked to exist (DataError otherwise)."""
    get_dataset(dataset).check_split(split)
    data = ReferIndex.load(dataset, data_root).split(split, images)
    check_images_present(data)
    return data



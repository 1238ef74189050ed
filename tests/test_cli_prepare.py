"""`ppcr prepare refcoco*` on real-layout files: counts table, and one-line errors on bad input."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest

from tests.refer_fixtures import write_small_example
from tests.test_cli import _assert_one_line_error, run


@pytest.fixture()
def root(tmp_path):
    write_small_example(tmp_path, "refcoco")
    write_small_example(tmp_path, "refcocog")
    return tmp_path


def test_prepare_prints_counts_beside_published(root):
    result = run("prepare", "refcoco", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert "testB" in result.stdout and "16,994" in result.stdout  # published train images
    assert "layout is complete" in result.stderr


def test_missing_root(tmp_path):
    _assert_one_line_error(run("prepare", "refcoco", "--root", str(tmp_path / "nope")), 1, "data root not found")


def test_missing_pickle(root):
    os.remove(root / "refcocog" / "refs(umd).p")
    _assert_one_line_error(run("prepare", "refcocog", "--root", str(root)), 1, "refs(umd).p")


def test_truncated_pickle(root):
    path = root / "refcoco" / "refs(unc).p"
    path.write_bytes(path.read_bytes()[:40])
    _assert_one_line_error(run("prepare", "refcoco", "--root", str(root)), 1, "truncated or not a pickle")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(root, tmp_path):
    marker = tmp_path / "pwned"
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([{"ref": _Payload(marker)}], protocol=2))
    result = run("prepare", "refcoco", "--root", str(root))
    _assert_one_line_error(result, 1, "system")
    assert not marker.exists()


def test_unknown_dataset():
    _assert_one_line_error(run("prepare", "refcocox", "--root", "."), 2, "refcocox")


def test_missing_images(root):
    images = root / "images" / "mscoco" / "images" / "train2014"
    first = sorted(images.iterdir())[0]
    first.unlink()
    _assert_one_line_error(run("prepare", "refcoco", "--root", str(root)), 1, f"first: {first.name}")
    shutil.rmtree(images)
    _assert_one_line_error(run("prepare", "refcoco", "--root", str(root)), 1, "refcoco")
    # The images folder is configurable.
    other = root / "coco"
    other.mkdir()
    result = run("prepare", "refcoco", "--root", str(root), "--images", str(other))
    _assert_one_line_error(result, 1, str(other))

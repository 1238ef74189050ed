"""Atomic writes: complete result or untouched destination, no temporaries left behind."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat

import pytest

import ppcr.io
from ppcr.errors import PPCRError
from ppcr.io import (
    atomic_directory,
    atomic_path,
    atomic_save_json,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temporaries,
    replace_directory,
)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_text_json(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "sub" / "b.txt", "héllo")  # parent created
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    atomic_save_json(tmp_path / "m.json", {"oIoU": 80.1, "name": "réf"})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"oIoU": 80.1, "name": "réf"} and text.endswith("\n")
    atomic_write_text(tmp_path / "b2.txt", "old")
    atomic_write_text(tmp_path / "b2.txt", "new")
    assert (tmp_path / "b2.txt").read_text() == "new"
    assert _names(tmp_path) == ["a.bin", "b2.txt", "m.json", "sub"]


def test_written_files_get_normal_permissions(tmp_path):
    path = atomic_write_text(tmp_path / "x.txt", "x")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_json_refuses_nan_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        atomic_save_json(tmp_path / "m.json", {"x": float("nan")})
    assert _names(tmp_path) == []


def test_json_can_keep_nan_and_convert_other_objects_when_asked(tmp_path):
    """A diverged loss must survive a round trip through a file only json.loads reads back."""
    atomic_save_json(tmp_path / "r.json", {"loss": float("nan"), "top": float("inf")}, allow_nan=True)
    back = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert math.isnan(back["loss"]) and back["top"] == math.inf
    with pytest.raises(TypeError):
        atomic_save_json(tmp_path / "p.json", {"dir": tmp_path})
    atomic_save_json(tmp_path / "p.json", {"dir": tmp_path}, default=str)
    assert json.loads((tmp_path / "p.json").read_text(encoding="utf-8")) == {"dir": str(tmp_path)}
    assert _names(tmp_path) == ["p.json", "r.json"]


def test_atomic_path_keeps_suffix_and_replaces_on_success(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible before the block ends
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["mask.png"]


def test_atomic_path_failure_keeps_old_and_cleans_up(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["weights.safetensors"]


def test_unwritable_destination_is_a_one_line_ppcr_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("file")
    for call in (
        lambda: atomic_write_text(blocker / "out.txt", "x"),
        lambda: atomic_save_json(blocker / "deeper" / "m.json", {}),
    ):
        with pytest.raises(PPCRError) as info:
            call()
        assert "\n" not in str(info.value) and str(blocker) in str(info.value)
        assert info.value.hint
    # destination is an existing directory: the file cannot replace it
    (tmp_path / "taken").mkdir()
    with pytest.raises(PPCRError, match="cannot write"):
        atomic_write_text(tmp_path / "taken", "x")
    assert (tmp_path / "taken").is_dir()
    assert _names(tmp_path) == ["not_a_dir", "taken"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder_is_a_ppcr_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PPCRError, match="cannot write"):
            atomic_write_text(folder / "x.txt", "x")
    finally:
        folder.chmod(0o700)


def test_atomic_directory_creates_and_replaces(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as build:
        assert build.name.startswith("ckpt.tmp-") and build.parent == tmp_path
        (build / "config.json").write_text("{}")
        assert not target.exists()
    assert _names(target) == ["config.json"]
    with atomic_directory(target) as build:
        (build / "adapter").mkdir()
        (build / "adapter" / "w.bin").write_bytes(b"1")
        assert (target / "config.json").exists()  # old one intact while building
    assert _names(target) == ["adapter"]  # replaced wholesale, old content gone
    assert _names(tmp_path) == ["ckpt"]  # no .tmp- / .old- leftovers


def test_atomic_directory_failure_keeps_old(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as build:
            (build / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    assert _names(target) == ["keep.txt"]
    assert _names(tmp_path) == ["ckpt"]


def test_atomic_directory_replaces_a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("stale file")
    with atomic_directory(target) as build:
        (build / "a").write_text("a")
    assert target.is_dir() and _names(target) == ["a"]
    assert _names(tmp_path) == ["out"]


def test_atomic_directory_unwritable_parent(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PPCRError, match="cannot write"):
        with atomic_directory(blocker / "ckpt"):
            pass


def test_atomic_directory_restores_old_when_rename_in_fails(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    real_replace = os.replace

    def failing_replace(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PPCRError, match=r"no space left on device while writing .*ckpt"):
        with atomic_directory(target) as build:
            (build / "new.bin").write_bytes(b"x")
    assert _names(target) == ["keep.txt"]
    assert _names(tmp_path) == ["ckpt"]


def test_atomic_directory_leaves_the_previous_copy_intact_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("crash while writing")
    assert (target / "weights").read_text() == "good"
    assert _names(tmp_path) == ["ckpt"]
    # A crash between the two renames of a directory swap leaves only "<name>.old-XXXXXXXX": restored.
    os.replace(target, tmp_path / "ckpt.old-0123abcd")
    assert remove_stale_temporaries(tmp_path) == []
    assert (target / "weights").read_text() == "good"
    assert _names(tmp_path) == ["ckpt"]


def test_replace_directory_swaps_in_a_complete_directory(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "a").write_text("old")
    (tmp_path / ".partial-state").mkdir()
    (tmp_path / ".partial-state" / "b").write_text("new")
    assert replace_directory(tmp_path / ".partial-state", tmp_path / "state") == tmp_path / "state"
    assert _names(tmp_path) == ["state"] and _names(tmp_path / "state") == ["b"]
    (tmp_path / "fresh").mkdir()
    replace_directory(tmp_path / "fresh", tmp_path / "new")  # no previous copy
    assert _names(tmp_path) == ["new", "state"]


def test_remove_stale_temporaries_recognises_the_names_this_module_writes(tmp_path, monkeypatch):
    """Leftovers are made by really interrupting atomic_path / atomic_directory / the swap."""
    keep = tmp_path / "keep"
    (keep / "ckpt").mkdir(parents=True)
    (keep / "ckpt" / "w").write_text("complete")
    (keep / "notes.tmp-readme.txt").write_text("not ours: no leading dot")
    (keep / "archive.old-version").mkdir()  # not ours: not 8 hex digits
    real_rmtree, real_unlink, real_remove = shutil.rmtree, os.unlink, ppcr.io._remove
    # simulate a crash: the clean-up after a failure does not happen
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    monkeypatch.setattr(os, "unlink", lambda *a, **k: None)
    monkeypatch.setattr(ppcr.io, "_remove", lambda path: None)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(keep / "mask.png") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(keep / "export") as tmp:
            (tmp / "w").write_text("half")
            raise KeyboardInterrupt
    with atomic_directory(keep / "ckpt") as tmp:  # swap completes, deleting the old copy "fails"
        (tmp / "w").write_text("newer")
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    monkeypatch.setattr(os, "unlink", real_unlink)
    monkeypatch.setattr(ppcr.io, "_remove", real_remove)
    stale = sorted(p.name for p in keep.iterdir() if ".tmp-" in p.name or ".old-" in p.name)
    assert [n.split(".")[1] if n.startswith(".") else n.split(".")[0] for n in stale] == [
        "mask", "archive", "ckpt", "export", "notes"
    ]
    removed = remove_stale_temporaries(keep)
    assert sorted(p.name for p in removed) == sorted(
        n for n in stale if not n.startswith(("archive", "notes"))
    )
    assert _names(keep) == ["archive.old-version", "ckpt", "notes.tmp-readme.txt"]
    assert _names(keep / "ckpt") == ["w"] and (keep / "ckpt" / "w").read_text() == "newer"
    assert remove_stale_temporaries(tmp_path / "missing") == []

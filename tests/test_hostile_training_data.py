"""Hostile and careless inputs to training and data preparation (issue 23, points 3, 5, 6, 7, 9,
11, 12 and 13): each case reproduces what a new user or an attacker did, with small files built
here, and must end in one clear error (or a working run), nothing lost and nothing hanging.

The training cases use the engine's stand-in model (a few seconds each); the data cases write
tiny refer-layout datasets with :mod:`tests.refer_fixtures`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppcr.data.pickles import load_refs_pickle
from ppcr.data.prepare import check_refer_layout
from ppcr.data.refer import ReferIndex, clear_index_cache
from ppcr.errors import CheckpointError, DataError
from ppcr.training.errors import TrainingError
from ppcr.training.run import train
from tests import stand_in_model
from tests.refer_fixtures import small_example, write_example, write_small_example
from tests.stand_in_model import StandInFactory, StandInModel, build_dataset, collate
from tests.test_cli import _assert_one_line_error, run
from tests.test_training_engine import make_recipe, temporaries

REPO = Path(__file__).resolve().parents[1]


class TookTooLong(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Interrupt a runaway Python loop (SIGALRM) so a regression fails instead of hanging the suite."""

    def expire(signum, frame):
        raise TookTooLong(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def stand_in_run(out: Path, recipe=None, **options):
    """A run of the engine's stand-in model (16 steps, a state every 4), quiet."""
    return train(recipe or make_recipe(), out, StandInFactory(), build_dataset, collate, progress=False, **options)


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ============================================================ 3. one run per folder


def test_a_second_run_on_a_folder_in_use_is_refused_and_the_first_is_untouched(tmp_path):
    """``ppcr train --resume`` started again while the run is still going (a second terminal, a
    re-submitted job) passed every check and trained into the same folder."""
    out = tmp_path / "run"
    refusals: list[BaseException] = []

    def start_another_while_running(row):
        if row["step"] == 6:  # the state of step 4 exists: a resume would find everything it needs
            try:
                stand_in_run(out, resume=True)
            except TrainingError as exc:
                refusals.append(exc)

    result = stand_in_run(out, on_log=start_another_while_running)
    assert len(refusals) == 1, "the second run was not refused"
    message = refusals[0].message
    assert f"{out} is in use by another training run (PID {os.getpid()}" in message
    assert "\n" not in message
    assert result.steps == 16 and metrics_steps(out) == list(range(1, 17))  # not interleaved
    assert not (out / ".ppcr-train.lock").exists()  # released at the end
    assert temporaries(out) == []


def test_the_lock_names_its_holder_and_a_killed_holder_frees_the_folder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom ppcr.training.run_lock import run_directory_lock\n"
         f"with run_directory_lock({str(out)!r}):\n    print('held', flush=True)\n    sys.stdin.read()\n"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match=f"in use by another training run \\(PID {holder.pid} on "):
            stand_in_run(out)
        assert not (out / "recipe.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs, the kernel drops the lock
        holder.wait(timeout=30)
    assert (out / ".ppcr-train.lock").exists()  # the dead holder's file is left behind ...
    result = stand_in_run(out, make_recipe(max_steps=2))
    assert result.steps == 2  # ... and does not block the folder


# ============================================================ 5. refs pickle bombs

PY2_LATIN1_STRING = b"U\x04caf\xe9"  # SHORT_BINSTRING 'café' as Python 2 wrote it: forces the latin1 path


def refs_pickle(records: list, replacements: dict[str, bytes]) -> bytes:
    """``records`` pickled (protocol 2, shared objects memoised as pickle does), then each
    placeholder string's BINUNICODE opcode swapped for raw opcode bytes."""
    data = pickle.dumps(records, protocol=2)
    for placeholder, raw in replacements.items():
        encoded = placeholder.encode()
        opcode = b"X" + len(encoded).to_bytes(4, "little") + encoded
        assert data.count(opcode) == 1
        data = data.replace(opcode, raw)
    return data


def ref(ref_id: int = 0, **fields) -> dict:
    return {"ref_id": ref_id, "ann_id": 101, "image_id": 1, "split": "train", "file_name": "NAME",
            "sent_ids": [], "sentences": [], **fields}


def hostile_refcoco(tmp_path: Path, data: bytes) -> Path:
    """The small refcoco example with its refs pickle replaced by ``data``."""
    clear_index_cache()
    fixture = write_small_example(tmp_path / "root")
    fixture.refs_path.write_bytes(data)
    return fixture.root


def test_shared_nested_lists_of_a_few_hundred_bytes_are_refused_at_once(tmp_path):
    nested: list = []
    for _ in range(60):  # 60 levels, each list holding the one below twice: a tree of 2^60 nodes
        nested = [nested, nested]
    data = refs_pickle([ref(tokens=nested)], {"NAME": PY2_LATIN1_STRING})
    assert len(data) < 1000
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    started = time.perf_counter()
    with time_limit(20), pytest.raises(DataError, match="record 0 'tokens' holds a list, expected scalars only"):
        load_refs_pickle(path)
    assert time.perf_counter() - started < 2


def test_one_sentence_list_shared_by_thousands_of_refs_is_refused_before_anyone_iterates_it(tmp_path):
    sentence = {"sent_id": 0, "sent": "the thing", "raw": "the thing", "tokens": ["the", "thing"]}
    sentences, sent_ids = [sentence] * 20_000, [0] * 20_000
    records = [ref(i, sentences=sentences, sent_ids=sent_ids) for i in range(2_000)]  # 40 million sentences
    data = pickle.dumps(records, protocol=2)
    assert len(data) < 300_000
    root = hostile_refcoco(tmp_path, data)
    started = time.perf_counter()
    with time_limit(20), pytest.raises(DataError, match="more than 2,000,000 sentences"):
        check_refer_layout("refcoco", root)  # walked every ref's sentence list twice: 8e7 steps
    with time_limit(20), pytest.raises(DataError, match="more than 2,000,000 sentences"):
        ReferIndex.load("refcoco", root).split("train")
    assert time.perf_counter() - started < 4


def test_nesting_200k_deep_is_a_data_error_not_a_recursion_error(tmp_path):
    depth = 200_000
    deep = b"]" * depth + b"a" * (depth - 1)  # EMPTY_LIST × n, APPEND × (n-1): a list n levels deep
    data = refs_pickle([ref(tokens="DEEP")], {"NAME": PY2_LATIN1_STRING, "DEEP": deep})
    root = hostile_refcoco(tmp_path, data)
    with time_limit(20), pytest.raises(DataError, match="'tokens' holds a list, expected scalars only"):
        load_refs_pickle(root / "refcoco" / "refs(unc).p")
    # through the CLI: one line and exit 1 (a RecursionError was an internal error, exit 3)
    result = run("prepare", "refcoco", "--root", str(root), "--skip-images")
    _assert_one_line_error(result, 1, "'tokens' holds a list, expected scalars only")


def test_real_refs_records_still_load_from_python2_and_python3_pickles(tmp_path):
    """The schema admits what the RefCOCO family really holds (tests/refer_fixtures.py writes
    Python 2 cPickle bytes, latin1 and UTF-8 strings included)."""
    for python2, encoding in ((True, "latin1"), (True, "utf-8"), (False, "latin1")):
        clear_index_cache()
        fixture = write_small_example(tmp_path / f"{python2}-{encoding}", python2=python2, str_encoding=encoding)
        report = check_refer_layout("refcoco", fixture.root)
        assert report.ok, report.summary()
        assert len(ReferIndex.load("refcoco", fixture.root).split("train")) == 4


# ============================================================ 6. disk full during a checkpoint


def torch_save_failing_in(marker: str):
    """``torch.save`` as it fails on a full disk (reproduced on a 1 MiB tmpfs): a few bytes reach
    the file, the stream error is lost, and the zip writer's exit raises "unexpected pos"."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if marker in os.fspath(f):
            Path(f).write_bytes(b"PK\x03\x04" + bytes(124))
            try:
                raise RuntimeError("basic_ios::clear: iostream error")
            except RuntimeError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")
        return real_save(obj, f, *args, **kwargs)

    return save


def report_no_free_space_under(monkeypatch, root: Path) -> None:
    """What ``statvfs`` says of a full file system: no block left for this user."""
    real_statvfs = os.statvfs

    def statvfs(path):
        stats = real_statvfs(path)
        if not str(path).startswith(str(root)):
            return stats
        return os.statvfs_result((stats.f_bsize, stats.f_frsize, stats.f_blocks, 0, 0, stats.f_files,
                                  stats.f_ffree, stats.f_favail, stats.f_flag, stats.f_namemax))

    monkeypatch.setattr(os, "statvfs", statvfs)


@pytest.mark.parametrize("disk_full", [True, False], ids=["disk-full", "other-write-failure"])
def test_a_state_save_that_cannot_write_is_one_line_and_leaves_no_partial_state(tmp_path, monkeypatch, disk_full):
    reference = stand_in_run(tmp_path / "reference")
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", torch_save_failing_in(".partial-step_000008"))
    if disk_full:
        report_no_free_space_under(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError) as caught:
        stand_in_run(out)
    state = out / "state" / "step_000008"
    if disk_full:
        assert caught.value.message == f"no space left on device while writing {state}"
    else:  # the disk has room: say what failed, do not guess
        assert caught.value.message == (
            f"cannot write {state}: [enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0"
        )
    assert "--resume" in caught.value.hint
    assert temporaries(out) == []  # the .partial-step_000008 folder is gone
    assert (out / "state" / "latest").read_text().strip() == "step_000004"
    monkeypatch.undo()  # room again: the run continues from its last complete state
    resumed = stand_in_run(out, resume=True)
    assert resumed.resumed_from_step == 4
    assert resumed.weight_digests == reference.weight_digests  # bit-identical to the uninterrupted run


def test_an_export_that_fills_the_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):  # safetensors' own words on a full disk
        Path(filename).write_bytes(b"\x00" * 64)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(stand_in_model, "save_file", save_file)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as caught:
        stand_in_run(out)
    assert caught.value.message == f"no space left on device while writing {out / 'checkpoints' / 'step_000004'}"
    assert temporaries(out) == [] and list((out / "checkpoints").iterdir()) == []


# ============================================================ 7. killed before the first state save


class Killed(Exception):
    """Stands for the process being killed at that point."""


def killed_at_step(step: int):
    def on_log(row):
        if row["step"] == step:
            raise Killed

    return on_log


def test_a_run_killed_before_its_first_state_save_can_be_started_again(tmp_path):
    reference = stand_in_run(tmp_path / "reference")
    out = tmp_path / "run"
    with pytest.raises(Killed):  # step 2 of 16; the first state is saved at step 4
        stand_in_run(out, on_log=killed_at_step(2))
    assert (out / "recipe.yaml").exists() and metrics_steps(out) == [1, 2]
    with pytest.raises(TrainingError, match="nothing to resume") as caught:
        stand_in_run(out, resume=True)
    assert "without --resume" in caught.value.hint  # which now works:
    result = stand_in_run(out)  # was refused
    assert result.weight_digests == reference.weight_digests
    assert metrics_steps(out) == list(range(1, 17))  # the abandoned start's rows are gone


def test_a_run_killed_between_its_first_export_and_state_names_what_to_delete(tmp_path, monkeypatch):
    from ppcr.training import loop

    def killed(*args, **kwargs):
        raise Killed

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_training_state", killed)
        with pytest.raises(Killed):
            stand_in_run(out)
    assert (out / "checkpoints" / "step_000004").is_dir() and not (out / "state" / "latest").exists()
    with pytest.raises(TrainingError, match="holds exported weights \\(checkpoints/step_000004\\)") as fresh:
        stand_in_run(out)
    assert f"delete {out / 'checkpoints'}" in fresh.value.hint
    with pytest.raises(TrainingError, match="nothing to resume") as resumed:
        stand_in_run(out, resume=True)
    assert f"delete {out / 'checkpoints'}, then start again without --resume" in resumed.value.hint
    shutil.rmtree(out / "checkpoints")  # what the hint says
    assert stand_in_run(out).steps == 16



def test_ppcr_ablate_starts_again_a_variant_killed_before_its_first_state(tmp_path):
    from ppcr.ablation import plan_ablation
    from ppcr.config.loading import save_recipe

    plan = plan_ablation(["spatial-head=attn"], runs_root=tmp_path)
    plan.run_dir.mkdir(parents=True)
    save_recipe(plan.recipe, plan.run_dir / "recipe.yaml")  # what a run killed at its first steps leaves
    assert plan_ablation(["spatial-head=attn"], runs_root=tmp_path).action == "train"  # not "resume"
    (plan.run_dir / "state" / "step_000004").mkdir(parents=True)
    (plan.run_dir / "state" / "latest").write_text("step_000004\n")
    assert plan_ablation(["spatial-head=attn"], runs_root=tmp_path).action == "resume"


# ============================================================ 9. non-finite weights are never "last good"


class NaNGradientModel(StandInModel):
    """At one training forward, adds a term whose value is 0 (the loss stays finite) and whose
    gradient is NaN (d/dw sqrt(|w - w|)), so that step's update turns the weights into NaN."""

    def __init__(self, config, poisoned_forward: int):
        super().__init__(config)
        self.poisoned_forward = poisoned_forward

    def forward(self, batch):
        output = super().forward(batch)
        if self.training and self.forward_calls == self.poisoned_forward:
            weight = self.head[0].weight[0, 0]
            output.loss = output.loss + (weight - weight.detach()).abs().sqrt()
        return output


def test_weights_made_non_finite_by_an_update_are_not_saved_as_a_good_checkpoint(tmp_path):
    from tests.stand_in_model import StandInConfig

    out = tmp_path / "run"
    recipe = make_recipe(save_every=2, zero_stage=0)  # stage 0 applies a NaN gradient as it is
    with pytest.raises(TrainingError) as caught:  # forward 13 is step 4's first micro-batch
        train(recipe, out, lambda r: NaNGradientModel(StandInConfig(), poisoned_forward=13), build_dataset,
              collate, progress=False)
    assert caught.value.message.startswith("non-finite weights after step 4: head.0.weight")
    assert "the last good checkpoint is checkpoints/step_000002" in caught.value.hint
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["step_000002"]  # step 4's NaN weights were not exported ...
    assert (out / "state" / "latest").read_text().strip() == "step_000002"  # ... nor saved as the state
    for name in saved:
        model = StandInModel.from_pretrained(out / "checkpoints" / name)
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters()), name


# ============================================================ 11. invalid annotations


def write_with_bad_annotations(root: Path, bbox=None, counts=None):
    """The small refcoco example with ann 101's bbox and/or ann 103's compressed RLE replaced."""
    clear_index_cache()
    example = small_example()
    anns = {ann["id"]: ann for ann in example.annotations}
    if bbox is not None:
        anns[101]["bbox"] = bbox
    if counts is not None:
        anns[103]["segmentation"]["counts"] = counts
    return write_example(root, example)


def test_prepare_refuses_annotations_that_cannot_be_used_one_line_each(tmp_path):
    half_rle = small_example().annotations[2]["segmentation"]["counts"][:3]  # runs that stop short:
    # pycocotools decodes it without complaint into a mask of uninitialised memory
    fixture = write_with_bad_annotations(tmp_path, bbox=[float("nan"), 1e308, -5, "x"], counts=half_rle)
    assert "NaN" in fixture.instances_path.read_text()  # what json accepts and the attacker wrote
    result = run("prepare", "refcoco", "--root", str(fixture.root))
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "invalid: ann 101 (ref 1): bbox value 1 of 4 is not a finite number" in lines
    assert "invalid: ann 103 (ref 3): RLE runs add up to 160 pixels, not the image's 1200" in lines
    error = "error: refcoco: 2 of 6 annotations the refs use are invalid (first ann_id: 101, 103)"
    assert any(line.startswith(error) for line in lines), lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "bbox, reason",
    [
        ([0, 0, 1e308, 5], "bbox [0, 0, 1e+308, 5] lies outside the 40x30 image"),
        ([2, 2, -16, 16], "bbox has no area (w=-16, h=16)"),
        ([2, 2, 16, "16"], "bbox value 4 of 4 is a str, not a number"),
    ],
    ids=["huge", "negative-width", "string"],
)
def test_prepare_checks_that_boxes_have_an_area_inside_the_image(tmp_path, bbox, reason):
    report = check_refer_layout("refcoco", write_with_bad_annotations(tmp_path, bbox=bbox).root)
    [problem] = report.problems
    assert problem.details == (f"ann 101 (ref 1): {reason}",)


def test_the_reader_refuses_invalid_annotations_with_a_data_error(tmp_path):
    root = write_with_bad_annotations(tmp_path / "box", bbox=[float("nan"), 1e308, -5, "x"]).root
    expected = "annotation 101 \\(ref 1\\) in .*instances.json: bbox value 1 of 4 is not a finite number"
    with pytest.raises(DataError, match=expected):
        ReferIndex.load("refcoco", root).split("train")  # what eval and train read
    half_rle = small_example().annotations[2]["segmentation"]["counts"][:3]
    bad_rle = write_with_bad_annotations(tmp_path / "rle", counts=half_rle)
    train_split = ReferIndex.load("refcoco", bad_rle.root).split("train")
    [blob] = [sample for sample in train_split if sample.ann_id == 103]
    with pytest.raises(DataError, match="annotation 103: RLE runs add up to 160 pixels, not the image's 1200"):
        train_split.mask(blob)


# ============================================================ 12. training checks its images first


def test_train_finds_missing_images_before_it_writes_anything(small_shapes_root, tmp_path):
    from ppcr.config.loading import load_recipe
    from ppcr.data.refer import ReferDataset

    root = tmp_path / "shapes"
    shutil.copytree(small_shapes_root, root)
    clear_index_cache()
    lost = ReferDataset("shapes", root, "train")[-1].image_path  # one image of the training split
    lost.unlink()
    recipe = load_recipe("shapes", [f"data.root={root}", "data.datasets=shapes", "train.max_steps=1"])
    out = tmp_path / "run"
    with time_limit(60), pytest.raises(DataError, match=f"shapes/train: 1 of .* image files missing, e.g. {lost}"):
        train(recipe, out, progress=False)
    assert not out.exists()  # no recipe.yaml, no env.json: nothing was started


# ============================================================ 13. prepare shapes never overwrites silently


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_shapes_refuses_an_existing_dataset_and_replaces_it_whole_with_overwrite(tmp_path):
    from ppcr.data.shapes import generate_shapes_ref

    out = tmp_path / "data"
    generate_shapes_ref(out, seed=0, images=24)
    (out / "refcoco").mkdir()
    (out / "refcoco" / "instances.json").write_text("{}")  # someone else's dataset beside it
    before = tree(out)
    result = run("prepare", "shapes", "--out", str(out), "--seed", "1", "--images", "20")
    existing = "images/shapes, shapes, shapes+, shapesg"
    _assert_one_line_error(result, 1, f"{out} already holds a Shapes-Ref dataset ({existing})")
    assert "--overwrite" in result.stderr
    assert tree(out) == before  # nothing was touched

    generate_shapes_ref(out, seed=1, images=20, overwrite=True)
    fresh = tmp_path / "fresh"
    generate_shapes_ref(fresh, seed=1, images=20)
    replaced = tree(out)
    assert replaced.pop("refcoco/instances.json") == b"{}"  # untouched
    assert replaced == tree(fresh)  # exactly the new dataset: none of the 24 old images is left

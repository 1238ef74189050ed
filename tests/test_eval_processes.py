"""Evaluation by several processes: the ranks split a split's batches (whole images), rank 0
gathers every row, and ``metrics.json`` / ``per_sentence.csv`` / the panels are those of one
process (``ppcr eval --nproc 2``, about 10 s; DeepSpeed's launcher and torchrun, marked slow,
start heavier). The sharding rules and the bad uses are checked in this process.

Every process runs one thread (OMP_NUM_THREADS=1): on the CPU the thread count can change the
last bits of a float (a box corner 1e-5 px apart with 1 or 2 threads), so "identical" compares
runs with equal threads per process, as a GPU run always is."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.test_cli import _assert_one_line_error, run

torch = pytest.importorskip("torch")

from ppcr.data.refer import ReferDataset  # noqa: E402
from ppcr.errors import PPCRError  # noqa: E402
from ppcr.evaluation.evaluate import _grouped_work, _naive_work  # noqa: E402
from ppcr.evaluation.sharding import Shard  # noqa: E402

TIMING = ("seconds", "sentences_per_second")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SPLITS = ("val", "testB")  # Shapes-Ref(20 images): 28 sentences on 2 images, 6 on 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_shapes_root):
    from ppcr.config.loading import load_recipe
    from ppcr.modeling.build import build_model

    recipe = load_recipe("shapes")
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, root=str(small_shapes_root)))
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    build_model(recipe).save_pretrained(directory, recipe=dataclasses.asdict(recipe))
    return directory


def _eval_args(checkpoint, out, *extra: str) -> list[str]:
    args = ["eval", "--model", str(checkpoint), "--dataset", "shapes", "--device", "cpu", "--batch-size", "8"]
    for split in SPLITS:
        args += ["--split", split]
    return [*args, "--out", str(out), "--format", "json", *extra]


def _assert_same_outputs(one, two) -> None:
    """Byte-identical CSVs and panels; metrics.json equal except its timing fields."""
    for split in SPLITS:
        a, b = one / f"shapes_{split}", two / f"shapes_{split}"
        assert (a / "per_sentence.csv").read_bytes() == (b / "per_sentence.csv").read_bytes()
        metrics_a = json.loads((a / "metrics.json").read_text())
        metrics_b = json.loads((b / "metrics.json").read_text())
        assert metrics_a["count"] > 0 and set(metrics_a) == set(metrics_b)
        assert {k: v for k, v in metrics_a.items() if k not in TIMING} == {
            k: v for k, v in metrics_b.items() if k not in TIMING
        }
        panels = sorted(p.name for p in (a / "vis").glob("*.png")) if (a / "vis").is_dir() else []
        assert panels == sorted(p.name for p in (b / "vis").glob("*.png")) if panels else not (b / "vis").exists()
        for name in panels:
            assert (a / "vis" / name).read_bytes() == (b / "vis" / name).read_bytes()


# ---------------------------------------------------------------------------- fast: the rules


def test_shards_take_every_nth_batch_and_refuse_impossible_places():
    batches = list(range(7))
    assert Shard(0, 3).take(batches) == [0, 3, 6] and Shard(2, 3).take(batches) == [2, 5]
    assert Shard().take(batches) == batches and Shard().gather({3: "x"}) == {3: "x"}
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(PPCRError, match="invalid shard"):
            Shard(rank, world)


@pytest.mark.parametrize("batch_size", [1, 4, 8, 32])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_out_every_sentence_once_and_keep_images_whole(small_shapes_root, batch_size, world):
    data = ReferDataset("shapes", small_shapes_root, "testA")
    grouped = [
        [position for batch in _grouped_work(data, batch_size, Shard(rank, world)) for group in batch
         for position, _ in group]
        for rank in range(world)
    ]
    assert sorted(p for rank in grouped for p in rank) == list(range(len(data)))
    owner = {data[p].image_id: rank for rank, positions in enumerate(grouped) for p in positions}
    assert all(owner[data[p].image_id] == rank for rank, positions in enumerate(grouped) for p in positions)
    naive = [_naive_work(data, batch_size, Shard(rank, world)) for rank in range(world)]
    starts = sorted(s for rank in naive for s in rank)
    assert starts == list(range(0, len(data), batch_size))


def test_bad_nproc_is_a_one_line_error(checkpoint, tmp_path):
    _assert_one_line_error(run(*_eval_args(checkpoint, tmp_path, "--nproc", "0")), 1, "--nproc must be at least 1")
    _assert_one_line_error(
        run(*_eval_args(checkpoint, tmp_path, "--nproc", "3")), 1, "3 processes for the 2 image(s) of shapes/val"
    )
    assert not (tmp_path / "shapes_val").exists()


def test_results_survive_the_trip_from_a_rank(checkpoint, small_shapes_root):
    from ppcr.evaluation.evaluate import evaluate
    from ppcr.evaluation.processes import result_from_dict, result_to_dict
    from ppcr.modeling.model import PPCRModel

    result = evaluate(PPCRModel.from_pretrained(checkpoint), "shapes", "testB", small_shapes_root)
    back = result_from_dict(json.loads(json.dumps(result_to_dict(result))))
    assert back == result


# ---------------------------------------------------------------------------- real processes


def test_two_spawned_processes_write_what_one_writes(checkpoint, tmp_path):
    one = run(*_eval_args(checkpoint, tmp_path / "one", "--save-vis", "30"), env=ONE_THREAD)
    two = run(*_eval_args(checkpoint, tmp_path / "two", "--save-vis", "30", "--nproc", "2"), env=ONE_THREAD)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    _assert_same_outputs(tmp_path / "one", tmp_path / "two")
    rows_one, rows_two = json.loads(one.stdout), json.loads(two.stdout)
    for a, b in zip(rows_one, rows_two):
        assert {k: v for k, v in a.items() if k not in (*TIMING, "out_dir")} == {
            k: v for k, v in b.items() if k not in (*TIMING, "out_dir")
        }


@pytest.mark.slow
def test_deepspeeds_launcher_ranks_give_the_naive_rows_of_one_process(
    checkpoint, small_shapes_root, tmp_path, monkeypatch
):
    from ppcr.evaluation.processes import EvalJob, evaluate_in_processes

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the launched ranks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the one-process run here
    job = EvalJob(
        model_dir=str(checkpoint), dataset="shapes", splits=list(SPLITS), data_root=str(small_shapes_root),
        out_dir=str(tmp_path / "one"), batch_size=5, naive=True, device="cpu", save_vis=3,
    )
    try:
        one = evaluate_in_processes(job, 1)
    finally:
        torch.set_num_threads(threads)
    two = evaluate_in_processes(dataclasses.replace(job, out_dir=str(tmp_path / "two")), 2, launcher="deepspeed")
    assert [r.sentences for r in one] == [r.sentences for r in two] and [r.mode for r in two] == ["naive"] * 2
    _assert_same_outputs(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_under_torchrun_each_process_is_a_rank_and_rank_0_reports(checkpoint, tmp_path):
    one = run(*_eval_args(checkpoint, tmp_path / "one"), env=ONE_THREAD)
    env = {**os.environ, "COLUMNS": "200", **ONE_THREAD}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ppcr_cli", *_eval_args(checkpoint, tmp_path / "two")]
    # Its own session, so that a hung run's ranks are ended with it (by this group's id).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    assert one.returncode == 0 and process.returncode == 0, one.stderr + stderr
    _assert_same_outputs(tmp_path / "one", tmp_path / "two")
    assert len(json.loads(stdout)) == len(SPLITS)  # one JSON document: only rank 0 printed

"""``ppcr eval``: defaults from the checkpoint's recipe, table / JSON output, files written, and
one-line errors (exit 1, no traceback) for bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import typer

from ppcr.evaluation.runs import default_eval_dir, run_dir_of
from ppcr_cli.errors import run_guarded
from tests.test_cli import _assert_one_line_error, run

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_shapes_root):
    """A tiny random model saved with a recipe whose data.root points at the test data."""
    from ppcr.config.loading import load_recipe
    from ppcr.modeling.build import build_model

    recipe = load_recipe("shapes")
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, root=str(small_shapes_root)))
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    build_model(recipe).save_pretrained(directory, recipe=dataclasses.asdict(recipe))
    return directory


def _in_process(*args: str) -> int:
    from ppcr_cli.main import app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_guarded(typer.main.get_command(app), list(args))
    finally:
        torch.set_num_threads(threads)


def test_json_output_uses_the_recipes_data_root_and_writes_everything(checkpoint):
    result = run(
        "eval", "--model", str(checkpoint), "--dataset", "shapes", "--split", "val", "--split", "testB",
        "--format", "json", "--save-vis", "2", "--batch-size", "8", "--device", "cpu",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)  # JSON only on stdout
    assert [(p["dataset"], p["split"]) for p in payload] == [("shapes", "val"), ("shapes", "testB")]
    out = checkpoint / "eval"  # not inside a run: <model>/eval
    for entry in payload:
        folder = out / f"shapes_{entry['split']}"
        assert entry["out_dir"] == str(folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["oIoU"] == entry["oIoU"] and metrics["count"] == entry["count"] > 0
        assert metrics["model"] == str(checkpoint) and metrics["box_source"] == "predicted"
        lines = (folder / "per_sentence.csv").read_text().splitlines()
        assert len(lines) == 1 + metrics["count"]
        assert len(list((folder / "vis").glob("*.png"))) == 2
    assert "Traceback" not in result.stderr


def test_table_output_shows_the_written_metrics(checkpoint, small_shapes_root, tmp_path, capsys):
    code = _in_process(
        "eval", "--model", str(checkpoint), "--dataset", "shapes", "--split", "testB",
        "--data-root", str(small_shapes_root), "--out", str(tmp_path), "--box-source", "gt", "--device", "cpu",
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((tmp_path / "shapes_testB" / "metrics.json").read_text())
    assert metrics["box_source"] == "gt"
    row = next(line for line in captured.out.splitlines() if "testB" in line)
    assert f"{metrics['oIoU']:.2f}" in row and f"{metrics['mIoU']:.2f}" in row
    assert f"{metrics['P@0.5']:.2f}" in row
    assert "oIoU" in captured.out and "mIoU" in captured.out


def test_default_output_folder_follows_the_run_layout(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_000100").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text("name: x\n")
    assert run_dir_of(run_dir / "final") == run_dir
    assert default_eval_dir(run_dir / "final") == run_dir / "eval"
    assert default_eval_dir(run_dir / "final", "gt") == run_dir / "eval-gt"
    assert default_eval_dir(run_dir) == run_dir / "eval"
    step = run_dir / "checkpoints" / "step_000100"
    assert default_eval_dir(step) == step / "eval"  # intermediate checkpoints keep their own


def test_without_model_the_embedded_one_is_scored_into_its_own_run_folder(
    checkpoint, small_shapes_root, tmp_path, monkeypatch, capsys
):
    """The embedded model's package folder is never written: its evaluations go to
    runs/<name>/, which gets the model's recipe so `ppcr tables --runs runs` lists them."""
    from ppcr.inference import model_source

    embedded = tmp_path / "site-packages" / "ppcr-shapes-tiny"
    embedded.parent.mkdir()
    shutil.copytree(checkpoint, embedded, ignore=shutil.ignore_patterns("eval*"))  # other tests write eval/
    monkeypatch.setattr(model_source, "DEFAULT_MODEL", embedded)
    monkeypatch.chdir(tmp_path)
    code = _in_process("eval", "--dataset", "shapes", "--split", "val", "--data-root", str(small_shapes_root),
                       "--device", "cpu")
    assert code == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "ppcr-shapes-tiny"
    metrics = json.loads((run_dir / "eval" / "shapes_val" / "metrics.json").read_text())
    assert metrics["count"] > 0 and not (embedded / "eval").exists()
    assert (run_dir / "recipe.yaml").is_file()
    capsys.readouterr()
    assert _in_process("tables", "--runs", "runs", "--format", "csv") == 0
    assert "ppcr-shapes-tiny" in capsys.readouterr().out


def test_bad_inputs_are_one_line_errors(checkpoint, small_shapes_root, tmp_path):
    model = str(checkpoint)
    _assert_one_line_error(
        run("eval", "--model", str(tmp_path / "missing"), "--dataset", "shapes", "--split", "val"),
        1, "model directory not found",
    )
    _assert_one_line_error(
        run("eval", "--model", str(tmp_path), "--dataset", "shapes", "--split", "val"), 1, "is not a PPCR checkpoint"
    )
    _assert_one_line_error(
        run("eval", "--model", model, "--dataset", "refcocox", "--split", "val"), 1, "unknown dataset 'refcocox'"
    )
    _assert_one_line_error(
        run("eval", "--model", model, "--dataset", "refcocog", "--split", "testA"),
        1, "unknown split 'testA' for refcocog",
    )
    no_images = tmp_path / "root"
    (no_images / "shapes").mkdir(parents=True)
    for name in ("refs(unc).p", "instances.json"):
        (no_images / "shapes" / name).write_bytes((small_shapes_root / "shapes" / name).read_bytes())
    _assert_one_line_error(
        run("eval", "--model", model, "--dataset", "shapes", "--split", "val", "--data-root", str(no_images)),
        1, "images folder not found",
    )
    _assert_one_line_error(
        run("eval", "--model", model, "--dataset", "shapes", "--split", "val", "--box-source", "oracle"),
        1, "--box-source must be one of predicted, gt",
    )


def test_auto_device_loads_the_checkpoint_as_documented(checkpoint):
    """--device auto: CUDA in bf16 when the GPU has it, else the CPU in float32."""
    from ppcr_cli.eval import _load_model

    model = _load_model(checkpoint, "auto")
    parameter = next(model.llava.parameters())
    if torch.cuda.is_available():
        assert parameter.device.type == "cuda"
        assert parameter.dtype is (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    else:
        assert parameter.device.type == "cpu" and parameter.dtype is torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(checkpoint, capsys):
    code = _in_process("eval", "--model", str(checkpoint), "--dataset", "shapes", "--split", "val", "--device", "cuda")
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 1 and lines[0].startswith("error:") and "CUDA is not available" in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out


# ----------------------------------------------------------------------------- --model and --dtype as predict has them


def _cache_hub_model(checkpoint, tmp_path, monkeypatch, repo_id: str = "someone/ppcr-tiny"):
    """``checkpoint`` as a snapshot of ``repo_id`` in a local Hugging Face cache, read offline."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(checkpoint, repo / "snapshots" / commit, ignore=shutil.ignore_patterns("eval*"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo / "snapshots" / commit


def test_a_hub_id_is_scored_into_a_run_folder_not_into_the_cache(checkpoint, tmp_path, monkeypatch, capsys):
    snapshot = _cache_hub_model(checkpoint, tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    code = _in_process("eval", "--model", "someone/ppcr-tiny", "--dataset", "shapes", "--split", "val",
                       "--device", "cpu", "--dtype", "fp32", "--format", "json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (entry,) = json.loads(captured.out)
    run_dir = tmp_path / "runs" / "someone--ppcr-tiny"
    assert entry["model"] == "someone/ppcr-tiny" and entry["count"] > 0
    assert entry["out_dir"] == str(Path("runs") / "someone--ppcr-tiny" / "eval" / "shapes_val")
    assert (run_dir / "eval" / "shapes_val" / "metrics.json").is_file() and (run_dir / "recipe.yaml").is_file()
    assert not (snapshot / "eval").exists()


def test_an_unknown_hub_id_is_one_line(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = _in_process("eval", "--model", "someone/absent", "--dataset", "shapes", "--split", "val")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and "not in the Hugging Face cache" in lines[0]


@pytest.mark.parametrize(
    ("dtype", "message"),
    [("double", "unknown dtype 'double'"), ("fp16", "fp16 is not supported on the CPU")],
)
def test_a_dtype_the_device_cannot_run_fails_before_anything_is_read(dtype, message, tmp_path, capsys):
    """Checked before the model and the data: the data root here does not even exist."""
    code = _in_process("eval", "--model", str(tmp_path / "nowhere"), "--dataset", "shapes", "--split", "val",
                       "--data-root", str(tmp_path / "no-data"), "--device", "cpu", "--dtype", dtype)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_dtype_bf16_loads_the_checkpoint_in_bf16(checkpoint):
    from ppcr_cli.eval import _load_model

    model = _load_model(checkpoint, "cpu", "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_eval_and_predict_take_the_same_model_and_dtype_arguments():
    """One vocabulary: --model is text (a directory or a hub id, not a Path typer checks as a
    folder), --dtype auto/fp32/bf16/fp16 (and the long names) resolved by the same function."""
    import inspect
    import typing

    from ppcr.utils.device import resolve_dtype
    from ppcr_cli.eval import eval_command
    from ppcr_cli.predict import predict_command

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) is torch.float32
    assert resolve_dtype("bfloat16", cpu) is resolve_dtype("bf16", cpu) is torch.bfloat16
    for command in (eval_command, predict_command):
        assert inspect.signature(command).parameters["dtype"].default == "auto"
        hints = typing.get_type_hints(command, include_extras=True)
        model_type, *_ = typing.get_args(hints["model"])  # Annotated[Optional[str], Option(...)]
        assert model_type == typing.Optional[str], command.__name__

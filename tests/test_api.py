"""The top-level Python API: ``from ppcr import build_model, load_recipe, PPCRModel, PPCRPredictor,
train, evaluate`` … resolves lazily (``import ppcr`` stays torch-free), type checkers see the real
signatures, and ``train``/``evaluate`` do what ``ppcr train``/``ppcr eval`` do."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ppcr
from ppcr.errors import PPCRError

INIT = Path(ppcr.__file__)
API_NAMES = ["build_model", "load_recipe", "PPCRModel", "PPCRPredictor", "train", "evaluate"]


def test_import_ppcr_imports_no_torch_and_every_public_name_resolves():
    code = "import sys, ppcr; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False False", result.stdout + result.stderr
    for name in ppcr.__all__:
        assert getattr(ppcr, name) is not None, name
    assert set(API_NAMES) <= set(ppcr.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        ppcr.nothing  # noqa: B018


def test_public_names_are_the_library_objects():
    from ppcr import api
    from ppcr.config.loading import load_recipe
    from ppcr.inference.predictor import PPCRPredictor, Prediction
    from ppcr.modeling.build import build_model
    from ppcr.modeling.model import PPCRModel

    assert (ppcr.train, ppcr.evaluate) == (api.train, api.evaluate)
    assert ppcr.load_recipe is load_recipe and ppcr.build_model is build_model
    assert ppcr.PPCRModel is PPCRModel and ppcr.PPCRPredictor is PPCRPredictor and ppcr.Prediction is Prediction


def test_type_checking_imports_name_the_same_objects_as_the_lazy_table():
    """The ``if TYPE_CHECKING:`` block (what type checkers read) and ``_LAZY`` (what runs) agree."""
    tree = ast.parse(INIT.read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    seen = {}
    for statement in block.body:
        assert isinstance(statement, ast.ImportFrom)
        for alias in statement.names:
            assert alias.asname == alias.name, "re-export as `import X as X` so checkers treat it as public"
            seen[alias.name] = statement.module
    assert seen == ppcr._LAZY


def test_mypy_sees_the_real_signatures(tmp_path):
    """With the lazy ``__getattr__`` alone every name would be ``Any`` and a wrong call would pass."""
    snippet = tmp_path / "use_ppcr.py"
    snippet.write_text(textwrap.dedent("""
        from ppcr import PPCRModel, PPCRPredictor, build_model, evaluate, load_recipe, train

        reveal_type(train)
        reveal_type(evaluate)
        reveal_type(load_recipe("shapes"))
        reveal_type(build_model)
        reveal_type(PPCRPredictor.from_pretrained().predict("a").to_dict())
        reveal_type(PPCRModel.push_to_hub)
        train(3, "runs/x")
    """))
    config = tmp_path / "mypy.ini"
    heavy = "torch.*,transformers.*,peft.*,deepspeed.*,segment_anything.*,safetensors.*,numpy.*,PIL.*,pycocotools.*"
    config.write_text(
        "[mypy]\nfollow_imports = silent\nignore_missing_imports = True\n"
        f"[mypy-{heavy},huggingface_hub.*,tokenizers.*,yaml.*,rich.*,typer.*,click.*]\nfollow_imports = skip\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", str(snippet)],
        capture_output=True, text=True, timeout=600, cwd=INIT.parents[1],
    )
    out = result.stdout
    notes = [line.split("Revealed type is ", 1)[1] for line in out.splitlines() if "Revealed type is" in line]
    assert len(notes) == 6, out + result.stderr
    assert notes[0].startswith('"def (recipe: ppcr.config.schema.Recipe | str | os.PathLike[str], out_dir:')
    assert notes[0].endswith('-> ppcr.training.result.TrainResult"')
    assert notes[1].endswith('-> ppcr.evaluation.evaluate.EvalResult"')
    assert notes[2] == '"ppcr.config.schema.Recipe"'
    assert notes[3].endswith('-> ppcr.modeling.model.PPCRModel"')
    assert notes[4] in ('"dict[str, Any]"', '"builtins.dict[builtins.str, Any]"')  # Prediction.to_dict()
    assert "repo_id: builtins.str" in notes[5] or "repo_id: str" in notes[5]
    assert 'Argument 1 to "train" has incompatible type "int"' in out


# ----------------------------------------------------------------------------- train / evaluate


def test_train_takes_a_recipe_name_with_overrides_and_writes_a_carded_checkpoint(small_shapes_root, tmp_path):
    out = tmp_path / "run"
    result = ppcr.train(
        "shapes", out,
        overrides=[f"data.root={small_shapes_root}", "data.datasets=shapes", "train.max_steps=2",
                   "train.batch_size=4", "train.micro_batch_size=4", "train.warmup_steps=1", "train.save_every=2"],
        progress=False,
    )
    assert isinstance(result, ppcr.TrainResult) and result.steps == 2
    final = Path(result.final_dir)
    assert final == out / "final"
    model = ppcr.PPCRModel.from_pretrained(final)
    assert model.recipe["train"]["max_steps"] == 2
    card = (final / "README.md").read_text()
    # The trainer hands save_pretrained a temporary folder; the card names the real one.
    assert f"PPCRPredictor.from_pretrained({json.dumps(final.as_posix())})" in card and ".tmp-" not in card


def test_train_refuses_overrides_on_a_recipe_object(tmp_path):
    with pytest.raises(PPCRError, match="overrides apply to a recipe name or path"):
        ppcr.train(ppcr.load_recipe("shapes"), tmp_path / "run", overrides=["train.lr=1"])


def test_evaluate_takes_a_folder_a_model_or_a_predictor_alike(tiny_model_dir, small_shapes_root, tmp_path):
    by_folder = ppcr.evaluate(tiny_model_dir, "shapes", "val", small_shapes_root, device="cpu", out_dir=tmp_path)
    assert isinstance(by_folder, ppcr.EvalResult) and by_folder.metrics["count"] == 28
    assert by_folder.model == str(tiny_model_dir)
    written = json.loads((tmp_path / "shapes_val" / "metrics.json").read_text())
    assert written["mIoU"] == pytest.approx(by_folder.metrics["mIoU"])
    model = ppcr.PPCRModel.from_pretrained(tiny_model_dir)
    by_model = ppcr.evaluate(model, "shapes", "val", small_shapes_root)
    by_predictor = ppcr.evaluate(ppcr.PPCRPredictor(model), "shapes", "val", small_shapes_root)
    for other in (by_model, by_predictor):
        assert [row.pred_area for row in other.sentences] == [row.pred_area for row in by_folder.sentences]
        assert other.metrics["count"] == 28 and other.model is None

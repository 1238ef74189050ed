"""Hub-ready checkpoints: ``save_pretrained`` writes a model card (README.md) that loading ignores,
with the recipe, the base weights, metrics (passed in or found beside) and the loading snippet;
``push_to_hub`` uploads exactly such a folder (tested with HfApi replaced: no network here)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from ppcr.config.loading import load_recipe
from ppcr.errors import CheckpointError, DataError
from ppcr.modeling.build import build_model
from ppcr.modeling.config import BaseWeights, PPCRConfig
from ppcr.modeling.hub import LocalBaseWarning
from ppcr.modeling.model import PPCRModel
from ppcr.modeling.model_card import collect_evaluations, render_model_card
from tests.tiny_recipes import tiny_recipe

METRICS = {"oIoU": 18.88, "mIoU": 21.46, "P@0.5": 15.69, "P@0.6": 10.2, "P@0.7": 5.86, "P@0.8": 2.9, "P@0.9": 0.84,
           "count": 1313, "dataset": "shapes", "split": "val", "box_source": "predicted"}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def metrics_file(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    path.write_text(json.dumps({**METRICS, **changes}))
    return path


@pytest.fixture(scope="module")
def model():
    return build_model(load_recipe("shapes")).eval()


def same_weights(a: PPCRModel, b: PPCRModel) -> bool:
    return set(a.state_dict()) == set(b.state_dict()) and all(
        torch.equal(value, b.state_dict()[key]) for key, value in a.state_dict().items()
    )


def test_save_pretrained_writes_a_card_that_loading_ignores(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "ckpt")
    card = (folder / "README.md").read_text()
    assert front_matter(card) == {
        "library_name": "ppcr",
        "pipeline_tag": "image-segmentation",
        "tags": ["ppcr", "referring-image-segmentation", "referring-expression-segmentation"],
    }  # no base_model: the tiny base is stored inside
    assert "# PPCR: shapes" in card
    assert "- recipe: `shapes` — Tiny PPCR on Shapes-Ref" in card
    assert "spatial prompt `semantic`, spatial head `mlp`, LoRA r=8 α=16 on `q_proj`, `v_proj`" in card
    assert "- trained on: `shapes`, `shapes+`, `shapesg` (train split)" in card
    assert "- LLaVA: stored in this folder (`./base/llava`)" in card
    assert "- SAM: stored in this folder (`./base/sam.safetensors`)" in card
    assert "Not evaluated yet." in card
    assert f"predictor = PPCRPredictor.from_pretrained({json.dumps(folder.as_posix())})" in card
    assert same_weights(model, PPCRModel.from_pretrained(folder))
    # Whatever the README says, loading never reads it.
    (folder / "README.md").write_text("---\nnot: [valid yaml\n---\n\x00garbage")
    assert same_weights(model, PPCRModel.from_pretrained(folder))


def test_metrics_passed_in_every_form_fill_the_table(model, tmp_path):
    from ppcr.evaluation.evaluate import EvalResult

    as_file = metrics_file(tmp_path / "eval" / "shapes+_val", dataset="shapes+", mIoU=9.04)
    metrics_file(tmp_path / "eval" / "shapesg_test", dataset="shapesg", split="test", mIoU=23.4)
    result = EvalResult(dataset="shapes", split="testA", box_source="gt", mode="grouped",
                        metrics={**{k: METRICS[k] for k in METRICS if k[0] in "omPc"}, "mIoU": 77.0},
                        sentences=[], images=1, seconds=1.0, batch_size=8)
    folder = model.save_pretrained(
        tmp_path / "ckpt", metrics=[METRICS, as_file, tmp_path / "eval" / "shapesg_test", result]
    )
    card = (folder / "README.md").read_text()
    table = [line for line in card.splitlines() if line.startswith("| ")]
    assert table == [
        "| dataset | split | box | oIoU | mIoU | P@0.5 | P@0.7 | P@0.9 | sentences |",
        "| shapes | testA | gt | 18.9 | 77.0 | 15.7 | 5.9 | 0.8 | 1313 |",
        "| shapes | val | predicted | 18.9 | 21.5 | 15.7 | 5.9 | 0.8 | 1313 |",
        "| shapes+ | val | predicted | 18.9 | 9.0 | 15.7 | 5.9 | 0.8 | 1313 |",
        "| shapesg | test | predicted | 18.9 | 23.4 | 15.7 | 5.9 | 0.8 | 1313 |",
    ]
    assert "Not evaluated yet" not in card
    assert [e["dataset"] for e in collect_evaluations(tmp_path / "eval")] == ["shapes+", "shapesg"]
    with pytest.raises(DataError, match="no metrics.json under"):
        collect_evaluations(tmp_path / "ckpt" / "tokenizer")
    with pytest.raises(DataError, match="cannot read"):
        broken = tmp_path / "broken.json"
        broken.write_text("{")
        collect_evaluations(broken)


def test_metrics_are_found_where_ppcr_eval_writes_them_for_a_run(model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: shapes\n")  # what makes it a run (ppcr.evaluation.runs)
    metrics_file(run / "eval" / "shapes_val")
    metrics_file(run / "eval-gt" / "shapes_val", box_source="gt", mIoU=76.9)
    (run / "eval" / "shapes_testA").mkdir()
    (run / "eval" / "shapes_testA" / "metrics.json").write_text("not json")  # skipped, not fatal
    model.save_pretrained(run / "final")
    card = (run / "final" / "README.md").read_text()
    assert "| shapes | val | gt | 18.9 | 76.9 |" in card and "| shapes | val | predicted | 18.9 | 21.5 |" in card
    assert "testA" not in card


def test_a_referenced_hub_base_is_named_and_a_local_one_flagged():
    config = PPCRConfig.load(Path(__file__).resolve().parents[1] / "ppcr" / "assets" / "ppcr-shapes-tiny")
    config.base = BaseWeights(kind="reference", llava="llava-hf/llava-1.5-7b-hf", sam="/weights/sam_vit_h_4b8939.pth")
    card = render_model_card(config, [], location="me/ppcr-7b")
    assert front_matter(card)["base_model"] == "llava-hf/llava-1.5-7b-hf"
    assert "- LLaVA: the hub model `llava-hf/llava-1.5-7b-hf` (referenced, downloaded on first load" in card
    assert "- SAM: the local file or folder `/weights/sam_vit_h_4b8939.pth` (referenced, **not included here**" in card
    assert "# ppcr-7b" in card and 'PPCRPredictor.from_pretrained("me/ppcr-7b")' in card
    assert "--model me/ppcr-7b -o mask.png" in card


class FakeHub:
    """Stands in for HfApi's network calls; keeps a copy of what upload_folder was given."""

    def __init__(self, store: Path, fail: Exception | None = None):
        self.store, self.fail, self.calls = store, fail, []

    def install(self, monkeypatch):
        from huggingface_hub import HfApi

        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", repo_id, kwargs))
            return f"https://hub.example/{repo_id}"

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            hub.calls.append(("upload_folder", repo_id, kwargs))
            if hub.fail is not None:
                raise hub.fail
            hub.uploaded_from = Path(folder_path)
            shutil.copytree(folder_path, hub.store / repo_id)
            return f"https://hub.example/{repo_id}/commit/abc123"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        return self


def test_push_to_hub_uploads_the_saved_folder_with_a_card_naming_the_repo(model, tmp_path, monkeypatch):
    run = tmp_path / "run"
    model.save_pretrained(run / "final")
    (run / "recipe.yaml").write_text("name: shapes\n")
    metrics_file(run / "eval" / "shapes_val")  # evaluated after training, as `ppcr eval` would
    loaded = PPCRModel.from_pretrained(run / "final")
    hub = FakeHub(tmp_path / "hub").install(monkeypatch)

    with warnings.catch_warnings():
        warnings.simplefilter("error", LocalBaseWarning)  # a stored base: nothing to warn about
        url = loaded.push_to_hub("me/ppcr-shapes", private=True, commit_message="first")

    assert url == "https://hub.example/me/ppcr-shapes/commit/abc123"
    assert hub.calls[0] == ("create_repo", "me/ppcr-shapes", {"private": True, "exist_ok": True, "repo_type": "model"})
    name, repo, kwargs = hub.calls[1]
    assert (name, repo, kwargs["repo_type"], kwargs["commit_message"]) == ("upload_folder", "me/ppcr-shapes", "model", "first")
    assert not hub.uploaded_from.exists()  # the temporary folder is gone afterwards
    uploaded = tmp_path / "hub" / "me" / "ppcr-shapes"
    assert sorted(p.name for p in uploaded.iterdir()) == sorted(p.name for p in (run / "final").iterdir())
    card = (uploaded / "README.md").read_text()
    assert 'PPCRPredictor.from_pretrained("me/ppcr-shapes")' in card and "# ppcr-shapes" in card
    assert "| shapes | val | predicted | 18.9 | 21.5 |" in card  # found beside the folder it was loaded from
    assert same_weights(loaded, PPCRModel.from_pretrained(uploaded))


def test_push_to_hub_failures_are_one_line_checkpoint_errors(model, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="'not a repo id' is not a hub repository id"):
        model.push_to_hub("not a repo id")
    FakeHub(tmp_path, fail=ConnectionError("Name or service not known\nmore detail")).install(monkeypatch)
    with pytest.raises(CheckpointError) as caught:
        model.push_to_hub("me/x")
    assert caught.value.message == "cannot push to me/x: Name or service not known"


def test_push_to_hub_warns_when_the_base_is_a_local_file(tmp_path, monkeypatch):
    referenced = build_model(tiny_recipe(unfreeze=[]))  # nothing of the base trained: it is referenced
    referenced.base = BaseWeights(kind="reference", llava="llava-hf/llava-1.5-7b-hf", sam="/weights/sam_vit_h.pth")
    FakeHub(tmp_path / "hub").install(monkeypatch)
    with pytest.warns(LocalBaseWarning, match="/weights/sam_vit_h.pth"):
        referenced.push_to_hub("me/ppcr-ref")
    card = (tmp_path / "hub" / "me" / "ppcr-ref" / "README.md").read_text()
    assert front_matter(card)["base_model"] == "llava-hf/llava-1.5-7b-hf" and "**not included here**" in card

"""``ppcr prepare weights`` through the command line, on tiny checkpoints in the real layouts.

Success prints the key table, the SVD error table and the output path (or JSON); a missing shard,
a corrupt file, a checkpoint of the wrong layout or architecture, or bad arguments give one
error line (plus a hint) and exit 1, writing nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_cli import _assert_one_line_error, run
from tests.test_prepare_weights import runs_the_pipeline, write_sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    return write_sources(tmp_path_factory.mktemp("cli-sources"))


def glamm_args(sources: dict, out: Path) -> list[str]:
    return ["prepare", "weights", "--from", "glamm", "--base", str(sources["grand"]),
            "--semantic", str(sources["refseg"]), "--clip", str(sources["clip"]),
            "--tokenizer", str(sources["tokenizer"]), "--size", "tiny", "--out", str(out)]


def llava_args(sources: dict, out: Path, llava: Path | None = None, sam: Path | None = None) -> list[str]:
    return ["prepare", "weights", "--from", "llava", "--llava", str(llava or sources["llava"]),
            "--sam", str(sam or sources["sam"]), "--size", "tiny", "--out", str(out)]


@pytest.mark.slow
def test_glamm_conversion_prints_the_summary_and_the_output_runs(sources, tmp_path):
    from ppcr.modeling.model import PPCRModel

    out = tmp_path / "glamm-init"
    result = run(*glamm_args(sources, out))
    assert result.returncode == 0, result.stderr
    stdout = " ".join(result.stdout.split())
    assert "Keys by source and component (--from glamm)" in stdout
    assert "region_encoder" in stdout and "GLaMM's bbox-input region encoder" in stdout
    assert "semantic adapter: rank-8 SVD" in stdout and "median error" in stdout and "worst error" in stdout
    assert f"wrote {out}" in stdout and "conversion_report.json" in stdout
    assert "GranD is RefSeg's parent" in " ".join(result.stderr.split())
    assert "llava_v1 system prompt" in result.stderr and "<im_start><image><im_end>" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["mapping"]["counts"]["missing"] == 0
    runs_the_pipeline(PPCRModel.from_pretrained(out))


def test_llava_conversion_with_json_output(sources, tmp_path):
    out = tmp_path / "llava-init"
    result = run(*llava_args(sources, out), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds nothing but the JSON document
    assert data["source"] == "llava" and data["out"] == str(out)
    assert data["base"]["kind"] == "reference"
    assert data["prompt"] == {"image_start_end": False, "system": "", "image_text": "<image>\n"}
    assert data["counts"]["unmapped"] == 0 and data["missing"] == []
    assert {(row["source"], row["component"]) for row in data["table"]} >= {("llava", "llava"), ("sam", "sam")}
    assert data["adapters"] == {}
    assert (out / "config.json").is_file() and (out / "heads.safetensors").is_file()


def test_copy_base_flag_stores_the_base_in_the_checkpoint(sources, tmp_path):
    out = tmp_path / "llava-copied"
    result = run(*llava_args(sources, out), "--copy-base", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["base"] == {"kind": "stored", "llava": "./base/llava", "sam": "./base/sam.safetensors"}
    assert (out / "base" / "llava" / "config.json").is_file() and (out / "base" / "sam.safetensors").is_file()


def test_a_missing_shard_is_one_line_and_writes_nothing(sources, tmp_path):
    refseg = tmp_path / "refseg"
    shutil.copytree(sources["refseg"], refseg)
    missing = sorted(refseg.glob("pytorch_model-*.bin"))[1]
    missing.unlink()
    args = glamm_args(sources, tmp_path / "out")
    args[args.index("--semantic") + 1] = str(refseg)
    _assert_one_line_error(run(*args), 1, f"shard {missing.name} listed in the index is missing")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_file_is_one_line(sources, tmp_path):
    sam = tmp_path / "sam_vit_tiny.pth"
    sam.write_bytes(sources["sam"].read_bytes()[:500])
    _assert_one_line_error(run(*llava_args(sources, tmp_path / "out", sam=sam)), 1, "corrupt or truncated")
    assert not (tmp_path / "out").exists()


def test_a_grand_refseg_pair_whose_frozen_tensors_differ_is_one_line_and_writes_nothing(sources, tmp_path):
    from tests.test_prepare_weights import GlammLike, write_glamm

    # A GranD-like checkpoint that is not RefSeg's parent: same architecture, other weights.
    unrelated = GlammLike(sources["base_vocab"], seed=7).released_state_dict()
    grand = write_glamm(tmp_path / "unrelated-grand", unrelated, sources["base_vocab"], shards=2)
    out = tmp_path / "out"
    args = glamm_args(sources, out)
    args[args.index("--base") + 1] = str(grand)
    result = run(*args)
    _assert_one_line_error(result, 1, f"{sources['refseg']} was not fine-tuned from {grand}: ")
    assert "which GLaMM's fine-tuning keeps frozen, differs" in result.stderr
    assert "hint: pass GLaMM-GranD-Pretrained as --base" in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated-grand"]


def test_the_wrong_layout_is_one_line(sources, tmp_path):
    args = glamm_args(sources, tmp_path / "out")
    args[args.index("--base") + 1] = str(sources["llava"])
    _assert_one_line_error(run(*args), 1, "is a llava-hf checkpoint, not a GLaMM checkpoint")


def test_the_wrong_architecture_is_one_line(sources, tmp_path):
    import copy

    from transformers import LlavaForConditionalGeneration

    from ppcr.config.schema import TinySpec
    from ppcr.modeling.build import vocab_rows
    from ppcr.modeling.llava import add_ppcr_tokens, load_tokenizer, tiny_llava_config

    out = tmp_path / "out"
    result = run(*llava_args(sources, out)[:-4], "--size", "7b", "--out", str(out))  # tiny SAM for the 7b model
    _assert_one_line_error(result, 1, "a SAM image encoder with 2 blocks matches none of vit_h (32)")

    tok = load_tokenizer(sources["tokenizer"])
    probe = copy.deepcopy(tok)
    ids = add_ppcr_tokens(probe)
    wider = LlavaForConditionalGeneration(tiny_llava_config(TinySpec(llm_hidden=64), vocab_rows(len(probe)), ids))
    wider.save_pretrained(tmp_path / "llava-wider")
    tok.save_pretrained(tmp_path / "llava-wider")
    result = run(*llava_args(sources, out, llava=tmp_path / "llava-wider"))  # checked against --size tiny
    _assert_one_line_error(result, 1, "the llava module expects")
    assert not out.exists()


def test_bad_arguments(sources, tmp_path):
    _assert_one_line_error(
        run("prepare", "weights", "--from", "llava", "--out", str(tmp_path / "out")), 1,
        "--from llava needs --llava and --sam",
    )
    _assert_one_line_error(
        run("prepare", "weights", "--from", "lisa", "--out", str(tmp_path / "out")), 2, "'lisa' is not one of"
    )
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep")
    _assert_one_line_error(run(*llava_args(sources, occupied)), 1, "already exists")
    assert (occupied / "mine.txt").read_text() == "keep"


def test_help_shows_examples():
    result = run("prepare", "weights", "-h")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "Examples" in result.stdout and "--from glamm" in result.stdout

"""Hostile and careless recipes (issue 23): each case is reproduced exactly and must end in one
clear line and exit 1, in bounded time and memory, before any work starts."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ppcr.config.loading import load_recipe
from ppcr.config.schema import LoraSpec
from ppcr.errors import RecipeError
from tests.test_cli import PPCR, _assert_one_line_error, run

MEMORY_LIMIT = 1 << 30  # 1 GiB of address space: the expanded bomb needs more than 2 GB
TIME_LIMIT = 60


def billion_laughs(levels: int = 9) -> str:
    """Nested lists of aliases: 9 levels of 9 references each, ~9^9 "lol"s once expanded."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    parts = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, current in zip(names, names[1:]):
        parts.append(f"&{current} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "name: laughs\ndescription: [" + ", ".join(parts) + "]\n"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def bounded_ppcr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``ppcr ARGS`` with 1 GiB of address space and a minute of time."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PPCR_DEBUG", None)
    return subprocess.run(
        [*PPCR, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=TIME_LIMIT,
        preexec_fn=_limit_memory,
    )


# ----------------------------------------------------------------------------- 23.4 alias bomb


def test_the_bomb_is_the_small_file_of_the_report():
    text = billion_laughs()
    assert len(text.encode()) < 400 and text.count("*") == 8 * 9


def test_an_alias_bomb_in_the_description_is_refused_in_bounded_time_and_memory(tmp_path):
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(billion_laughs(), encoding="utf-8")
    result = bounded_ppcr("recipes", "show", str(bomb))
    _assert_one_line_error(result, 1, "line 2")
    assert "alias" in result.stderr and len(result.stderr) < 600


def test_an_alias_bomb_in_an_override_is_refused_in_bounded_time_and_memory():
    inline = billion_laughs().split("description: ", 1)[1].strip()
    result = bounded_ppcr("recipes", "show", "shapes", f"data.datasets={inline}")
    _assert_one_line_error(result, 1, "alias")
    assert len(result.stderr) < 600


def test_an_alias_bomb_through_train_writes_nothing(tmp_path):
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(billion_laughs(), encoding="utf-8")
    out = tmp_path / "run"
    _assert_one_line_error(bounded_ppcr("train", "--recipe", str(bomb), "--out", str(out)), 1, "alias")
    assert not out.exists()


def test_aliases_and_merge_keys_are_refused_by_the_library_too(tmp_path):
    for text in ("train: &t {lr: 0.001}\neval: *t\n", "base: &b {lr: 0.001}\ntrain:\n  <<: *b\n"):
        path = tmp_path / "alias.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(RecipeError, match="alias"):
            load_recipe(path)


def test_a_long_wrong_value_is_quoted_short(tmp_path):
    """No aliases needed: a 1 MB value in the wrong place must not come back as a 1 MB message."""
    path = tmp_path / "long.yaml"
    path.write_text("description: [" + ",".join(["lol"] * 250_000) + "]\n", encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.message.startswith("description must be a string, got ['lol'")
    assert len(caught.value.message) < 200


def test_keys_that_look_like_markup_are_printed_as_they_are(tmp_path):
    path = tmp_path / "markup.yaml"
    path.write_text('"[/bold]": 1\n', encoding="utf-8")
    _assert_one_line_error(run("recipes", "show", str(path)), 1, "unknown key [/bold]")


# ----------------------------------------------------------------------------- 23.10 LoRA shape


LORA_CASES = [
    ("model.lora.r=0", "model.lora.r: must be at least 1, got 0"),
    ("model.lora.r=-2", "model.lora.r: must be at least 1, got -2"),
    ("model.lora.dropout=1.5", "model.lora.dropout: must be in [0, 1), got 1.5"),
    ("model.lora.alpha=0", "model.lora.alpha: must be a positive number, got 0"),
    ("model.lora.target_modules=[]", "model.lora.target_modules: name at least one module"),
]


@pytest.mark.parametrize(("override", "message"), LORA_CASES)
def test_a_lora_shape_peft_cannot_build_is_a_recipe_error(override, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe("shapes", [override])
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize("override", [case for case, _ in LORA_CASES[:3]])
def test_train_with_a_bad_lora_shape_fails_with_one_line_and_writes_nothing(override, tmp_path):
    out = tmp_path / "run"
    message = dict(LORA_CASES)[override]
    _assert_one_line_error(run("train", override, "--out", str(out)), 1, message)
    assert not out.exists()


def test_a_lora_shape_built_in_code_is_refused_before_peft_sees_it():
    from ppcr.modeling.build import build_model
    from tests.tiny_recipes import tiny_recipe

    for lora in (LoraSpec(r=0), LoraSpec(dropout=1.5), LoraSpec(target_modules=[])):
        with pytest.raises(RecipeError, match="model.lora"):
            build_model(tiny_recipe(lora=lora))


def test_bounded_run_limits_really_apply():
    """The limits the bomb tests rely on: a child asking for 2 GiB is refused."""
    code = "b = bytearray(2 << 30)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIME_LIMIT, preexec_fn=_limit_memory
    )
    assert result.returncode != 0 and "MemoryError" in result.stderr

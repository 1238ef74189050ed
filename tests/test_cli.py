"""The command line: fast help, one-line errors with non-zero exits, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli_errors import assert_one_line_error

PPCR = [sys.executable, "-m", "ppcr_cli"]


def run(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("PPCR_DEBUG", None) if not env or "PPCR_DEBUG" not in env else None
    return subprocess.run([*PPCR, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)


def test_help_does_not_import_torch():
    code = "import sys; sys.argv=['ppcr','--help']\nimport ppcr_cli.main as m\ntry:\n    m.main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().endswith("False"), result.stdout + result.stderr


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["prepare", "-h"], ["recipes", "show", "-h"],
                                  ["prepare", "shapes", "-h"], ["prepare", "refcoco+", "-h"]])
def test_every_help_works_and_shows_examples(args):
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert "xample" in result.stdout


def test_version():
    from ppcr import __version__

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ppcr {__version__}"


def _assert_one_line_error(result, code: int, text: str):
    assert_one_line_error(result.returncode, result.stdout, result.stderr, text, code)


def test_unknown_recipe():
    _assert_one_line_error(run("recipes", "show", "papr"), 1, "unknown recipe 'papr'")


def test_unknown_override_key_and_wrong_type():
    _assert_one_line_error(run("recipes", "show", "shapes", "train.lrr=1"), 1, "unknown key 'train.lrr'")
    _assert_one_line_error(run("recipes", "show", "shapes", "train.lr=fast"), 1, "train.lr must be a number")


def test_unknown_subcommand_is_a_usage_error():
    _assert_one_line_error(run("prepare", "refcocox"), 2, "No such command 'refcocox'")
    _assert_one_line_error(run("frobnicate"), 2, "No such command")


def test_debug_shows_traceback():
    result = run("recipes", "show", "papr", env={"PPCR_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_recipes_show_prints_resolved_yaml():
    result = run("recipes", "show", "shapes", "spatial-head=attn")
    assert result.returncode == 0, result.stderr
    assert "spatial_head: attn" in result.stdout


def test_library_does_everything_the_cli_does_for_recipes():
    import ppcr

    recipe = ppcr.load_recipe("shapes", ["train.lr=2e-3"])
    assert recipe.train.lr == pytest.approx(2e-3)

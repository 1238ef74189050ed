"""Hostile and careless inputs to training and data preparation (issue 23, points 3, 5, 6, 7, 9,
11, 12 and 13): each case reproduces what a new user or an attacker did, with small files built
here, and must end in one clear error (or a working run), nothing lost and nothing hanging.

The training cases use the engine's stand-in model (a few seconds each); the data cases write
tiny refer-layout datasets with :mod:`tests.refer_fixtures`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppcr.errors import PPCRError
from ppcr.training.errors import TrainingError
from ppcr.training.run import train
from tests.stand_in_model import StandInFactory, StandInModel, build_dataset, collate
from tests.test_training_engine import make_recipe, temporaries

REPO = Path(__file__).resolve().parents[1]


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ============================================================================ 3. one run per folder


def test_a_second_run_on_a_folder_in_use_is_refused_and_the_first_is_untouched(tmp_path):
    """``ppcr train --resume`` started again while the run is still going (a second terminal, a
    re-submitted job) passed every check and trained into the same folder."""
    out = tmp_path / "run"
    refusals: list[BaseException] = []

    def start_another_while_running(row):
        if row["step"] == 6:  # the state of step 4 exists: a resume would find everything it needs
            try:
                train(make_recipe(), out, StandInFactory(), build_dataset, collate, resume=True, progress=False)
            except TrainingError as exc:
                refusals.append(exc)

    result = train(make_recipe(), out, StandInFactory(), build_dataset, collate, progress=False,
                   on_log=start_another_while_running)
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
            train(make_recipe(), out, StandInFactory(), build_dataset, collate, progress=False)
        assert not (out / "recipe.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs, the kernel drops the lock
        holder.wait(timeout=30)
    assert (out / ".ppcr-train.lock").exists()  # the dead holder's file is left behind ...
    result = train(make_recipe(max_steps=2), out, StandInFactory(), build_dataset, collate, progress=False)
    assert result.steps == 2  # ... and does not block the folder

"""Names inside a run directory (one place, so the trainer, resume checks and tests agree)."""

from __future__ import annotations

import re

RECIPE_FILE = "recipe.yaml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
STATE_DIR = "state"
FINAL_DIR = "final"
LOCK_FILE = ".ppcr-train.lock"  # held by the running training (ppcr.training.run_lock); not a run entry
RUN_ENTRIES = (RECIPE_FILE, ENV_FILE, METRICS_FILE, CHECKPOINTS_DIR, STATE_DIR, FINAL_DIR)
STEP_TAG = re.compile(r"^step_\d{6,}$")  # names of checkpoints/step_000100 and state/step_000100

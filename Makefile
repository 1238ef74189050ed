# Two-command quick start (see README):  make demo   |   make test
# Each target creates .venv if needed, installing torch FIRST (a bare torch requirement on a machine
# without torch would pull a multi-GB CUDA build). Override TORCH for another build, e.g.
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.ppcr-installed
DATA   ?= data/shapes
ASSET   = ppcr/assets/ppcr-shapes-tiny
# The demo's sample: a Shapes-Ref val image (seed 0) and one of its expressions.
SAMPLE ?= $(DATA)/images/shapes/shapes_000843.png
SAMPLE_TEXT ?= big semicircle at the bottom

.PHONY: setup demo default-model ablations test test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job, on the embedded default model: generate Shapes-Ref, segment one sample image
# (mask + overlay in runs/demo/), score every split, print Tables 1-3; then says how to start
# the web demo (`ppcr serve`; gradio comes with the dev extra, or `pip install 'ppcr[demo]'`).
demo: setup
	$(BIN)/ppcr prepare shapes --out $(DATA) --overwrite
	$(BIN)/ppcr predict $(SAMPLE) "$(SAMPLE_TEXT)" -o runs/demo/mask.png --overlay runs/demo/overlay.png
	$(BIN)/ppcr eval --data-root $(DATA) --dataset shapes --split val --split testA --split testB
	$(BIN)/ppcr eval --data-root $(DATA) --dataset shapes+ --split val --split testA --split testB
	$(BIN)/ppcr eval --data-root $(DATA) --dataset shapesg --split val --split test
	$(BIN)/ppcr tables --runs runs/ppcr-shapes-tiny
	@echo "Try the model in a browser: $(BIN)/ppcr serve   (then open http://127.0.0.1:7860)"

# Reproduces the embedded default model: the shapes-pointer recipe on a 10,000-image Shapes-Ref
# drawn with seed 1 (the model is scored on data/shapes, seed 0), about 50 min on two CPU cores;
# an interrupted run resumes.
TRAIN_DATA ?= data/shapes-10k
default-model: setup
	if [ ! -d $(TRAIN_DATA)/shapesg ]; then $(BIN)/ppcr prepare shapes --out $(TRAIN_DATA) --seed 1 --images 10000; fi
	if [ -d runs/shapes-pointer ]; then $(BIN)/ppcr train --recipe shapes-pointer --out runs/shapes-pointer --resume data.root=$(TRAIN_DATA); \
	else $(BIN)/ppcr train --recipe shapes-pointer --out runs/shapes-pointer data.root=$(TRAIN_DATA); fi
	rm -rf $(ASSET).tmp && cp -r runs/shapes-pointer/final $(ASSET).tmp && rm -rf $(ASSET) && mv $(ASSET).tmp $(ASSET)

# Tables 2 and 3 on Shapes-Ref: every variant of the shapes recipe trained and scored (finished
# runs are reused, interrupted ones resumed), then the tables in Markdown (about an hour on CPU).
# Shapes-Ref goes to data/shapes, the recipe's data.root, so run folders carry no override hash.
ABLATIONS = default spatial-prompt=none spatial-prompt=expression spatial-prompt=expression+semantic \
            spatial-head=attn spatial-head=pointer box-source=gt
ablations: setup
	$(BIN)/ppcr prepare shapes --out data/shapes --overwrite
	for choice in $(ABLATIONS); do \
	  if [ $$choice = default ]; then $(BIN)/ppcr ablate || exit 1; else $(BIN)/ppcr ablate $$choice || exit 1; fi; \
	done
	$(BIN)/ppcr tables --runs runs/ablate/shapes --format markdown

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info

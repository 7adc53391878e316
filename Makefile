# hipt: every stage is `make <stage> key=value ...`; `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.hipt-setup-stamp
# Every key=value given to make (and the upper-case shortcuts) is forwarded to the stage.
ARGS = $(MAKEOVERRIDES)
export PYTHONUNBUFFERED := 1
export WANDB_SILENT := true

.PHONY: help setup setup-gpu setup-browser test test-all test-gpu gpu-check lint typecheck format tile pretrain-256 pretrain-4k extract-features encode-4k finetune predict heatmap pipeline demo \
	bench bench-tile bench-roi bench-models bench-extract bench-shards bench-encoders

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

setup: $(STAMP) data/samples/cmu_small_region.svs ## create .venv, install hipt + dev tools, fetch the sample slide (idempotent)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" "setuptools>=77.0.3" wheel
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps cucim-cu13
	$(PY) -c "import hipt, torch, torchvision, timm, lightly, lightning, zarr, cucim, openslide"
	touch $(STAMP)

data/samples/cmu_small_region.svs: | $(STAMP)
	$(PY) -m hipt.samples

setup-gpu: setup ## add cuCIM's CUDA dependencies (cupy, nvImageCodec + nvJPEG) for GPU decoding, pinned to torch's CUDA 13 build
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements/gpu-cu13.txt

setup-browser: setup ## Debian's Chromium + Playwright, for the tests that open the HTML pages in a browser
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(PIP) install -q -c $(CONSTRAINTS) playwright

test: setup ## default test suite (CPU, excludes slow; gpu tests skip without CUDA)
	$(PY) -m pytest -m "not slow" -q

test-all: setup ## every test, slow ones included
	$(PY) -m pytest -q

test-gpu: setup ## only the gpu-marked tests; fails (not skips) without a usable CUDA device
	HIPT_REQUIRE_CUDA=1 $(PY) -m pytest -m gpu -q

gpu-check: setup ## on a lent GPU machine: GPU tests + GPU benchmarks -> gpu_report.md (exits 1 without CUDA; dry_run=1 on CPU)
	@if [ -z "$(dry_run)" ]; then $(MAKE) --no-print-directory setup-gpu; fi
	$(PY) benchmarks/gpu_check.py $(ARGS)

lint: setup ## ruff lint + format check
	$(VENV)/bin/ruff check src pipelines tests benchmarks
	$(VENV)/bin/ruff format --check src pipelines tests benchmarks

typecheck: setup ## mypy on src/ (every function typed)
	$(VENV)/bin/mypy src

format: setup ## ruff autoformat
	$(VENV)/bin/ruff format src pipelines tests benchmarks
	$(VENV)/bin/ruff check --fix src pipelines tests benchmarks

tile: setup ## tile slides into 4096-px regions: make tile SLIDES=<folder|manifest.csv> OUT=<folder> [ANNOTATIONS=<folder of QuPath .geojson>]
	$(PY) -m pipelines.tile $(ARGS)

pretrain-256: setup ## DINO ViT-256 on 256-px tissue patches: make pretrain-256 TILES=<tile out> OUT=<folder>
	$(PY) -m pipelines.pretrain level=256 $(ARGS)

extract-features: setup ## cache patch/ViT-4K features in Zarr: make extract-features TILES=<tile out> OUT=<folder> [MODEL256=uni|timm:<arch> CHECKPOINT256= CHECKPOINT4K= stain.method=macenko]
	$(PY) -m pipelines.extract_features $(ARGS)

pretrain-4k: setup ## DINO ViT-4K on [384,16,16] feature grids: make pretrain-4k FEATURES=<stores> OUT=<folder>
	$(PY) -m pipelines.pretrain level=4k $(ARGS)

encode-4k: setup ## recompute feats4k from the cached grids with a new ViT-4K (no slide read): make encode-4k FEATURES=<stores> CHECKPOINT4K=<file>
	$(PY) -m pipelines.encode_4k $(ARGS)

finetune: setup ## patient-level k-fold heads: make finetune TASK=subtype|stage|survival|response COHORT=<csv> FEATURES=<stores> OUT=<folder>
	$(PY) -m pipelines.finetune $(ARGS)

predict: setup ## apply trained slide models to a new cohort: make predict MODEL=<finetune out|model> COHORT=<csv> FEATURES=<stores> OUT=<folder>
	$(PY) -m pipelines.predict $(ARGS)

heatmap: setup ## attention maps: make heatmap SLIDE=<slide> FEATURES=<store.zarr> [MODEL=<fold dir>] OUT=<folder>
	$(PY) -m pipelines.heatmap $(ARGS)

pipeline: setup ## a cohort through every stage, resumable: make pipeline SLIDES=<folder|csv> COHORT=<csv> OUT=<folder> TASKS=subtype,survival [MODEL256= CHECKPOINT256= CHECKPOINT4K= PRETRAIN=none|4k|both dry_run=true]
	$(PY) -m pipelines.pipeline $(ARGS)

demo: setup ## every stage on a generated cohort of real tissue (~11 min on 2 CPU cores); report in data/demo/report.md
	$(PY) -m pipelines.demo $(ARGS)

bench: bench-tile bench-roi bench-models bench-extract bench-shards bench-encoders ## every benchmark, each against its baseline in the same process

bench-tile: setup ## regions/s of our reader vs a CLAM-style OpenSlide loop; peak RSS vs slide size
	$(PY) benchmarks/bench_tile.py $(ARGS)

bench-roi: setup ## tiling time with QuPath annotations (tumor, pen, artefacts) vs without: make bench-roi [verify_read=1]
	$(PY) benchmarks/bench_roi.py $(ARGS)

bench-models: setup ## ViT-256 images/s vs an explicit-attention ViT-S/16; fraction of matmul peak
	$(PY) benchmarks/bench_models.py $(ARGS)

bench-extract: setup ## extraction regions/s vs an official-HIPT-style loop (same weights): make bench-extract [tiny=true regions=2]
	$(PY) benchmarks/bench_extract.py $(ARGS)

bench-shards: setup ## regions per rank (max/mean) of the balanced slide deal vs round-robin on a skewed cohort: make bench-shards [tiles=<tile out>]
	$(PY) benchmarks/bench_shards.py $(ARGS)

bench-encoders: setup ## images/s and peak memory per registered encoder family at batch 32 on this CPU (tiny variants where the full model does not fit the time), and on GPU when CUDA is present; the ratio to ViT-S/16 (vit256_small) in the same run: make bench-encoders [budget_s=60 only=uni,virchow2 quick=true json=<file>]
	$(PY) benchmarks/bench_encoders.py $(ARGS)

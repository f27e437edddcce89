# pausdenoise: every target sets up .venv itself on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo-output
DEMO_GAN_DIR ?= demo-gan-output

.PHONY: all setup demo demo-gan test test-slow lint bench bench-gpu fuzz careamics clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned to the local CPU wheel; a looser pin pulls several GB of CUDA packages.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/pausdenoise run --config configs/demo-fast.yaml --out $(DEMO_DIR)

# Stacking + the pix2pix cGAN (single epoch -> stack) on a deep simulated field.
demo-gan: $(STAMP)
	$(BIN)/pausdenoise run --config configs/demo-gan.yaml --out $(DEMO_GAN_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

lint: $(STAMP)
	$(BIN)/ruff check pausdenoise tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

# The GPU benchmark (network-only rate per precision x tiling, bf16/fp16 error in sigma on
# sky and sources, end to end for 1 and 18 CCDs on a LocalCUDACluster, training), appended
# to benchmarks/RESULTS.md. --device cuda stops at once if torch sees no GPU (e.g. a CPU
# torch wheel) instead of appending CPU figures; BENCH_GPU_ARGS="--device cpu --quick"
# measures (and labels) CPU figures. For a GPU machine that has PyTorch but not the
# project's dependencies, see benchmarks/README.md ("On a GPU machine").
BENCH_GPU_ARGS ?= --device cuda
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py --append $(BENCH_GPU_ARGS)

# CAREamics in its own venv, for benchmarks/bench_careamics.py (its default --care-python).
# careamics 0.3.5 pins torch<2.14 / torchvision<=0.26; the torchvision wheels are CUDA builds,
# so torch is pinned to the matching build (2.10.0 + 0.25.0, CUDA 12.8 from the index, 7.6 GB
# with the nvidia-* wheels; runs on CPU without a GPU). Pinned, so the local torch 2.13.0+cpu
# wheel is never picked.
CARE_VENV := .venv-careamics
CARE_PIP  := torch==2.10.0 torchvision==0.25.0 careamics==0.3.5

$(CARE_VENV)/.installed:
	$(PYTHON) -m venv $(CARE_VENV)
	$(CARE_VENV)/bin/python -m pip install -q --upgrade pip
	$(CARE_VENV)/bin/python -m pip install -q $(CARE_PIP)
	$(CARE_VENV)/bin/python -c "import careamics, torch, torchvision; \
	  from careamics import CAREamist; print('careamics', careamics.__version__, 'torch', torch.__version__)"
	touch $@

careamics: $(CARE_VENV)/.installed

# Coverage-guided fuzzing (atheris) of the FITS header reader and the catalogue reader,
# FUZZ_SECONDS each; corpus and logs in bench-output/fuzz/. Not part of `make test`.
FUZZ_SECONDS ?= 120
FUZZ_FLAGS ?= -timeout=30 -rss_limit_mb=4096 -max_len=10000
fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[fuzz]'
	mkdir -p bench-output/fuzz
	for t in fits catalogue; do \
	  (cd bench-output/fuzz && ../../$(BIN)/python ../../benchmarks/fuzz/fuzz.py $$t \
	    -max_total_time=$(FUZZ_SECONDS) $(FUZZ_FLAGS) > $$t.log 2>&1) \
	    || { tail -40 bench-output/fuzz/$$t.log; exit 1; }; \
	  echo "$$t: $$(grep -E '^Done [0-9]+ runs' bench-output/fuzz/$$t.log)"; \
	done

clean:
	rm -rf $(DEMO_DIR) $(DEMO_GAN_DIR) .pytest_cache

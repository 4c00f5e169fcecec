# coati_ray — the front door. `make test` and `make demo` set themselves up on a fresh clone.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ASSETS  := assets/.built

.PHONY: setup assets test test-slow docs demo demo-rlvr demo-tools serve evaluate sft rm pretrain colossal-llama bench soak gpu-stage gpu-check grafana dashboard-screenshot clean

setup: $(STAMP) $(ASSETS)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(VPY) -c "import torch, colossalai, ray, transformers, peft, datasets; print('stack: torch', torch.__version__, 'colossalai', colossalai.__version__, 'ray', ray.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
	touch $(STAMP)

# Tiny tokenizer + tiny models of real families, trained/built from text in the repo (no hub), and of today's
# chat families with their own templates (tiny-qwen2-chatml: ChatML, tiny-llama3: Llama-3 headers).
# The demo's model is a 4-layer llama with hidden size 128 (tiny-llama-h128); tests use the 2-layer ones.
$(ASSETS): $(STAMP) coati_ray/models/tiny.py coati_ray/models/tiny_chat.py data/sft/train.jsonl
	$(VPY) -m coati_ray.models.tiny --out assets
	$(VPY) -m coati_ray.models.tiny --out assets --families llama --hidden 128 --layers 4 --suffix=-h128
	touch $(ASSETS)

assets: $(ASSETS)

# `make test`: the suite without the end-to-end Ray jobs of 20 s or more (under 15 minutes on 2 cores);
# `make test-slow`: those jobs (resume, faults, node loss, pipelines, every sync transport); CI runs both.
test: setup
	$(VPY) -m pytest -q --durations=30 -m "not slow" tests

test-slow: setup
	$(VPY) -m pytest -q --durations=30 -m slow tests

# The documentation site: its generated pages checked current (config reference, benchmarks), then built strictly
# into site/ (a broken link or a page missing from the nav fails). `mkdocs serve` browses it.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(VPY) -m pip install -q -e ".[docs]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VPY) scripts/config_reference.py --check
	$(VPY) -m mkdocs build --strict --quiet

# The main job on the embedded default: SFT -> RM (from the SFT model, as Coati does) -> PPO, one
# Ray job, then a report judged by the task's gold score. A rerun starts again (--overwrite).
# MODEL: a model of assets/models (tiny-qwen2-chatml-h128, tiny-llama3-h128, ...), a directory or a hub id.
# SYSTEM: a system turn for every conversation (sft.data.system_prompt; the checkpoints carry it to RM and PPO).
DEMO_DIR ?= runs/demo
SEED ?= 1
MODEL ?= tiny-llama-h128
SYSTEM ?=
MODEL_PATH = $$(test -d assets/models/$(MODEL) && echo assets/models/$(MODEL) || echo $(MODEL))
SYSTEM_ARG = $(if $(SYSTEM),"sft.data.system_prompt=$(SYSTEM)")
# a model's own demo settings: Qwen3's template has the policy write an empty think block, and its tokenizer
# splits numbers digit by digit, so an answer needs more than the demo's 12 new tokens
DEMO_tiny-qwen3-h128 = ppo.generation.max_new_tokens=40
demo: setup
	$(VPY) -m launch.pipeline --config configs/demo.yaml --output-dir $(DEMO_DIR) --overwrite seed=$(SEED) \
		sft.model.path=$(MODEL_PATH) $(SYSTEM_ARG) $(DEMO_$(MODEL))

# RLVR: SFT -> GRPO on the sorting task's verifier (no reward model, no critic), judged by the gold score.
RLVR_DIR ?= runs/demo_rlvr
demo-rlvr: setup
	$(VPY) -m launch.pipeline --config configs/demo_rlvr.yaml --output-dir $(RLVR_DIR) --overwrite seed=$(SEED) \
		sft.model.path=$(MODEL_PATH)

# Multi-turn RL with a tool: SFT on tool-use demonstrations, then GRPO whose episodes call a calculator
# (coati_ray/tasks/calc.py), judged by held-out gold with and without the tool.
TOOLS_DIR ?= runs/demo_tools
demo-tools: setup
	$(VPY) -m launch.pipeline --config configs/demo_tools.yaml --output-dir $(TOOLS_DIR) --overwrite seed=$(SEED) \
		sft.model.path=$(MODEL_PATH)

# After `make demo`: its final policy behind an OpenAI-compatible API on Ray Serve (launch.serve), on loopback,
# model name coati-demo: http://127.0.0.1:$(PORT)/v1 (README "Serve and evaluate"). Ctrl-C stops it.
# SERVE_MODEL: another checkpoint; SERVE_ARGS: more flags (--replicas 2, --quantize int8, --host H --api-key-env NAME).
SERVE_MODEL ?= $(DEMO_DIR)/ppo/checkpoints/final/actor/model
PORT ?= 8000
SERVE_ARGS ?=
serve: setup
	@test -f $(SERVE_MODEL)/config.json || { echo "error: no model in $(SERVE_MODEL); run make demo first (or SERVE_MODEL=DIR)" >&2; exit 2; }
	$(VPY) -m launch.serve --model $(SERVE_MODEL) --served-model-name coati-demo --port $(PORT) $(SERVE_ARGS)

# lm-evaluation-harness on the demo's final policy (launch.evaluate): TASKS from this repo (coati_sorting,
# coati_calc) or your own YAML (EVAL_ARGS="--include-path DIR"); results in runs/eval.
TASKS ?= coati_sorting
EVAL_ARGS ?=
evaluate: setup
	$(VPY) -m launch.evaluate --model $(SERVE_MODEL) --tasks $(TASKS) --output-dir runs/eval --overwrite $(EVAL_ARGS)

sft: setup
	$(VPY) -m launch.sft --config configs/sft_tiny.yaml

# Colossal-LLaMA's continual pretraining on the tiny model: prepare data/pretrain, then train on it.
pretrain: setup
	$(VPY) -m launch.prepare_data --mode pretrain --data_input_dirs data/pretrain --tokenizer_dir assets/models/tiny-llama \
		--data_output_dirs runs/prepared_pretrain --max_length 64 --num_spliced_dataset_bins 4
	$(VPY) -m launch.pretrain --config configs/pretrain_tiny.yaml --overwrite

# Colossal-LLaMA's order in one job: expand the vocabulary -> prepare + pretrain -> SFT -> GRPO (configs/colossal_llama_tiny.yaml).
LLAMA_DIR ?= runs/colossal_llama_tiny
colossal-llama: setup
	$(VPY) -m launch.pipeline --config configs/colossal_llama_tiny.yaml --output-dir $(LLAMA_DIR) --overwrite seed=$(SEED)

# The RM starts from the SFT model, so `make rm` trains it first when it is missing.
rm: setup
	test -f runs/sft_tiny/checkpoints/final/config.json || $(VPY) -m launch.sft --config configs/sft_tiny.yaml
	$(VPY) -m launch.rm --config configs/rm_tiny.yaml

# Benchmarks (CPU, ~4 h on 2 cores; the first run also builds a pinned TRL venv under runs/bench):
# ours vs TRL (PPO, GRPO; interleaved rounds), pipeline efficiency, maker scaling, weight sync, soak -> benchmarks/RESULTS.md
bench: setup
	$(VPY) -m benchmarks.run_all

# GPU check (README "GPU"): here, `make gpu-stage` packs ray/colossalai/our pins for the GPU machine's
# Python 3.12 into .devsite/; there (carry .devsite and assets), `make gpu-check` runs tests/gpu + the GPU bench
# over its own torch. GPU_PHASES picks phases (versions kernels tests bench).
gpu-stage: assets
	bash scripts/gpu/stage.sh

GPU_PHASES ?= versions kernels tests bench
gpu-check:
	bash scripts/gpu/check.sh $(GPU_PHASES)

soak: setup
	$(VPY) -m benchmarks.soak --steps 1000 --kill-every 50 --seed 0

# Prometheus + Grafana with Ray's dashboards and ours (configs/grafana/coati_rlhf.json), for a `ray start`
# cluster on this machine; says how to install either binary when missing.
grafana:
	bash scripts/grafana.sh

# README's Actors-page screenshot: a `ray start` head, the tiny PPO job submitted, the token login in
# headless Chromium (apt-get install chromium; playwright in its own venv under runs/).
dashboard-screenshot: setup
	bash scripts/dashboard_screenshot.sh

clean:
	rm -rf assets runs .pytest_cache

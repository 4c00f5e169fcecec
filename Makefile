# coati_ray — the front door. `make test` and `make demo` set themselves up on a fresh clone.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ASSETS  := assets/.built

.PHONY: setup assets test demo sft rm clean

setup: $(STAMP) $(ASSETS)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(VPY) -c "import torch, colossalai, ray, transformers, peft, datasets; print('stack: torch', torch.__version__, 'colossalai', colossalai.__version__, 'ray', ray.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
	touch $(STAMP)

# Tiny tokenizer + tiny models of real families, trained/built from text in the repo (no hub).
$(ASSETS): $(STAMP) coati_ray/models/tiny.py data/sft/train.jsonl
	$(VPY) -m coati_ray.models.tiny --out assets
	touch $(ASSETS)

assets: $(ASSETS)

test: setup
	$(VPY) -m pytest -q tests

# The main job on the embedded default: SFT, then the RM from the SFT model (as Coati does), then
# PPO on a local Ray with the SFT model as actor and the RM as reward model and critic.
DEMO_DIR ?= runs/demo
demo: setup
	$(VPY) -m launch.sft --config configs/sft_tiny.yaml --output-dir $(DEMO_DIR)/sft
	$(VPY) -m launch.rm --config configs/rm_tiny.yaml --output-dir $(DEMO_DIR)/rm model.path=$(DEMO_DIR)/sft/checkpoints/final
	$(VPY) -m launch.ppo --config configs/ppo_tiny.yaml --output-dir $(DEMO_DIR)/ppo \
		actor.path=$(DEMO_DIR)/sft/checkpoints/final critic.path=$(DEMO_DIR)/rm/checkpoints/final \
		reward.path=$(DEMO_DIR)/rm/checkpoints/final

sft: setup
	$(VPY) -m launch.sft --config configs/sft_tiny.yaml

rm: setup
	$(VPY) -m launch.rm --config configs/rm_tiny.yaml

clean:
	rm -rf assets runs .pytest_cache

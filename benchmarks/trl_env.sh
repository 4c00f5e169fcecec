#!/usr/bin/env bash
# Create (once) the isolated venv a TRL baseline runs in: never the project's venv.
#   bash benchmarks/trl_env.sh 0.19.1   -> runs/bench/venv-trl-0.19.1  (TRL's PPOTrainer, our transformers)
#   bash benchmarks/trl_env.sh 1.12.0   -> runs/bench/venv-trl-1.12.0  (trl.experimental.ppo, the last 1.x with PPO)
# 0.19.1 runs on our torch 2.5.1, so that row compares trainers, not torch builds. TRL 1.12 needs
# torch >= 2.6 (it imports torch.distributed.fsdp.FSDPModule), so it gets the machine's torch 2.13 CPU wheel.
set -euo pipefail
version="$1"
case "$version" in
  0.19.1) pins="torch==2.5.1 trl==0.19.1 transformers==4.51.3 accelerate==1.10.1 datasets==4.7.0" ;;
  1.12.0) pins="torch==2.13.0 trl==1.12.0 transformers==4.57.1 accelerate==1.10.1 datasets==4.7.0" ;;
  *) echo "error: no pinned TRL environment for version '$version' (use 0.19.1 or 1.12.0)" >&2; exit 2 ;;
esac
venv="runs/bench/venv-trl-$version"
stamp="$venv/.installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ]; then exit 0; fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check $pins safetensors
echo "$pins" > "$stamp"

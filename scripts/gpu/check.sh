#!/usr/bin/env bash
# `make gpu-check`, on a GPU machine from the repository root, with .devsite/ (scripts/gpu/stage.sh) and
# assets/ (make assets) beside it: unpack the staged stack over the machine's torch, build ColossalAI's CUDA
# kernels, then run what is asked (default: all):
#   versions  the stack that runs, and the NCCL probe (two ranks on one GPU)
#   kernels   JIT-build HybridAdam's CUDA/C++ kernels (returned as $OUT/kernels.tar.gz to carry next time)
#   tests     pytest tests/gpu (GPU_TEST_ARGS overrides its arguments)
#   bench     python -m benchmarks.gpu_ppo: opt-125m, ddp and ZeRO-2 against TRL fp32/bf16, 3 interleaved rounds
#             (about 7 min; GPU_BENCH_ARGS overrides its arguments, e.g. --sizes opt-1.3b --strategies colossalai_zero2)
# and the runs of the GPU issue, one device call each (a phase stops itself GPU_PHASE_S after it starts, 540 s by
# default, under the device's 600 s; each writes its JSON as it goes, so a run cut short returns what it did),
# in the order to run them:
#   diagnose_gemini     Gemini at opt-1.3b, lr 0 (a collapse there is the export or the sync) then 1e-6: 6 steps,
#                       each step's KL, response length, grad norm, maker-trainer log-prob gap
#                       (algorithm.behaviour_correction=measure) and the weights' max |delta| trainer-maker and
#                       step to step (0 at lr 0; bf16 steps only at 1e-6: gpu_ppo.WeightWatch)
#                       -> diagnose_gemini_lr*.json
#   colocated           opt-1.3b ZeRO-2 bf16 colocated, then TRL bf16; 8 steps -> colocated.json
#   generate            tokens/s of the hf, compact and static backends at opt-125m/1.3b, batch 32/128 -> generate.json
#   diagnose_zero2      the control: ZeRO-2 at lr 1e-6, as diagnose_gemini -> diagnose_zero2.json
#   colocated_separate  opt-1.3b ZeRO-2 separate, over the object store and over ipc -> colocated_separate.json
#   colocated_offload   opt-1.3b ZeRO-2 colocated with colocated.offload_optimizer -> colocated_offload.json
# GPU_CALL_S bounds the whole call (seconds from its start): each phase stops by then too, and a phase with under
# 30 s left is skipped, so one call can hold several phases (`GPU_CALL_S=570 make gpu-check GPU_PHASES="versions
# kernels diagnose_gemini colocated"`) and returns what fitted.
# Logs and JSON go to $OUT (the device tool's folder) or runs/gpu_check.
set -uo pipefail
call_deadline=$(( $(date +%s) + ${GPU_CALL_S:-86400} ))
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
phases=${*:-versions kernels tests bench}
if [ ! -f /tmp/site/.unpacked ] || [ .devsite/site.tar.xz -nt /tmp/site/.unpacked ]; then
  t=$(date +%s)
  rm -rf /tmp/site
  tar -xJf .devsite/site.tar.xz -C /tmp || { echo "[gpu-check] could not unpack .devsite/site.tar.xz (run make gpu-stage)"; exit 2; }
  touch /tmp/site/.unpacked
  echo "[gpu-check] unpacked the staged stack in $(( $(date +%s) - t )) s"
fi
failed=""
export PYTHONPATH=/tmp/site:$PWD
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
# CUDA 13 builds no code for the pre-Turing targets ColossalAI's kernel build lists by default: build for this GPU.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)}
export MAX_JOBS=${MAX_JOBS:-16}
# kernels JIT-built by an earlier call, carried back in .devsite/kernels.tar.gz
if [ -f .devsite/kernels.tar.gz ] && [ ! -d ~/.cache/colossalai ]; then mkdir -p ~/.cache && tar -xzf .devsite/kernels.tar.gz -C ~/.cache; fi
for phase in $phases; do
  t=$(date +%s)
  status=0
  deadline=$(( t + ${GPU_PHASE_S:-540} ))
  [ "$deadline" -gt "$call_deadline" ] && deadline=$call_deadline
  left() { local s=$(( deadline - $(date +%s) )); [ "$s" -gt 1 ] && echo "$s" || echo 1; }
  # the phases without a GPU_PHASE_S bound of their own (versions, kernels, tests, bench): their limit or the call's
  upto() { local s=$(( call_deadline - $(date +%s) )); [ "$s" -lt "$1" ] && echo "$(( s > 1 ? s : 1 ))" || echo "$1"; }
  if [ $(( call_deadline - t )) -lt 30 ]; then
    echo "[gpu-check] $phase skipped: GPU_CALL_S is spent"; failed="$failed $phase(skipped)"; continue
  fi
  case "$phase" in
    versions)
      python3 scripts/gpu/versions.py 2>&1 | tee "$OUT/versions.txt"
      timeout -k 10 "$(upto 120)" python3 scripts/gpu/nccl_probe.py 2>&1 | tail -5 | tee "$OUT/nccl_probe.txt"
      status=${PIPESTATUS[0]} ;;
    kernels)
      timeout -k 10 "$(upto 900)" python3 -c "
from colossalai.nn.optimizer import HybridAdam
import torch
HybridAdam([torch.nn.Parameter(torch.zeros(4, device='cuda'))])
print('HybridAdam kernels loaded')" 2>&1 | tail -20 | tee "$OUT/kernels.txt"
      status=${PIPESTATUS[0]}
      # a build cut short may leave torch's lock file: carried into the next call, it would hang that call's build
      [ "$status" = 0 ] && tar -czf "$OUT/kernels.tar.gz" -C ~/.cache colossalai ;;
    tests)
      # shellcheck disable=SC2086
      timeout -k 10 "$(upto 1500)" python3 -m pytest -q -rs -p no:cacheprovider ${GPU_TEST_ARGS:-tests/gpu} --junitxml="$OUT/junit.xml" -s 2>&1 \
        | grep -v "^\s*warnings.warn\|UserWarning\|FutureWarning\|DeprecationWarning" | tee "$OUT/tests.log" | tail -60
      status=${PIPESTATUS[0]} ;;
    bench)
      # shellcheck disable=SC2086
      timeout -k 10 "$(upto 1500)" python3 -m benchmarks.gpu_ppo ${GPU_BENCH_ARGS:---trl --sizes opt-125m --strategies ddp colossalai_zero2} --out "$OUT/gpu.json" 2>&1 \
        | grep -v "warn" | tee "$OUT/bench.log" | tail -40
      status=${PIPESTATUS[0]} ;;
    diagnose_gemini)
      for lr in 0 1e-6; do
        timeout -k 10 "$(left)" python3 -m benchmarks.gpu_ppo --sizes opt-1.3b --repeats 1 --strategies colossalai_gemini --steps 6 --per-step \
          --set actor_trainer.optim.lr=$lr algorithm.behaviour_correction=measure --tag lr$lr --section gpu_diagnose_lr$lr \
          --out "$OUT/diagnose_gemini_lr$lr.json" 2>&1 | grep -v "warn" | tee -a "$OUT/diagnose.log" | tail -4
        [ "${PIPESTATUS[0]}" = 0 ] || status=1
      done ;;
    diagnose_zero2)
      timeout -k 10 "$(left)" python3 -m benchmarks.gpu_ppo --sizes opt-1.3b --repeats 1 --strategies colossalai_zero2 --steps 6 --per-step \
        --set actor_trainer.optim.lr=1e-6 algorithm.behaviour_correction=measure --tag lr1e-6 --section gpu_diagnose_zero2 \
        --out "$OUT/diagnose_zero2.json" 2>&1 | grep -v "warn" | tee -a "$OUT/diagnose.log" | tail -4
      status=${PIPESTATUS[0]} ;;
    colocated)
      timeout -k 10 "$(left)" python3 -m benchmarks.gpu_ppo --sizes opt-1.3b --repeats 1 --strategies colossalai_zero2 --placements colocated --trl --trl-precisions bf16 \
        --steps 8 --section gpu_colocated --out "$OUT/colocated.json" 2>&1 | grep -v "warn" \
        | tee -a "$OUT/colocated.log" | tail -4
      status=${PIPESTATUS[0]} ;;
    colocated_separate)
      timeout -k 10 "$(left)" python3 -m benchmarks.gpu_ppo --sizes opt-1.3b --repeats 1 --strategies colossalai_zero2 --placements separate --transports object_store ipc \
        --steps 8 --section gpu_separate --out "$OUT/colocated_separate.json" 2>&1 | grep -v "warn" \
        | tee -a "$OUT/colocated.log" | tail -4
      status=${PIPESTATUS[0]} ;;
    colocated_offload)
      timeout -k 10 "$(left)" python3 -m benchmarks.gpu_ppo --sizes opt-1.3b --repeats 1 --strategies colossalai_zero2 --placements colocated \
        --set colocated.offload_optimizer=true --tag offload --steps 8 --section gpu_offload \
        --out "$OUT/colocated_offload.json" 2>&1 | grep -v "warn" | tee -a "$OUT/colocated.log" | tail -4
      status=${PIPESTATUS[0]} ;;
    generate)
      timeout -k 10 "$(left)" python3 -m benchmarks.gpu_generate --sizes opt-125m opt-1.3b --batches 32 128 \
        --out "$OUT/generate.json" 2>&1 | grep -v "warn" | tee "$OUT/generate.log" | tail -14
      status=${PIPESTATUS[0]} ;;
    *) echo "[gpu-check] unknown phase '$phase' (versions kernels tests bench diagnose_gemini colocated generate"\
            "diagnose_zero2 colocated_separate colocated_offload)"
       exit 2 ;;
  esac
  case "$phase" in versions|kernels) ;; *)  # a phase its timeout stopped may leave Ray's processes (and GPU memory)
    python3 -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true ;; esac
  echo "[gpu-check] $phase took $(( $(date +%s) - t )) s (exit $status)"
  [ "$status" = 0 ] || failed="$failed $phase"
done
if [ -n "$failed" ]; then echo "[gpu-check] FAILED:$failed"; exit 1; fi

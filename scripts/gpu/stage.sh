#!/usr/bin/env bash
# Stage what a GPU machine without network needs to run `make gpu-check` over its own torch: ray, colossalai
# and this project's pins (transformers, peft, tokenizers, datasets, huggingface-hub, bitsandbytes, trl),
# installed here for CPython 3.12 / manylinux x86-64 and packed as .devsite/site.tar.xz (~37 MB, so the whole
# stack travels with the repository in ONE device call of 64 MiB, not three).
# Trimmed: Ray's Java jars and its libraries we do not use (rllib, serve, train, tune, llm, data) and
# bitsandbytes' kernels for other CUDA/ROCm/XPU versions; everything else is the wheels' own files.
#   bash scripts/gpu/stage.sh        (here, with network)  ->  .devsite/site.tar.xz
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
out=.devsite
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
quiet() { grep -v "is ignored: it is neither\|Running pip as the 'root' user" || true; }
python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp/w" \
  ray==2.60.0 transformers==4.51.3 tokenizers==0.21.4 peft==0.13.2 galore-torch==1.0 huggingface-hub==0.36.2 \
  datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19 jsonschema jsonschema-specifications referencing rpds-py \
  bitsandbytes==0.50.2 trl==0.19.1 2>&1 | quiet
# colossalai ships only as an sdist: a pure-python wheel of it (its CUDA kernels are JIT-built on the GPU machine).
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/w" colossalai==0.5.0 2>&1 | quiet
python3 -m pip install -q --no-index --no-deps --no-compile --target "$tmp/site" "${plat[@]}" "$tmp"/w/*.whl 2>&1 | quiet
# (pipefail: a pip that failed ends the script here, grep's status aside)
rm -rf "$tmp"/site/ray/{jars,rllib,serve,train,tune,llm,data} "$tmp"/site/bin
find "$tmp/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*_cpu.so' ! -name '*_cuda130.so' -delete
find "$tmp/site" -name __pycache__ -prune -exec rm -rf {} +
ls "$tmp"/w > "$tmp/site/STAGED_WHEELS.txt"
mkdir -p "$out"
tar -C "$tmp" -cf - site | xz -9 -T0 > "$out/site.tar.xz.tmp"
mv "$out/site.tar.xz.tmp" "$out/site.tar.xz"
du -h "$out/site.tar.xz"
echo "staged $out/site.tar.xz — device call: carry [\".devsite\", \"assets\"], command: bash scripts/gpu/check.sh"

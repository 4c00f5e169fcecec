"""The stack a GPU check runs on: versions, the GPU, and whether each package imports."""

import importlib

import torch

print("gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
      "| torch", torch.__version__, "cuda", torch.version.cuda, "nccl", ".".join(map(str, torch.cuda.nccl.version())))
for name in ("ray", "colossalai", "transformers", "peft", "tokenizers", "datasets", "huggingface_hub", "accelerate",
             "bitsandbytes", "trl", "pyarrow", "numpy", "safetensors"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # an incompatibility is a finding: print it and go on
        print(f"{name} FAILED: {type(e).__name__}: {str(e)[:300]}")
for target in ("colossalai.booster.plugin", "coati_ray.strategies", "actors.driver"):
    try:
        importlib.import_module(target)
        print(f"import {target}: ok")
    except Exception as e:
        print(f"import {target} FAILED: {type(e).__name__}: {str(e)[:300]}")

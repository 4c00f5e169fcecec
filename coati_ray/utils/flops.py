"""FLOP estimates for throughput figures: the usual 2N per token for a forward pass (inference)
and 6N for forward + backward (training), N = parameters. Attention's sequence-length term and
padding are ignored, so these are lower bounds on the work done and comparable across runs. MFU divides them by
the devices' dense peak in the dtype the work runs in (a table of data-centre GPUs, or COATI_PEAK_TFLOPS)."""

from __future__ import annotations

import os
from typing import Optional


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def inference_flops(n_params: int, tokens: float) -> float:
    """2N FLOPs per token of a forward pass."""
    return 2.0 * n_params * tokens


def training_flops(n_params: int, tokens: float) -> float:
    """6N FLOPs per token of forward + backward."""
    return 6.0 * n_params * tokens


def experience_flops(n_actor: int, n_reward: int, n_critic: int, tokens: float, actor_passes: int = 3) -> float:
    """One experience batch of `tokens` (prompt + response) tokens: the actor's generation, the actor's
    and the initial policy's log-probs (`actor_passes` of the actor's size in all: fewer when the behaviour
    log-probs come from the sampler or no KL needs the reference), the reward model and the critic:
    2 * tokens * (passes·N_a + N_r + N_c)."""
    return inference_flops(actor_passes * n_actor + n_reward + n_critic, tokens)


def tflops(flops: float, seconds: float) -> float:
    return flops / max(seconds, 1e-12) / 1e12


# Dense peak TFLOP/s of data-centre GPUs (vendor datasheets, no sparsity), by the name torch reports: "half" is
# bf16/fp16 on tensor cores, "fp32" plain fp32 (torch leaves TF32 matmuls off by default). First match wins, so a
# longer name comes before a shorter one it contains ("L40S", "L40" before "L4"; "H200 NVL" before "H200"). The 6N
# estimate counts a LoRA group's frozen base as trained, so its MFU reads high.
PEAK_TFLOPS = (
    ("H100 PCIe", {"half": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"half": 835.0, "fp32": 60.0}),
    ("H100", {"half": 989.0, "fp32": 67.0}),
    ("H200 NVL", {"half": 835.0, "fp32": 60.0}),
    ("H200", {"half": 989.0, "fp32": 67.0}),
    ("A100", {"half": 312.0, "fp32": 19.5}),
    ("L40S", {"half": 362.0, "fp32": 91.6}),
    ("L40", {"half": 181.0, "fp32": 90.5}),
    ("L4", {"half": 121.0, "fp32": 30.3}),
    ("A10G", {"half": 125.0, "fp32": 31.2}),
    ("A10", {"half": 125.0, "fp32": 31.2}),
)
PEAK_ENV = "COATI_PEAK_TFLOPS"  # a device the table does not know: its peak in the dtype the job computes in


def peak_tflops(device_name: str, dtype: str) -> Optional[float]:
    """The dense peak of GPU `device_name` (as torch.cuda.get_device_name reports it) in `dtype` ('bfloat16',
    'float16' or 'float32'); COATI_PEAK_TFLOPS when set; None when unknown (a CPU, a GPU not in the table)."""
    if os.environ.get(PEAK_ENV):
        try:
            return float(os.environ[PEAK_ENV])
        except ValueError:
            raise ValueError(f"{PEAK_ENV}={os.environ[PEAK_ENV]!r} is not a number; set it to the GPU's dense peak "
                             "TFLOP/s in the dtype the job computes in (e.g. 989 for an H100's bf16)") from None
    kind = "fp32" if dtype in ("float32", "fp32") else "half"
    for name, peaks in PEAK_TFLOPS:
        if name in device_name:
            return peaks[kind]
    return None


def device_peak_tflops(dtype: str) -> Optional[float]:
    """peak_tflops of this process's current GPU in `dtype`; None on CPU (unless COATI_PEAK_TFLOPS is set)."""
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return peak_tflops(name, dtype)


def mfu(achieved_tflops: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: the model FLOP/s achieved (the 2N/6N estimates above) / the devices' peak."""
    return achieved_tflops / peak if peak else None

"""8-bit and 4-bit base weights through bitsandbytes (QLoRA style: the base is quantized and frozen, LoRA
adapters train on top), and the way back to full precision for an exported checkpoint.

On CUDA, transformers' own path (`BitsAndBytesConfig` at load time). On a CPU, transformers 4.51 refuses
that path without intel-extension-for-pytorch, but bitsandbytes' `Linear8bitLt` and `Linear4bit` (nf4)
run there, so the `nn.Linear` layers are swapped for them by hand: same weights, quantized when the layer
moves to its device. The LM head (and a value head) stay in full precision, as bitsandbytes' own
integration leaves them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8", "int4")
KEEP_FULL = ("lm_head", "value_head", "score")


def quantize_linears(model: nn.Module, kind: str, device: Optional[torch.device] = None,
                     keep: tuple[str, ...] = KEEP_FULL) -> int:
    """Swap every `nn.Linear` of `model` (except those named in `keep`) for its bitsandbytes twin, in place,
    quantized on `device` (default CPU). Returns how many layers were swapped."""
    import bitsandbytes as bnb

    if kind == "none":
        return 0
    device = device or torch.device("cpu")
    swapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is not nn.Linear or any(k in full.split(".") for k in keep):
                continue
            if kind == "int8":
                q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                        has_fp16_weights=False, threshold=0.0)
                # peft 0.13.2 reads this attribute, which bitsandbytes 0.50 no longer has
                q.state.memory_efficient_backward = False
            else:
                # compress_statistics=False: no nested quantisation of the block scales, so the packing a
                # CPU forward applies undoes exactly and every copy of the base dequantises alike
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      quant_type="nf4", compute_dtype=child.weight.dtype, quant_storage=torch.uint8,
                                      compress_statistics=False)
                # bitsandbytes' CPU inference fast path repacks the weight with rounded (bf16) scales: a
                # maker would then sample from a slightly different policy than the trainer computes
                q.support_avx512bf16_for_cpu = False
            q.load_state_dict(child.state_dict())
            q.requires_grad_(False)
            setattr(module, child_name, q.to(device))  # the move quantizes the weight
            swapped += 1
    # what peft reads to wrap these layers with its bitsandbytes LoRA classes
    setattr(model, f"is_loaded_in_{kind[3:]}bit", True)
    return swapped


def is_quantized(module: nn.Module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))


@torch.no_grad()
def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The full-precision weight (out, in) a bitsandbytes layer computes with, on the CPU in float32."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    w = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        data, state = w.data, w.quant_state
        if getattr(state, "packing_format_for_cpu", False):  # repacked by a CPU inference forward: undo it
            import copy

            from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

            # on copies: the inverse rewrites the state it is given, and the layer keeps its packed form
            data, state = _convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))
        return F.dequantize_4bit(data, state).float().cpu()
    if isinstance(module, bnb.nn.Linear8bitLt):
        cb, scb = w.data, module.state.SCB if module.state.SCB is not None else w.SCB
        return (cb.float() * scb.float().unsqueeze(1) / 127.0).cpu()
    return w.detach().float().cpu()


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take (quantized weights at their packed size)."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        total += t.numel() * t.element_size()
    for module in model.modules():  # 8-bit row scales and 4-bit block scales live outside the parameters
        w = getattr(module, "weight", None)
        state = getattr(w, "quant_state", None)
        if state is not None and getattr(state, "absmax", None) is not None:
            total += state.absmax.numel() * state.absmax.element_size()
        scb = getattr(w, "SCB", None)
        if scb is not None:
            total += scb.numel() * scb.element_size()
    return total

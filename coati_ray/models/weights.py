"""Moving weights between a trainer and a maker: export once, load with strict key and shape checks.

Coati's Ray prototype loaded synced weights with `strict=False`, so a key mismatch silently
updated nothing. Here any missing, unexpected or mis-shaped tensor is an error. Dtypes may differ on
purpose: a trainer keeps fp32 master weights (or computes in bf16 under ZeRO/Gemini) while makers
infer in `maker.dtype`; a floating tensor is cast to the receiver's dtype and counted. A non-floating
tensor (an index buffer) must match exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from coati_ray.errors import ModelError

LORA_MARKER = "lora_"
VALUE_HEAD = "value_head."  # a LoRA critic trains its value head in full: it travels with the adapters


def is_lora_synced(key: str) -> bool:
    """What a LoRA model's weight sync moves: the adapters, and a value model's head."""
    return LORA_MARKER in key or key.startswith(VALUE_HEAD)


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA `module` that train (adapters; a critic's value head), under their full names.

    Read from the parameters, not `state_dict()`: bitsandbytes' 4-bit layers repack their weights when
    asked for a state dict, slightly changing them, and a weight sync runs every step."""
    return {k: v.detach() for k, v in module.named_parameters() if is_lora_synced(k)}


def plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()`'s parameters and persistent buffers, read without `state_dict()` (see
    lora_state): quantized layers appear as their raw packed tensors."""
    out = {}
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        for key, p in sub._parameters.items():
            if p is not None:
                out[prefix + key] = p.detach()
        for key, b in sub._buffers.items():
            if b is not None and key not in sub._non_persistent_buffers_set:
                out[prefix + key] = b.detach()
    return out


def export_weights(module: nn.Module, lora_only: bool) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights a maker needs: all of them, or the LoRA adapters only."""
    state = lora_state(module) if lora_only else module.state_dict()
    if lora_only and not state:
        raise ModelError("model error: lora-only export of a model without LoRA adapters; set lora_rank > 0")
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def check_compatible(module: nn.Module, state: dict[str, torch.Tensor], lora_only: bool) -> None:
    """Raise ModelError unless `state` has exactly the expected keys with matching shapes (and dtypes,
    for non-floating tensors; floating ones are cast on load)."""
    own = lora_state(module) if lora_only else module.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys()
                   if own[k].shape != state[k].shape or (own[k].dtype != state[k].dtype
                                                         and not (own[k].is_floating_point()
                                                                  and state[k].is_floating_point())))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shape/dtype (e.g. {k}: {tuple(state[k].shape)} {state[k].dtype} "
                         f"vs {tuple(own[k].shape)} {own[k].dtype})")
        raise ModelError("weight sync refused: " + "; ".join(parts) + "; the sender and receiver models differ")


@torch.no_grad()
def load_weights(module: nn.Module, state: dict[str, torch.Tensor], lora_only: bool) -> int:
    """Copy `state` into `module` in place after `check_compatible`; returns how many tensors were cast
    to the receiver's dtype (`copy_` casts exactly as `tensor.to(dtype)` does)."""
    check_compatible(module, state, lora_only)
    own = module.state_dict()
    casts = 0
    for k, v in state.items():
        casts += own[k].dtype != v.dtype
        own[k].copy_(v)
    return casts


@torch.no_grad()
def max_abs_delta(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest elementwise |reference - other| over the floating tensors both hold, and its key.

    `reference` is cast to each tensor's dtype in `other` first: a trainer's fp32 weights against a bf16 maker's
    show 0 when the maker holds exactly their cast. A NaN on one side only is NaN (a diverged copy: the worst);
    NaN on both sides at the same place is equal (the copy is exact, whatever it holds). Shapes: each pair equal;
    a pair that differs is inf at its key; no floating tensor in common is (nan, ""): nothing was compared.
    Computed in float32, one tensor at a time (a 1.3B model's copy is never made whole)."""
    worst, where, compared = 0.0, "", 0
    for key in sorted(reference.keys() & other.keys()):
        a, b = reference[key], other[key]
        if not (a.is_floating_point() and b.is_floating_point()):
            continue
        compared += 1
        if a.shape != b.shape:
            return float("inf"), key
        if not a.numel():
            continue
        x, y = a.to(b.dtype).float(), b.float()
        diff = torch.where(x.isnan() & y.isnan(), 0.0, (x - y).abs())
        delta = float(diff.max())
        if delta != delta:
            return delta, key
        if delta > worst:
            worst, where = delta, key
    return (worst, where) if compared else (float("nan"), "")


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def export_view(module: nn.Module, merged: bool = False) -> dict[str, torch.Tensor]:
    """CPU copies of a model's weights for comparison: as stored (plain_state), or with `merged` the LoRA
    adapters folded into the (dequantized) base as an export writes them (ValueModel: head kept apart)."""
    from coati_ray.models.lora import is_lora, merged_state_dict

    if merged:
        hf = getattr(module, "model", None) or getattr(module, "backbone", None)
        if hf is not None and is_lora(hf):
            out = merged_state_dict(hf)
            if hasattr(module, "value_head"):
                out.update({f"value_head.{k}": v.detach().cpu().clone() for k, v in module.value_head.state_dict().items()})
            return out
    return {k: v.cpu().clone() for k, v in plain_state(module).items()}

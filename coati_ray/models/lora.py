"""LoRA through peft: wrap, count, export adapters only, or merge for a plain HF checkpoint."""

from __future__ import annotations

from typing import Union

import torch
from torch import nn


def lora_config(rank: int, alpha: float = 16.0, dropout: float = 0.0, target_modules: str = "all-linear"):
    from peft import LoraConfig

    targets: Union[str, list[str]] = target_modules
    if target_modules != "all-linear":
        targets = [t.strip() for t in target_modules.split(",") if t.strip()]
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")


def apply_lora(model: nn.Module, rank: int, alpha: float = 16.0, dropout: float = 0.0,
               target_modules: str = "all-linear") -> nn.Module:
    """Wrap a HF model in a peft LoRA model: base weights frozen, only adapters train.

    `rank == 0` returns the model unchanged.
    """
    if rank <= 0:
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(rank, alpha, dropout, target_modules))


def is_lora(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def adapter_state_dict(model: nn.Module) -> dict:
    """Only the LoRA tensors of a peft model (what a weight sync needs to move)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


@torch.no_grad()
def merged_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights with every active LoRA delta added, keyed as the plain HF model names
    them, built tensor by tensor on the CPU.

    Equal bit for bit to `copy.deepcopy(peft_model).merge_and_unload().state_dict()` (the same
    `weight += B @ A * scaling` in the base weight's dtype), without the deep copy: on a GPU that copy
    is a second whole model on the device. Tensors that share storage (tied embeddings) stay shared. A
    base quantized by bitsandbytes (8/4-bit, QLoRA) is dequantized first, so the result is a plain
    full-precision checkpoint in the model's dtype.
    """
    from peft.tuners.lora import LoraLayer

    from coati_ray.models.quantize import dequantized_weight, is_quantized

    base = peft_model.get_base_model()
    dtype = getattr(base.config, "torch_dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    deltas, quantized = {}, {}
    for name, module in base.named_modules():
        if name.endswith(".base_layer"):
            continue  # the layer a LoRA wrapper holds: handled with the wrapper, under the wrapper's name
        layer = module.get_base_layer() if isinstance(module, LoraLayer) else module
        if is_quantized(layer):
            quantized[name] = layer
        if isinstance(module, LoraLayer):
            if any(module.use_dora.values()):
                raise NotImplementedError("merging DoRA adapters is not supported; use peft's merge_and_unload")
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    delta = module.get_delta_weight(adapter).to("cpu")
                    key = f"{name}.weight"
                    deltas[key] = deltas[key] + delta if key in deltas else delta
    out: dict[str, torch.Tensor] = {}
    for name, layer in quantized.items():  # full precision again: the dequantized weight plus the delta
        weight = dequantized_weight(layer)
        key = f"{name}.weight"
        if key in deltas:
            weight += deltas.pop(key).float()
        out[key] = weight.to(dtype)
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias.detach().to("cpu", dtype=dtype, copy=True)
    from coati_ray.models.weights import plain_state

    copies: dict[int, torch.Tensor] = {}
    # plain_state, not state_dict(): bitsandbytes' 4-bit layers repack themselves (lossily) for a state dict
    for key, value in plain_state(base).items():
        if "lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        if any(plain.startswith(f"{name}.") for name in quantized):
            continue  # written above, without the quantization state's own keys
        if plain in deltas:
            merged = value.detach().to("cpu", copy=True)
            merged += deltas.pop(plain)
            out[plain] = merged
            continue
        ptr = value.data_ptr()
        if ptr not in copies:
            copies[ptr] = value.detach().to("cpu", copy=True)
        out[plain] = copies[ptr]
    if deltas:
        raise RuntimeError(f"LoRA deltas without a base weight: {sorted(deltas)[:3]}")
    return out

"""LoRA through peft: wrap, count, export adapters only, or merge for a plain HF checkpoint."""

from __future__ import annotations

from typing import Union

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

"""Building the stage models from a ModelConfig, resuming them from checkpoints, exporting them."""

from __future__ import annotations

import os
from typing import Optional

from torch import nn

from coati_ray.config.schema import ModelConfig
from coati_ray.models.actor import Actor
from coati_ray.models.lora import apply_lora, is_lora
from coati_ray.models.value import VALUE_HEAD_FILE, Critic, RewardModel, ValueModel

ADAPTER_CONFIG = "adapter_config.json"


def build_actor(cfg: ModelConfig, checkpoint: Optional[str] = None) -> Actor:
    """The causal LM from `cfg.path` (a local directory or the pinned hub commit, or a full checkpoint),
    with LoRA when `cfg.lora_rank > 0`.

    A LoRA checkpoint holds only adapters: the base comes from `cfg.path` and the adapters from
    `checkpoint`.
    """
    from coati_ray.models.loading import load_causal_lm

    lora_ckpt = checkpoint is not None and os.path.isfile(os.path.join(checkpoint, ADAPTER_CONFIG))
    base = checkpoint is None or lora_ckpt
    # A quantized base (QLoRA) is only ever the original path's: a full checkpoint is full precision.
    model = load_causal_lm(cfg.local_path if base else checkpoint, dtype=cfg.dtype,
                           trust_remote_code=cfg.trust_remote_code, quantize=cfg.quantize if base else "none",
                           attn_implementation=cfg.attn_implementation)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora_ckpt:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, checkpoint, is_trainable=True)
    else:
        model = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    return Actor(model)


def build_value_model(cls: type, cfg: ModelConfig, checkpoint: Optional[str] = None,
                      require_head: bool = False, head_seed: Optional[int] = None) -> ValueModel:
    """A Critic or RewardModel: backbone (+ head if saved) from `cfg.path`, LoRA, resume from `checkpoint`; a
    head that is not saved is drawn from `head_seed` when given (see ValueModel)."""
    from safetensors.torch import load_file

    lora_ckpt = checkpoint is not None and os.path.isfile(os.path.join(checkpoint, ADAPTER_CONFIG))
    base = checkpoint is None or lora_ckpt
    model = cls.from_pretrained(cfg.local_path if base else checkpoint, dtype=cfg.dtype,
                                trust_remote_code=cfg.trust_remote_code, require_head=require_head,
                                quantize=cfg.quantize if base else "none", attn_implementation=cfg.attn_implementation,
                                head_seed=head_seed)
    if cfg.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable()
    if lora_ckpt:
        from peft import PeftModel

        model.backbone = PeftModel.from_pretrained(model.backbone, checkpoint, is_trainable=True)
        model.value_head.load_state_dict(load_file(os.path.join(checkpoint, VALUE_HEAD_FILE)), strict=True)
    elif cfg.lora_rank > 0:
        model.backbone = apply_lora(model.backbone, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                                    cfg.lora_target_modules)
    return model


def build_reward_model(cfg: ModelConfig, checkpoint: Optional[str] = None, require_head: bool = False) -> RewardModel:
    return build_value_model(RewardModel, cfg, checkpoint, require_head)  # type: ignore[return-value]


def build_critic(cfg: ModelConfig, checkpoint: Optional[str] = None, head_seed: Optional[int] = None) -> Critic:
    """A PPO critic; its trainer and makers pass the same `head_seed` (algorithm.seed), so a critic.path without a
    value head starts with the same fresh head everywhere, before any weight sync."""
    return build_value_model(Critic, cfg, checkpoint, head_seed=head_seed)  # type: ignore[return-value]


def export_model(module: nn.Module, path: str, merge_lora: bool = True, state_dict: Optional[dict] = None,
                 tokenizer=None) -> None:
    """Save an Actor / ValueModel as a Hugging Face directory loadable with `from_pretrained`.

    LoRA models are merged into plain weights when `merge_lora` (tensor by tensor on the CPU, never
    a copy of the model), else only the adapters are written (peft layout). `state_dict` (keys of
    `module`) replaces the live weights, for strategies whose parameters are sharded (Gemini gathers
    them on rank 0 first).
    """
    from coati_ray.models.lora import merged_state_dict

    os.makedirs(path, exist_ok=True)
    if isinstance(module, Actor):
        hf = module.model
        if state_dict is not None:
            hf_state = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
            hf.save_pretrained(path, state_dict=hf_state, safe_serialization=True)
        elif is_lora(hf) and merge_lora:
            hf.get_base_model().save_pretrained(path, state_dict=merged_state_dict(hf), safe_serialization=True)
        else:
            hf.save_pretrained(path, safe_serialization=True)
    elif isinstance(module, ValueModel):
        if is_lora(module.backbone) and state_dict is None:
            if merge_lora:
                merged = {f"backbone.{k}": v for k, v in merged_state_dict(module.backbone).items()}
                merged.update({f"value_head.{k}": v for k, v in module.value_head.state_dict().items()})
                module.save_pretrained(path, state_dict=merged)
            else:
                from safetensors.torch import save_file

                module.backbone.save_pretrained(path, safe_serialization=True)
                save_file({k: v.contiguous() for k, v in module.value_head.state_dict().items()},
                          os.path.join(path, VALUE_HEAD_FILE))
        else:
            module.save_pretrained(path, state_dict=state_dict)
    else:
        raise TypeError(f"cannot export a {type(module).__name__}")
    if tokenizer is not None:
        tokenizer.save_pretrained(path)

"""Critic and RewardModel: a transformer backbone plus one scalar value head.

Saved as a Hugging Face directory: the backbone via `save_pretrained` (loads with
`AutoModel.from_pretrained`) plus `value_head.safetensors`; `from_pretrained` here restores both
and refuses a head whose shape does not match the backbone.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from torch import nn

from coati_ray.algo.reward_shaping import last_token_index
from coati_ray.models.actor import forward_parameters
from coati_ray.errors import ModelError

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_META_FILE = "value_head.json"


def hidden_size(config) -> int:
    # OPT's decoder projects its output to word_embed_proj_dim (opt-350m: 1024 -> 512): check it first.
    for name in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ModelError(f"model error: cannot tell the hidden size of a {type(config).__name__}")


class ValueModel(nn.Module):
    """backbone (AutoModel) -> last hidden states (B, T, H) -> value head -> (B, T)."""

    def __init__(self, backbone: nn.Module, head: Optional[nn.Linear] = None, head_seed: Optional[int] = None):
        """A new head is drawn from the global RNG, or from `head_seed` alone: every process that builds the
        same model with the same seed (a PPO critic's trainer and its makers) then holds the same head."""
        super().__init__()
        self.backbone = backbone
        d_model = hidden_size(backbone.config)
        if head is None:
            head = nn.Linear(d_model, 1)
            generator = torch.Generator().manual_seed(head_seed) if head_seed is not None else None
            # Coati's initialisation: N(0, std = 1 / (d_model + 1)), zero bias.
            nn.init.normal_(head.weight, mean=0.0, std=1.0 / (d_model + 1), generator=generator)
            nn.init.zeros_(head.bias)
        self.value_head = head.to(dtype=next(backbone.parameters()).dtype)
        self.pack_sequences = False  # padding-free forward (coati_ray/models/packing.py), set by a trainer

    @property
    def config(self):
        return self.backbone.config

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Value of every position: (B, T) -> (B, T), computed in float32."""
        if self.pack_sequences:
            from coati_ray.models.packing import packed_call, unpack

            packed, kwargs = packed_call(self.backbone, input_ids, attention_mask, self.value_head.weight.dtype,
                                         use_cache=False)
            values = self.value_head(self.backbone(**kwargs).last_hidden_state).squeeze(-1).float()  # (1, L)
            return unpack(values, packed)
        kwargs = {}
        if "position_ids" in forward_parameters(self.backbone):
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        hidden = out.last_hidden_state
        return self.value_head(hidden).squeeze(-1).float()

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", trust_remote_code: bool = False,
                        require_head: bool = False, quantize: str = "none", attn_implementation: Optional[str] = None,
                        head_seed: Optional[int] = None):
        """Backbone from `path` (8/4-bit with `quantize`); the value head too when `path` holds one (else
        freshly initialised; always full precision)."""
        from safetensors.torch import load_file

        from coati_ray.models.loading import load_backbone

        backbone = load_backbone(path, dtype=dtype, trust_remote_code=trust_remote_code, quantize=quantize,
                                 attn_implementation=attn_implementation)
        head_file = os.path.join(path, VALUE_HEAD_FILE)
        if not os.path.isfile(head_file):
            if require_head:
                raise ModelError(f"model error: '{path}' has no {VALUE_HEAD_FILE}; point it at a reward model "
                                 "or critic saved by coati_ray (the RM stage's checkpoints/final)")
            return cls(backbone, head_seed=head_seed)
        state = load_file(head_file)
        model = cls(backbone)
        expected = {k: tuple(v.shape) for k, v in model.value_head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise ModelError(f"model error: {head_file} holds {found} but the backbone needs {expected}; "
                             "the head was saved with a different backbone")
        model.value_head.load_state_dict(state, strict=True)
        return model

    def save_pretrained(self, path: str, state_dict: Optional[dict] = None) -> None:
        """Backbone in HF format plus the head; `state_dict` (ours, full keys) overrides live params."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        backbone_state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        head_state = {k[len("value_head."):]: v.contiguous() for k, v in state.items() if k.startswith("value_head.")}
        # A LoRA backbone given merged weights saves through its plain HF model (peft would write adapters).
        hf = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        hf.save_pretrained(path, state_dict=backbone_state, safe_serialization=True)
        save_file(head_state, os.path.join(path, VALUE_HEAD_FILE))
        with open(os.path.join(path, VALUE_META_FILE), "w") as f:
            json.dump({"kind": type(self).__name__, "hidden_size": self.value_head.in_features}, f)


class Critic(ValueModel):
    """Value of each response token (PPO's baseline)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_actions: int) -> torch.Tensor:
        """(B, T) -> (B, A): V(s_t) for the states before each of the last A tokens.

        Action token t (at position T-A+t) is chosen in the state that ends at position T-A+t-1,
        so its value is read there, in line with how its log-prob is computed.
        """
        values = self.token_values(input_ids, attention_mask)
        return values[:, :-1][:, -num_actions:]


class RewardModel(ValueModel):
    """Scalar score of a whole sequence, read at its last non-pad token."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B,)."""
        values = self.token_values(input_ids, attention_mask)
        last = last_token_index(attention_mask)
        return values.gather(1, last.unsqueeze(1)).squeeze(1)


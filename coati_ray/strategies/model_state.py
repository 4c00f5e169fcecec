"""A boosted model seen as the plain model it wraps: the attribute holding its Hugging Face transformer, that
transformer without the 3d plugin's wrapper, a state dict without ShardFormer's vocabulary padding, and RoPE's
float32 buffers kept across the plugins' cast (what Strategy.prepare and the weight export need)."""

from __future__ import annotations

import torch
from torch import nn


def hf_attribute(model: nn.Module) -> str:
    """The attribute of an Actor ('model') or ValueModel ('backbone') holding its Hugging Face model."""
    for attr in ("model", "backbone"):
        if isinstance(getattr(model, attr, None), nn.Module):
            return attr
    raise TypeError(f"the 3d strategy boosts a model's Hugging Face transformer; {type(model).__name__} has none")


def with_unwrapped_hf(model: nn.Module) -> nn.Module:
    """`model` as its own class, sharing every parameter, with the 3d plugin's wrapper around its Hugging
    Face transformer taken off (so state_dict keys and save_pretrained are the plain model's)."""
    attr = hf_attribute(model)
    inner = getattr(model, attr)
    if not (hasattr(inner, "unwrap") and callable(inner.unwrap)):
        return model
    import copy

    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._modules[attr] = inner.unwrap()
    return view


def unpadded_state_dict(module: nn.Module) -> dict:
    """`module.state_dict()` of a 3d-boosted model without ShardFormer's vocabulary padding. (ShardFormer's own
    `_save_to_state_dict` unpads each parameter in place and fails on the second name of a tied embedding.)"""
    from colossalai.tensor.padded_tensor import is_padded_tensor

    out = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        t = param.detach()
        out[name] = t.narrow(param._padding_dim, 0, param._origin_length) if is_padded_tensor(param) else t
    for mod_name, mod in module.named_modules():
        for name, buf in mod._buffers.items():
            if buf is not None and name not in mod._non_persistent_buffers_set:
                out[f"{mod_name}.{name}" if mod_name else name] = buf.detach()
    return out


def float32_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of RoPE's inv_freq buffers: computed (not loaded) and kept float32 by from_pretrained in any
    dtype. (Other computed buffers, such as a scale made in the default dtype, come out bf16 from a bf16
    load, as the plugins' cast leaves them.)"""
    out = {}
    for mod_name, mod in module.named_modules():
        for name, buf in mod._buffers.items():
            if buf is not None and name.endswith("inv_freq") and buf.dtype == torch.float32:
                out[f"{mod_name}.{name}" if mod_name else name] = buf.detach().clone()
    return out


def restore_buffers(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put `saved` (float32_buffers of the same module) back, on the device each buffer is on now."""
    for full_name, value in saved.items():
        mod_name, _, name = full_name.rpartition(".")
        mod = module.get_submodule(mod_name) if mod_name else module
        mod._buffers[name] = value.to(mod._buffers[name].device)

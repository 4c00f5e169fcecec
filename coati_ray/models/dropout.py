"""Dropout off in RLHF models: the policy that sampled must be the policy in the PPO ratio.

Makers generate in eval mode (no dropout) while trainers run `model.train()`; with dropout left on,
the first on-policy minibatch already has ratio != 1 and clipping fires on noise. TRL sets every
`nn.Dropout` to p=0; Hugging Face models also drop out through float attributes read in `forward`
(OPT's decoder layers: `self.dropout`; attention's `attention_dropout`), so those are zeroed too.
The config is left alone (an exported checkpoint keeps the dropout it came with), and so is LoRA's
own `lora_dropout`, which the user set for the adapters on purpose.
"""

from __future__ import annotations

from torch import nn


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout probability in `model`'s modules to 0 (nn.Dropout and float `*dropout*`
    attributes), except LoRA's. Returns how many were non-zero."""
    changed = 0
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
            continue
        for attr, value in list(vars(module).items()):
            if "dropout" in attr and isinstance(value, float) and not isinstance(value, bool):
                changed += value > 0
                setattr(module, attr, 0.0)
    return changed

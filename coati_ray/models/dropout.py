"""Dropout off in RLHF models: the policy that sampled must be the policy in the PPO ratio.

Makers generate in eval mode (no dropout) while trainers run `model.train()`; with dropout left on,
the first on-policy minibatch already has ratio != 1 and clipping fires on noise. TRL sets every
`nn.Dropout` to p=0; Hugging Face models also drop out through float attributes read in `forward`
(OPT's decoder layers: `self.dropout`, GPT-2/OPT attention: `dropout_p=self.attn_dropout.p` or a
float), so those are zeroed too, and the config's *dropout* fields for code that reads the config.
"""

from __future__ import annotations

from torch import nn


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout probability in `model` to 0 (modules, float attributes, config). Returns how
    many were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
            continue
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool):
                changed += value > 0
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for name, value in config.to_dict().items():
                if ("dropout" in name or name.endswith("_pdrop")) and isinstance(value, float) and value > 0:
                    setattr(config, name, 0.0)
    return changed

"""colocated.offload_optimizer (coati_ray/strategies/offload.py): which tensors leave the GPU between updates, that
each keeps its identity, and the one-line refusals. Moving them needs a GPU (tests/gpu checks the memory it
frees and that training is unchanged); on CPU the selection and the bookkeeping are what can be shown."""

from __future__ import annotations

import pytest
import torch

from coati_ray.errors import ConfigError
from coati_ray.strategies.offload import OptimizerOffload, innermost_optimizer, optimizer_tensors


def stepped_adamw():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


def test_the_moments_move_and_the_models_own_parameters_stay():
    model, opt = stepped_adamw()
    moved = optimizer_tensors(opt, model)
    moments = [opt.state[p][k] for p in model.parameters() for k in ("exp_avg", "exp_avg_sq")]
    assert {id(t) for t in moved} == {id(t) for t in moments}  # not the parameters, not the 0-dim step counters
    assert sum(t.numel() for t in moved) == 2 * sum(p.numel() for p in model.parameters())


def test_a_zero_style_master_copy_moves_too_and_wrappers_are_seen_through():
    """A ZeRO optimizer steps fp32 masters (not the model's parameters) and sits under the Booster's wrapper:
    the masters count as optimizer memory."""
    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    masters = [p.detach().float().clone().requires_grad_() for p in model.parameters()]
    inner = torch.optim.AdamW(masters, lr=1e-2)

    class Wrapper:  # OptimizerWrapper(LowLevelZeroOptimizer(torch optimizer)): `.optim` twice
        def __init__(self, optim):
            self.optim = optim

    wrapped = Wrapper(Wrapper(inner))
    assert innermost_optimizer(wrapped) is inner
    assert {id(t) for t in optimizer_tensors(wrapped, model)} == {id(m) for m in masters}


def test_on_a_cpu_nothing_moves_and_training_goes_on_unchanged():
    model, opt = stepped_adamw()
    before = {id(t): t.clone() for t in optimizer_tensors(opt, model)}
    offload = OptimizerOffload(opt, model)
    assert offload.out()["bytes"] == 0 and offload.back()["bytes"] == 0
    after = optimizer_tensors(opt, model)
    assert all(torch.equal(before[id(t)], t) for t in after)


def test_offload_is_refused_where_it_has_nothing_to_do(tiny_llama, reward_dir, tmp_path):
    from tests.ppo_helpers import ppo_config

    with pytest.raises(ConfigError, match=r"^config error: colocated.offload_optimizer: .*placement=separate"):
        ppo_config(tiny_llama, reward_dir, tmp_path / "a", "colocated.offload_optimizer=true")
    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "b", "placement=colocated", "colocated.offload_optimizer=true")
    assert cfg.colocated.offload_optimizer

"""Optimizer state out of the GPU between updates (`colocated.offload_optimizer`): under placement: colocated the
actor group's ranks generate on the GPU they train on, and between two updates nothing reads the optimizer's
moments or a ZeRO plugin's fp32 master shards, which are most of a trainer's memory (12 of Adam's 16 bytes per
parameter under bf16 mixed precision). They go to pinned host memory after each update and come back before the
next, so generation's KV cache has the room (OpenRLHF's --deepspeed_enable_sleep, verl's offload do the same).

What moves: every tensor the optimizer holds that is not one of the model's own parameters (a naive/DDP
optimizer's parameters are the model's, which generation needs) and lives on the model's device: Adam's
moments, ZeRO-2's master shards. Each keeps its identity (`t.data` is swapped), so the optimizer, the plugin's
bookkeeping and the LR scheduler never notice. On a CPU there is nowhere else to put them and nothing moves.
"""

from __future__ import annotations

import time

import torch


def innermost_optimizer(optimizer):
    """The torch optimizer under a Booster's OptimizerWrapper and a ZeRO optimizer (`.optim` all the way down)."""
    while hasattr(optimizer, "optim"):
        optimizer = optimizer.optim
    return optimizer


def optimizer_tensors(optimizer, model: torch.nn.Module) -> list[torch.Tensor]:
    """The optimizer's tensors that are not the model's parameters (by storage) and live on the model's device:
    its state (0-dim counters aside) and, under ZeRO, its master parameters."""
    inner = innermost_optimizer(optimizer)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    owned = {p.untyped_storage().data_ptr() for p in params}
    out, seen = [], set()

    def take(t):
        if (torch.is_tensor(t) and t.dim() > 0 and t.device == device and id(t) not in seen
                and t.untyped_storage().data_ptr() not in owned):
            seen.add(id(t))
            out.append(t)

    for group in inner.param_groups:
        for p in group["params"]:
            take(p)
    for state in inner.state.values():
        for value in state.values():
            take(value)
    return out


class OptimizerOffload:
    """Moves an optimizer's tensors (optimizer_tensors) to pinned host memory and back, each keeping its identity."""

    def __init__(self, optimizer, model: torch.nn.Module):
        self.optimizer, self.model = optimizer, model
        self.away: list[tuple[torch.Tensor, torch.device]] = []  # (tensor now on the host, where it came from)

    def out(self) -> dict:
        """After an update: every tensor to the host. Returns {bytes, seconds} (0 bytes on a CPU)."""
        t0, moved = time.perf_counter(), 0
        for t in optimizer_tensors(self.optimizer, self.model):
            if t.device.type == "cpu":
                continue  # a CPU group: there is no other memory to move it to
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            host.copy_(t.data, non_blocking=True)
            self.away.append((t, t.device))
            t.data = host
            moved += host.numel() * host.element_size()
        if moved and torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # the freed blocks go back, so generation can take them
        return {"bytes": moved, "seconds": time.perf_counter() - t0}

    def back(self) -> dict:
        """Before an update (or a checkpoint of the optimizer): every tensor back where it was."""
        t0, moved = time.perf_counter(), 0
        for t, device in self.away:
            t.data = t.data.to(device, non_blocking=True)
            moved += t.numel() * t.element_size()
        if self.away and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.away = []
        return {"bytes": moved, "seconds": time.perf_counter() - t0}

"""One Strategy interface over ColossalAI Booster plugins.

    naive                 one process, plain torch (what Booster() without a plugin amounts to);
                          colossalai is not even imported, so a single-process run starts fast
    ddp                   TorchDDPPlugin (gloo on CPU, nccl on GPU)
    colossalai_zero2      LowLevelZeroPlugin(stage=2): optimizer states + gradients sharded
    colossalai_zero2_cpu  the same with optimizer states offloaded to CPU
    colossalai_gemini     GeminiPlugin: chunk-based parameter / gradient / optimizer sharding (placement_policy
                          static, with offload_optim_frac / offload_param_frac of the states on the CPU)
    colossalai_gemini_auto  GeminiPlugin(placement_policy="auto"): Gemini moves chunks between GPU and CPU itself
    3d                    HybridParallelPlugin: tensor x sequence x data parallel (ZeRO 0-2), for the
                          supervised stages (SFT, RM, pretrain); needs CUDA, not yet run on a GPU

The process group comes from an explicit (rank, world_size, master_addr, master_port), so a Ray
actor can build a Strategy exactly as a torchrun process would.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from coati_ray.config.schema import StrategyConfig
from coati_ray.strategies.model_state import (float32_buffers, hf_attribute, restore_buffers,
                                               unpadded_state_dict, with_unwrapped_hf)

OPTIMIZER_FILE = "optimizer.pt"


class Strategy:
    def __init__(self, cfg: StrategyConfig, rank: int = 0, world_size: int = 1,
                 master_addr: str = "127.0.0.1", master_port: Optional[int] = None, local_rank: int = 0,
                 grad_accum_steps: int = 1, store=None):
        """The group's members meet through `store` (a torch.distributed Store: Ray's rendezvous actor, no
        listening port), or, for processes started outside Ray (tests), a TCPStore at master_addr:port."""
        self.cfg = cfg
        self.name = cfg.name
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.master_addr, self.master_port, self.store = master_addr, master_port, store
        self.grad_accum_steps = grad_accum_steps
        self.booster = None
        self.plugin = None

    # ------------------------------------------------------------------ process group

    @property
    def uses_booster(self) -> bool:
        return self.name != "naive"

    @property
    def backend(self) -> str:
        if self.cfg.backend != "auto":
            return self.cfg.backend
        return "nccl" if torch.cuda.is_available() else "gloo"

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def setup_distributed(self) -> None:
        """Join the group's torch.distributed world and build the Booster (no-op for naive)."""
        seed_everything(self.cfg.seed)
        if not self.uses_booster:
            return
        if not dist.is_initialized():
            if self.store is None and self.world_size == 1:
                self.store = dist.HashStore()  # a world of one process meets itself: nothing to listen on
            if self.store is not None:
                launch_on_store(self.store, self.rank, self.world_size, self.local_rank, self.cfg.seed)
            elif self.master_port is None:
                raise RuntimeError("a distributed strategy needs a store (or master_port: rank 0's free port)")
            else:
                import colossalai

                colossalai.launch(rank=self.rank, world_size=self.world_size, host=self.master_addr,
                                  port=int(self.master_port), backend=self.backend, local_rank=self.local_rank,
                                  seed=self.cfg.seed, verbose=False)
        from colossalai.booster import Booster

        self.plugin = self._make_plugin()
        self.booster = Booster(plugin=self.plugin)

    def _make_plugin(self):
        from colossalai.booster.plugin import GeminiPlugin, LowLevelZeroPlugin, TorchDDPPlugin

        precision = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[self.cfg.precision]
        if self.name == "ddp":
            return TorchDDPPlugin()
        if self.name in ("colossalai_zero2", "colossalai_zero2_cpu"):
            return LowLevelZeroPlugin(stage=2, precision=precision, max_norm=self.cfg.grad_clip,
                                      cpu_offload=self.name.endswith("_cpu"))
        if self.name.startswith("colossalai_gemini"):
            c = self.cfg
            placement = "auto" if self.name == "colossalai_gemini_auto" else c.placement_policy
            offload = dict(offload_optim_frac=c.offload_optim_frac, offload_param_frac=c.offload_param_frac) \
                if placement == "static" else {}  # auto placement moves tensors by itself
            return GeminiPlugin(precision=precision, max_norm=c.grad_clip, placement_policy=placement,
                                enable_gradient_accumulation=self.grad_accum_steps > 1, **offload)
        if self.name == "3d":
            return hybrid_plugin(self.cfg)
        raise ValueError(f"unknown strategy '{self.name}'")

    def close(self) -> None:
        if self.uses_booster and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ training

    def prepare(self, model: nn.Module, optimizer=None, lr_scheduler=None) -> tuple[Any, Any, Any]:
        """Boost model (+ optimiser and scheduler); returns the wrapped objects to train with."""
        if not self.uses_booster:
            return model.to(self.device), optimizer, lr_scheduler
        computed = float32_buffers(model) if self.name != "ddp" and self.cfg.precision != "fp32" else {}
        model, optimizer, lr_scheduler = self._boost(model, optimizer, lr_scheduler)
        # ZeRO-2, Gemini and 3d cast the whole module, RoPE's inv_freq too; from_pretrained in bf16 (what the
        # makers and every export's reader load) keeps it in float32, so the trainer would score tokens with
        # coarser rotary frequencies than the model it exports (seen on an H100: logits off by 1 bf16 ulp).
        restore_buffers(self.unwrap(model), computed)
        return model, optimizer, lr_scheduler

    def _boost(self, model: nn.Module, optimizer, lr_scheduler) -> tuple[Any, Any, Any]:
        if self.name == "3d":
            # ShardFormer shards only the Hugging Face classes it has a policy for, so the 3d plugin boosts
            # the wrapped transformer; our Actor / ValueModel keep calling it as before (their heads
            # stay plain modules whose parameters the hybrid optimizer still steps).
            attr = hf_attribute(model)
            config = getattr(model, attr).config
            if config.model_type == "opt" and config._attn_implementation == "sdpa":
                config._attn_implementation = "eager"  # ColossalAI 0.5.0's OPT policy: eager or flash_attention_2
            if self.cfg.precision != "fp32":  # a head next to the transformer computes in its precision too
                dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
                for name, child in model.named_children():
                    if name != attr:
                        child.to(dtype)
            inner, optimizer, _, _, lr_scheduler = self.booster.boost(getattr(model, attr), optimizer,
                                                                     lr_scheduler=lr_scheduler)
            setattr(model, attr, inner)
            model.to(self.device)
            return model, optimizer, lr_scheduler
        model, optimizer, _, _, lr_scheduler = self.booster.boost(model, optimizer, lr_scheduler=lr_scheduler)
        return model, optimizer, lr_scheduler

    def backward(self, loss: torch.Tensor, optimizer) -> None:
        if self.booster is None:
            loss.backward()
        else:
            self.booster.backward(loss, optimizer)

    def accumulate(self, model, optimizer, last_micro_batch: bool):
        """Context for one micro-batch's backward: skips the gradient all-reduce except on the last."""
        if last_micro_batch or self.booster is None or not self.plugin.support_no_sync():
            return contextlib.nullcontext()
        return self.booster.no_sync(getattr(model, hf_attribute(model)) if self.name == "3d" else model, optimizer)

    def optimizer_step(self, model, optimizer) -> float:
        """Clip (naive/ddp here; zero2/gemini clip inside the plugin), step, zero grads. Returns the global
        gradient norm before clipping (zero2/gemini: the one their optimizer computed while stepping)."""
        norm = float("nan")
        if self.name in ("naive", "ddp"):
            params = [p for p in self.unwrap(model).parameters() if p.grad is not None]
            if self.cfg.grad_clip > 0:
                norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
            elif params:
                norm = float(torch.norm(torch.stack([p.grad.detach().norm() for p in params])))
        optimizer.step()
        if self.name not in ("naive", "ddp"):
            norm = plugin_grad_norm(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ state

    def unwrap(self, model) -> nn.Module:
        while hasattr(model, "unwrap") and callable(model.unwrap):
            inner = model.unwrap()
            if inner is model:
                break
            model = inner
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        if self.name == "3d":
            return with_unwrapped_hf(model)
        return model

    def full_state_dict(self, model) -> dict:
        """Every parameter and buffer, unsharded, on CPU, keyed as the unwrapped module names them; on
        rank 0 only, other ranks get {}.

        Gemini's gather is a collective every rank joins, but only rank 0 keeps the gathered tensors
        (`only_rank_0=True`): the others allocate one chunk at a time on the device and no host copy
        (with `only_rank_0=False` every rank of a 7B actor on 8 GPUs would hold ~14 GB per sync).
        """
        if self.name.startswith("colossalai_gemini"):
            state = model.state_dict(only_rank_0=True)
        elif self.name == "3d" and self.is_rank0:
            assert self.cfg.tp == 1, "3d export reads rank 0's weights: tensor-parallel shards would need a gather"
            state = unpadded_state_dict(self.unwrap(model))
        elif self.is_rank0:
            state = self.unwrap(model).state_dict()
        else:
            state = {}
        if not self.is_rank0:
            return {}
        return {k: v.detach().cpu() for k, v in state.items()}

    def save_optimizer(self, optimizer, path: str) -> None:
        """Optimiser state into directory `path`.

        naive/ddp states are replicated, so rank 0 writes one file that every rank reads back with
        `weights_only=True`. (Booster's own sharded load calls accelerator.synchronize(), which
        ColossalAI's CPU accelerator refuses, and its unsharded load unpickles with torch.load.)
        zero2/gemini states are sharded per rank and go through Booster.
        """
        os.makedirs(path, exist_ok=True)
        if self.name in ("naive", "ddp"):
            if self.is_rank0:
                torch.save(optimizer.state_dict(), os.path.join(path, OPTIMIZER_FILE))
        else:
            self.booster.save_optimizer(optimizer, path, shard=True)

    def load_optimizer(self, optimizer, path: str) -> None:
        """Every optimizer state is read with `weights_only=True`: tensors and plain values, never code (a
        tampered checkpoint folder on shared storage must not run anything on the ranks that resume)."""
        if self.name in ("naive", "ddp"):
            state = torch.load(os.path.join(path, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
            optimizer.load_state_dict(state)
        else:
            with weights_only_loads():  # ColossalAI's sharded readers call torch.load without it
                self.booster.load_optimizer(optimizer, path)

    # ------------------------------------------------------------------ collectives

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if dist.is_initialized() and self.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats across ranks (metrics); identity on one rank."""
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def all_reduce_max(self, values: list[float]) -> list[float]:
        """The largest of a few floats across ranks (metrics); identity on one rank."""
        return self._all_reduce(values, dist.ReduceOp.MAX)

    def _all_reduce(self, values: list[float], op) -> list[float]:
        if not (dist.is_initialized() and self.world_size > 1):
            return list(values)
        device = self.device if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=op)
        return t.tolist()


def hybrid_plugin(cfg: StrategyConfig):
    """ColossalAI's HybridParallelPlugin from the 3d keys (Colossal-LLaMA's --tp --pp --sp --zero --sp_mode
    --microbatch_size --zero_cpu_offload)."""
    from colossalai.booster.plugin import HybridParallelPlugin

    sp_on = cfg.enable_sequence_parallelism
    return HybridParallelPlugin(tp_size=cfg.tp, pp_size=cfg.pp, sp_size=cfg.sp if sp_on else None,
                                zero_stage=cfg.zero, precision=cfg.precision, max_norm=cfg.grad_clip,
                                enable_sequence_parallelism=sp_on, sequence_parallelism_mode=cfg.sp_mode if sp_on else None,
                                microbatch_size=cfg.microbatch_size if cfg.pp > 1 else None,
                                cpu_offload=cfg.zero_cpu_offload)


def plugin_grad_norm(optimizer) -> float:
    """The global gradient norm a ZeRO/Gemini optimizer computed in its last step (ColossalAI's
    `OptimizerWrapper.get_grad_norm`), divided by the fp16 loss scale it was computed under (1 for bf16);
    nan when it reports none (Gemini computes it only when clipping: strategy.grad_clip > 0)."""
    get = getattr(optimizer, "get_grad_norm", None)
    value = get() if callable(get) else None
    if value is None:
        return float("nan")
    norm = float(value.item() if torch.is_tensor(value) else value)
    for holder in (optimizer, getattr(optimizer, "optim", None)):
        mixin = getattr(holder, "mixed_precision_mixin", None) or getattr(holder, "mix_precision_mixin", None)
        scale = getattr(mixin, "get_grad_div_scale", None)
        if callable(scale):
            div = scale()
            return norm / float(div.item() if torch.is_tensor(div) else div)
    return norm


def launch_on_store(store, rank: int, world_size: int, local_rank: int, seed: int) -> None:
    """colossalai.launch, with the default process group built on `store` rather than a TCP init method (which
    would host a TCPStore listening on every interface): the same backend, device and seeding."""
    from colossalai.accelerator import get_accelerator
    from colossalai.utils import set_seed

    accelerator = get_accelerator()
    dist.init_process_group(backend=accelerator.communication_backend, store=store, rank=rank,
                            world_size=world_size)
    if accelerator.support_set_device:
        accelerator.set_device(local_rank)
    set_seed(seed)
    try:
        torch._dynamo.config.optimize_ddp = world_size > 1
    except AttributeError:
        pass


@contextlib.contextmanager
def weights_only_loads():
    """Within the block, every `torch.load` (ColossalAI's checkpoint readers call it bare: its shard, param-group
    and state files) runs with `weights_only=True`: torch's safe unpickler, which builds tensors, containers and
    numbers and refuses anything else (no callables, so no code runs). The swap is process-wide for the block's
    duration; a rank does nothing else while it resumes."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_strategy(cfg: StrategyConfig, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                  master_port: Optional[int] = None, grad_accum_steps: int = 1, store=None) -> Strategy:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return Strategy(cfg, rank, world_size, master_addr, master_port, local_rank, grad_accum_steps, store)

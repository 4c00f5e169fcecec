"""How a trainer group is parallelised: one config over ColossalAI's Booster plugins, every combination they
cannot run refused in one line (coati_ray/strategies/strategy.py builds the plugin)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from coati_ray.config.checks import _fail
from coati_ray.config.fields import opt

STRATEGIES = ("naive", "ddp", "colossalai_zero2", "colossalai_zero2_cpu", "colossalai_gemini", "colossalai_gemini_auto")
CUDA_ONLY_STRATEGIES = ("colossalai_zero2", "colossalai_zero2_cpu", "colossalai_gemini", "colossalai_gemini_auto", "3d")


@dataclass
class StrategyConfig:
    """How a trainer group is parallelised (a ColossalAI Booster plugin)."""

    name: Literal["naive", "ddp", "colossalai_zero2", "colossalai_zero2_cpu", "colossalai_gemini",
                  "colossalai_gemini_auto", "3d"] = opt(
        "naive", "naive (one process), ddp (TorchDDPPlugin), colossalai_zero2[_cpu] (LowLevelZeroPlugin), "
                 "colossalai_gemini[_auto] (GeminiPlugin, static or auto placement), 3d (HybridParallelPlugin: tp x "
                 "pp x sp x data parallel with ZeRO)")
    precision: Literal["fp32", "bf16", "fp16"] = opt(
        "fp32", "zero2/gemini: compute precision over fp32 master weights (gemini: bf16/fp16 only); naive/ddp: fp32 "
        "(they train in model.dtype)")
    grad_clip: float = opt(1.0, "max global gradient norm; 0 disables clipping")
    backend: Literal["auto", "gloo", "nccl"] = opt("auto", "torch.distributed backend; auto = nccl with CUDA else gloo")
    seed: int = opt(42, "seed for torch/numpy/python RNGs on every rank")
    placement_policy: Literal["static", "auto"] = opt("static", "gemini: where chunks live; static keeps them on "
                                                                "the GPU but for the offload fractions, auto moves "
                                                                "them as memory requires (= colossalai_gemini_auto)")
    offload_optim_frac: float = opt(0.0, "gemini, static placement: fraction of the optimizer states kept on the CPU")
    offload_param_frac: float = opt(0.0, "gemini, static placement: fraction of the fp32 master weights kept on the "
                                         "CPU")
    tp: int = opt(1, "3d: tensor-parallel size")
    pp: int = opt(1, "3d: pipeline-parallel size (pp > 1 is refused: the trainers run no pipeline schedule yet)")
    sp: int = opt(1, "3d: sequence-parallel size (all_to_all / ring_attn modes; with enable_sequence_parallelism)")
    zero: int = opt(1, "3d: ZeRO stage of the data-parallel part (0, 1 or 2; > 0 needs bf16/fp16)")
    enable_sequence_parallelism: bool = opt(False, "3d: split sequences over ranks (sp_mode)")
    sp_mode: Literal["split_gather", "ring", "all_to_all", "ring_attn"] = opt(
        "all_to_all", "3d: sequence parallelism mode (split_gather and ring ride on tp > 1)")
    microbatch_size: int = opt(1, "3d: micro-batch size of the pipeline schedule (pp > 1)")
    zero_cpu_offload: bool = opt(False, "3d: offload ZeRO's optimizer states to CPU")

    def validate(self, key: str = "strategy", num_ranks: int = 1, cuda_available: Optional[bool] = None,
                 model_key: str = "model", model_dtype: str = "float32", lora: bool = False,
                 machine: bool = True, quantize: str = "none") -> None:
        """Every combination ColossalAI cannot run is refused here, before Ray or a model starts; then
        (`machine`) what this machine lacks for it."""
        if self.name == "naive" and num_ranks != 1:
            _fail(f"{key}.name", f"'naive' runs a single process but {num_ranks} ranks were asked",
                  "set strategy.name=ddp or resources.num_ranks=1")
        if self.precision != "fp32" and self.name in ("naive", "ddp"):
            _fail(f"{key}.precision", f"'{self.precision}' mixed precision is only run by the zero2/gemini "
                  f"strategies ('{self.name}' trains in {model_key}.dtype)",
                  f"use precision=fp32 (and {model_key}.dtype=bfloat16 for bf16 weights) or a colossalai_* strategy")
        gemini = self.name.startswith("colossalai_gemini")
        if gemini and self.precision == "fp32":
            _fail(f"{key}.precision", "ColossalAI's GeminiPlugin trains only in bf16 or fp16 mixed precision",
                  "set precision=bf16 (fp32 master weights are kept by Gemini) or use colossalai_zero2")
        if gemini and lora:
            _fail(f"{model_key}.lora_rank", "LoRA is not supported by ColossalAI's GeminiPlugin",
                  f"use strategy.name=colossalai_zero2 or ddp with LoRA, or set {model_key}.lora_rank=0")
        if quantize != "none" and self.name not in ("naive", "ddp"):
            _fail(f"{model_key}.quantize", f"a {quantize} base trains with naive or ddp only (ColossalAI's "
                  f"'{self.name}' casts and shards every parameter, packed bitsandbytes weights included)",
                  f"use strategy.name=ddp (or naive), or {model_key}.quantize=none")
        if model_dtype == "float16" and (self.name in ("naive", "ddp") or self.precision == "fp32"):
            _fail(f"{model_key}.dtype", f"float16 weights trained by '{self.name}' with precision={self.precision} "
                  "have no loss scaler and underflow",
                  f"use {model_key}.dtype=bfloat16, or float32 with a colossalai_* strategy and precision=fp16")
        if self.grad_clip < 0:
            _fail(f"{key}.grad_clip", f"must be >= 0, got {self.grad_clip}", "use 0 to disable clipping")
        for name in ("offload_optim_frac", "offload_param_frac"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                _fail(f"{key}.{name}", f"must be in [0, 1], got {value}", "e.g. 0.5")
            if value > 0 and not (gemini and self.placement_policy == "static" and self.name == "colossalai_gemini"):
                _fail(f"{key}.{name}", "offload fractions are Gemini's static placement (auto placement decides "
                      "itself)", "use strategy.name=colossalai_gemini with placement_policy=static, or remove it")
        if self.placement_policy == "auto" and self.name != "colossalai_gemini":
            _fail(f"{key}.placement_policy", f"'{self.name}' has no chunk placement", "use colossalai_gemini, or remove it")
        if self.name == "3d":
            self.check_3d(key, num_ranks, model_key, lora)
        if machine:
            self.check_machine(key, cuda_available)

    def check_3d(self, key: str, num_ranks: int, model_key: str, lora: bool) -> None:
        """What ColossalAI's HybridParallelPlugin asserts (and what our trainers do not run), in one line each."""
        for name in ("tp", "pp", "sp", "microbatch_size"):
            if getattr(self, name) < 1:
                _fail(f"{key}.{name}", f"must be >= 1, got {getattr(self, name)}", "e.g. 1")
        if self.zero not in (0, 1, 2):
            _fail(f"{key}.zero", f"must be 0, 1 or 2, got {self.zero}", "e.g. 1")
        if self.sp > 1 and not self.enable_sequence_parallelism:
            _fail(f"{key}.sp", f"sp={self.sp} needs enable_sequence_parallelism=true", "set it, or sp=1")
        if self.pp > 1:
            _fail(f"{key}.pp", "pipeline parallelism needs a pipeline-schedule training loop "
                  "(booster.execute_pipeline), which coati_ray's trainers do not run yet", "use pp=1")
        for name, what in (("tp", "tensor"), ("sp", "sequence")):
            if getattr(self, name) > 1:
                _fail(f"{key}.{name}", f"{what} parallelism needs every rank of a {name} group to get the same batch "
                      "and a checkpoint export that gathers the shards; coati_ray's trainers split batches by global "
                      "rank and export rank 0's weights", f"use {name}=1 (3d then runs data parallel with ZeRO)")
        if self.enable_sequence_parallelism and self.sp_mode in ("split_gather", "ring") and self.tp <= 1:
            _fail(f"{key}.sp_mode", f"'{self.sp_mode}' sequence parallelism rides on tensor parallelism (tp > 1)",
                  "set enable_sequence_parallelism=false (tp > 1 is not run by coati_ray's trainers yet)")
        sp = self.sp if self.enable_sequence_parallelism and self.sp_mode in ("all_to_all", "ring_attn") else 1
        if num_ranks % (self.tp * self.pp * sp) != 0:
            _fail(f"{key}.tp", f"{num_ranks} ranks are not divisible by tp x pp x sp = {self.tp * self.pp * sp}",
                  "make resources.num_ranks a multiple of it")
        if self.zero > 0 and self.precision == "fp32":
            _fail(f"{key}.precision", "HybridParallelPlugin runs ZeRO only in bf16 or fp16 mixed precision",
                  "set precision=bf16, or zero=0")
        if lora:
            _fail(f"{model_key}.lora_rank", "LoRA is not wired into the 3d strategy", "use colossalai_zero2 or ddp with LoRA")

    def check_3d_accumulation(self, key: str, accumulation_steps: int) -> None:
        """HybridParallelPlugin's no_sync (gradient accumulation) asserts ZeRO stage < 2."""
        if self.name == "3d" and self.zero == 2 and accumulation_steps > 1:
            _fail(f"{key}.zero", f"ZeRO-2 in the 3d strategy cannot accumulate gradients ({accumulation_steps} "
                  "micro-batches per step)", "use zero=1, or micro_batch_size = batch_size / num_ranks")

    def check_machine(self, key: str = "strategy", cuda_available: Optional[bool] = None) -> None:
        """What the machine lacks comes after what the config gets wrong: a GPU config drafted on a
        laptop learns its mistakes first."""
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if self.name in CUDA_ONLY_STRATEGIES and not cuda_available:
            _fail(f"{key}.name", f"'{self.name}' needs CUDA and no GPU is visible",
                  "use strategy.name=ddp (or naive) on CPU, or run on a GPU machine")
        if self.backend == "nccl" and not cuda_available:
            _fail(f"{key}.backend", "nccl needs CUDA and no GPU is visible", "use backend=gloo or auto")

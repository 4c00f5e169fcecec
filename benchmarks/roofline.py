"""The machine's own limit for a step (issue 48): what the fastest fp32 matmul and the memory bandwidth that torch
gets on this machine allow, for the work the algorithm needs, measured in the same run as the step it judges.

What is counted, per sample (P̄ real prompt tokens, R̄ real response tokens, both the run's means; padding never):

- N: the weights a token multiplies, every nn.Linear of the model (attention and MLP projections, and the LM
  head or the value head); the input embedding is a lookup and not counted, nor are attention's scores
  (2·2·ctx·d per token and layer: under 3% of 2·N at these lengths).
- a forward pass costs 2·N FLOPs per real token, a trained token 6·N (forward and backward).
- GRPO: generation 2·N·(P̄+R̄), the reference pass 2·N·(P̄+R̄) when the KL coefficient is not 0, the update
  6·N·(P̄+R̄). No old-log-prob pass (one update per rollout).
- PPO: generation 2·N·(P̄+R̄); the reference, the reward model's and the critic's value passes 2·N each; the
  actor and the critic updates 6·N each. The behaviour log-probs come from the sampler's logits (no pass).
- bytes: decoding reads every weight once per step for the rows that decode together (4·W·R̄ / b bytes per
  sample, W all parameters, b the rows one maker decodes together, R̄ the mean rather than the longest
  response: both make the limit a little optimistic) and each row's keys/values so far (2·layers·kv_dim·4 bytes per
  cached token per step). The whole-sequence passes read their weights once per micro-batch: counted too,
  though FLOPs bound them.

Each pass costs at least max(FLOPs / rate, bytes / bandwidth); the limit is one sample over the sum. `rate` is
the fastest of torch's fp32 matmul paths (its default, MKL or OpenBLAS, and oneDNN) on large square products
with all the cores the workload has; the bandwidth that of a large copy (bytes read plus written).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelShape:
    """What the counts need of a model: N (weights a token multiplies), W (all parameters), the KV width."""

    linear_params: int
    all_params: int
    layers: int
    kv_dim: int

    @classmethod
    def of(cls, path: str, value_head: bool = False) -> "ModelShape":
        """The shape of the causal LM at `path` (a critic or reward model: `value_head` swaps the LM head for a
        1-wide one), built on the meta device: nothing is loaded."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        total = sum(p.numel() for p in model.parameters())
        if value_head:
            head = model.get_output_embeddings().weight.numel()
            tied = getattr(cfg, "tie_word_embeddings", False)  # a tied head is the embedding, counted once in total
            linear, total = linear - head + cfg.hidden_size, total - (0 if tied else head) + cfg.hidden_size
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        return cls(linear, total, cfg.num_hidden_layers, cfg.hidden_size // heads * kv_heads)


def decode_bytes(shape: ModelShape, prompt_tokens: float, response_tokens: float, decode_batch: int) -> float:
    """Bytes one sample's decoding must move in fp32: its share of the weights read once per step by the
    `decode_batch` rows decoding together, and its own keys/values read at every step."""
    weights = 4.0 * shape.all_params * response_tokens / decode_batch
    cached_per_step = prompt_tokens + (response_tokens - 1) / 2.0  # the mean context over the steps
    kv = 2.0 * shape.layers * shape.kv_dim * 4.0 * cached_per_step * response_tokens
    return weights + kv


def passes(algo: str, actor: ModelShape, critic: Optional[ModelShape], reward: Optional[ModelShape],
           prompt_tokens: float, response_tokens: float, decode_batch: int, micro_batch: int,
           kl: bool = True) -> dict:
    """{pass: (FLOPs, bytes)} one sample needs under `algo` ('grpo' or 'ppo'), as the module docstring counts."""
    T = prompt_tokens + response_tokens

    def forward(m: ModelShape, trained: bool = False) -> tuple:
        return ((6.0 if trained else 2.0) * m.linear_params * T, 4.0 * m.all_params / micro_batch)

    out = {"generate": (2.0 * actor.linear_params * T,
                        decode_bytes(actor, prompt_tokens, response_tokens, decode_batch))}
    if kl:
        out["reference"] = forward(actor)
    if algo == "ppo":
        out["reward"] = forward(reward)
        out["values"] = forward(critic)
        out["update_critic"] = forward(critic, trained=True)
    out["update_actor"] = forward(actor, trained=True)
    return out


def limit_samples_per_s(work: dict, flops_per_s: float, bytes_per_s: float) -> float:
    """Samples per second if every pass ran at the machine's limit: 1 / Σ max(FLOPs / rate, bytes / bandwidth)."""
    return 1.0 / sum(max(f / flops_per_s, b / bytes_per_s) for f, b in work.values())


# ------------------------------------------------------------------ the machine


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: the kernels' first call packs and allocates
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_rates(threads: int, n: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of an n×n fp32 product through each path torch offers on this CPU, with `threads` threads:
    'default' (torch.mm: MKL or OpenBLAS) and 'onednn' (mkldnn_linear on oneDNN tensors)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates = {"default": 2.0 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9}
        if torch.backends.mkldnn.is_available():
            am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
            rates["onednn"] = 2.0 * n ** 3 / _best_seconds(
                lambda: torch._C._nn.mkldnn_linear(am, bm, None), repeats) / 1e9
        return rates
    finally:
        torch.set_num_threads(before)


def copy_bandwidth(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """GB/s of a large fp32 copy (bytes read plus bytes written) with `threads` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(mib * 2 ** 20 // 4)
        dst = torch.empty_like(src)
        return 2.0 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), repeats) / 1e9
    finally:
        torch.set_num_threads(before)


@dataclass
class Machine:
    """The machine's limits with `cores` cores, as measured here: the best matmul path's rate and the copy's."""

    cores: int
    matmul_gflops: dict
    gflops: float
    bandwidth_gbps: float

    @classmethod
    def measure(cls, cores: int) -> "Machine":
        rates = matmul_rates(cores)
        return cls(cores, rates, max(rates.values()), copy_bandwidth(cores))


def limit_row(algo: str, machine: Machine, work: dict, ours_samples_per_s: Optional[float],
              trl_samples_per_s: Optional[float]) -> dict:
    """RESULTS.json's limit_<workload>.<algo>: the work counted, the machine, and each side's fraction of it."""
    limit = limit_samples_per_s(work, machine.gflops * 1e9, machine.bandwidth_gbps * 1e9)
    frac = (lambda rate: rate / limit if rate else None)
    return {"useful_gflop_per_sample": sum(f for f, _ in work.values()) / 1e9,
            "passes_gflop": {k: f / 1e9 for k, (f, _) in work.items()},
            "passes_mb": {k: b / 1e6 for k, (_, b) in work.items()},
            "machine_gflops": machine.gflops, "machine_bandwidth_gbps": machine.bandwidth_gbps,
            "machine": asdict(machine), "limit_samples_per_s": limit,
            "ours_samples_per_s": ours_samples_per_s, "trl_samples_per_s": trl_samples_per_s,
            "ours_fraction": frac(ours_samples_per_s), "trl_fraction": frac(trl_samples_per_s), "algo": algo}

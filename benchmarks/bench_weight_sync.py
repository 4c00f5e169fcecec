"""Weight sync: seconds and GB/s to move a trainer's weights into a maker, full and LoRA-only, at a
few model sizes, next to a raw `ray.put` + `ray.get` of the same number of bytes between two actors.

    python -m benchmarks.bench_weight_sync [--repeats 3]

Our path is the one the job runs: `export_weights` (a CPU copy, `ray.put` once) in one actor, then
`ray.get` + `load_weights` (strict key/shape checks, copy into the live model) in another. The raw
floor moves one numpy buffer of the same size (Ray's zero-copy case). The two small actors here are
benchmark scaffolding, not part of the product, which keeps its Ray code in actors/.
"""

from __future__ import annotations

import argparse
import time

import ray

from benchmarks.common import save

# llama-family shapes: (hidden, layers, intermediate); vocabulary 32000 like llama's
SIZES = {"llama-h256-l4": (256, 4, 688), "llama-h1024-l8": (1024, 8, 2752), "llama-h2048-l8": (2048, 8, 5504)}
VOCAB, LORA_RANK = 32000, 8


def build(size: str, lora: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, inter = SIZES[size]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=max(4, hidden // 64), num_key_value_heads=max(4, hidden // 64),
                      tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu")  # random bytes are fine: sync cost does not depend on values
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA_RANK, target_modules="all-linear"))
    return model


@ray.remote(num_cpus=0.5)
class Side:
    def __init__(self, size: str, lora: bool):
        import torch

        torch.set_num_threads(1)
        self.model = build(size, lora)
        self.lora = lora

    def export(self) -> list:
        from coati_ray.models.weights import export_weights

        return [ray.put(export_weights(self.model, lora_only=self.lora))]

    def load(self, ref: list) -> int:
        from coati_ray.models.weights import load_weights, state_bytes

        state = ray.get(ref[0])
        load_weights(self.model, state, lora_only=self.lora)
        return state_bytes(state)

    def put_raw(self, nbytes: int) -> list:
        import numpy as np

        return [ray.put(np.ones(nbytes, dtype=np.uint8))]

    def get_raw(self, ref: list) -> int:
        return int(ray.get(ref[0]).nbytes)


def measure(size: str, lora: bool, repeats: int) -> dict:
    sender, receiver = Side.remote(size, lora), Side.remote(size, lora)
    ray.get([sender.__ray_ready__.remote(), receiver.__ray_ready__.remote()])
    ours, raw, nbytes = [], [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        nbytes = ray.get(receiver.load.remote(sender.export.remote()))
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ray.get(receiver.get_raw.remote(sender.put_raw.remote(nbytes)))
        raw.append(time.perf_counter() - t)
    for a in (sender, receiver):
        ray.kill(a)
    best_ours, best_raw = min(ours), min(raw)
    return {"size": size, "mode": "lora" if lora else "full", "bytes": nbytes, "seconds": best_ours,
            "gb_per_s": nbytes / best_ours / 1e9, "raw_seconds": best_raw, "raw_gb_per_s": nbytes / best_raw / 1e9,
            "ours_over_raw_time": best_ours / best_raw}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", nargs="*", default=list(SIZES))
    args = p.parse_args(argv)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="coati-bench",
             object_store_memory=6 * 2**30)
    rows = []
    try:
        for size in args.sizes:
            for lora in (False, True):
                rows.append(measure(size, lora, args.repeats))
                r = rows[-1]
                print(f"[bench] sync {size} {r['mode']}: {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.3f}s "
                      f"({r['gb_per_s']:.2f} GB/s; raw {r['raw_gb_per_s']:.2f} GB/s)")
    finally:
        ray.shutdown()
    return save("weight_sync", {"rows": rows, "lora_rank": LORA_RANK, "repeats": args.repeats,
                                "command": "python -m benchmarks.bench_weight_sync"}) and {"rows": rows}


if __name__ == "__main__":
    main()

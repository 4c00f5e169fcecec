"""After training, in 8 and 4 bits: bytes of weights, generated tokens/s and the quality cost (mean
log-likelihood of held-out reference answers, and the per-token KL from the full-precision model) for
none/int8/int4, on the tiny SFT model, the 39M llama of the medium workload and a ~100M llama.

    python -m benchmarks.bench_quantize [--rows 64] [--new-tokens 32]

The tiny model is stage 1's output (trained here in ~1 min when runs/bench/models/sft-tiny is missing).
The 39M and ~100M llamas (10 x 512 and 14 x 768, our tokenizer) are randomly initialised: nothing can be
downloaded and they do not train on 2 CPU cores in a benchmark's time, so their log-likelihoods sit near
-ln(V); their bytes, speed, and the KL quantization costs (Gaussian weights, which nf4 is built for) still hold.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks.common import OUT, REPO, save, workload_model

EVAL = os.path.join(REPO, "data", "sft", "eval.jsonl")
TINY = os.path.join(REPO, "assets", "models", "tiny-llama")
KINDS = ("none", "int8", "int4")


def sft_tiny() -> str:
    """Stage 1's tiny model, trained once into runs/bench/models/sft-tiny."""
    out = os.path.join(OUT, "models", "sft-tiny")
    final = os.path.join(out, "checkpoints", "final")
    if not os.path.isfile(os.path.join(final, "config.json")):
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # an interrupted earlier run
        subprocess.run([sys.executable, "-m", "launch.sft", "--config", os.path.join(REPO, "configs", "sft_tiny.yaml"),
                        f"output_dir={out}"], check=True, cwd=REPO)
    return final


def llama_100m() -> str:
    """A ~100M-parameter llama with our tokenizer, seeded random weights, saved as a user's checkpoint."""
    path = os.path.join(OUT, "models", "llama-100m")
    if not os.path.isfile(os.path.join(path, "config.json")):
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(TINY)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=14,
                          num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(path)
        tok.save_pretrained(path)
    return path


def reference_scores(actor, batches) -> tuple[list, float, int]:
    """Per-batch log-probs of every vocabulary entry at the reference answer's positions, and the mean
    log-likelihood of the reference tokens.

    batches: collated SFT batches (input_ids, attention_mask, labels: (B, T)).
    Returns ([(N_b, V) log-probs per batch], mean log-likelihood per reference token, tokens counted)."""
    import torch

    from coati_ray.data.datasets import IGNORE_INDEX

    dists, total, count = [], 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = actor(b["input_ids"], b["attention_mask"])[:, :-1].float()
            labels = b["labels"][:, 1:]
            keep = labels != IGNORE_INDEX
            logp = torch.log_softmax(logits[keep], dim=-1)  # (N, V)
            total += logp.gather(1, labels[keep].unsqueeze(1)).sum().item()
            count += int(keep.sum())
            dists.append(logp)
    return dists, total / count, count


def kl_from(full: list, quant: list) -> float:
    """Mean per-token KL(full ‖ quantized) over the reference positions; each list: (N_b, V) log-probs."""
    kl = sum((f.exp() * (f - q)).sum().item() for f, q in zip(full, quant))
    return kl / sum(f.size(0) for f in full)


def tokens_per_s(actor, tok, prompts: list[str], new_tokens: int, repeats: int = 2) -> float:
    """Greedy generation of `new_tokens` for a batch of `prompts`: generated tokens per second (best of
    `repeats` after a warm-up)."""
    import torch

    from coati_ray.data.datasets import collate_prompts
    from coati_ray.inference import render_prompt

    batch = collate_prompts([{"input_ids": render_prompt(tok, p)} for p in prompts], tok.pad_token_id)
    best = 0.0
    for i in range(repeats + 1):
        t = time.perf_counter()
        with torch.no_grad():
            _, _, action_mask = actor.generate(batch["input_ids"], batch["attention_mask"], tok,
                                               max_new_tokens=new_tokens, do_sample=False)
        rate = int(action_mask.sum()) / (time.perf_counter() - t)
        if i:  # the first is warm-up (bitsandbytes repacks a CPU 4-bit weight on its first forward)
            best = max(best, rate)
    return best


def measure(name: str, path: str, rows: int, new_tokens: int, batch: int) -> dict:
    import json

    import torch

    from coati_ray.data.datasets import build_sft_dataset, collate_sft
    from coati_ray.models import Actor, load_tokenizer
    from coati_ray.models.quantize import weight_bytes

    tok = load_tokenizer(path)
    items, _ = build_sft_dataset(EVAL, tok, 64, max_samples=rows)
    batches = [collate_sft(items[i:i + 16], tok.pad_token_id) for i in range(0, len(items), 16)]
    with open(EVAL) as f:
        prompts = [json.loads(line)["messages"][0]["content"] for line in f][:batch]
    out, full = {"model": name, "path": os.path.relpath(path, REPO), "rows": len(items)}, None
    for kind in KINDS:
        actor = Actor.from_pretrained(path, "float32", quantize=kind).eval()
        params = sum(p.numel() for p in actor.parameters())
        dists, ll, n = reference_scores(actor, batches)
        full = dists if kind == "none" else full
        out[kind] = {"weight_bytes": weight_bytes(actor.model), "tokens_per_s": tokens_per_s(actor, tok, prompts,
                                                                                             new_tokens),
                     "mean_loglik": ll, "kl_from_full": 0.0 if kind == "none" else kl_from(full, dists)}
        out["parameters"] = out.get("parameters", params)
        out["reference_tokens"] = n
        print(f"[bench] quantize {name} {kind}: {out[kind]}", flush=True)
        del actor
    return out


def main(argv=None) -> dict:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64, help="held-out reference answers scored")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt for the speed figure")
    p.add_argument("--batch", type=int, default=16, help="prompts generated at once")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    from launch.common import quiet_libraries

    quiet_libraries()
    result = {"workload": {"rows": args.rows, "new_tokens": args.new_tokens, "batch": args.batch,
                           "threads": torch.get_num_threads(), "device": "cpu", "eval": os.path.relpath(EVAL, REPO)},
              "models": [measure("tiny SFT (stage 1 output)", sft_tiny(), args.rows, args.new_tokens, args.batch),
                         measure("llama 39M, the medium workload (random init)", workload_model("medium"), args.rows,
                                 args.new_tokens, args.batch),
                         measure("llama ~100M (random init)", llama_100m(), args.rows, args.new_tokens, args.batch)],
              "command": "python -m benchmarks.bench_quantize " + " ".join(argv or [])}
    save("quantize", result)
    return result


if __name__ == "__main__":
    main()

"""Generation: the makers' sampler (`Actor.generate`, i.e. Hugging Face `generate`) against a lower bound
made of plain forward passes on the same model, batch and lengths: one prefill of the prompts, then one
decode step per new token with the KV cache, no sampling, no stopping checks, nothing between steps.

    python -m benchmarks.bench_generation [--workload medium] [--batch 16] [--threads 1] [--repeats 3]

Every response runs to the full length (the sampler's EOS is an id no token has), so both sides make
batch x new_tokens tokens; the ratio is the sampler's overhead per token. Best of `repeats` after a
warm-up, one process, `threads` torch threads (a maker's default is 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.common import PROMPTS, WORKLOADS, save, workload_model


def prompts(tokenizer, batch: int):
    from coati_ray.config.rl import PromptDataConfig
    from coati_ray.data.datasets import collate_prompts
    from coati_ray.experience.prompts import read_prompt_data

    items, _, _ = read_prompt_data(PromptDataConfig(prompt_path=PROMPTS, max_prompt_length=32), tokenizer)
    batch_ = collate_prompts(items[:batch], tokenizer.pad_token_id)
    return batch_["input_ids"], batch_["attention_mask"]


def forward_bound(model, input_ids, attention_mask, new_tokens: int) -> float:
    """Seconds for a prefill and `new_tokens - 1` cached decode steps of the bare model (greedy argmax only
    to have a next token; positions follow the mask as in generate)."""
    import torch

    with torch.no_grad():
        t = time.perf_counter()
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True)
        mask = attention_mask
        for _ in range(new_tokens - 1):
            nxt = out.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            out = model(input_ids=nxt, attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                        past_key_values=out.past_key_values, use_cache=True)
        return time.perf_counter() - t


def sampler(actor, input_ids, attention_mask, new_tokens: int) -> float:
    import torch

    with torch.no_grad():
        t = time.perf_counter()
        never = actor.config.vocab_size + 1  # an id no token has: every response runs to the full length
        _, _, action_mask = actor.generate(input_ids, attention_mask, None, max_new_tokens=new_tokens,
                                           eos_token_id=never, pad_token_id=0)
        seconds = time.perf_counter() - t
    assert action_mask.shape[1] == new_tokens
    return seconds


def main(argv=None) -> dict:
    import torch

    from coati_ray.models import Actor
    from coati_ray.models.loading import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="medium")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    path, new_tokens = workload_model(args.workload), WORKLOADS[args.workload]["new_tokens"]
    tok = load_tokenizer(path)
    actor = Actor.from_pretrained(path).eval()
    ids, mask = prompts(tok, args.batch)
    torch.manual_seed(0)
    forward_bound(actor.model, ids, mask, 4), sampler(actor, ids, mask, 4)  # warm-up
    bound = min(forward_bound(actor.model, ids, mask, new_tokens) for _ in range(args.repeats))
    generate = min(sampler(actor, ids, mask, new_tokens) for _ in range(args.repeats))
    tokens = args.batch * new_tokens
    result = {"workload": {"name": args.workload, "model": os.path.basename(path), "batch": args.batch,
                           "prompt_tokens": int(ids.size(1)), "new_tokens": new_tokens, "threads": args.threads,
                           "parameters": sum(p.numel() for p in actor.parameters())},
              "forward_bound_seconds": bound, "forward_bound_tokens_per_s": tokens / bound,
              "generate_seconds": generate, "generate_tokens_per_s": tokens / generate,
              "generate_fraction_of_bound": bound / generate,
              "command": "python -m benchmarks.bench_generation " + " ".join(sys.argv[1:] if argv is None else argv)}
    save("generation" if args.workload == "tiny" else f"generation_{args.workload}", result)
    return result


if __name__ == "__main__":
    main()

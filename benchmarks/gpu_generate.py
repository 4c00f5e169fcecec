"""Generation speed of each `generation.backend` on one device: tokens/s at opt-125m and opt-1.3b shapes, batch 32
and 128, every row run to the full length, and whether greedy output is the same tokens on every backend.

    python -m benchmarks.gpu_generate [--sizes opt-125m opt-1.3b] [--batches 32 128] [--backends hf compact static]
                                      [--new-tokens 64] [--repeats 3] [--dtype bfloat16] [--out gen.json]
    python -m benchmarks.gpu_generate --model PATH --device cpu ...   (any checkpoint; the CPU test's way)

Per (size, batch): every backend generates greedily once to compare tokens (the first call also compiles the
static backend's decode step on CUDA, so it is the warm-up), then `repeats` timed calls; tokens/s is
batch x new_tokens over the best call. The end token is an id no token has, so no row stops early and every
backend makes the same number of tokens (the compacting decode's gain from finished rows is not measured here:
benchmarks/bench_efficiency.py measures that). Prompts are the repo's, left-padded, repeated to fill the batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks.common import PROMPTS, save


def prompt_batch(tokenizer, batch: int):
    """(input_ids, attention_mask) of `batch` prompts, the repo's cycled to fill it, left-padded."""
    from coati_ray.config.rl import PromptDataConfig
    from coati_ray.data.datasets import collate_prompts
    from coati_ray.experience.prompts import read_prompt_data

    items, _, _ = read_prompt_data(PromptDataConfig(prompt_path=PROMPTS, max_prompt_length=32), tokenizer)
    b = collate_prompts([items[i % len(items)] for i in range(batch)], tokenizer.pad_token_id)
    return b["input_ids"], b["attention_mask"]


def measure(actor, tokenizer, backend: str, input_ids, attention_mask, new_tokens: int, repeats: int) -> dict:
    """{tokens_per_s, seconds (best), first_call_seconds, sequences} of greedy generation through `backend`."""
    from types import SimpleNamespace

    import torch

    from coati_ray.models.generators import generator

    gen = SimpleNamespace(max_new_tokens=new_tokens, do_sample=False, temperature=1.0, top_k=0, top_p=1.0)
    never = actor.config.vocab_size + 1  # an id no token has: every row runs to the full length
    fn = generator(backend)

    def call():
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = fn(actor, gen, input_ids, attention_mask, tokenizer, eos_token_id=never)
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    first, (sequences, _, action_mask) = call()
    if action_mask.size(1) != new_tokens:
        raise RuntimeError(f"{backend}: {action_mask.size(1)} tokens per row, expected {new_tokens}")
    best = min(call()[0] for _ in range(repeats))
    return {"tokens_per_s": input_ids.size(0) * new_tokens / best, "seconds": best, "first_call_seconds": first,
            "sequences": sequences.cpu()}


def sweep(models: dict, batches: list, backends: list, new_tokens: int, repeats: int, device: str,
          dtype: str, keep=None) -> list[dict]:
    """models: {name: checkpoint path} -> one row per (model, batch, backend); `keep(rows)` after each (a run cut
    short keeps what it measured)."""
    import torch

    from coati_ray.models import Actor
    from coati_ray.models.loading import load_tokenizer

    rows = []
    for name, path in models.items():
        tokenizer = load_tokenizer(path)
        actor = Actor.from_pretrained(path, dtype=dtype).to(device).eval()
        for batch in batches:
            ids, mask = (x.to(device) for x in prompt_batch(tokenizer, batch))
            reference = None
            for backend in backends:
                try:
                    r = measure(actor, tokenizer, backend, ids, mask, new_tokens, repeats)
                except Exception as e:  # one backend failing on this GPU is a result, not the end of the sweep
                    rows.append({"model": name, "batch": batch, "backend": backend,
                                 "error": f"{type(e).__name__}: {e}"[:400]})
                    if keep:
                        keep(rows)
                    continue
                sequences = r.pop("sequences")
                reference = sequences if reference is None else reference
                rows.append({"model": name, "batch": batch, "backend": backend, "new_tokens": new_tokens,
                             "dtype": dtype, "device": str(device), **r,
                             "same_tokens_as_first_backend": bool(torch.equal(sequences, reference))})
                print(json.dumps(rows[-1]), flush=True)
                if keep:
                    keep(rows)
        del actor
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="*", default=["opt-125m", "opt-1.3b"])
    p.add_argument("--model", default=None, help="a checkpoint instead of --sizes")
    p.add_argument("--batches", nargs="*", type=int, default=[32, 128])
    p.add_argument("--backends", nargs="*", default=["hf", "compact", "static"])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default=None, help="also write the result to this JSON file")
    p.add_argument("--no-save", action="store_true", help="leave benchmarks/RESULTS.json alone")
    args = p.parse_args(argv)
    import torch

    if args.model:
        models = {args.model.rstrip("/").split("/")[-1]: args.model}
    else:
        from benchmarks.gpu_ppo import build_policy

        models = {name: build_policy(name) for name in args.sizes}
    result = {"rows": [], "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "command": "python -m benchmarks.gpu_generate " + " ".join(argv if argv is not None else sys.argv[1:]),
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}  # when it ran (the file is filed later, elsewhere)

    def keep(rows):
        result["rows"] = rows
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)

    keep(sweep(models, args.batches, args.backends, args.new_tokens, args.repeats, args.device, args.dtype, keep))
    if not args.no_save:
        save("gpu_generate", result)
    return result


if __name__ == "__main__":
    main()

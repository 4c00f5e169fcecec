"""Generate with a trained policy: python -m launch.generate --model DIR [--lora DIR] [--quantize none|int8|int4]
(--prompt TEXT | --input rows.jsonl --output out.jsonl | --interactive) [--n N --reward-model DIR] [key=value ...]

Prompts are rendered with the chat template the checkpoint trained with (chat_template=auto; Coati's layout
when it has none), the one every stage renders with, and its end-of-turn token ends an answer. Models are
directories or hub ids (with revision=...). They are sampled with
the keys PPO's makers use (generation.max_new_tokens, temperature, top_k, top_p, do_sample). With
--n N, every prompt gets N candidates; with --reward-model, each is scored and the best kept (best of n),
the scores of all written. --interactive streams the answer's tokens as they come.
"""

from __future__ import annotations

import json
import os
import sys

from coati_ray.errors import CoatiError, ConfigError
from launch.common import fail, quiet_libraries


def parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m launch.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with GenerateConfig keys (optional)")
    p.add_argument("--model", help="model directory (overrides model)")
    p.add_argument("--lora", help="LoRA adapters directory (overrides lora)")
    p.add_argument("--quantize", choices=("none", "int8", "int4"), help="8/4-bit linear layers (bitsandbytes)")
    p.add_argument("--n", type=int, help="candidates per prompt")
    p.add_argument("--reward-model", help="reward model that picks the best of n")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt; the answer is printed")
    source.add_argument("--input", help="a .jsonl of prompt rows (prompt / instruction / messages)")
    source.add_argument("--interactive", action="store_true", help="read prompts from the terminal, stream answers")
    p.add_argument("--output", help="where --input's answers go (.jsonl, one row per input row)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. generation.temperature=0.7")
    return p


def load(args):
    from coati_ray.config import load_config
    from coati_ray.config.generate import GenerateConfig

    overrides = list(args.overrides)
    for key, value in (("model", args.model), ("lora", args.lora), ("quantize", args.quantize), ("n", args.n),
                       ("reward_model", args.reward_model)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(GenerateConfig, args.config, overrides)
    cfg.validate()
    if args.input and not args.output:
        raise ConfigError("config error: --input needs --output (a .jsonl the answers are written to)")
    if args.output and os.path.exists(args.output):
        raise ConfigError(f"config error: --output '{args.output}' exists; choose a new file (nothing is overwritten)")
    return cfg


def read_prompts(path: str) -> tuple[list[dict], list[list[dict]]]:
    """Rows of a prompt file and their prompt conversations (the layouts PPO reads: a system turn and earlier
    turns are kept), every row checked first."""
    from coati_ray.data.formats import detect_format, prompt_only
    from coati_ray.data.loading import load_rows, normalize_rows

    ds = load_rows(path)
    fmt = detect_format(ds.column_names, "prompt")
    rows = [dict(r) for r in ds]
    prompts, _ = normalize_rows(ds, lambda r: prompt_only(r, fmt), path)
    return rows, [p["messages"] for p in prompts]


def load_judge(cfg, policy):
    """The reward model of best-of-n, on the policy's device; it must read the policy's tokens."""
    from coati_ray.models import RewardModel
    from coati_ray.models.loading import check_vocab

    judge = RewardModel.from_pretrained(cfg.local("reward_model"), require_head=True,
                                        trust_remote_code=cfg.trust_remote_code)
    check_vocab(policy.tokenizer, judge, f"reward_model '{cfg.reward_model}' reads the policy's tokens")
    return judge.to(policy.device).eval()


def main(argv=None) -> int:
    from launch.seed_flags import seed_argv

    try:  # the seed's own flags (launch/seed_flags.py)
        argv = seed_argv("generate", argv)
    except CoatiError as e:
        return fail(e)
    args = parser().parse_intermixed_args(argv)
    quiet_libraries()
    try:
        cfg = load(args)
        rows, prompts = read_prompts(args.input) if args.input else ([], [])
        from coati_ray.inference import Policy

        policy = Policy.load(cfg)
        judge = load_judge(cfg, policy) if cfg.reward_model else None
        if args.interactive:
            return interactive(policy, cfg, judge)
        if args.prompt is not None:
            prompts = [args.prompt]
        answers = policy.generate(prompts, n=cfg.n, batch_size=cfg.batch_size, seed=cfg.seed)
        if judge is not None:
            answers = policy.best_of_n(answers, judge)
    except (CoatiError, ValueError) as e:
        return fail(e)
    if args.prompt is not None:  # every candidate; judged ones best first, so the first line is the one kept
        for c in answers[0]:
            print(c.response if c.score is None else f"{c.response}\t(score {c.score:.4f})")
        return 0
    with open(args.output + ".tmp", "w", encoding="utf-8") as f:
        for row, group in zip(rows, answers):
            out = {**row, "response": group[0].response}
            if judge is not None:
                out["score"] = group[0].score
            if cfg.n > 1:
                out["candidates"] = [{"response": c.response, "score": c.score} for c in group]
            f.write(json.dumps(out) + "\n")
    os.replace(args.output + ".tmp", args.output)
    print(f"wrote {len(rows)} answers to {args.output}")
    return 0


def interactive(policy, cfg, judge) -> int:
    from transformers import TextStreamer

    streamer = TextStreamer(policy.tokenizer, skip_prompt=True, skip_special_tokens=True)
    print("prompt (empty line or Ctrl-D to stop):", flush=True)
    for line in sys.stdin:
        prompt = line.strip()
        if not prompt:
            break
        if cfg.n == 1:  # stream the one answer token by token
            policy.generate([prompt], n=1, seed=cfg.seed, streamer=streamer)
        else:
            group = policy.generate([prompt], n=cfg.n, batch_size=cfg.batch_size, seed=cfg.seed)
            if judge is not None:
                group = policy.best_of_n(group, judge)
            for c in group[0]:
                print(c.response if c.score is None else f"{c.response}\t(score {c.score:.4f})")
        print("prompt:", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

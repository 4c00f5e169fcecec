"""Stage 3, PPO on Ray: python -m launch.ppo --config configs/ppo_tiny.yaml [overrides] [--output-dir DIR] [--resume]

Connects to a running Ray cluster (RAY_ADDRESS, or `ray start --head` on this machine) or starts an
embedded local Ray; runs unchanged under `ray job submit --working-dir . -- python -m launch.ppo ...`.
"""

import json
import sys

from coati_ray.config.rl import RLConfig
from coati_ray.errors import CoatiError
from launch.common import (fail, load_job, parse_args, parser_for, print_config_help, quiet_libraries,
                           resolve_resume, stop_cleanly_on_sigterm)


def main(argv=None) -> int:
    args = parse_args(parser_for("ppo", __doc__), "ppo", argv)
    if args is None:
        return 2
    quiet_libraries()
    stop_cleanly_on_sigterm()
    if args.help_config:
        return print_config_help(RLConfig)
    try:
        cfg = load_job(RLConfig, args)
        if args.inspect_data is not None:
            return inspect_prompts(cfg, args.inspect_data)
        resume_from = resolve_resume(args.resume, cfg.output_dir)
        from actors.driver import RLJob

        job = RLJob(cfg, resume_from=resume_from, ray_address=args.ray_address, overwrite=args.overwrite)
    except CoatiError as e:
        return fail(e)
    try:
        summary = job.run()
    except CoatiError as e:
        return fail(e)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=2))
    return 0


def inspect_prompts(cfg, n: int) -> int:
    """`--inspect-data N`: the first N prompts as the makers will see them (rendered with the generation
    prompt), one JSON line each."""
    from coati_ray.data.datasets import build_prompt_dataset
    from coati_ray.data.template import ChatFormat
    from coati_ray.models.loading import tokenizer_for

    d = cfg.data
    tokenizer = tokenizer_for(cfg.actor, d)
    items, _ = build_prompt_dataset(d.prompt_path, tokenizer, d.max_prompt_length, d.format, n, d.on_bad_row,
                                    source=d.source("train"))
    chat = ChatFormat.of(tokenizer)
    for item in items[:n]:
        print(json.dumps({"text": chat.decode(item["input_ids"])}, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

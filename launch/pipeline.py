"""[expand_vocab ->] [pretrain ->] SFT -> RM -> PPO in one job:
python -m launch.pipeline --config configs/demo.yaml [--output-dir DIR] [overrides]

Each stage runs on Ray (an existing cluster, or an embedded local one) and hands the next stage a
Hugging Face checkpoint on disk. At the end a report compares the SFT and PPO policies on held-out
prompts with the task's gold score (a judge that never trains anything): terminal table,
summary.json, report.md, samples.md and plots/*.png in the run directory.
"""

import os
import sys
import time

from coati_ray.config import load_config, save_config
from coati_ray.config.pipeline import STAGES, PipelineConfig, prepare_pipeline_dict
from coati_ray.errors import CoatiError
from coati_ray.storage.fs import delete
from coati_ray.storage.mirror import Mirror
from coati_ray.storage.uri import is_uri, join
from launch.common import fail, parser_for, print_config_help, quiet_libraries, stop_cleanly_on_sigterm


def main(argv=None) -> int:
    args = parser_for("pipeline", __doc__).parse_intermixed_args(argv)
    quiet_libraries()
    stop_cleanly_on_sigterm()
    if args.help_config:
        return print_config_help(PipelineConfig)
    t0 = time.time()
    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides, output_dir=args.output_dir,
                          prepare=prepare_pipeline_dict)
        cfg.link()
        cfg.validate()
        check_output_dir(cfg, resume=args.resume is not None, overwrite=args.overwrite)
        preflight(cfg)
    except CoatiError as e:
        return fail(e)
    try:
        if args.overwrite:  # local or remote, the same: each stage's directory, the plots, the prepared data
            for path in [cfg.stage_dir(s) for s in STAGES] + [join(cfg.output_dir, "plots"), cfg.prepared_dir,
                                                             join(cfg.output_dir, "lm_eval")]:
                delete(path)
        if not is_uri(cfg.output_dir):
            os.makedirs(cfg.output_dir, exist_ok=True)
        save_config(cfg, join(cfg.output_dir, "config.yaml"))
    except CoatiError as e:
        return fail(e)
    from actors.pipeline import run_pipeline
    from coati_ray.reporting.pipeline import format_table, pipeline_summary, write_json, write_pipeline_report

    try:
        stages, seconds = run_pipeline(cfg, args.ray_address, resume=args.resume is not None)
    except CoatiError as e:
        return fail(e)
    g = cfg.ppo
    eval_info = {"task": g.data.gold_task, "prompts": stages["ppo"].get("eval_prompts"),
                 "samples_per_prompt": 1 if g.algorithm.eval_greedy else g.algorithm.eval_samples_per_prompt,
                 "decoding": "greedy" if g.algorithm.eval_greedy else
                 f"sampled, temperature {g.generation.temperature}, top_k {g.generation.top_k}, "
                 f"top_p {g.generation.top_p}", "estimator": g.algorithm.advantage_estimator,
                 "training_reward": training_reward(g)}
    summary = pipeline_summary(stages, seconds, time.time() - t0, cfg.seed, eval_info)
    if cfg.evaluate is not None:  # lm-eval before / after stages (coati_ray/evaluation/lm_eval_stages.py)
        from coati_ray.evaluation.lm_eval_stages import collect

        summary["lm_eval"] = {"tasks": cfg.evaluate.tasks, "limit": cfg.evaluate.limit,
                              "stages": collect(cfg.output_dir)}
    # The report is written into a local mirror of the run directory (the run directory itself when local)
    # holding the stages' metrics and summaries, then uploaded (a remote run directory).
    report_dir = Mirror(cfg.output_dir)
    report_dir.pull()
    paths = write_pipeline_report(report_dir.local, summary)
    summary["files"] = {k: report_dir.shown(v) for k, v in paths.items() if v}
    write_json(os.path.join(report_dir.local, "summary.json"), summary)
    report_dir.close()
    paths = {k: report_dir.shown(v) for k, v in paths.items()}
    print(format_table(summary))
    if summary.get("lm_eval", {}).get("stages"):
        from coati_ray.reporting.lm_eval_table import terminal_table

        print("lm-evaluation-harness:\n" + terminal_table(summary["lm_eval"]["stages"]))
    print(f"report: {paths['report_md']}  (plots in {join(cfg.output_dir, 'plots')}, "
          f"samples in {join(cfg.output_dir, 'samples.md')})")
    return 0


def training_reward(cfg) -> str:
    """What PPO optimised, for the report: the learned RM, or a verifier that may be the judge itself."""
    from coati_ray.utils.redact import redact_url

    parts = []
    for _, spec in cfg.rewards.specs(cfg.reward_model is not None):
        what = {"model": "the reward model", "function": f"`{spec.function}`",
                "http": redact_url(spec.url) or ""}.get(spec.kind, f"`{spec.kind}`")
        parts.append(f"{what} (x{spec.weight:g})")
    if cfg.rollout.multi_turn:
        parts.append(f"the environment `{cfg.rollout.environment}` (x{cfg.rollout.reward_weight:g})")
    return " + ".join(parts)


def check_output_dir(cfg: PipelineConfig, resume: bool, overwrite: bool) -> None:
    """A second run into the same directory must not silently mix with, or destroy, the first."""
    from coati_ray.utils.run_dir import previous_run

    existing = [s for s in cfg.stages if (previous_run(cfg.stage_dir(s)) if is_uri(cfg.stage_dir(s))
                                          else os.path.exists(cfg.stage_dir(s)))]
    if existing and not (resume or overwrite):
        raise CoatiError(f"run error: '{cfg.output_dir}' already holds {', '.join(existing)} results; pass --resume "
                         "to continue that run, --overwrite to start again, or choose another --output-dir")
    if resume and overwrite:
        raise CoatiError("run error: --resume and --overwrite contradict each other; pass one of them")


def preflight(cfg: PipelineConfig) -> None:
    """Read the tokenizer and every data file of every stage now, so a bad row in the PPO prompts
    stops the job before SFT runs, not ten minutes after."""
    from coati_ray.experience.prompts import read_prompt_data
    from coati_ray.experience.reward_sources import check_reward_sources
    from coati_ray.data.template import use_chat_template
    from coati_ray.models.hub import local_dir
    from coati_ray.models.loading import load_tokenizer, tokenizer_for
    from coati_ray.trainers.rm import RMTrainer
    from coati_ray.trainers.sft import SFTTrainer
    from launch.common import preflight_data

    base = cfg.base_model()
    if cfg.pretrain is not None:  # every raw row read and tokenized (with the base tokenizer) before any stage
        from coati_ray.data.prepare import jsonl_files, prepare

        p = cfg.prepare
        prepare("pretrain", jsonl_files([d for d in p.data_input_dirs.split(",") if d]), load_tokenizer(local_dir(*base), cfg.pretrain.model.trust_remote_code),
                cfg.pretrain.data.max_length, p.num_spliced_dataset_bins, p.seed)
    preflight_data(cfg.stand_in("sft", base), SFTTrainer)
    if cfg.rm is not None:
        rm = cfg.stand_in("rm", base)
        if rm.data.chat_template == "auto":  # the RM starts from SFT's checkpoint, which keeps SFT's template
            rm.data.chat_template = cfg.sft.data.chat_template
        preflight_data(rm, RMTrainer)
    # PPO's actor is SFT's checkpoint, whose tokenizer carries the template SFT trained with (auto keeps it)
    tokenizer = tokenizer_for(cfg.stand_in("sft", base).model, cfg.sft.data)
    use_chat_template(tokenizer, cfg.ppo.data.chat_template)
    prompts, _, _ = read_prompt_data(cfg.ppo.data, tokenizer)
    check_reward_sources(cfg.ppo.rewards)
    from actors.experience_source import check_source

    check_source(cfg.ppo.placement_spec)  # placements and transports of your own: said before SFT runs
    if cfg.ppo.placement_spec.makers:
        from actors.transports import check_transport

        check_transport(cfg.ppo.weight_sync.transport)
    if cfg.ppo.rollout.multi_turn:
        from coati_ray.experience.episodes import check_tool_turns

        check_tool_turns(tokenizer, "ppo.data.chat_template")
    if not prompts:
        raise CoatiError(f"data error: {cfg.ppo.data.prompt_path} has no usable prompts; add prompt rows")


if __name__ == "__main__":
    sys.exit(main())

"""The checks of a RLConfig (stage 3), kept apart from its fields: each failure is one line naming the key, what
is wrong and how to fix it, raised before Ray starts or a model loads."""

from __future__ import annotations

import os

from coati_ray.config.checks import _fail
from coati_ray.config.loader import from_dict
from coati_ray.config.placement import check_placement
from coati_ray.config.sample_options import check_sample_options
from coati_ray.models.value import VALUE_HEAD_FILE


def check_ppo(cfg, check_reward_head: bool = True) -> None:
    """Every check of RLConfig `cfg` but its base class's (`check_reward_head=False` when the reward model is yet
    to be trained: the pipeline)."""
    check_algorithm(cfg)
    for key in ("actor", "critic", "reward_model"):
        if getattr(cfg, key) is not None:
            getattr(cfg, key).validate(key, trained=key != "reward_model")
    if cfg.reward_model is not None:
        if cfg.reward_model.lora_rank:
            _fail("reward_model.lora_rank", "the reward model is frozen", "remove reward_model.lora_rank")
        if check_reward_head and not os.path.isfile(os.path.join(cfg.reward_model.local_path, VALUE_HEAD_FILE)):
            _fail("reward_model.path", f"'{cfg.reward_model.path}' has no {VALUE_HEAD_FILE}, so it is not a reward model",
                  "point it at the RM stage's checkpoints/final")
    cfg.rollout.validate()
    if cfg.rollout.multi_turn and cfg.algorithm.overlong_penalty > 0:
        _fail("algorithm.overlong_penalty", "measures one response against generation.max_new_tokens, and an episode "
              "of rollout.environment has several turns", "use algorithm.overlong_filter (episodes cut by "
              "rollout.max_turns or max_total_tokens are left out), or remove rollout.environment")
    if cfg.rollout.multi_turn and cfg.rollout.reward_weight == 0 and not (
            cfg.rewards.specs(cfg.reward_model is not None)):
        _fail("rollout.reward_weight", "is 0 and no rewards.* source is set, so nothing rewards the episodes",
              "set rollout.reward_weight (e.g. 1.0) or a rewards source")
    cfg.rewards.validate(has_reward_model=cfg.reward_model is not None, has_environment=cfg.rollout.multi_turn)
    cfg.weight_sync.validate()
    cfg.watchdog.validate()
    cfg.data.validate()
    cfg.generation.validate()
    cfg.maker.validate()
    check_models_agree(cfg)
    p = cfg.algorithm
    for name in ("max_steps", "rollout_batch_size", "train_batch_size", "micro_batch_size", "ppo_epochs",
                 "log_every"):
        if getattr(p, name) < 1:
            _fail(f"ppo.{name}", f"must be >= 1, got {getattr(p, name)}", "use a positive integer")
    if not 0 < p.clip_eps < 1:
        _fail("algorithm.clip_eps", f"must be in (0, 1), got {p.clip_eps}", "e.g. 0.2")
    if p.clip_eps_low is not None and not 0 < p.clip_eps_low < 1:
        _fail("algorithm.clip_eps_low", f"must be in (0, 1), got {p.clip_eps_low}", "e.g. 0.2, or null for algorithm.clip_eps")
    if p.clip_eps_high is not None and p.clip_eps_high <= 0:
        _fail("algorithm.clip_eps_high", f"must be > 0, got {p.clip_eps_high}", "e.g. 0.28, or null for algorithm.clip_eps")
    if p.behaviour_cap < 1:
        _fail("algorithm.behaviour_cap", f"must be >= 1, got {p.behaviour_cap}", "e.g. 2.0")
    check_kl_penalty(p)
    check_sample_options(cfg)  # packing, dynamic sampling, overlong: coati_ray/config/sample_options.py
    check_placement(cfg)
    if p.rollout_batch_size % cfg.maker.batch_size:
        _fail("algorithm.rollout_batch_size", f"{p.rollout_batch_size} is not a multiple of maker.batch_size "
              f"({cfg.maker.batch_size})", f"set it to a multiple of {cfg.maker.batch_size}")
    if p.rollout_batch_size % p.train_batch_size:
        _fail("algorithm.train_batch_size", f"{p.train_batch_size} does not divide algorithm.rollout_batch_size "
              f"({p.rollout_batch_size})", "choose a divisor of the rollout batch")
    if cfg.maker.autoscale is not None and not cfg.placement_spec.makers:
        _fail("maker.autoscale", f"placement: {cfg.placement} has no maker pool to size",
              "use placement: separate, or remove maker.autoscale")
    for group in (f"{role}_trainer" for role in cfg.roles):
        g = getattr(cfg, group)
        g.resources.validate(f"{group}.resources")
        if g.max_restarts < 0:
            _fail(f"{group}.max_restarts", f"must be >= 0, got {g.max_restarts}", "e.g. 3 (0: no restarts)")
        ranks = g.resources.num_ranks
        model = getattr(cfg, group.split("_")[0])
        if g.strategy.name == "3d":
            _fail(f"{group}.strategy.name", "the 3d strategy is for the supervised stages (SFT, RM, pretrain): "
                  "a PPO group's weight export does not gather tensor-parallel shards yet",
                  "use colossalai_zero2 or colossalai_gemini for PPO trainer groups")
        g.strategy.validate(f"{group}.strategy", num_ranks=ranks, model_key=group.split("_")[0],
                            model_dtype=model.dtype, lora=model.lora_rank > 0, machine=False,
                            quantize=model.quantize)
        g.optim.validate(f"{group}.optim")
        from coati_ray.config.checks import check_flash_attn_precision

        check_flash_attn_precision(model, g.strategy, group.split("_")[0])
        per = (p.micro_batch_size if p.micro_batch_tokens is None else 1) * ranks  # packs: any size
        if p.train_batch_size % per:
            _fail("algorithm.train_batch_size", f"{p.train_batch_size} is not divisible by micro_batch_size "
                  f"({p.micro_batch_size}) x {group} ranks ({ranks}) = {per}", f"use a multiple of {per}")
        if cfg.maker.batch_size % ranks:
            _fail("maker.batch_size", f"{cfg.maker.batch_size} samples cannot be split evenly over the "
                  f"{ranks} ranks of {group}", f"use a multiple of {ranks}")
    check_maker_dtype(cfg)
    for role in cfg.roles:
        getattr(cfg, f"{role}_trainer").strategy.check_machine(f"{role}_trainer.strategy")
    if p.eval_samples_per_prompt < 1:
        _fail("algorithm.eval_samples_per_prompt", f"must be >= 1, got {p.eval_samples_per_prompt}", "e.g. 4")
    if p.eval_every is not None and p.eval_every < 1:
        _fail("algorithm.eval_every", f"must be >= 1 or null, got {p.eval_every}", "e.g. 10")
    if p.mode == "async" and p.max_staleness < 1:
        _fail("algorithm.max_staleness", "async mode needs max_staleness >= 1", "use mode=sync for on-policy")
    if p.ptx_coef > 0 and cfg.data.ptx_path is None:
        _fail("algorithm.ptx_coef", "PPO-ptx needs pretraining data", "set data.ptx_path or algorithm.ptx_coef=0")
    if not 0 <= p.ptx_coef <= 1:
        _fail("algorithm.ptx_coef", f"must be in [0, 1], got {p.ptx_coef}", "e.g. 0.1")
    if cfg.buffer.capacity < p.rollout_batch_size:
        _fail("buffer.capacity", f"{cfg.buffer.capacity} samples cannot hold one step's rollout batch "
              f"({p.rollout_batch_size})", f"set it to at least {p.rollout_batch_size}")
    if cfg.maker.start_timeout_s <= 0:
        _fail("maker.start_timeout_s", f"must be > 0, got {cfg.maker.start_timeout_s}", "e.g. 120")


def check_algorithm(cfg) -> None:
    """The estimator's needs against the models and groups the config sets up."""
    p = cfg.algorithm
    try:
        spec = cfg.estimator
    except KeyError as e:
        _fail("algorithm.advantage_estimator", str(e.args[0]).split("; ")[0], str(e.args[0]).split("; ", 1)[1])
    name = f"algorithm.advantage_estimator={p.advantage_estimator}"
    if spec.needs_critic and cfg.critic is None:
        _fail("critic.path", f"{name} needs a critic", "set critic.path (e.g. the RM stage's checkpoint) or "
              "choose a critic-free estimator: grpo, dr_grpo, rloo, reinforce_pp")
    if not spec.needs_critic:  # one override switches a PPO config to a critic-free estimator: said, not refused
        idle_group = from_dict(type(cfg.critic_trainer), {})
        unused = (["critic"] if cfg.critic is not None else []) + \
            (["critic_trainer"] if cfg.critic_trainer != idle_group else [])
        if unused:
            from coati_ray.config.notes import note

            note(f"{name} trains no critic: the {' and '.join(unused)} section(s) are set aside (not built, not in "
                 "config.yaml)")
            cfg.critic = None
            cfg.critic_trainer = idle_group
    n = p.n_samples_per_prompt
    if n < 1:
        _fail("algorithm.n_samples_per_prompt", f"must be >= 1, got {n}", "e.g. 4")
    if spec.group_relative and n < 2:
        _fail("algorithm.n_samples_per_prompt", f"{name} compares each prompt's samples, so it needs at least 2",
              "set algorithm.n_samples_per_prompt=4 (or 8)")
    if cfg.maker.batch_size % n:
        _fail("maker.batch_size", f"{cfg.maker.batch_size} samples cannot hold whole groups of "
              f"algorithm.n_samples_per_prompt={n} (a prompt's samples stay in one maker batch)",
              f"use a multiple of {n}")

def check_kl_penalty(p) -> None:
    """algorithm.kl_coef / kl_penalty / kl_estimator agree: a penalty, not a bonus; no estimator that is not used."""
    if p.kl_coef < 0:
        _fail("algorithm.kl_coef", f"must be >= 0, got {p.kl_coef}", "e.g. 0.1 (0: no KL penalty)")
    if p.kl_penalty == "sequence" and p.kl_estimator != "k1":
        _fail("algorithm.kl_estimator", f"'{p.kl_estimator}' is not used with kl_penalty=sequence, whose KL is Coati's "
              "(e^r - 1) - r", "remove algorithm.kl_estimator, or use kl_penalty=reward for a per-token penalty with it")


def check_maker_dtype(cfg) -> None:
    if cfg.maker.num_gpus > 0 or not cfg.placement_spec.makers:  # no makers: the groups' devices generate
        return
    for model in ("actor", "critic", "reward_model"):
        if getattr(cfg, model) is not None and getattr(cfg, model).use_flash_attn:
            _fail(f"{model}.use_flash_attn", "makers on CPU (maker.num_gpus=0) load every model with it, and "
                  "FlashAttention-2 runs on CUDA only", "give makers GPUs (maker.num_gpus) or remove the key")
    for model in ("actor", "critic", "reward_model"):
        if getattr(cfg, model) is None:
            continue
        if cfg.maker_dtype(model) == "float16":
            _fail("maker.dtype", f"makers on CPU (maker.num_gpus=0) would run the {model} in float16, which "
                  "CPU kernels do not cover", "set maker.dtype=bfloat16 or float32, or give makers GPUs")

def check_models_agree(cfg) -> None:
    """Critic and reward model read the actor's tokens, and every model must hold a whole sequence."""
    from coati_ray.config.checks import model_config, require_fits_context

    response = cfg.response_tokens
    what = "rollout.max_total_tokens" if cfg.rollout.multi_turn else "generation.max_new_tokens"
    length = cfg.data.max_prompt_length + response
    vocab = model_config("actor.path", cfg.actor.local_path).get("vocab_size")
    for key in ("actor", "critic", "reward_model"):
        if getattr(cfg, key) is None:
            continue
        path = getattr(cfg, key).local_path
        require_fits_context(f"{key}.path", path, length, f"data.max_prompt_length + {what}",
                             f"lower data.max_prompt_length or {what}")
        theirs = model_config(f"{key}.path", path).get("vocab_size")
        if key != "actor" and vocab and theirs and theirs != vocab:
            _fail(f"{key}.path", f"'{path}' has a vocabulary of {theirs} but the actor's has {vocab}",
                  "train the critic and reward model from the actor's base model and tokenizer")

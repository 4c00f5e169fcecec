"""Checks of the PPO options that change how much work a sample costs (algorithm.micro_batch_tokens, algorithm.filter_groups,
algorithm.overlong_*), kept apart from the config's fields: some read the models' configs, all run before Ray starts."""

from __future__ import annotations

from coati_ray.config.checks import _fail


def check_sample_options(cfg) -> None:
    """One line for a packing, dynamic-sampling or overlong setting this RLConfig `cfg` cannot run."""
    p = cfg.algorithm
    if p.micro_batch_tokens is not None:
        if p.micro_batch_tokens < 1:
            _fail("algorithm.micro_batch_tokens", f"must be >= 1, got {p.micro_batch_tokens}", "e.g. 4096, or null")
        check_packable(cfg, "algorithm.micro_batch_tokens")
        for role in cfg.roles:
            if getattr(cfg, f"{role}_trainer").strategy.name == "3d":
                _fail("algorithm.micro_batch_tokens", "packing is not built for the 3d strategy (its sharded forward "
                      "builds its own masks)", f"unset it, or use another {role}_trainer.strategy.name")
    if p.filter_groups:
        if not cfg.estimator.group_relative or p.n_samples_per_prompt < 2:
            _fail("algorithm.filter_groups", f"needs a group-relative estimator with n_samples_per_prompt >= 2 "
                  f"(got {p.advantage_estimator}, {p.n_samples_per_prompt})",
                  "use grpo, dr_grpo or rloo with n_samples_per_prompt >= 2, or unset it")
        if p.max_sampling_rounds < 1:
            _fail("algorithm.max_sampling_rounds", f"must be >= 1, got {p.max_sampling_rounds}", "e.g. 3")
    if p.overlong_penalty < 0:
        _fail("algorithm.overlong_penalty", f"must be >= 0, got {p.overlong_penalty}", "e.g. 1.0, or 0 for off")
    if p.overlong_buffer is not None and not 1 <= p.overlong_buffer <= cfg.generation.max_new_tokens:
        _fail("algorithm.overlong_buffer", f"must be in [1, generation.max_new_tokens={cfg.generation.max_new_tokens}]"
              f", got {p.overlong_buffer}", "e.g. a fifth of max_new_tokens, or null for that")


def check_packable(cfg, key: str) -> None:
    """Packing needs a family whose attention takes a 4D mask and position ids (models/packing.py)."""
    for role in ("actor", "critic"):
        model = getattr(cfg, role)
        if model is None or (role == "critic" and not cfg.estimator.needs_critic):
            continue
        check_model_packable(key, f"{role}.path", model, cfg.data.max_prompt_length + cfg.response_tokens,
                             getattr(cfg, f"{role}_trainer").resources.num_gpus_per_rank > 0,
                             f"unset {key} (padded micro-batches of algorithm.micro_batch_size)",
                             f"{role}.use_flash_attn=true")


def check_supervised_packing(cfg) -> None:
    """`trainer.micro_batch_tokens` of an SFT/RM/pretrain config: the same family rules as PPO's packing."""
    budget = cfg.trainer.micro_batch_tokens
    if budget is None:
        return
    key = "trainer.micro_batch_tokens"
    if budget < 1:
        _fail(key, f"must be >= 1, got {budget}", "e.g. 4096, or null")
    if cfg.strategy.name == "3d":
        _fail(key, "packing is not built for the 3d strategy (its sharded forward builds its own masks)",
              "unset it, or use another strategy.name")
    if getattr(cfg, "use_neft", False):
        _fail(key, "NEFTune scales its noise by the row's length, which packing changes (one row of every "
              "sequence)", "unset use_neft or trainer.micro_batch_tokens")
    check_model_packable(key, "model.path", cfg.model, cfg.data.max_length, cfg.resources.num_gpus_per_rank > 0,
                         f"unset {key} (padded micro-batches of trainer.micro_batch_size)", "model.use_flash_attn=true")


def check_model_packable(key: str, path_key: str, model, length: int, on_gpu: bool, unset: str,
                         flash: str) -> None:
    """One model of a packed job: a PACKABLE family, no sliding window shorter than the sequences, and on a GPU
    flash attention (a pack's dense L x L mask under SDPA is slower than padding)."""
    from coati_ray.config.checks import model_config
    from coati_ray.models.packing import PACKABLE

    config = model_config(path_key, model.local_path)
    kind = config.get("model_type")
    if kind not in PACKABLE:
        _fail(key, f"packs sequences for {', '.join(PACKABLE)}, but {path_key} is a {kind} model", unset)
    window = config.get("sliding_window")
    if window and window < length and (kind == "mistral" or config.get("use_sliding_window")):
        _fail(key, f"{path_key} attends through a sliding window of {window} tokens, shorter than the "
              f"sequences ({length}); the packed mask has no window", unset)
    if on_gpu and model.attn_implementation != "flash_attention_2":
        _fail(key, "on a GPU a pack needs flash attention (varlen): with SDPA its dense L x L mask is "
              "slower than padding", f"set {flash}, or {unset.split(' (')[0]}")

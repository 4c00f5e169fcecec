"""The command-line flags of the commands Coati's and Colossal-LLaMA's users already type, as aliases of our keys.

    python -m launch.sft --pretrain /path/to/llama --model llama --strategy colossalai_zero2 --lora_rank 8 \\
        --save_path runs/coati7b --dataset data.json --batch_size 4 --accumulation_steps 8 --lr 2e-5 --max_epochs 1
    python -m launch.ppo prompts.csv --pretrain runs/sft/checkpoints/final --rm_path runs/rm/checkpoints/final

Each flag becomes a `key=value` override (printed, so the user learns our name for it); a known flag with no
equivalent is refused in one line saying why. Coati's `--batch_size` is per process, so it is our
micro_batch_size, and the global batch follows from --accumulation_steps and the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from coati_ray.errors import ConfigError

# Coati's --strategy names, Colossal-LLaMA's --plugin names, and ours
STRATEGY_NAMES = {"naive": "naive", "ddp": "ddp", "colossalai_zero2": "colossalai_zero2", "zero2": "colossalai_zero2",
                  "colossalai_zero2_cpu": "colossalai_zero2_cpu", "zero2_cpu": "colossalai_zero2_cpu",
                  "colossalai_gemini": "colossalai_gemini", "gemini": "colossalai_gemini",
                  "colossalai_gemini_auto": "colossalai_gemini_auto", "gemini_auto": "colossalai_gemini_auto",
                  "3d": "3d"}


def _bool(flag: str, value: str) -> str:
    low = value.lower()
    if low in ("true", "1", "yes"):
        return "true"
    if low in ("false", "0", "no"):
        return "false"
    raise ConfigError(f"config error: {flag} {value!r} is not a boolean; write True or False")


def _strategy(flag: str, value: str) -> str:
    if value not in STRATEGY_NAMES:
        raise ConfigError(f"config error: {flag} {value!r} is not a strategy; use one of: {', '.join(STRATEGY_NAMES)}")
    return STRATEGY_NAMES[value]


@dataclass(frozen=True)
class Flag:
    """A seed flag: the keys it sets (each given the converted value), or why it has no equivalent."""

    keys: tuple = ()
    convert: Optional[Callable[[str, str], str]] = None
    takes_value: bool = True
    refused: Optional[str] = None


def _keys(*keys: str, convert=None, takes_value: bool = True) -> Flag:
    return Flag(tuple(keys), convert, takes_value)


def _no(reason: str, takes_value: bool = True) -> Flag:
    return Flag(refused=reason, takes_value=takes_value)


SUPERVISED = {
    "--pretrain": _keys("model.path"), "--model": _keys(), "--lora_rank": _keys("model.lora_rank"),
    "--strategy": _keys("strategy.name", convert=_strategy), "--plugin": _keys("strategy.name", convert=_strategy),
    "--max_epochs": _keys("trainer.max_epochs"), "--num_epochs": _keys("trainer.max_epochs"),
    "--batch_size": _keys("trainer.micro_batch_size"), "--micro_batch_size": _keys("trainer.micro_batch_size"),
    "--accumulation_steps": _keys("trainer.accumulation_steps"),
    "--accimulation_steps": _keys("trainer.accumulation_steps"),  # the spelling in Coati's README example
    "--lr": _keys("optim.lr"), "--weight_decay": _keys("optim.weight_decay"),
    "--warmup_steps": _keys("optim.warmup_steps"), "--max_len": _keys("data.max_length"),
    "--max_length": _keys("data.max_length"), "--dataset": _keys("data.train_path"), "--subset": _keys("data.subset"),
    "--max_datasets_size": _keys("data.max_samples"), "--save_path": _keys("output_dir"),
    "--need_optim_ckpt": _keys("trainer.save_optimizer", convert=_bool),
    "--log_interval": _keys("trainer.log_every"), "--save_interval": _keys("trainer.save_every"),
    "--grad_checkpoint": _keys("model.gradient_checkpointing", convert=lambda f, v: "true", takes_value=False),
    "--use_grad_checkpoint": _keys("model.gradient_checkpointing", convert=lambda f, v: "true", takes_value=False),
    "--use_flash_attn": _keys("model.use_flash_attn", convert=lambda f, v: "true", takes_value=False),
    "--grad_clip": _keys("strategy.grad_clip"), "--gradient_clipping": _keys("strategy.grad_clip"),
    "--mixed_precision": _keys("strategy.precision"), "--tp": _keys("strategy.tp"), "--zero": _keys("strategy.zero"),
    "--seed": _keys("strategy.seed"),
    "--model_path": _no("a run continues from its own checkpoint: pass --resume (or --resume <checkpoints/step_N>)"),
    "--test": _no("a small run is data.max_samples=N (or --max_datasets_size N)", takes_value=False),
    "--tensorboard_dir": _no("TensorBoard events always go to <output_dir>/tensorboard"),
    "--config_file": _no("the resolved config is always written to <output_dir>/config.yaml"),
    "--use_wandb": _no("Weights & Biases is the config's logging.wandb section (logging.wandb.project=NAME)",
                       takes_value=False),
}
SFT = {**SUPERVISED, "--use_neft": _keys("use_neft", convert=lambda f, v: "true", takes_value=False)}
RM = {**SUPERVISED, "--loss_fn": _keys("loss_fn"), "--loss_func": _keys("loss_fn")}

PPO = {
    "--pretrain": _keys("actor.path"), "--model": _keys(), "--rm_model": _keys(),
    "--rm_pretrain": _keys("reward.path", "critic.path"), "--rm_path": _keys("reward.path", "critic.path"),
    "--strategy": _keys("actor_trainer.strategy.name", "critic_trainer.strategy.name", convert=_strategy),
    "--plugin": _keys("actor_trainer.strategy.name", "critic_trainer.strategy.name", convert=_strategy),
    "--lora_rank": _keys("actor.lora_rank", "critic.lora_rank"), "--prompt_path": _keys("data.prompt_path"),
    "--prompt_dataset": _keys("data.prompt_path"), "--pretrain_dataset": _keys("data.ptx_path"),
    "--save_path": _keys("output_dir"), "--max_epochs": _keys("ppo.ppo_epochs"),
    "--train_batch_size": _keys("ppo.train_batch_size"), "--ptx_batch_size": _keys("ppo.ptx_batch_size"),
    "--experience_batch_size": _keys("maker.batch_size"), "--kl_coef": _keys("ppo.kl_coef"),
    "--ptx_coef": _keys("ppo.ptx_coef"), "--lr": _keys("actor_trainer.optim.lr"),
    "--num_episodes": _keys(), "--max_timesteps": _keys(), "--update_timesteps": _keys(),  # -> ppo.max_steps below
    "--need_optim_ckpt": _keys(),
    "--max_input_len": _keys("data.max_prompt_length"), "--max_seq_len": _keys(),
    "--test": _no("a small run is ppo.max_steps=N and data.max_samples=N", takes_value=False),
    "--use_wandb": SUPERVISED["--use_wandb"],
}
STAGES = {"sft": SFT, "rm": RM, "ppo": PPO, "pretrain": SUPERVISED}


def translate(stage: str, argv: list[str], note: Callable[[str], None]) -> tuple[list[str], dict]:
    """(`argv` with every seed flag of `stage` replaced by its `key=value` overrides, each reported through
    `note`; {config section: model type} that --model / --rm_model claim, for `check_model_types`). Raises
    ConfigError for a known flag that has no equivalent or a value our keys cannot take."""
    table = STAGES.get(stage, {})
    rest, found = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, _, inline = arg.partition("=")
        flag = table.get(name) if arg.startswith("--") else None
        if flag is None:
            rest.append(arg)
            i += 1
            continue
        if flag.takes_value and not inline:
            if i + 1 >= len(argv):
                raise ConfigError(f"config error: {name} needs a value")
            inline, i = argv[i + 1], i + 1
        i += 1
        if flag.refused:
            raise ConfigError(f"config error: {name} has no equivalent here: {flag.refused}")
        found[name] = inline
    if stage == "ppo":
        if "--rm_path" in found:  # the trained reward model wins over the definition it was trained from
            found["--rm_path"] = found.pop("--rm_path")
    types = {("actor" if stage == "ppo" else "model"): found.get("--model"), "reward": found.get("--rm_model")}
    return rest + _overrides(stage, table, found, note), types


def positional_prompt_file(overrides: list[str], note: Callable[[str], None]) -> list[str]:
    """Coati's `train_prompts.py prompts.csv`: the one positional argument that is an existing file, not
    key=value, is the prompt file (data.prompt_path)."""
    import os

    files = [arg for arg in overrides if "=" not in arg and os.path.isfile(arg)]
    if len(files) != 1:
        return overrides
    note(f"{files[0]} (positional) -> data.prompt_path={files[0]}")
    return [f"data.prompt_path={files[0]}" if arg == files[0] else arg for arg in overrides]


def _overrides(stage: str, table: dict, found: dict, note: Callable[[str], None]) -> list[str]:
    out = _implied(stage, found, note)
    for name, value in found.items():
        flag = table[name]
        converted = flag.convert(name, value) if flag.convert else value
        for key in flag.keys:
            out.append(f"{key}={converted}")
            note(f"{name} {value} -> {key}={converted}")
    if stage == "ppo":
        out += _ppo_schedule(found, note)
    for name in ("--model", "--rm_model"):
        if name in found:
            note(f"{name} {found[name]}: the model type is read from config.json (checked: {name} must match it)")
    return out


def _implied(stage: str, found: dict, note: Callable[[str], None]) -> list[str]:
    """Keys the seeds' scripts set without a flag: a per-process --batch_size with no --accumulation_steps
    accumulates nothing; a ColossalAI plugin trains in fp16 mixed precision (Coati's and Colossal-LLaMA's
    default) unless --mixed_precision says otherwise. Emitted first, so explicit flags win."""
    out = []
    if stage != "ppo" and "--batch_size" in found and not {"--accumulation_steps", "--accimulation_steps"} & set(found):
        out.append("trainer.accumulation_steps=1")
        note("--batch_size without --accumulation_steps -> trainer.accumulation_steps=1 (the global batch is "
             "--batch_size x ranks; Coati's train_sft.py accumulated 8 unless told otherwise)")
    strategy = found.get("--strategy") or found.get("--plugin")
    if strategy and STRATEGY_NAMES.get(strategy, "").startswith(("colossalai", "3d")) and "--mixed_precision" not in found:
        keys = ["actor_trainer.strategy.precision", "critic_trainer.strategy.precision"] if stage == "ppo" \
            else ["strategy.precision"]
        out += [f"{key}=fp16" for key in keys]
        note(f"{'--strategy' if '--strategy' in found else '--plugin'} {strategy} -> {', '.join(keys)}=fp16 (the seeds' "
             "mixed precision; --mixed_precision bf16 for bf16)")
    return out


def _ppo_schedule(found: dict, note: Callable[[str], None]) -> list[str]:
    """Coati's loop: num_episodes x max_timesteps experience batches of experience_batch_size prompts, an update
    every update_timesteps of them. Ours: one step = a rollout of update_timesteps batches, then the update."""
    out = []
    batch = int(found.get("--experience_batch_size", 8))
    update = int(found.get("--update_timesteps", 10))
    if "--update_timesteps" in found or "--experience_batch_size" in found:
        rollout = update * batch
        out += [f"ppo.rollout_batch_size={rollout}", f"buffer.capacity={max(64, rollout)}"]
        note(f"--update_timesteps {update} x --experience_batch_size {batch} -> ppo.rollout_batch_size={rollout} "
             f"(buffer.capacity={max(64, rollout)} holds it)")
    if "--num_episodes" in found or "--max_timesteps" in found:
        episodes, timesteps = int(found.get("--num_episodes", 10)), int(found.get("--max_timesteps", 10))
        if (episodes * timesteps) % update:
            raise ConfigError(f"config error: --num_episodes {episodes} x --max_timesteps {timesteps} is not a multiple "
                              f"of --update_timesteps {update}; our steps are whole updates (set ppo.max_steps)")
        out.append(f"ppo.max_steps={episodes * timesteps // update}")
        note(f"--num_episodes {episodes} x --max_timesteps {timesteps} / --update_timesteps {update} -> "
             f"ppo.max_steps={episodes * timesteps // update}")
    if "--need_optim_ckpt" in found:
        if _bool("--need_optim_ckpt", found["--need_optim_ckpt"]) == "false":
            raise ConfigError("config error: --need_optim_ckpt False has no equivalent here: PPO checkpoints always "
                              "hold the optimizer states, which an exact resume needs")
        note("--need_optim_ckpt True: PPO checkpoints always hold the optimizer states")
    if "--max_seq_len" in found:
        raise ConfigError("config error: --max_seq_len has no equivalent here: set data.max_prompt_length and "
                          "generation.max_new_tokens (their sum is a sequence's length)")
    return out


def check_model_types(cfg, found_types: dict) -> None:
    """--model / --rm_model name a family; config.json says which one the checkpoint is."""
    from coati_ray.config.checks import model_config

    for key, expected in found_types.items():
        model = getattr(cfg, key, None)
        if model is None or expected is None:
            continue
        actual = model_config(f"{key}.path", model.local_path).get("model_type")
        if actual and expected.lower() not in actual.lower():
            raise ConfigError(f"config error: --model {expected} but {key}.path is a '{actual}' model (config.json); "
                              f"drop --model (the type is read from the checkpoint) or point at a {expected} model")

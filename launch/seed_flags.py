"""The command-line flags of the commands Coati's and Colossal-LLaMA's users already type, as aliases of our keys.

    python -m launch.sft --pretrain /path/to/llama --model llama --strategy colossalai_zero2 --lora_rank 8 \\
        --save_path runs/coati7b --dataset data.json --batch_size 4 --accumulation_steps 8 --lr 2e-5 --max_epochs 1
    python -m launch.ppo prompts.csv --pretrain runs/sft/checkpoints/final --rm_path runs/rm/checkpoints/final

Each flag becomes a `key=value` override with the meaning it had in the seed (printed, so the user learns our
name for it), or our launcher's option of that meaning; a known flag with no equivalent is refused in one line
saying why. Coati's `--batch_size` is per process, so it is our micro_batch_size, and the global batch follows
from --accumulation_steps and the ranks; Coati's `--kl_coef` weighs one sequence-level KL taken from the reward
(algorithm.kl_penalty=sequence), not a per-token one. SCRIPTS says which launcher stands for each seed script
(Colossal-LLaMA's train.py: launch.pretrain; inference_example.py: launch.generate; init_tokenizer.py and
init_model.py: launch.expand_vocab; prepare_*_dataset.py: launch.prepare_data); tests/test_seed_commands.py
walks every command line of the seeds' READMEs through these tables.
"""

from __future__ import annotations

import os
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
    """A seed flag, in exactly one of four ways: the keys it sets (each given the converted value, plus the fixed
    `also` overrides its meaning needs), the option of our launcher it becomes, what it `feeds` (a check, or a key
    computed from several flags), or why it has no equivalent (`refused`)."""

    keys: tuple = ()
    convert: Optional[Callable[[str, str], str]] = None
    takes_value: bool = True
    refused: Optional[str] = None
    also: tuple = ()              # key=value overrides that keep the flag's meaning (--kl_coef: the sequence penalty)
    why: Optional[str] = None     # said in the note after the keys
    option: Optional[str] = None  # our launcher's option (launchers with options of their own)
    feeds: Optional[str] = None
    many: bool = False            # takes every value up to the next flag (Colossal-LLaMA's --dataset A B C)


def _keys(*keys: str, convert=None, takes_value: bool = True, also: tuple = (), why: Optional[str] = None,
          many: bool = False) -> Flag:
    return Flag(tuple(keys), convert, takes_value, also=also, why=why, many=many)


def _switch(key: str) -> Flag:
    """A store_true flag of the seeds: present means key=true."""
    return Flag((key,), lambda f, v: "true", takes_value=False)


def _no(reason: str, takes_value: bool = True) -> Flag:
    return Flag(refused=reason, takes_value=takes_value)


def _option(name: str) -> Flag:
    return Flag(option=name)


def _same(*names: str) -> dict:
    """Flags our launcher takes under the seed's own name."""
    return {name: _option(name) for name in names}


def _feeds(what: str, takes_value: bool = True) -> Flag:
    return Flag(feeds=what, takes_value=takes_value)


CHECKED_MODEL_TYPE = "checked: the model type is read from config.json and must match"

SUPERVISED = {
    "--pretrain": _keys("model.path"), "--pretrained": _keys("model.path"), "--model": _feeds(CHECKED_MODEL_TYPE),
    "--lora_rank": _keys("model.lora_rank"),
    "--strategy": _keys("strategy.name", convert=_strategy), "--plugin": _keys("strategy.name", convert=_strategy),
    "--max_epochs": _keys("trainer.max_epochs"), "--num_epochs": _keys("trainer.max_epochs"),
    "--batch_size": _keys("trainer.micro_batch_size"), "--micro_batch_size": _keys("trainer.micro_batch_size"),
    "--accumulation_steps": _keys("trainer.accumulation_steps"),
    "--accimulation_steps": _keys("trainer.accumulation_steps"),  # the spelling in Coati's README example
    "--lr": _keys("optim.lr"), "--weight_decay": _keys("optim.weight_decay"),
    "--warmup_steps": _keys("optim.warmup_steps"), "--max_len": _keys("data.max_length"),
    "--max_length": _keys("data.max_length"), "--dataset": _keys("data.train_path"),
    "--subset": _keys("data.subset", why="read as the hub dataset's data_dir, as Coati's "
                                         "load_dataset(dataset, data_dir=subset)"),
    "--max_datasets_size": _keys("data.max_samples"), "--save_path": _keys("output_dir"),
    "--save_dir": _keys("output_dir"),
    "--need_optim_ckpt": _keys("trainer.save_optimizer", convert=_bool),
    "--log_interval": _keys("trainer.log_every"), "--save_interval": _keys("trainer.save_every"),
    "--grad_checkpoint": _switch("model.gradient_checkpointing"),
    "--use_grad_checkpoint": _switch("model.gradient_checkpointing"),
    "--use_flash_attn": _switch("model.use_flash_attn"),
    "--grad_clip": _keys("strategy.grad_clip"), "--gradient_clipping": _keys("strategy.grad_clip"),
    "--mixed_precision": _keys("strategy.precision"), "--tp": _keys("strategy.tp"), "--pp": _keys("strategy.pp"),
    "--sp": _keys("strategy.sp"), "--sp_mode": _keys("strategy.sp_mode"), "--zero": _keys("strategy.zero"),
    "--enable_sequence_parallelism": _switch("strategy.enable_sequence_parallelism"),
    "--zero_cpu_offload": _switch("strategy.zero_cpu_offload"),
    "--microbatch_size": _keys("strategy.microbatch_size"),
    "--seed": _keys("strategy.seed"),
    "--model_path": _no("a run continues from its own checkpoint: pass --resume (or --resume <checkpoints/step_N>)"),
    "--test": _no("a small run is data.max_samples=N (or --max_datasets_size N)", takes_value=False),
    "--tensorboard_dir": _no("TensorBoard events always go to <output_dir>/tensorboard"),
    "--config_file": _no("the resolved config is always written to <output_dir>/config.yaml"),
    "--use_wandb": _no("Weights & Biases is the config's logging.wandb section (logging.wandb.project=NAME)",
                       takes_value=False),
}
SFT = {**SUPERVISED, "--use_neft": _switch("use_neft")}
RM = {**SUPERVISED, "--loss_fn": _keys("loss_fn"), "--loss_func": _keys("loss_fn")}
PRETRAIN = {  # Colossal-LLaMA's train.py (pretraining, and SFT on prepare_sft_dataset output)
    **SFT, "--dataset": _keys("data.train_path", convert=lambda f, v: ",".join(v.split()), many=True),
    "--load_checkpoint": _keys("load_checkpoint"),
    "--freeze_non_embeds_params": _switch("model.freeze_non_embeds_params"),
    "--benchmark": _switch("data.benchmark"), "--num_samples": _keys("data.num_samples"),
}

PPO_SCHEDULE = ("with --max_timesteps and --update_timesteps: algorithm.max_steps = episodes x timesteps / update_timesteps, "
                "algorithm.rollout_batch_size = update_timesteps x experience_batch_size")
PPO = {
    "--pretrain": _keys("actor.path"), "--model": _feeds(CHECKED_MODEL_TYPE), "--rm_model": _feeds(CHECKED_MODEL_TYPE),
    "--rm_pretrain": _keys("reward_model.path", "critic.path"), "--rm_path": _keys("reward_model.path", "critic.path"),
    "--strategy": _keys("actor_trainer.strategy.name", "critic_trainer.strategy.name", convert=_strategy),
    "--plugin": _keys("actor_trainer.strategy.name", "critic_trainer.strategy.name", convert=_strategy),
    "--lora_rank": _keys("actor.lora_rank", "critic.lora_rank"), "--prompt_path": _keys("data.prompt_path"),
    "--prompt_dataset": _keys("data.prompt_path"), "--pretrain_dataset": _keys("data.ptx_path"),
    "--save_path": _keys("output_dir"), "--max_epochs": _keys("algorithm.ppo_epochs"),
    "--train_batch_size": _keys("algorithm.train_batch_size"), "--ptx_batch_size": _keys("algorithm.ptx_batch_size"),
    "--experience_batch_size": _keys("maker.batch_size"),
    "--kl_coef": _keys("algorithm.kl_coef", also=("algorithm.kl_penalty=sequence",),
                       why="Coati's penalty: kl_coef x the response's mean of (e^r - 1) - r, r = log pi - log pi_ref, "
                           "taken once from the sequence's reward"),
    "--ptx_coef": _keys("algorithm.ptx_coef"), "--lr": _keys("actor_trainer.optim.lr"),
    "--num_episodes": _feeds(PPO_SCHEDULE), "--max_timesteps": _feeds(PPO_SCHEDULE),
    "--update_timesteps": _feeds(PPO_SCHEDULE),
    "--need_optim_ckpt": _feeds("checked: PPO checkpoints always hold the optimizer states (False is refused)"),
    "--max_input_len": _keys("data.max_prompt_length"),
    "--max_seq_len": _no("set data.max_prompt_length and generation.max_new_tokens (their sum is a sequence's "
                         "length)"),
    "--test": _no("a small run is algorithm.max_steps=N and data.max_samples=N", takes_value=False),
    "--use_wandb": SUPERVISED["--use_wandb"],
}
GENERATE = {  # Colossal-LLaMA's inference_example.py
    "--model_path": _keys("model"), "--max_new_tokens": _keys("generation.max_new_tokens"),
    "--do_sample": _keys("generation.do_sample", convert=_bool), "--temperature": _keys("generation.temperature"),
    "--top_k": _keys("generation.top_k"), "--top_p": _keys("generation.top_p"), "--input_txt": _option("--prompt"),
    "--device": _feeds("checked: launch.generate runs on the first visible GPU (CUDA_VISIBLE_DEVICES picks it), "
                       "else the CPU"),
}
EXPAND_VOCAB = {  # Colossal-LLaMA's init_tokenizer.py and init_model.py, which launch.expand_vocab does in one step
    **_same("--source_model_and_tokenizer_path", "--expand_tokens_file", "--target_model_path"),
    "--source_tokenizer_dir": _no("launch.expand_vocab expands the tokenizer and the model in one step: give the "
                                  "model with its tokenizer as --source_model_and_tokenizer_path"),
    "--target_tokenizer_dir": _no("the expanded tokenizer is written with the model, to --target_model_path"),
    "--target_tokenizer_path": _no("the tokenizer is expanded in the same step, from --expand_tokens_file"),
}
PREPARE_DATA = {  # Colossal-LLaMA's prepare_pretrain_dataset.py and prepare_sft_dataset.py
    **_same("--data_input_dirs", "--tokenizer_dir", "--data_output_dirs", "--max_length", "--num_spliced_dataset_bins"),
    "--llama_version": _no("`messages` are rendered with --tokenizer_dir's own chat template, so the tokenizer "
                           "decides the LLaMA layout; drop the flag"),
}
STAGES = {"sft": SFT, "rm": RM, "ppo": PPO, "pretrain": PRETRAIN, "generate": GENERATE, "expand_vocab": EXPAND_VOCAB,
          "prepare_data": PREPARE_DATA}

# The seeds' scripts: our launcher for each, and the options its name implies
SCRIPTS = {"train_sft.py": ("sft", ()), "train_reward_model.py": ("rm", ()), "train_prompts.py": ("ppo", ()),
           "train.py": ("pretrain", ()), "inference_example.py": ("generate", ()),
           "init_tokenizer.py": ("expand_vocab", ()), "init_model.py": ("expand_vocab", ()),
           "prepare_pretrain_dataset.py": ("prepare_data", ("--mode", "pretrain")),
           "prepare_sft_dataset.py": ("prepare_data", ("--mode", "sft"))}
# The flags of the launchers in front of them (torchrun, colossalai run): `python -m launch.<stage>` replaces both
LAUNCHER_FLAGS = {
    "--standalone": "one node: launch.<stage> uses the running Ray cluster, or starts a local one",
    "--nproc_per_node": "ranks of the trainer group: resources.num_ranks (PPO: actor_trainer.resources.num_ranks "
                        "and critic_trainer.resources.num_ranks)",
    "--hostfile": "the nodes are the Ray cluster's: `ray start --address HEAD` on each host, then run on the head",
}


def seed_script(words: list[str]) -> tuple[list[str], str, list[str]]:
    """A seed's command line as words -> (the launcher's words, the script's name, the script's arguments);
    the script is the first word ending in .py (Colossal-LLaMA's README once writes .py.py)."""
    for i, word in enumerate(words):
        if word.endswith(".py"):
            name = os.path.basename(word)
            while name.endswith(".py.py"):
                name = name[:-3]
            return words[:i], name, words[i + 1:]
    raise ConfigError(f"config error: {' '.join(words[:3])} ...: no .py script in the command")


def translate(stage: str, argv: list[str], note: Callable[[str], None]) -> tuple[list[str], dict]:
    """(`argv` with every seed flag of `stage` replaced by its `key=value` overrides (or our option of that
    meaning), each reported through `note`; {config section: model type} that --model / --rm_model claim, for
    `check_model_types`). Raises ConfigError for a known flag that has no equivalent or a value our keys cannot
    take."""
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
        value, i = _flag_value(flag, name, inline, argv, i)
        if flag.refused:
            raise ConfigError(f"config error: {name} has no equivalent here: {flag.refused}")
        if flag.option:
            rest += [flag.option] + ([value] if flag.takes_value else [])
            if flag.option != name:
                note(f"{_as_typed(name, flag, value)} -> {_as_typed(flag.option, flag, value)}")
            continue
        found[name] = value
    if stage == "ppo":
        if "--rm_path" in found:  # the trained reward model wins over the definition it was trained from
            found["--rm_path"] = found.pop("--rm_path")
    types = {("actor" if stage == "ppo" else "model"): found.get("--model"), "reward_model": found.get("--rm_model")}
    return rest + _overrides(stage, table, found, note), types


def seed_argv(stage: str, argv: Optional[list[str]]) -> list[str]:
    """For a launcher with options of its own (generate, prepare_data, expand_vocab): `argv` (None: the command
    line) with the seed's flags translated, each note printed on stderr. Raises ConfigError for a refused flag."""
    import sys

    notes: list[str] = []
    out, _ = translate(stage, list(sys.argv[1:] if argv is None else argv), notes.append)
    for line in notes:
        print(f"note: {line}", file=sys.stderr, flush=True)
    return out


def _flag_value(flag: Flag, name: str, inline: str, argv: list[str], i: int) -> tuple[str, int]:
    """(the value of the flag at argv[i], the index after it); a `many` flag's values joined with commas."""
    if not flag.takes_value or inline:
        return inline, i + 1
    if i + 1 >= len(argv):
        raise ConfigError(f"config error: {name} needs a value")
    end = i + 2
    while flag.many and end < len(argv) and not argv[end].startswith("--") and "=" not in argv[end]:
        end += 1
    return ",".join(argv[i + 1:end]), end


def _as_typed(name: str, flag: Flag, value: str) -> str:
    return f"{name} {value}" if flag.takes_value else name


def positional_prompt_file(overrides: list[str], note: Callable[[str], None]) -> list[str]:
    """Coati's `train_prompts.py prompts.csv`: the one positional argument that is an existing file, not
    key=value, is the prompt file (data.prompt_path)."""
    files = [arg for arg in overrides if "=" not in arg and os.path.isfile(arg)]
    if len(files) != 1:
        return overrides
    note(f"{files[0]} (positional) -> data.prompt_path={files[0]}")
    return [f"data.prompt_path={files[0]}" if arg == files[0] else arg for arg in overrides]


def _overrides(stage: str, table: dict, found: dict, note: Callable[[str], None]) -> list[str]:
    out = _implied(stage, found, note)
    for name, value in found.items():
        flag = table[name]
        if not flag.keys:  # it feeds a check or a computed key, below
            continue
        converted = flag.convert(name, value) if flag.convert else value
        overrides = [f"{key}={converted}" for key in flag.keys] + list(flag.also)
        out += overrides
        note(f"{_as_typed(name, flag, value)} -> {', '.join(overrides)}" + (f" ({flag.why})" if flag.why else ""))
    if stage == "ppo":
        out += _ppo_schedule(found, note)
    if "--device" in found:
        _check_device(found["--device"], note)
    for name in ("--model", "--rm_model"):
        if name in found:
            note(f"{name} {found[name]}: the model type is read from config.json (checked: {name} must match it)")
    return out


def _check_device(value: str, note: Callable[[str], None]) -> None:
    """inference_example.py's --device: launch.generate runs on the first visible GPU, else the CPU; a --device
    that says the same is accepted, any other is refused."""
    import torch

    gpu = torch.cuda.is_available()
    if value not in ("cuda", "cuda:0", "cpu"):
        raise ConfigError(f"config error: --device {value} has no equivalent here: launch.generate runs on the first "
                          "visible GPU; choose it with CUDA_VISIBLE_DEVICES (cuda:1: CUDA_VISIBLE_DEVICES=1)")
    if (value == "cpu") == gpu:
        raise ConfigError(f"config error: --device {value}: " + (
            "launch.generate runs on the visible GPU; hide it with CUDA_VISIBLE_DEVICES= to run on the CPU" if gpu
            else "no GPU is visible; drop --device to run on the CPU"))
    note(f"--device {value}: checked, launch.generate runs on {'the first visible GPU' if gpu else 'the CPU'}")


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
        out += [f"algorithm.rollout_batch_size={rollout}", f"buffer.capacity={max(64, rollout)}"]
        note(f"--update_timesteps {update} x --experience_batch_size {batch} -> algorithm.rollout_batch_size={rollout} "
             f"(buffer.capacity={max(64, rollout)} holds it)")
    if "--num_episodes" in found or "--max_timesteps" in found:
        episodes, timesteps = int(found.get("--num_episodes", 10)), int(found.get("--max_timesteps", 10))
        if (episodes * timesteps) % update:
            raise ConfigError(f"config error: --num_episodes {episodes} x --max_timesteps {timesteps} is not a multiple "
                              f"of --update_timesteps {update}; our steps are whole updates (set algorithm.max_steps)")
        out.append(f"algorithm.max_steps={episodes * timesteps // update}")
        note(f"--num_episodes {episodes} x --max_timesteps {timesteps} / --update_timesteps {update} -> "
             f"algorithm.max_steps={episodes * timesteps // update}")
    if "--need_optim_ckpt" in found:
        if _bool("--need_optim_ckpt", found["--need_optim_ckpt"]) == "false":
            raise ConfigError("config error: --need_optim_ckpt False has no equivalent here: PPO checkpoints always "
                              "hold the optimizer states, which an exact resume needs")
        note("--need_optim_ckpt True: PPO checkpoints always hold the optimizer states")
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

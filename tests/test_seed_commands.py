"""Every command line of the seeds' READMEs, flag by flag: each flag becomes a real key of the stage's config (or our
launcher's option of that meaning), feeds a named check, or is refused in one line saying why. None is unknown,
and none is left for our launcher's own argument parser to guess at (argparse would take `--res` for `--resume`).

The command lines come from tests/data/seed_commands.txt, a copy of ../shared/seeds made by tests/seed_commands.py
(CI's clone has no ../shared); the first test checks the copy where the seeds are.
"""

import importlib
import os

import pytest

from coati_ray.config import load_config
from coati_ray.config.loader import describe
from coati_ray.errors import ConfigError
from launch.seed_flags import LAUNCHER_FLAGS, SCRIPTS, STAGES, seed_script, translate
from tests.seed_commands import COPY, SEEDS, extract, read_copy

COMMANDS, DOCUMENTED = read_copy()
PLACEHOLDER = "--OTHER_CONFIGURATIONS"  # Colossal-LLaMA's `train.py --OTHER_CONFIGURATIONS`: its documented flags


def config_class(stage: str):
    from coati_ray.config.generate import GenerateConfig
    from coati_ray.config.rl import RLConfig
    from coati_ray.config.pretrain import PretrainConfig
    from coati_ray.config.schema import RMConfig, SFTConfig

    return {"sft": SFTConfig, "rm": RMConfig, "ppo": RLConfig, "pretrain": PretrainConfig,
            "generate": GenerateConfig}.get(stage)


# what a config needs before any flag: its required keys
REQUIRED = {"sft": ["model.path=m", "data.train_path=d"], "rm": ["model.path=m", "data.train_path=d"],
            "pretrain": ["model.path=m"], "ppo": ["actor.path=m", "critic.path=c"], "generate": ["model=m"]}
# values for the flags the argument lists document without an example (any other takes "2")
SAMPLE = {"--strategy": "colossalai_zero2", "--plugin": "zero2", "--model": "llama", "--rm_model": "llama",
          "--loss_func": "log_exp", "--loss_fn": "log_exp", "--mixed_precision": "bf16", "--sp_mode": "ring",
          "--need_optim_ckpt": "True", "--do_sample": "True", "--device": "cuda:0"}


def launcher_options(stage: str) -> set:
    return set(importlib.import_module(f"launch.{stage}").parser()._option_string_actions)


def config_keys(stage: str) -> set:
    return {row[0] for row in describe(config_class(stage))}


def check_flag(stage: str, name: str, value: str) -> str:
    """One flag alone at `stage`'s launcher: 'key', 'option', 'feeds' or 'refused', each proven."""
    flag = STAGES[stage].get(name)
    assert flag is not None, f"{name} is unknown at launch.{stage}: add it to launch/seed_flags.py ({stage})"
    kinds = [kind for kind, set_ in (("key", flag.keys), ("option", flag.option), ("feeds", flag.feeds),
                                     ("refused", flag.refused)) if set_]
    assert len(kinds) == 1, f"{name}: exactly one of keys / option / feeds / refused, got {kinds}"
    notes = []
    try:
        argv, _ = translate(stage, [name] + ([value] if flag.takes_value else []), notes.append)
    except ConfigError as e:
        line = str(e)
        assert "\n" not in line and line.startswith(f"config error: {name}") and len(line) > len(name) + 30, line
        assert flag.refused or flag.feeds, f"{name} has keys but was refused: {line}"
        return "refused"
    assert not flag.refused
    if flag.option:  # ours under another name is noted; under the seed's own name it needs no note
        assert argv[0] == flag.option and flag.option in launcher_options(stage), argv
        assert flag.option == name or any(n.startswith(name) for n in notes), notes
        return "option"
    assert any(name in n for n in notes), f"{name}: no note says what it became: {notes}"
    overrides = [a for a in argv if "=" in a]
    assert all(key.split("=")[0] in config_keys(stage) for key in overrides), overrides
    if flag.keys:
        assert {o.split("=")[0] for o in overrides} >= set(flag.keys)
        load_config(config_class(stage), None, REQUIRED[stage] + overrides)  # the values are the keys' types
        return "key"
    return "feeds"


def command_flags(words: tuple) -> tuple[str, list, list, list]:
    """(stage, launcher flags, [(flag, value)] of the script, the script's positionals)."""
    launcher, script, args = seed_script(list(words))
    assert script in SCRIPTS, f"{script}: which launcher stands for it? (launch/seed_flags.py SCRIPTS)"
    stage = SCRIPTS[script][0]
    flags, positionals, i = [], [], 0
    while i < len(args):
        if args[i] == PLACEHOLDER:
            flags += [(d.flag, SAMPLE.get(d.flag, "2")) for d in DOCUMENTED if d.script == script]
        elif args[i].startswith("--"):
            flag = STAGES[stage].get(args[i])
            takes = flag is None or flag.takes_value
            flags.append((args[i], args[i + 1] if takes else ""))
            i += 1 if takes else 0
        else:
            positionals.append(args[i])
        i += 1
    return stage, [w.split("=")[0] for w in launcher if w.startswith("--")], flags, positionals


def test_the_copy_matches_the_seeds():
    if not os.path.isdir(SEEDS):
        pytest.skip("../shared/seeds is not here (CI's clone holds only the repository); the copy stands for it")
    with open(COPY, encoding="utf-8") as f:
        assert f.read() == extract(SEEDS), "refresh: .venv/bin/python -m tests.seed_commands > " \
                                           "tests/data/seed_commands.txt"


def test_the_copy_holds_every_seed_script():
    scripts = {seed_script(list(c.words))[1] for c in COMMANDS}
    assert scripts == set(SCRIPTS) and len(COMMANDS) == 12 and len(DOCUMENTED) >= 80


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.seed[:3]}-{seed_script(list(c.words))[1]}")
def test_every_flag_of_every_seed_command_keeps_its_meaning(command):
    stage, launcher, flags, positionals = command_flags(command.words)
    for name in launcher:  # torchrun / colossalai run: `python -m launch.<stage>` replaces them
        assert name in LAUNCHER_FLAGS, f"{name}: say what stands for it (launch/seed_flags.py LAUNCHER_FLAGS)"
    assert positionals in ([], ["prompts.csv"]) and (not positionals or stage == "ppo")  # Coati's prompt file
    for name, value in flags:
        check_flag(stage, name, value)


@pytest.mark.parametrize("documented", DOCUMENTED, ids=lambda d: f"{d.script}{d.flag}")
def test_every_flag_the_seeds_document_keeps_its_meaning(documented):
    check_flag(SCRIPTS[seed_script([documented.script])[1]][0], documented.flag, SAMPLE.get(documented.flag, "2"))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.seed[:3]}-{seed_script(list(c.words))[1]}")
def test_each_whole_command_loads_or_is_refused_in_one_line(command):
    """The command as typed: its overrides load into the stage's config (or parse as our launcher's options),
    or one line names the flag that has no equivalent here."""
    stage, _, flags, positionals = command_flags(command.words)
    argv = [a for name, value in flags for a in ([name, value] if STAGES[stage][name].takes_value else [name])]
    try:
        out, _ = translate(stage, argv, lambda line: None)
    except ConfigError as e:
        name = str(e).split()[2]
        flag = STAGES[stage][name]
        assert "\n" not in str(e) and (flag.refused or flag.feeds), str(e)
        return
    if config_class(stage) is not None and stage != "generate":
        load_config(config_class(stage), None, REQUIRED[stage] + out)
    else:
        module = importlib.import_module(f"launch.{stage}")
        module.parser().parse_intermixed_args(list(SCRIPTS[seed_script(list(command.words))[1]][1]) + out)


def test_the_seeds_kl_coef_is_coatis_sequence_level_penalty_and_says_so():
    notes = []
    argv, _ = translate("ppo", ["--kl_coef", "0.1"], notes.append)
    assert argv == ["algorithm.kl_coef=0.1", "algorithm.kl_penalty=sequence"]
    assert notes == ["--kl_coef 0.1 -> algorithm.kl_coef=0.1, algorithm.kl_penalty=sequence (Coati's penalty: kl_coef x the "
                     "response's mean of (e^r - 1) - r, r = log pi - log pi_ref, taken once from the sequence's "
                     "reward)"]
    cfg = load_config(config_class("ppo"), None, REQUIRED["ppo"] + argv)
    assert (cfg.algorithm.kl_coef, cfg.algorithm.kl_penalty) == (0.1, "sequence")


def test_the_seeds_subset_is_a_data_dir_and_says_so():
    notes = []
    assert translate("rm", ["--subset", "harmless-base"], notes.append)[0] == ["data.subset=harmless-base"]
    assert "data_dir" in notes[0]


def test_colossal_llamas_train_py_flags_reach_pretrain():
    """train.py's --pretrained / --save_dir / --use_neft / --dataset A B (several prepared folders) and the 3d
    plugin's switches."""
    notes = []
    argv, _ = translate("pretrain", ["--pretrained", "m", "--dataset", "a/part-0", "b/part-1", "--save_dir", "o",
                                     "--use_neft", "--plugin", "3d", "--tp", "2", "--zero_cpu_offload",
                                     "--mixed_precision", "bf16", "trainer.max_steps=3"], notes.append)
    assert argv == ["trainer.max_steps=3", "model.path=m", "data.train_path=a/part-0,b/part-1", "output_dir=o",
                    "use_neft=true", "strategy.name=3d", "strategy.tp=2", "strategy.zero_cpu_offload=true",
                    "strategy.precision=bf16"]
    cfg = load_config(config_class("pretrain"), None, argv)
    assert (cfg.use_neft, cfg.output_dir, cfg.strategy.zero_cpu_offload) == (True, "o", True)


@pytest.mark.parametrize("stage, argv, needle", [
    ("prepare_data", ["--mode", "sft", "--llama_version", "3"],
     "--llama_version has no equivalent here: `messages` are rendered with --tokenizer_dir's own chat template"),
    ("expand_vocab", ["--source_tokenizer_dir", "t"], "expands the tokenizer and the model in one step"),
    ("expand_vocab", ["--target_tokenizer_path", "t"], "from --expand_tokens_file"),
    ("generate", ["--device", "cuda:1", "--prompt", "hi"], "CUDA_VISIBLE_DEVICES"),
])
def test_launchers_with_their_own_options_refuse_a_seed_flag_in_one_line(stage, argv, needle, capsys):
    code = importlib.import_module(f"launch.{stage}").main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_inference_examples_flags_reach_generate(tiny_llama, capsys):
    """inference_example.py's command, with our tiny model: its flags become keys and --prompt."""
    from launch import generate

    assert generate.main(["--model_path", tiny_llama, "--max_new_tokens", "4", "--do_sample", "True",
                          "--temperature", "0.3", "--top_k", "50", "--top_p", "0.95", "--input_txt", "3 1 2"]) == 0
    out = capsys.readouterr()
    assert "note: --input_txt 3 1 2 -> --prompt 3 1 2" in out.err and out.out.strip() != ""
